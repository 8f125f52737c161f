package sandbox_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/medrelay/medrelay/internal/sandbox"
	"github.com/medrelay/medrelay/internal/sandbox/sandboxtest"
)

const assertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

// backendToken runs client_credentials with x/oauth2's clientcredentials and
// a private_key_jwt assertion (smart-2.2-client #233-#238).
func backendToken(t testing.TB, tokenURL, clientID, assertion, scope string) (*oauth2.Token, error) {
	cc := clientcredentials.Config{
		ClientID: clientID, TokenURL: tokenURL, Scopes: strings.Fields(scope), AuthStyle: oauth2.AuthStyleInParams,
		EndpointParams: url.Values{"client_assertion_type": {assertionType}, "client_assertion": {assertion}},
	}
	return cc.Token(context.Background())
}

// smart-2.2-client #225 #229 #233-#238 #264 #291-#294 #299 #300 #308 #309
// #317 #319-#334: backend services with RS384 (JWKS by URL) and ES384 (JWKS
// inline); the token reads across patients.
func TestBackendServices(t *testing.T) {
	rs := sandboxtest.NewKey(t, "RS384")
	es := sandboxtest.NewKey(t, "ES384")
	jwksSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(rs.JWKS())
	}))
	defer jwksSrv.Close()
	s := sandboxtest.Start(t, sandboxtest.WithClients(
		sandbox.ClientConfig{ClientID: "bulk-rs", JWKSURL: jwksSrv.URL, Scope: "system/*.rs"},
		sandbox.ClientConfig{ClientID: "bulk-es", JWKS: es.JWKS()},
	))
	for _, tenant := range []string{"generic", "epic", "oraclehealth"} {
		tokenURL := discover(t, s, tenant).Token
		for id, key := range map[string]*sandboxtest.Key{"bulk-rs": rs, "bulk-es": es} {
			tok, err := backendToken(t, tokenURL, id, key.Assertion(t, id, tokenURL, 4*time.Minute, nil), "system/*.rs")
			if err != nil {
				t.Fatalf("%s %s: %v", tenant, id, err)
			}
			if tok.RefreshToken != "" {
				t.Fatalf("%s: backend services issued a refresh token", tenant)
			}
			r, body := bearerGet(t, s.FHIRBase(tenant)+"/Observation?_count=5", tok.AccessToken)
			if r.StatusCode != 200 || !strings.Contains(string(body), `"next"`) {
				t.Fatalf("%s system search: %d %s", tenant, r.StatusCode, body)
			}
		}
	}
	if s.Stats().Clients["bulk-rs"]["token:client_credentials"] != 3 {
		t.Fatalf("stats: %+v", s.Stats().Clients)
	}
}

// smart-2.2-client #322 #323 #325 #327-#332: what the server refuses.
func TestClientAssertionChecks(t *testing.T) {
	es := sandboxtest.NewKey(t, "ES384")
	other := sandboxtest.NewKey(t, "ES384")
	s := sandboxtest.Start(t, sandboxtest.WithClients(
		sandbox.ClientConfig{ClientID: "svc", JWKS: es.JWKS()},
		sandbox.ClientConfig{ClientID: "svc-url", JWKSURL: "http://127.0.0.1:1/jwks.json"},
		sandbox.ClientConfig{ClientID: "secret-svc", ClientSecret: "x"},
	))
	tokenURL := discover(t, s, "generic").Token
	now := time.Now()
	base := func() map[string]any {
		return map[string]any{"iss": "svc", "sub": "svc", "aud": tokenURL, "exp": now.Add(time.Minute).Unix(), "jti": oauth2.GenerateVerifier()}
	}
	with := func(k string, v any) map[string]any { c := base(); c[k] = v; return c }
	replayed := es.Sign(t, base(), nil)
	if _, err := backendToken(t, tokenURL, "svc", replayed, "system/*.rs"); err != nil {
		t.Fatalf("first use: %v", err)
	}
	cases := map[string]string{
		"jti replay (#332)":            replayed,
		"exp > 5 min (#331)":           es.Sign(t, with("exp", now.Add(10*time.Minute).Unix()), nil),
		"expired":                      es.Sign(t, with("exp", now.Add(-time.Minute).Unix()), nil),
		"no exp (#330)":                es.Sign(t, with("exp", nil), nil),
		"no jti (#332)":                es.Sign(t, with("jti", ""), nil),
		"wrong aud (#329)":             es.Sign(t, with("aud", s.FHIRBase("generic")), nil),
		"sub != client_id (#328)":      es.Sign(t, with("sub", "someone"), nil),
		"no kid (#322)":                es.Sign(t, base(), map[string]any{"kid": nil}),
		"typ not JWT (#323)":           es.Sign(t, base(), map[string]any{"typ": "JOSE"}),
		"jku not registered (#325)":    es.Sign(t, base(), map[string]any{"jku": "https://evil.example/jwks"}),
		"signed by another key (#320)": other.Sign(t, base(), map[string]any{"kid": es.KID}),
	}
	for name, a := range cases {
		_, err := backendToken(t, tokenURL, "svc", a, "system/*.rs")
		if retrieveErrorCode(err) != "invalid_client" {
			t.Errorf("%s: %v, want invalid_client", name, err)
		}
	}
	// JWKS URL that cannot be fetched.
	if _, err := backendToken(t, tokenURL, "svc-url", es.Assertion(t, "svc-url", tokenURL, time.Minute, nil), "system/*.rs"); retrieveErrorCode(err) != "invalid_client" {
		t.Errorf("unreachable jwks_url: %v", err)
	}
	// #229: client_credentials needs asymmetric authentication.
	cc := clientcredentials.Config{ClientID: "secret-svc", ClientSecret: "x", TokenURL: tokenURL, Scopes: []string{"system/*.rs"}}
	if _, err := cc.Token(context.Background()); retrieveErrorCode(err) != "invalid_client" {
		t.Errorf("client_credentials with a secret: %v", err)
	}
	// Only system/ scopes are granted to backend services (#239).
	if _, err := backendToken(t, tokenURL, "svc", es.Assertion(t, "svc", tokenURL, time.Minute, nil), "patient/*.rs"); retrieveErrorCode(err) != "invalid_scope" {
		t.Errorf("patient scope via client_credentials: %v", err)
	}
}
