package oauth_test

import (
	"encoding/json"
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/medrelay/medrelay/internal/oauth"
	"github.com/medrelay/medrelay/internal/sandbox/sandboxtest"
)

// Every parser of outside input here has a fuzz target. Run each briefly:
//   go test -run '^$' -fuzz FuzzParseTokenResponse -fuzztime 5s ./internal/oauth

// FuzzParseTokenResponse: never panics; a success always has an access
// token, a Bearer type and launch context ids that are FHIR ids; a failure
// is always classified.
func FuzzParseTokenResponse(f *testing.F) {
	for _, s := range []string{
		`{"access_token":"a","token_type":"Bearer","expires_in":3600,"refresh_token":"r","scope":"openid patient/*.rs","patient":"123"}`,
		`{"access_token":"a","token_type":"bearer","expires_in":"60","access_grant_expiration":"2027-01-01 00:00:00Z"}`,
		`{"access_token":"a","scope":["a","b"],"fhirContext":[{"reference":"Patient/1"}],"need_patient_banner":true}`,
		`{"error":"invalid_grant","error_description":"gone"}`,
		`{"access_token":"a","token_type":"Bearer","expires_in":1e308,"access_grant_expiration":1700000000}`,
		`{"access_token":"a","patient":"../x"}`, `null`, `[]`, `"x"`, `{`, ``,
	} {
		f.Add(200, []byte(s))
		f.Add(400, []byte(s))
	}
	f.Add(503, []byte(`<html>`))
	f.Fuzz(func(t *testing.T, status int, body []byte) {
		tok, err := oauth.ParseTokenResponse(status, body)
		if err != nil {
			if tok != nil {
				t.Fatal("token and error")
			}
			classified := false
			for _, s := range []error{oauth.ErrBadResponse, oauth.ErrInvalidGrant, oauth.ErrTransient, oauth.ErrInvalidClient, oauth.ErrRejected, oauth.ErrAccessDenied} {
				classified = classified || errors.Is(err, s)
			}
			if !classified {
				t.Fatalf("unclassified error %v", err)
			}
			return
		}
		if status < 200 || status > 299 {
			t.Fatalf("status %d parsed as a token", status)
		}
		if tok.AccessToken == "" || tok.TokenType != "Bearer" {
			t.Fatalf("token without access token or bearer type: %+v", tok)
		}
		for _, id := range []string{tok.Patient, tok.Encounter} {
			if strings.ContainsAny(id, "/?#% \n") || len(id) > 64 {
				t.Fatalf("launch context id %q", id)
			}
		}
	})
}

// FuzzParseCallback: never panics; a success has a code and a state of
// printable ASCII, bounded.
func FuzzParseCallback(f *testing.F) {
	for _, s := range []string{"code=abc&state=s1&iss=https%3A%2F%2Fx", "error=access_denied&state=s", "state=s",
		"code=a&code=b&state=s", "code=x&state=%00", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		q, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		cb, err := oauth.ParseCallback(q)
		if err != nil {
			return
		}
		if cb.Code.IsZero() || cb.State == "" || len(cb.State) > 512 || strings.ContainsAny(cb.State, " \x00\n") {
			t.Fatalf("accepted %+v", cb)
		}
	})
}

// FuzzParseSMARTConfiguration: never panics; a success has a token
// endpoint that is an absolute URL.
func FuzzParseSMARTConfiguration(f *testing.F) {
	for _, s := range []string{
		`{"authorization_endpoint":"https://x/a","token_endpoint":"https://x/t","capabilities":["permission-v2"]}`,
		`{"token_endpoint":"t","scopes_supported":"a b","code_challenge_methods_supported":[1,"S256"]}`,
		`{"token_endpoint":"%zz"}`, `{"token_endpoint":"//evil/t"}`, `{}`, `null`, `[`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		ep, err := oauth.ParseSMARTConfiguration("https://ehr.example/fhir", []byte(body))
		if err != nil {
			return
		}
		u, err := url.Parse(ep.TokenURL)
		if err != nil || !u.IsAbs() {
			t.Fatalf("token endpoint %q", ep.TokenURL)
		}
	})
}

// FuzzParseJWKS: never panics; a success holds only public keys.
func FuzzParseJWKS(f *testing.F) {
	k := sandboxtest.NewKey(f, "ES384")
	r := sandboxtest.NewKey(f, "RS384")
	good, _ := json.Marshal(keySet(k, r))
	f.Add(good)
	f.Add([]byte(`{"keys":[{"kty":"oct","k":"AAAA"}]}`))
	f.Add([]byte(`{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB","use":"enc"}]}`))
	f.Add([]byte(`{"keys":null}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		set, err := oauth.ParseJWKS(b)
		if err != nil {
			return
		}
		for _, key := range set.Keys {
			if !key.IsPublic() || !key.Valid() {
				t.Fatalf("kept a key that is not a valid public key: %+v", key)
			}
		}
	})
}

// FuzzVerifyIDToken: never panics, and nothing but a token signed by the
// key verifies.
func FuzzVerifyIDToken(f *testing.F) {
	const iss = "https://ehr.example/fhir"
	key := sandboxtest.NewKey(f, "ES384")
	set := keySet(key)
	f.Add(key.Sign(f, idClaims(iss, nil), nil))
	f.Add(key.Sign(f, idClaims(iss, map[string]any{"aud": []string{"app-1", "x"}, "azp": "app-1"}), nil))
	f.Add("eyJhbGciOiJub25lIn0.e30.")
	f.Add("a.b.c")
	now := time.Now()
	f.Fuzz(func(t *testing.T, raw string) {
		c, err := oauth.VerifyIDToken(raw, set, iss, "app-1", now)
		if err != nil {
			if !errors.Is(err, oauth.ErrIDToken) {
				t.Fatalf("unclassified %v", err)
			}
			return
		}
		if c.Issuer != iss {
			t.Fatalf("issuer %q", c.Issuer)
		}
	})
}

// FuzzParseScope: never panics; what parses prints back to something that
// parses the same.
func FuzzParseScope(f *testing.F) {
	for _, s := range []string{"patient/Observation.rs", "user/*.cruds", "system/Patient.read", "patient/X.rs?a=b", "launch/patient", "a/b.c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sc, ok := oauth.ParseScope(s)
		if !ok {
			return
		}
		again, ok := oauth.ParseScope(sc.V2String())
		if !ok || again.V2String() != sc.V2String() {
			t.Fatalf("%q → %q does not round-trip", s, sc.V2String())
		}
		if v1, ok := sc.V1String(); ok {
			if _, ok := oauth.ParseScope(v1); !ok {
				t.Fatalf("v1 %q of %q does not parse", v1, s)
			}
		}
	})
}
