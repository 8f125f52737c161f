package main

import (
	"time"

	"github.com/medrelay/medrelay/plugins/sdk"
)

// Oracle Health (Cerner Millennium) behaviour, as data:
//   - access tokens last about ten minutes (570 s): the agent refreshes
//     during long syncs; refresh tokens rotate on every use;
//   - confidential clients authenticate with client_secret_basic (system
//     accounts) or private_key_jwt;
//   - _count is capped at 100; no Patient/$everything;
//   - Bulk Data for Backend Services.
func newSource() *sdk.SMART {
	return &sdk.SMART{
		Name:    "oraclehealth",
		Vendor:  "Oracle Health",
		Version: version,
		Profile: sdk.Profile{
			Discovery:            sdk.DiscoverSMARTConfiguration,
			Aud:                  sdk.AudFHIRBase,
			ClientAuth:           []sdk.ClientAuth{sdk.ClientAuthNone, sdk.ClientAuthSecretBasic, sdk.ClientAuthPrivateKeyJWT},
			JWTAlgorithms:        []string{"RS384", "ES384"},
			ScopesV2:             []string{"openid", "fhirUser", "launch/patient", "offline_access", "patient/*.rs"},
			ScopesV1:             []string{"openid", "fhirUser", "launch/patient", "offline_access", "patient/*.read"},
			BackendScopes:        []string{"system/*.rs"},
			SupportsScopesV2:     true,
			PKCERequired:         true,
			PKCEMethod:           "S256",
			IssuesRefreshTokens:  true,
			RotatesRefreshTokens: true,
			EchoesOfflineAccess:  true,
			AccessTokenLifetime:  570 * time.Second,
			Everything:           false,
			Bulk:                 true,
			MaxPageSize:          100,
			DefaultPageSize:      100,
			RateLimit:            sdk.RateLimit{RequestsPerSecond: 10, Burst: 10, MaxConcurrency: 4},
			Quirks:               []string{"ten-minute-access-tokens", "rotating-refresh-tokens", "count-max-100"},
		},
	}
}
