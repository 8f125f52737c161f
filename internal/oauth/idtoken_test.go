package oauth_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/medrelay/medrelay/internal/oauth"
	"github.com/medrelay/medrelay/internal/sandbox/sandboxtest"
)

func keySet(keys ...*sandboxtest.Key) *jose.JSONWebKeySet {
	set := &jose.JSONWebKeySet{}
	for _, k := range keys {
		set.Keys = append(set.Keys, jose.JSONWebKey{Key: k.Private.Public(), KeyID: k.KID, Algorithm: string(k.Alg), Use: "sig"})
	}
	return set
}

func idClaims(iss string, mod map[string]any) map[string]any {
	now := time.Now()
	c := map[string]any{"iss": iss, "sub": "Patient-1", "aud": "app-1", "exp": now.Add(time.Hour).Unix(),
		"iat": now.Unix(), "fhirUser": iss + "/Patient/1"}
	for k, v := range mod {
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
	}
	return c
}

// TestVerifyIDToken: OpenID Connect ID token validation. smart-2.2-client
// #201.
func TestVerifyIDToken(t *testing.T) {
	const iss = "https://ehr.example/fhir"
	key := sandboxtest.NewKey(t, "ES384")
	other := sandboxtest.NewKey(t, "RS384")
	set := keySet(key)
	now := time.Now()
	ok := key.Sign(t, idClaims(iss, nil), nil)
	c, err := oauth.VerifyIDToken(ok, set, iss, "app-1", now)
	if err != nil {
		t.Fatal(err)
	}
	if c.FHIRUser != iss+"/Patient/1" || c.Subject != "Patient-1" {
		t.Fatalf("claims %+v", c)
	}
	bad := map[string]string{
		"wrong audience":         key.Sign(t, idClaims(iss, map[string]any{"aud": "another-app"}), nil),
		"expired":                key.Sign(t, idClaims(iss, map[string]any{"exp": now.Add(-time.Hour).Unix()}), nil),
		"issued in the future":   key.Sign(t, idClaims(iss, map[string]any{"iat": now.Add(time.Hour).Unix()}), nil),
		"no exp":                 key.Sign(t, idClaims(iss, map[string]any{"exp": nil}), nil),
		"no iat":                 key.Sign(t, idClaims(iss, map[string]any{"iat": nil}), nil),
		"another issuer":         key.Sign(t, idClaims("https://evil.example", nil), nil),
		"several aud, no azp":    key.Sign(t, idClaims(iss, map[string]any{"aud": []string{"app-1", "other"}}), nil),
		"fhirUser not a string":  key.Sign(t, idClaims(iss, map[string]any{"fhirUser": 42}), nil),
		"signed by another key":  other.Sign(t, idClaims(iss, nil), map[string]any{"kid": key.KID}),
		"unknown kid":            other.Sign(t, idClaims(iss, nil), nil),
		"not a JWT":              "abc.def.ghi",
		"alg none":               "eyJhbGciOiJub25lIn0.eyJpc3MiOiJodHRwczovL2Voci5leGFtcGxlL2ZoaXIifQ.",
		"HS256 with public data": "eyJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJodHRwczovL2Voci5leGFtcGxlL2ZoaXIifQ.c2ln",
	}
	for name, tok := range bad {
		if _, err := oauth.VerifyIDToken(tok, set, iss, "app-1", now); !errors.Is(err, oauth.ErrIDToken) {
			t.Errorf("%s: %v", name, err)
		}
	}
	// Several audiences with azp the client are fine.
	multi := key.Sign(t, idClaims(iss, map[string]any{"aud": []string{"app-1", "other"}, "azp": "app-1"}), nil)
	if _, err := oauth.VerifyIDToken(multi, set, iss, "app-1", now); err != nil {
		t.Errorf("azp: %v", err)
	}
}

// oidcIssuer serves an issuer's openid-configuration and JWKS, with keys
// that can be swapped (rotation).
type oidcIssuer struct {
	*httptest.Server
	mu      sync.Mutex
	keys    []*sandboxtest.Key
	fetches int
}

func newIssuer(t *testing.T, keys ...*sandboxtest.Key) *oidcIssuer {
	is := &oidcIssuer{keys: keys}
	is.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/fhir/.well-known/openid-configuration":
			fmt.Fprintf(w, `{"issuer":%q,"jwks_uri":%q}`, is.URL+"/fhir", is.URL+"/jwks")
		case "/jwks":
			is.mu.Lock()
			is.fetches++
			b, _ := json.Marshal(keySet(is.keys...))
			is.mu.Unlock()
			w.Write(b)
		case "/token":
			is.mu.Lock()
			k := is.keys[len(is.keys)-1]
			is.mu.Unlock()
			fmt.Fprintf(w, `{"access_token":"a","token_type":"Bearer","id_token":%q}`, k.Sign(t, idClaims(is.URL+"/fhir", map[string]any{"aud": "my app:1"}), nil))
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(is.Close)
	return is
}

func (is *oidcIssuer) count() int {
	is.mu.Lock()
	defer is.mu.Unlock()
	return is.fetches
}

// TestClient_VerifyIDToken: SMART's steps (issuer → openid-configuration
// → jwks_uri → signature → fhirUser), a key rotation at the server picked
// up by refetching once, and a forged token. smart-2.2-client #218.
func TestClient_VerifyIDToken(t *testing.T) {
	k1 := sandboxtest.NewKey(t, "RS384")
	is := newIssuer(t, k1)
	clock := &sandboxtest.Clock{}
	c := rawClient(t, is.URL, oauth.ClientAuth{}, func(cfg *oauth.ClientConfig) {
		cfg.Endpoints.Issuer = is.URL + "/fhir"
		cfg.Now = clock.Now
	})
	tok, err := c.Exchange(context.Background(), "code", "verifier")
	if err != nil {
		t.Fatal(err)
	}
	if tok.IDTokenErr != nil || tok.FHIRUser != is.URL+"/fhir/Patient/1" {
		t.Fatalf("fhirUser %q, err %v", tok.FHIRUser, tok.IDTokenErr)
	}
	// Cached: no second fetch for the same key.
	if _, err := c.Exchange(context.Background(), "code", "verifier"); err != nil {
		t.Fatal(err)
	}
	if is.count() != 1 {
		t.Fatalf("%d JWKS fetches, want 1 (cached)", is.count())
	}
	// The server rotates its key. Right after a fetch, an unknown kid does
	// not refetch (a flood of forged kids must not become a flood of
	// fetches); a little later it does, once.
	k2 := sandboxtest.NewKey(t, "ES384")
	is.mu.Lock()
	is.keys = []*sandboxtest.Key{k1, k2}
	is.mu.Unlock()
	tok, err = c.Exchange(context.Background(), "code", "verifier")
	if err != nil {
		t.Fatal(err)
	}
	if tok.IDTokenErr == nil || is.count() != 1 {
		t.Fatalf("unknown kid right after a fetch: err %v, %d fetches", tok.IDTokenErr, is.count())
	}
	clock.Advance(time.Minute)
	tok, err = c.Exchange(context.Background(), "code", "verifier")
	if err != nil || tok.IDTokenErr != nil || is.count() != 2 {
		t.Fatalf("rotated key a minute later: %v %v, %d fetches", err, tok.IDTokenErr, is.count())
	}
	// A fresh client (fresh cache) verifies the new key at once.
	c2 := rawClient(t, is.URL, oauth.ClientAuth{}, func(cfg *oauth.ClientConfig) { cfg.Endpoints.Issuer = is.URL + "/fhir" })
	tok, err = c2.Exchange(context.Background(), "code", "verifier")
	if err != nil || tok.IDTokenErr != nil {
		t.Fatalf("new key: %v %v", err, tok.IDTokenErr)
	}

	// A token signed by a key the issuer never published: the token
	// response is still usable, but fhirUser is not trusted.
	forger := sandboxtest.NewKey(t, "ES384")
	forged := newTokenServer(t, func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, `{"access_token":"a","token_type":"Bearer","id_token":%q}`,
			forger.Sign(t, idClaims(is.URL+"/fhir", map[string]any{"aud": "my app:1"}), map[string]any{"kid": k1.KID}))
	})
	c3 := rawClient(t, forged.URL, oauth.ClientAuth{}, func(cfg *oauth.ClientConfig) { cfg.Endpoints.Issuer = is.URL + "/fhir" })
	tok, err = c3.Exchange(context.Background(), "code", "verifier")
	if err != nil {
		t.Fatal(err)
	}
	if tok.FHIRUser != "" || !errors.Is(tok.IDTokenErr, oauth.ErrIDToken) {
		t.Fatalf("forged id token: fhirUser %q err %v", tok.FHIRUser, tok.IDTokenErr)
	}
	// An id token from another issuer than the server's.
	c4 := rawClient(t, is.URL, oauth.ClientAuth{}, func(cfg *oauth.ClientConfig) { cfg.Endpoints.Issuer = "https://elsewhere.example" })
	tok, _ = c4.Exchange(context.Background(), "code", "verifier")
	if tok.FHIRUser != "" || tok.IDTokenErr == nil {
		t.Fatal("id token of another issuer accepted")
	}
}

// Clients that share a KeyCache (internal/authorize builds one client per
// exchange or refresh) fetch an issuer's keys once between them; clients
// without one each fetch their own.
func TestClient_SharedKeyCache(t *testing.T) {
	is := newIssuer(t, sandboxtest.NewKey(t, "ES384"))
	shared := oauth.NewKeyCache(nil, nil)
	for i := range 3 {
		c := rawClient(t, is.URL, oauth.ClientAuth{}, func(cfg *oauth.ClientConfig) {
			cfg.Endpoints.Issuer = is.URL + "/fhir"
			cfg.IDTokenKeys = shared
		})
		tok, err := c.Exchange(context.Background(), "code", "verifier")
		if err != nil || tok.IDTokenErr != nil || tok.FHIRUser != is.URL+"/fhir/Patient/1" {
			t.Fatalf("client %d: %v %v fhirUser %q", i, err, tok.IDTokenErr, tok.FHIRUser)
		}
	}
	if n := is.count(); n != 1 {
		t.Fatalf("%d JWKS fetches by three clients sharing a cache, want 1", n)
	}
	own := rawClient(t, is.URL, oauth.ClientAuth{}, func(cfg *oauth.ClientConfig) { cfg.Endpoints.Issuer = is.URL + "/fhir" })
	if tok, err := own.Exchange(context.Background(), "code", "verifier"); err != nil || tok.IDTokenErr != nil {
		t.Fatalf("own cache: %v %v", err, tok.IDTokenErr)
	}
	if n := is.count(); n != 2 {
		t.Fatalf("%d JWKS fetches after a client with its own cache, want 2", n)
	}
}

// TestParseJWKS: usable signing keys only.
func TestParseJWKS(t *testing.T) {
	k := sandboxtest.NewKey(t, "ES384")
	good, _ := json.Marshal(keySet(k))
	set, err := oauth.ParseJWKS(good)
	if err != nil || len(set.Keys) != 1 {
		t.Fatalf("%v %v", set, err)
	}
	for _, b := range []string{`{}`, `{"keys":[]}`, `{"keys":[{"kty":"oct","k":"AAAA"}]}`, `[]`, `nope`,
		`{"keys":[{"kty":"EC","crv":"P-384","x":"AA","y":"AA"}]}`} {
		if _, err := oauth.ParseJWKS([]byte(b)); !errors.Is(err, oauth.ErrBadResponse) {
			t.Errorf("%s: %v", b, err)
		}
	}
}
