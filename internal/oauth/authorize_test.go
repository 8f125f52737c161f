package oauth_test

import (
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/medrelay/medrelay/internal/oauth"
)

func authClient(t *testing.T, mod ...func(*oauth.ClientConfig)) *oauth.Client {
	t.Helper()
	cfg := oauth.ClientConfig{
		Endpoints: oauth.Endpoints{AuthorizeURL: "https://ehr.example/oauth2/authorize?tenant=7", TokenURL: "https://ehr.example/oauth2/token",
			Capabilities: []string{"permission-v2", "launch-standalone"}},
		FHIRBase: "https://ehr.example/fhir/r4/", ClientID: "app-1", RedirectURI: "https://agent.example/oauth/callback",
	}
	for _, m := range mod {
		m(&cfg)
	}
	c, err := oauth.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestAuthorizeURL_Params: every parameter of a standalone authorization
// request. smart-2.2-client #2, #3, #13, #32, #33, #34, #36, #37, #39, #40,
// #41, #44, #45, #50, #51, #211.
func TestAuthorizeURL_Params(t *testing.T) {
	c := authClient(t)
	ar, err := c.AuthorizeURL(nil, url.Values{"login_hint": {"pat-3"}})
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(ar.URL)
	if err != nil {
		t.Fatal(err)
	}
	if u.Scheme+"://"+u.Host+u.Path != "https://ehr.example/oauth2/authorize" {
		t.Fatalf("endpoint %s", ar.URL)
	}
	q := u.Query()
	for k, want := range map[string]string{
		"tenant": "7", "response_type": "code", "client_id": "app-1", "redirect_uri": "https://agent.example/oauth/callback",
		"aud": "https://ehr.example/fhir/r4/", "code_challenge_method": "S256", "state": ar.State, "login_hint": "pat-3",
	} {
		if got := q.Get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	for _, k := range []string{"launch", "max_age", "auth_time", "code_verifier", "nonce"} {
		if q.Has(k) {
			t.Errorf("standalone request carries %s", k)
		}
	}
	// PKCE: S256 of the verifier the caller keeps.
	sum := sha256.Sum256([]byte(ar.Verifier))
	if q.Get("code_challenge") != base64.RawURLEncoding.EncodeToString(sum[:]) {
		t.Error("code_challenge is not S256(verifier)")
	}
	if len(ar.Verifier) < 43 {
		t.Errorf("verifier of %d characters", len(ar.Verifier))
	}
	// State: 256 bits, base64url.
	raw, err := base64.RawURLEncoding.DecodeString(ar.State)
	if err != nil || len(raw)*8 < 128 {
		t.Errorf("state %q: %d bits", ar.State, len(raw)*8)
	}
	wantScopes := []string{"launch/patient", "openid", "fhirUser", "offline_access", "patient/*.rs"}
	if got := strings.Fields(q.Get("scope")); !slices.Equal(got, wantScopes) || !slices.Equal(ar.Scopes, wantScopes) {
		t.Errorf("scope %q, want %v", q.Get("scope"), wantScopes)
	}
}

// TestAuthorizeURL_StateUnpredictable: no two requests share a state or a
// verifier. smart-2.2-client #2, #40.
func TestAuthorizeURL_StateUnpredictable(t *testing.T) {
	c := authClient(t)
	states := map[string]bool{}
	verifiers := map[string]bool{}
	for range 2000 {
		ar, err := c.AuthorizeURL(nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if states[ar.State] || verifiers[ar.Verifier] {
			t.Fatal("a state or verifier repeated")
		}
		states[ar.State], verifiers[ar.Verifier] = true, true
	}
}

// TestAuthorizeURL_Extra: extra parameters (the EHR launch's launch, #35)
// are passed; the ones that carry the request's security cannot be
// replaced.
func TestAuthorizeURL_Extra(t *testing.T) {
	c := authClient(t)
	ar, err := c.AuthorizeURL([]string{"launch", "openid", "fhirUser", "patient/*.rs"}, url.Values{"launch": {"xyz"}})
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(ar.URL)
	if u.Query().Get("launch") != "xyz" {
		t.Fatal("launch not passed")
	}
	for _, k := range []string{"state", "redirect_uri", "code_challenge", "client_id", "aud", "Scope"} {
		if _, err := c.AuthorizeURL(nil, url.Values{k: {"evil"}}); !errors.Is(err, oauth.ErrConfig) {
			t.Errorf("extra %s: %v", k, err)
		}
	}
}

// TestAuthorizeURL_Aud: the vendor's aud rule.
func TestAuthorizeURL_Aud(t *testing.T) {
	c := authClient(t, func(cfg *oauth.ClientConfig) { cfg.Profile.AudRule = oauth.AudFHIRBaseNoTrailingSlash })
	ar, _ := c.AuthorizeURL(nil, nil)
	u, _ := url.Parse(ar.URL)
	if got := u.Query().Get("aud"); got != "https://ehr.example/fhir/r4" {
		t.Fatalf("aud %q", got)
	}
}

// TestAuthorizeURL_ScopeSyntax: scopes follow the server's syntax: its
// capabilities decide, then the profile.
func TestAuthorizeURL_ScopeSyntax(t *testing.T) {
	v1 := authClient(t, func(cfg *oauth.ClientConfig) { cfg.Endpoints.Capabilities = []string{"permission-v1"} })
	ar, err := v1.AuthorizeURL([]string{"openid", "patient/Observation.rs", "patient/Condition.read"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"openid", "patient/Observation.read", "patient/Condition.read"}; !slices.Equal(ar.Scopes, want) {
		t.Fatalf("v1 server: %v", ar.Scopes)
	}
	if _, err := v1.AuthorizeURL([]string{"patient/Observation.rs?category=laboratory"}, nil); !errors.Is(err, oauth.ErrConfig) {
		t.Fatalf("a v2 query restriction at a v1 server: %v", err)
	}
	unknown := authClient(t, func(cfg *oauth.ClientConfig) { cfg.Endpoints.Capabilities = nil; cfg.Profile.ScopesV2 = true })
	if !unknown.ScopesV2() {
		t.Error("no capabilities: the profile decides (v2)")
	}
	fromList := authClient(t, func(cfg *oauth.ClientConfig) {
		cfg.Endpoints.Capabilities = nil
		cfg.Endpoints.ScopesSupported = []string{"openid", "patient/*.rs"}
	})
	if !fromList.ScopesV2() {
		t.Error("scopes_supported lists a v2 scope: v2")
	}
}

// TestAuthorizeURL_Refuses: no authorize endpoint, no redirect URI.
func TestAuthorizeURL_Refuses(t *testing.T) {
	c := authClient(t, func(cfg *oauth.ClientConfig) { cfg.Endpoints.AuthorizeURL = "" })
	if _, err := c.AuthorizeURL(nil, nil); !errors.Is(err, oauth.ErrConfig) {
		t.Errorf("no authorize endpoint: %v", err)
	}
	c = authClient(t, func(cfg *oauth.ClientConfig) { cfg.RedirectURI = "" })
	if _, err := c.AuthorizeURL(nil, nil); !errors.Is(err, oauth.ErrConfig) {
		t.Errorf("no redirect URI: %v", err)
	}
}
