package sdk

import (
	"google.golang.org/protobuf/types/known/durationpb"

	pluginv1 "github.com/medrelay/medrelay/proto/gen/medrelay/plugin/v1"
)

func describeProto(d Description, caps []Capability) *pluginv1.DescribeResponse {
	p := d.Profile
	resp := &pluginv1.DescribeResponse{
		Name: d.Name, Vendor: d.Vendor, Version: d.Version, SdkVersion: Version,
		ResourceTypes: p.ResourceTypes, Quirks: p.Quirks,
	}
	for _, v := range ProtocolVersions {
		resp.ProtocolVersions = append(resp.ProtocolVersions, uint32(v))
	}
	for _, c := range caps {
		resp.Capabilities = append(resp.Capabilities, pluginv1.Capability(c))
	}
	ap := &pluginv1.AuthProfile{
		Discovery:              pluginv1.Discovery(p.Discovery),
		AuthorizeUrl:           p.AuthorizeURL,
		TokenUrl:               p.TokenURL,
		RevokeUrl:              p.RevokeURL,
		AudRule:                pluginv1.AudRule(p.Aud),
		DefaultScopesV1:        p.ScopesV1,
		DefaultScopesV2:        p.ScopesV2,
		BackendScopes:          p.BackendScopes,
		SupportsScopesV2:       p.SupportsScopesV2,
		PkceRequired:           p.PKCERequired,
		PkceMethod:             p.PKCEMethod,
		IssuesRefreshTokens:    p.IssuesRefreshTokens,
		RotatesRefreshTokens:   p.RotatesRefreshTokens,
		EchoesOfflineAccess:    p.EchoesOfflineAccess,
		TrailingSlash:          p.TrailingSlash,
		ReportsGrantExpiration: p.ReportsGrantExpiration,
		SharedBaseUrl:          p.SharedBaseURL,
		JwtAlgorithms:          p.JWTAlgorithms,
		ConfidentialOnly:       p.ConfidentialOnly,
	}
	if ap.Discovery == pluginv1.Discovery_DISCOVERY_UNSPECIFIED {
		ap.Discovery = pluginv1.Discovery_DISCOVERY_SMART_CONFIGURATION
	}
	if ap.AudRule == pluginv1.AudRule_AUD_RULE_UNSPECIFIED {
		ap.AudRule = pluginv1.AudRule_AUD_RULE_FHIR_BASE
	}
	if ap.PkceMethod == "" {
		ap.PkceMethod = "S256"
	}
	for _, m := range p.ClientAuth {
		ap.ClientAuthMethods = append(ap.ClientAuthMethods, pluginv1.ClientAuthMethod(m))
	}
	if p.AccessTokenLifetime > 0 {
		ap.AccessTokenLifetime = durationpb.New(p.AccessTokenLifetime)
	}
	if p.RefreshTokenLifetime > 0 {
		ap.RefreshTokenLifetime = durationpb.New(p.RefreshTokenLifetime)
	}
	resp.AuthProfile = ap
	rl := p.RateLimit
	resp.RateLimit = &pluginv1.RateLimit{RequestsPerSecond: rl.RequestsPerSecond, Burst: int32(rl.Burst), MaxConcurrency: int32(rl.MaxConcurrency)}
	if rl.MaxRetryAfter > 0 {
		resp.RateLimit.MaxRetryAfter = durationpb.New(rl.MaxRetryAfter)
	}
	return resp
}
