package oauth_test

import (
	"context"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/medrelay/medrelay/internal/oauth"
	"github.com/medrelay/medrelay/internal/sandbox"
	"github.com/medrelay/medrelay/internal/sandbox/sandboxtest"
	"github.com/medrelay/medrelay/internal/secrets"
)

// redirectURI is where the sandbox sends the browser back; nothing listens
// there: tests read the Location header instead.
const redirectURI = "http://127.0.0.1:1/oauth/callback"

// The vendor profiles, as the vendor plugins describe them (see
// plugins/<vendor>). They mirror the sandbox's tenants of the same names.
var profiles = map[string]oauth.Profile{
	sandbox.ProfileGeneric: {ScopesV2: true, EchoesOfflineAccess: true, IssuesRefreshTokens: true, RotatesRefreshTokens: true,
		JWTAlgorithms: []string{"ES384", "RS384"}},
	sandbox.ProfileEpic: {ScopesV2: true, EchoesOfflineAccess: false, IssuesRefreshTokens: true,
		JWTAlgorithms: []string{"RS384", "ES384"}, ClientAuthMethods: []string{oauth.AuthNone, oauth.AuthPrivateKeyJWT}},
	sandbox.ProfileOracleHealth: {ScopesV2: true, EchoesOfflineAccess: true, IssuesRefreshTokens: true, RotatesRefreshTokens: true,
		AccessTokenLifetime: 570 * time.Second},
	sandbox.ProfileBlueButton: {ScopesV2: true, EchoesOfflineAccess: true, TrailingSlash: true, PKCERequired: true,
		ConfidentialOnly: true, ReportsGrantExpiration: true, IssuesRefreshTokens: true,
		DefaultScopesV2: []string{"patient/Patient.rs", "patient/Coverage.rs", "patient/ExplanationOfBenefit.rs"}},
	sandbox.ProfileEClinicalWorks: {ScopesV2: false, EchoesOfflineAccess: true, IssuesRefreshTokens: true},
}

var noRedirect = &http.Client{
	Timeout:       10 * time.Second,
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

// env is a sandbox tenant with a discovered client.
type env struct {
	sb     *sandbox.Sandbox
	tenant string
	ep     oauth.Endpoints
}

func newEnv(t *testing.T, tenant string, opts ...sandboxtest.Option) *env {
	t.Helper()
	sb := sandboxtest.Start(t, opts...)
	return discoverEnv(t, sb, tenant)
}

func discoverEnv(t *testing.T, sb *sandbox.Sandbox, tenant string) *env {
	t.Helper()
	ep, err := oauth.Discover(context.Background(), nil, sb.FHIRBase(tenant))
	if err != nil {
		t.Fatalf("discover %s: %v", tenant, err)
	}
	return &env{sb: sb, tenant: tenant, ep: ep}
}

// register adds a client to the tenant and returns an oauth.Client for it.
func (e *env) client(t *testing.T, cc sandbox.ClientConfig, auth oauth.ClientAuth) *oauth.Client {
	t.Helper()
	if len(cc.RedirectURIs) == 0 {
		cc.RedirectURIs = []string{redirectURI}
	}
	if err := e.sb.RegisterClient(e.tenant, cc); err != nil {
		t.Fatalf("register client: %v", err)
	}
	c, err := oauth.New(oauth.ClientConfig{
		Endpoints: e.ep, FHIRBase: e.sb.FHIRBase(e.tenant), ClientID: cc.ClientID, Auth: auth,
		RedirectURI: redirectURI, Profile: profiles[e.tenant],
	})
	if err != nil {
		t.Fatalf("oauth.New: %v", err)
	}
	return c
}

// authorize sends the authorization request as a browser would (the
// sandbox auto-approves) and parses where it sends the browser back.
func authorize(t *testing.T, ar oauth.AuthRequest) (oauth.Callback, error) {
	t.Helper()
	resp, err := noRedirect.Get(ar.URL)
	if err != nil {
		t.Fatalf("authorize: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("authorize: HTTP %d, want a redirect back", resp.StatusCode)
	}
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		t.Fatalf("authorize: bad Location: %v", err)
	}
	if got := loc.Scheme + "://" + loc.Host + loc.Path; got != redirectURI {
		t.Fatalf("redirected to %s, want %s", got, redirectURI)
	}
	return oauth.ParseCallback(loc.Query())
}

// standalone runs a whole standalone launch and returns the token.
func standalone(t *testing.T, c *oauth.Client, scopes []string, extra url.Values) (*oauth.Token, oauth.AuthRequest) {
	t.Helper()
	ar, err := c.AuthorizeURL(scopes, extra)
	if err != nil {
		t.Fatalf("AuthorizeURL: %v", err)
	}
	cb, err := authorize(t, ar)
	if err != nil {
		t.Fatalf("callback: %v", err)
	}
	if cb.State != ar.State {
		t.Fatalf("state %q came back as %q", ar.State, cb.State)
	}
	if err := c.CheckIssuer(cb.Iss); err != nil {
		t.Fatalf("CheckIssuer: %v", err)
	}
	tok, err := c.Exchange(context.Background(), cb.Code.Reveal(), ar.Verifier)
	if err != nil {
		t.Fatalf("Exchange: %v", err)
	}
	return tok, ar
}

// keySigner signs assertions with a sandboxtest key (internal/credentials
// has the agent's real signer and its own tests against the sandbox).
type keySigner struct {
	t        *testing.T
	key      *sandboxtest.Key
	clientID string
	life     time.Duration
	extra    map[string]any
}

func (k *keySigner) SignAssertion(_ context.Context, aud string) (string, error) {
	life := k.life
	if life == 0 {
		life = 4 * time.Minute
	}
	return k.key.Assertion(k.t, k.clientID, aud, life, k.extra), nil
}

func (k *keySigner) Algorithm() string { return string(k.key.Alg) }

// fhirGet reads a FHIR URL with a bearer token and returns the status.
func fhirGet(t *testing.T, u string, tok secrets.Value) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, u, nil)
	req.Header.Set("Authorization", "Bearer "+tok.Reveal())
	req.Header.Set("Accept", "application/fhir+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}
