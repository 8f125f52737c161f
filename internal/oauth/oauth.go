// Package oauth is medrelay's OAuth 2.0 / SMART App Launch client: the
// authorize request (PKCE S256, state, aud, scopes in the server's syntax),
// the token endpoint (authorization_code, refresh_token, client_credentials)
// with every SMART client authentication (public, client secret, and
// private_key_jwt), SMART token-response fields, ID-token verification,
// RFC 9207 issuer checks on the callback, discovery, introspection and
// revocation.
//
// It is the only package that imports golang.org/x/oauth2. That library
// builds the authorize URL and the PKCE verifier here; the token endpoint is
// spoken directly, because x/oauth2 cannot omit client_id for
// private_key_jwt (SMART says confidential clients omit it), hides SMART's
// token-response fields behind an untyped Extra, cannot tell invalid_grant
// from a 503 without string matching, and caches an auth style per URL.
//
// Vendors differ, and their differences are data: a Profile (from the
// plugin's AuthProfile) and the server's Endpoints (from discovery) decide
// the aud value, scope syntax, trailing slashes and client authentication.
// Nothing here names a vendor.
//
// Secrets (tokens, client secrets, assertions, codes, verifiers) are
// secrets.Value or never leave this package in an error: a token endpoint
// that echoes one back in error_description gets it redacted.
package oauth

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/medrelay/medrelay/internal/errdefs"
	"github.com/medrelay/medrelay/internal/secrets"
)

// Endpoints are an authorization server's URLs and what it supports, as
// discovered from .well-known/smart-configuration (or given statically by a
// vendor profile).
type Endpoints struct {
	Issuer        string
	AuthorizeURL  string
	TokenURL      string
	RevokeURL     string
	IntrospectURL string
	JWKSURL       string

	ScopesSupported      []string
	CodeChallengeMethods []string
	TokenAuthMethods     []string
	Capabilities         []string
	// GrantTypes the server lists (grant_types_supported).
	GrantTypes []string
	// SigningAlgs the server accepts for private_key_jwt
	// (token_endpoint_auth_signing_alg_values_supported).
	SigningAlgs []string
	// IssParameterSupported: the server sends iss on the authorization
	// response (RFC 9207 authorization_response_iss_parameter_supported), so
	// a callback without it is refused.
	IssParameterSupported bool
}

// HasCapability reports whether the server lists a SMART capability.
func (e Endpoints) HasCapability(c string) bool { return slices.Contains(e.Capabilities, c) }

// AudRule says what the authorize request's aud parameter is.
type AudRule int

// Aud rules (plugin AuthProfile.aud_rule).
const (
	// AudFHIRBase sends the FHIR base URL exactly as configured.
	AudFHIRBase AudRule = iota
	// AudFHIRBaseNoTrailingSlash sends it without a trailing slash.
	AudFHIRBaseNoTrailingSlash
	// AudIgnored: the vendor ignores aud; it is sent anyway (SMART requires it).
	AudIgnored
)

// Profile is a vendor's documented OAuth behaviour, as data (it comes from
// the vendor plugin's AuthProfile; see ProfileFromPlugin).
type Profile struct {
	AudRule AudRule
	// PKCERequired: the vendor refuses requests without PKCE. medrelay sends
	// S256 always; this only makes New refuse a server that says it cannot.
	PKCERequired bool
	// TrailingSlash: the OAuth URLs answer only with a trailing slash (CMS
	// Blue Button); New adds it where missing.
	TrailingSlash bool
	// ScopesV2: the vendor accepts SMART v2 scopes (patient/X.rs). A server
	// that advertises its permission capabilities decides instead.
	ScopesV2 bool
	// EchoesOfflineAccess is false when offline_access is granted without
	// being listed in the token response's scope (Epic): a refresh token in
	// the response then means offline_access was granted.
	EchoesOfflineAccess bool
	// ReportsGrantExpiration: access_grant_expiration is in token responses.
	ReportsGrantExpiration bool
	// ConfidentialOnly: public clients are refused (Blue Button).
	ConfidentialOnly bool
	DefaultScopesV1  []string
	DefaultScopesV2  []string
	BackendScopes    []string
	// JWTAlgorithms accepted for private_key_jwt, best first.
	JWTAlgorithms []string
	// ClientAuthMethods the vendor accepts (none, client_secret_basic, ...);
	// empty means any.
	ClientAuthMethods []string

	// What custody needs to know about the vendor's tokens.
	IssuesRefreshTokens  bool
	RotatesRefreshTokens bool
	// AccessTokenLifetime and RefreshTokenLifetime when documented; zero
	// when unknown (the token response's expires_in wins).
	AccessTokenLifetime  time.Duration
	RefreshTokenLifetime time.Duration
}

// Client authentication methods (token_endpoint_auth_methods_supported).
const (
	AuthNone              = "none"
	AuthClientSecretBasic = "client_secret_basic"
	AuthClientSecretPost  = "client_secret_post"
	AuthPrivateKeyJWT     = "private_key_jwt"
)

// ClientAuth is how the client authenticates at the token endpoint.
type ClientAuth struct {
	// Method is none, client_secret_basic, client_secret_post or private_key_jwt.
	Method string
	// Secret for the client_secret methods.
	Secret secrets.Value
	// Signer for private_key_jwt.
	Signer AssertionSigner
}

// LogValue keeps the secret out of structured logs (a JSON handler would
// otherwise marshal it).
func (a ClientAuth) LogValue() slog.Value {
	return slog.GroupValue(slog.String("method", a.Method), slog.Bool("has_secret", !a.Secret.IsZero()),
		slog.Bool("has_signer", a.Signer != nil))
}

// MarshalJSON writes the method only: a ClientAuth is never stored, and a
// careless json.Marshal must not reveal the secret.
func (a ClientAuth) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		Method string `json:"method"`
	}{a.Method})
}

// AssertionSigner signs SMART client authentication JWTs (private_key_jwt):
// iss and sub the client id, aud the token URL, a fresh jti, exp at most five
// minutes ahead, and the kid of the signing key in the header.
type AssertionSigner interface {
	SignAssertion(ctx context.Context, audience string) (string, error)
}

// Algorithmer is implemented by signers that can say which JWS algorithm
// they sign with, so a vendor that refuses it is caught before a request.
type Algorithmer interface {
	Algorithm() string
}

// ClientConfig configures a Client for one source and one credential.
type ClientConfig struct {
	Endpoints   Endpoints
	FHIRBase    string
	ClientID    string
	Auth        ClientAuth
	RedirectURI string
	Profile     Profile
	// HTTPClient for every request; nil uses a client with a 30 s timeout.
	// Redirects are never followed on the token, revoke and introspection
	// endpoints, whatever this client does.
	HTTPClient *http.Client
	// Now is the clock (tests); nil is time.Now.
	Now func() time.Time
	// IDTokenKeys caches issuers' ID-token signing keys. A caller that
	// builds a Client per request shares one KeyCache between them, or
	// every token response with an ID token costs two more requests
	// (openid-configuration and JWKS). nil: the client keeps its own.
	IDTokenKeys *KeyCache
}

// Sentinel errors. The kinds map to gRPC codes in internal/api.
var (
	// ErrInvalidGrant: the grant is gone (refresh token revoked, expired or
	// reused; code used or expired). Retrying will not help.
	ErrInvalidGrant = errdefs.Define(errdefs.FailedPrecondition, "GRANT_INVALID", "the authorization grant is no longer valid")
	// ErrTransient: 5xx, 429, network errors, timeouts. Retry later.
	ErrTransient = errdefs.Define(errdefs.Unavailable, "SOURCE_UNAVAILABLE", "the source's authorization server is unavailable; try again later")
	// ErrInvalidClient: the server does not accept the client's credential
	// (wrong secret, unknown key, unregistered client).
	ErrInvalidClient = errdefs.Define(errdefs.FailedPrecondition, "CLIENT_REJECTED", "the source rejected the client credential")
	// ErrRejected: any other OAuth error response (invalid_request,
	// invalid_scope, unauthorized_client, ...).
	ErrRejected = errdefs.Define(errdefs.FailedPrecondition, "OAUTH_REJECTED", "the source's authorization server refused the request")
	// ErrAccessDenied: the user (patient) declined on the authorize page.
	ErrAccessDenied = errdefs.Define(errdefs.FailedPrecondition, "ACCESS_DENIED", "the authorization was declined")
	// ErrBadResponse: the server answered something that is not a valid
	// OAuth response (not JSON, no access_token, a hostile patient id).
	ErrBadResponse = errdefs.Define(errdefs.Unavailable, "SOURCE_BAD_RESPONSE", "the source's authorization server sent an invalid response")
	// ErrConfig: the client cannot be built as configured (plain-http
	// endpoint, a method the server or vendor refuses).
	ErrConfig = errdefs.Define(errdefs.FailedPrecondition, "OAUTH_CONFIG_INVALID", "the OAuth client configuration cannot work with this source")
	// ErrBadCallback: the redirect to the callback is malformed or does not
	// come from the expected server (RFC 9207).
	ErrBadCallback = errdefs.Define(errdefs.InvalidArgument, "CALLBACK_INVALID", "the authorization response is not valid")
	// ErrIDToken: the ID token did not verify (its claims are not used).
	ErrIDToken = errdefs.Define(errdefs.Unavailable, "ID_TOKEN_INVALID", "the ID token did not verify")
)

// Client speaks OAuth to one authorization server for one client
// registration. Safe for concurrent use.
type Client struct {
	cfg  ClientConfig
	hc   *http.Client // for token, revoke, introspect: no redirects
	now  func() time.Time
	v2   bool
	aud  string
	keys *KeyCache
}

// New checks cfg and builds a client. It refuses what cannot work: plain
// http endpoints (except loopback), a public client where the vendor
// accepts confidential clients only, a confidential method the server does
// not list, a signing algorithm the vendor refuses.
func New(cfg ClientConfig) (*Client, error) {
	if cfg.ClientID == "" {
		return nil, fmt.Errorf("%w: client id is empty", ErrConfig)
	}
	if cfg.Endpoints.TokenURL == "" {
		return nil, fmt.Errorf("%w: no token endpoint", ErrConfig)
	}
	if cfg.Profile.TrailingSlash {
		cfg.Endpoints.AuthorizeURL = withTrailingSlash(cfg.Endpoints.AuthorizeURL)
		cfg.Endpoints.TokenURL = withTrailingSlash(cfg.Endpoints.TokenURL)
	}
	for _, u := range []struct{ name, v string }{
		{"authorize endpoint", cfg.Endpoints.AuthorizeURL}, {"token endpoint", cfg.Endpoints.TokenURL},
		{"revocation endpoint", cfg.Endpoints.RevokeURL}, {"introspection endpoint", cfg.Endpoints.IntrospectURL},
		{"JWKS URL", cfg.Endpoints.JWKSURL}, {"FHIR base URL", cfg.FHIRBase},
	} {
		if u.v == "" {
			continue
		}
		if err := CheckSecureURL(u.v); err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrConfig, u.name, err)
		}
	}
	switch cfg.Auth.Method {
	case "":
		cfg.Auth.Method = AuthNone
	case AuthNone, AuthClientSecretBasic, AuthClientSecretPost, AuthPrivateKeyJWT:
	default:
		return nil, fmt.Errorf("%w: unknown client authentication method %q", ErrConfig, cfg.Auth.Method)
	}
	m := cfg.Auth.Method
	switch {
	case m == AuthNone && cfg.Profile.ConfidentialOnly:
		return nil, fmt.Errorf("%w: this source accepts confidential clients only: register a client secret or a key", ErrConfig)
	case (m == AuthClientSecretBasic || m == AuthClientSecretPost) && cfg.Auth.Secret.IsZero():
		return nil, fmt.Errorf("%w: %s without a client secret", ErrConfig, m)
	case m == AuthPrivateKeyJWT && cfg.Auth.Signer == nil:
		return nil, fmt.Errorf("%w: private_key_jwt without a key", ErrConfig)
	}
	if len(cfg.Profile.ClientAuthMethods) > 0 && !slices.Contains(cfg.Profile.ClientAuthMethods, m) {
		return nil, fmt.Errorf("%w: the vendor does not accept %s (it accepts %s)", ErrConfig, m, strings.Join(cfg.Profile.ClientAuthMethods, ", "))
	}
	// Servers rarely list "none" (public clients are implied by PKCE), so
	// only confidential methods are checked against the list.
	if m != AuthNone && len(cfg.Endpoints.TokenAuthMethods) > 0 && !slices.Contains(cfg.Endpoints.TokenAuthMethods, m) {
		return nil, fmt.Errorf("%w: the server does not accept %s (it lists %s)", ErrConfig, m, strings.Join(cfg.Endpoints.TokenAuthMethods, ", "))
	}
	if a, ok := cfg.Auth.Signer.(Algorithmer); ok && m == AuthPrivateKeyJWT {
		alg := a.Algorithm()
		if len(cfg.Profile.JWTAlgorithms) > 0 && !slices.Contains(cfg.Profile.JWTAlgorithms, alg) {
			return nil, fmt.Errorf("%w: the vendor does not accept %s keys (it accepts %s)", ErrConfig, alg, strings.Join(cfg.Profile.JWTAlgorithms, ", "))
		}
		if len(cfg.Endpoints.SigningAlgs) > 0 && !slices.Contains(cfg.Endpoints.SigningAlgs, alg) {
			return nil, fmt.Errorf("%w: the server does not accept %s keys (it lists %s)", ErrConfig, alg, strings.Join(cfg.Endpoints.SigningAlgs, ", "))
		}
	}
	if cfg.Profile.PKCERequired && len(cfg.Endpoints.CodeChallengeMethods) > 0 && !slices.Contains(cfg.Endpoints.CodeChallengeMethods, "S256") {
		return nil, fmt.Errorf("%w: the server does not support PKCE S256", ErrConfig)
	}
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	c := &Client{cfg: cfg, now: now, hc: noRedirects(cfg.HTTPClient), v2: useV2(cfg.Profile, cfg.Endpoints)}
	c.aud = audience(cfg.Profile.AudRule, cfg.FHIRBase)
	c.keys = cfg.IDTokenKeys
	if c.keys == nil {
		c.keys = NewKeyCache(c.httpClient(), now)
	}
	return c, nil
}

// Config returns the client's configuration after New's adjustments.
func (c *Client) Config() ClientConfig { return c.cfg }

// ScopesV2 reports whether this client writes scopes in SMART v2 syntax.
func (c *Client) ScopesV2() bool { return c.v2 }

func (c *Client) httpClient() *http.Client {
	if c.cfg.HTTPClient != nil {
		return c.cfg.HTTPClient
	}
	return defaultHTTPClient
}

// defaultHTTPClient: TLS 1.2 at least (smart-2.2-client #318, #230).
var defaultHTTPClient = &http.Client{
	Timeout: 30 * time.Second,
	Transport: func() http.RoundTripper {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
		return t
	}(),
}

// noRedirects copies hc so that it never follows a redirect: a token
// endpoint that redirects would otherwise receive our credentials again at
// a URL we never checked.
func noRedirects(hc *http.Client) *http.Client {
	if hc == nil {
		hc = defaultHTTPClient
	}
	cp := *hc
	cp.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &cp
}

var errInsecure = errors.New("must be https (plain http is allowed only to loopback)")

// CheckSecureURL refuses a URL that would carry secrets in the clear:
// anything but https, except http to a loopback host (development and the
// sandbox). smart-2.2-client #1, #230, #232.
func CheckSecureURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("%q: %w", raw, err)
	}
	if u.Host == "" || !u.IsAbs() {
		return fmt.Errorf("%q is not an absolute URL", raw)
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		if isLoopback(u.Hostname()) {
			return nil
		}
	}
	return fmt.Errorf("%q %w", raw, errInsecure)
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func withTrailingSlash(u string) string {
	if u == "" {
		return u
	}
	p, err := url.Parse(u)
	if err != nil || strings.HasSuffix(p.Path, "/") {
		return u
	}
	p.Path += "/"
	if p.RawPath != "" {
		p.RawPath += "/"
	}
	return p.String()
}

func audience(rule AudRule, base string) string {
	if rule == AudFHIRBaseNoTrailingSlash {
		return strings.TrimRight(base, "/")
	}
	return base
}

// useV2 decides the scope syntax: a server that advertises its permission
// capabilities decides; otherwise the vendor profile does.
func useV2(p Profile, e Endpoints) bool {
	switch {
	case slices.Contains(e.Capabilities, "permission-v2"):
		return true
	case slices.Contains(e.Capabilities, "permission-v1"):
		return false
	}
	for _, s := range e.ScopesSupported {
		if sc, ok := ParseScope(s); ok && sc.V2 {
			return true
		}
	}
	return p.ScopesV2
}

// KeyCache keeps issuers' ID-token signing keys (their JWKS), by issuer.
// Safe for concurrent use; one may serve every Client of a process.
type KeyCache struct {
	hc  *http.Client
	now func() time.Time
	mu  sync.Mutex
	m   map[string]*cachedKeys
}

// NewKeyCache returns an empty cache that fetches with hc (nil: a client
// with a 30 s timeout, TLS 1.2 at least) on the clock now (nil: time.Now).
func NewKeyCache(hc *http.Client, now func() time.Time) *KeyCache {
	if hc == nil {
		hc = defaultHTTPClient
	}
	if now == nil {
		now = time.Now
	}
	return &KeyCache{hc: hc, now: now, m: map[string]*cachedKeys{}}
}
