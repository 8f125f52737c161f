package main

import (
	"time"

	"github.com/medrelay/medrelay/plugins/sdk"
)

// eClinicalWorks, from its public FHIR developer documentation (and the
// sandbox's profile of it): one FHIR base URL per practice; SMART v1 scopes
// only (patient/X.read); one-hour access tokens; refresh tokens for
// offline_access, not rotated; no Patient/$everything; Bulk Data only for
// Backend Services.
func newSource() *sdk.SMART {
	return &sdk.SMART{
		Name:    "eclinicalworks",
		Vendor:  "eClinicalWorks",
		Version: version,
		Profile: sdk.Profile{
			Discovery:            sdk.DiscoverSMARTConfiguration,
			Aud:                  sdk.AudFHIRBase,
			ClientAuth:           []sdk.ClientAuth{sdk.ClientAuthNone, sdk.ClientAuthSecretBasic, sdk.ClientAuthPrivateKeyJWT},
			JWTAlgorithms:        []string{"RS384", "ES384"},
			ScopesV1:             []string{"openid", "fhirUser", "launch/patient", "offline_access", "patient/*.read"},
			BackendScopes:        []string{"system/*.read"},
			SupportsScopesV2:     false,
			PKCERequired:         true,
			PKCEMethod:           "S256",
			IssuesRefreshTokens:  true,
			RotatesRefreshTokens: false,
			EchoesOfflineAccess:  true,
			AccessTokenLifetime:  time.Hour,
			Everything:           false,
			Bulk:                 true,
			MaxPageSize:          100,
			DefaultPageSize:      100,
			RateLimit:            sdk.RateLimit{RequestsPerSecond: 5, Burst: 5, MaxConcurrency: 2},
			Quirks:               []string{"scopes-v1-only", "base-url-per-practice"},
		},
	}
}
