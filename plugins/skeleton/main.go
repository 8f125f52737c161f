// Command medrelay-plugin-skeleton is the smallest useful medrelay source
// plugin: copy this directory, rename it, and change what your vendor does
// differently from SMART on FHIR. See docs/plugins.md.
package main

import (
	"context"
	"time"

	"github.com/medrelay/medrelay/plugins/sdk"
)

// version is set at build time: go build -ldflags "-X main.version=1.2.3".
var version = "dev"

// source embeds the SDK's SMART-on-FHIR implementation; every method you do
// not write here comes from it.
type source struct {
	*sdk.SMART
}

func newSource() *source {
	return &source{SMART: &sdk.SMART{
		Name:    "skeleton", // the binary must be medrelay-plugin-skeleton
		Vendor:  "Example Health",
		Version: version,
		Profile: sdk.Profile{
			Discovery:           sdk.DiscoverSMARTConfiguration,
			Aud:                 sdk.AudFHIRBase,
			ClientAuth:          []sdk.ClientAuth{sdk.ClientAuthNone, sdk.ClientAuthSecretBasic, sdk.ClientAuthPrivateKeyJWT},
			ScopesV2:            []string{"openid", "fhirUser", "offline_access", "patient/*.rs"},
			ScopesV1:            []string{"openid", "fhirUser", "offline_access", "patient/*.read"},
			SupportsScopesV2:    true,
			PKCERequired:        true,
			IssuesRefreshTokens: true,
			EchoesOfflineAccess: true,
			AccessTokenLifetime: time.Hour,
			Everything:          true, // falls back to per-type search if the server says no
			Bulk:                true,
			DefaultPageSize:     100,
			RateLimit:           sdk.RateLimit{RequestsPerSecond: 10, Burst: 10, MaxConcurrency: 4},
		},
	}}
}

// Read shows an override: log, then do what SMART does.
func (s *source) Read(ctx context.Context, call *sdk.Call, req sdk.ReadRequest) (sdk.Resource, error) {
	call.Logger.Debug("read", "type", req.ResourceType)
	return s.SMART.Read(ctx, call, req)
}

func main() { sdk.Serve(newSource()) }
