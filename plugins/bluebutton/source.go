package main

import (
	"time"

	"github.com/medrelay/medrelay/plugins/sdk"
)

// CMS Blue Button 2.0 (bluebutton.cms.gov developer docs):
//   - the OAuth URLs need their trailing slash; PKCE S256 is required;
//     confidential clients only (client_secret_basic);
//   - the token response reports access_grant_expiration; access tokens
//     last 10 hours; refresh tokens rotate;
//   - only Patient, Coverage and ExplanationOfBenefit; Coverage is searched
//     by beneficiary; no $everything, no Bulk Data (that is BCDA/AB2D).
func newSource() *sdk.SMART {
	return &sdk.SMART{
		Name:    "bluebutton",
		Vendor:  "CMS Blue Button 2.0",
		Version: version,
		Profile: sdk.Profile{
			Discovery:              sdk.DiscoverSMARTConfiguration,
			Aud:                    sdk.AudFHIRBase,
			ClientAuth:             []sdk.ClientAuth{sdk.ClientAuthSecretBasic},
			ScopesV2:               []string{"openid", "profile", "patient/Patient.rs", "patient/Coverage.rs", "patient/ExplanationOfBenefit.rs"},
			ScopesV1:               []string{"openid", "profile", "patient/Patient.read", "patient/Coverage.read", "patient/ExplanationOfBenefit.read"},
			SupportsScopesV2:       true,
			PKCERequired:           true,
			PKCEMethod:             "S256",
			IssuesRefreshTokens:    true,
			RotatesRefreshTokens:   true,
			EchoesOfflineAccess:    true,
			AccessTokenLifetime:    10 * time.Hour,
			RefreshTokenLifetime:   13 * 30 * 24 * time.Hour,
			TrailingSlash:          true,
			ReportsGrantExpiration: true,
			ConfidentialOnly:       true,
			ResourceTypes:          []string{"Patient", "Coverage", "ExplanationOfBenefit"},
			PatientParams:          map[string]string{"Coverage": "beneficiary"},
			Everything:             false,
			Bulk:                   false,
			MaxPageSize:            50,
			DefaultPageSize:        50,
			RateLimit:              sdk.RateLimit{RequestsPerSecond: 5, Burst: 5, MaxConcurrency: 2},
			Quirks:                 []string{"trailing-slash-oauth-urls", "pkce-s256", "confidential-only", "access-grant-expiration"},
		},
	}
}
