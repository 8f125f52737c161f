package oauth

import (
	pluginv1 "github.com/medrelay/medrelay/proto/gen/medrelay/plugin/v1"
)

// ProfileFromPlugin turns a vendor plugin's AuthProfile into a Profile.
func ProfileFromPlugin(p *pluginv1.AuthProfile) Profile {
	out := Profile{
		PKCERequired:           p.GetPkceRequired(),
		TrailingSlash:          p.GetTrailingSlash(),
		ScopesV2:               p.GetSupportsScopesV2(),
		EchoesOfflineAccess:    p.GetEchoesOfflineAccess(),
		ReportsGrantExpiration: p.GetReportsGrantExpiration(),
		ConfidentialOnly:       p.GetConfidentialOnly(),
		DefaultScopesV1:        p.GetDefaultScopesV1(),
		DefaultScopesV2:        p.GetDefaultScopesV2(),
		BackendScopes:          p.GetBackendScopes(),
		JWTAlgorithms:          p.GetJwtAlgorithms(),
		IssuesRefreshTokens:    p.GetIssuesRefreshTokens(),
		RotatesRefreshTokens:   p.GetRotatesRefreshTokens(),
		AccessTokenLifetime:    p.GetAccessTokenLifetime().AsDuration(),
		RefreshTokenLifetime:   p.GetRefreshTokenLifetime().AsDuration(),
	}
	switch p.GetAudRule() {
	case pluginv1.AudRule_AUD_RULE_FHIR_BASE_NO_TRAILING_SLASH:
		out.AudRule = AudFHIRBaseNoTrailingSlash
	case pluginv1.AudRule_AUD_RULE_IGNORED:
		out.AudRule = AudIgnored
	default:
		out.AudRule = AudFHIRBase
	}
	for _, m := range p.GetClientAuthMethods() {
		switch m {
		case pluginv1.ClientAuthMethod_CLIENT_AUTH_METHOD_NONE:
			out.ClientAuthMethods = append(out.ClientAuthMethods, AuthNone)
		case pluginv1.ClientAuthMethod_CLIENT_AUTH_METHOD_CLIENT_SECRET_BASIC:
			out.ClientAuthMethods = append(out.ClientAuthMethods, AuthClientSecretBasic)
		case pluginv1.ClientAuthMethod_CLIENT_AUTH_METHOD_CLIENT_SECRET_POST:
			out.ClientAuthMethods = append(out.ClientAuthMethods, AuthClientSecretPost)
		case pluginv1.ClientAuthMethod_CLIENT_AUTH_METHOD_PRIVATE_KEY_JWT:
			out.ClientAuthMethods = append(out.ClientAuthMethods, AuthPrivateKeyJWT)
		}
	}
	return out
}
