package main

import (
	"time"

	"github.com/medrelay/medrelay/plugins/sdk"
)

func newSource() *sdk.SMART {
	return &sdk.SMART{
		Name:    "smart",
		Vendor:  "SMART on FHIR (generic)",
		Version: version,
		Profile: sdk.Profile{
			Discovery:           sdk.DiscoverSMARTConfiguration,
			Aud:                 sdk.AudFHIRBase,
			ClientAuth:          []sdk.ClientAuth{sdk.ClientAuthNone, sdk.ClientAuthSecretBasic, sdk.ClientAuthPrivateKeyJWT},
			ScopesV2:            []string{"openid", "fhirUser", "launch/patient", "offline_access", "patient/*.rs"},
			ScopesV1:            []string{"openid", "fhirUser", "launch/patient", "offline_access", "patient/*.read"},
			BackendScopes:       []string{"system/*.rs"},
			SupportsScopesV2:    true,
			PKCERequired:        true,
			PKCEMethod:          "S256",
			IssuesRefreshTokens: true,
			EchoesOfflineAccess: true,
			AccessTokenLifetime: time.Hour,
			JWTAlgorithms:       []string{"ES384", "RS384"},
			// Try $everything; the SDK falls back to per-type search when
			// the server does not have it.
			Everything:      true,
			Bulk:            true,
			DefaultPageSize: 100,
			RateLimit:       sdk.RateLimit{RequestsPerSecond: 20, Burst: 20, MaxConcurrency: 8},
			Quirks:          []string{"everything-falls-back-to-per-type-search"},
		},
	}
}
