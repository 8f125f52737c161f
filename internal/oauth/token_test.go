package oauth_test

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/medrelay/medrelay/internal/oauth"
	"github.com/medrelay/medrelay/internal/sandbox/sandboxtest"
	"github.com/medrelay/medrelay/internal/secrets"
)

// seen is one request a test server received.
type seen struct {
	method string
	header http.Header
	form   url.Values
	raw    string
}

// tokenServer answers every request with fn and remembers what it got.
type tokenServer struct {
	*httptest.Server
	mu   sync.Mutex
	reqs []seen
}

func newTokenServer(t *testing.T, fn http.HandlerFunc) *tokenServer {
	ts := &tokenServer{}
	ts.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		form, _ := url.ParseQuery(string(b))
		ts.mu.Lock()
		ts.reqs = append(ts.reqs, seen{method: r.Method, header: r.Header.Clone(), form: form, raw: string(b)})
		ts.mu.Unlock()
		fn(w, r)
	}))
	t.Cleanup(ts.Close)
	return ts
}

func (ts *tokenServer) last(t *testing.T) seen {
	t.Helper()
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if len(ts.reqs) == 0 {
		t.Fatal("the server received nothing")
	}
	return ts.reqs[len(ts.reqs)-1]
}

func (ts *tokenServer) count() int {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return len(ts.reqs)
}

func okToken(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprint(w, `{"access_token":"at-1","token_type":"bearer","expires_in":3600,"refresh_token":"rt-1","scope":"launch/patient patient/*.rs offline_access","patient":"p-1"}`)
}

func rawClient(t *testing.T, tokenURL string, auth oauth.ClientAuth, mod ...func(*oauth.ClientConfig)) *oauth.Client {
	t.Helper()
	cfg := oauth.ClientConfig{
		Endpoints: oauth.Endpoints{AuthorizeURL: tokenURL + "/authorize", TokenURL: tokenURL + "/token",
			RevokeURL: tokenURL + "/revoke", IntrospectURL: tokenURL + "/introspect", Capabilities: []string{"permission-v2"}},
		FHIRBase: tokenURL + "/fhir", ClientID: "my app:1", Auth: auth, RedirectURI: redirectURI,
	}
	for _, m := range mod {
		m(&cfg)
	}
	c, err := oauth.New(cfg)
	if err != nil {
		t.Fatalf("oauth.New: %v", err)
	}
	return c
}

// TestExchange_Request checks the token request of each client
// authentication method. smart-2.2-client #62, #63, #64, #67-#72, #345,
// #319-#334.
func TestExchange_Request(t *testing.T) {
	ts := newTokenServer(t, okToken)
	key := sandboxtest.NewKey(t, "ES384")
	signer := &keySigner{t: t, key: key, clientID: "my app:1"}
	cases := []struct {
		name string
		auth oauth.ClientAuth
	}{
		{"none", oauth.ClientAuth{}},
		{"client_secret_basic", oauth.ClientAuth{Method: oauth.AuthClientSecretBasic, Secret: "s3cr:et&+"}},
		{"client_secret_post", oauth.ClientAuth{Method: oauth.AuthClientSecretPost, Secret: "s3cr:et&+"}},
		{"private_key_jwt", oauth.ClientAuth{Method: oauth.AuthPrivateKeyJWT, Signer: signer}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := rawClient(t, ts.URL, tc.auth)
			tok, err := c.Exchange(context.Background(), "the-code", "the-verifier")
			if err != nil {
				t.Fatal(err)
			}
			if tok.AccessToken != "at-1" || tok.TokenType != "Bearer" || tok.Patient != "p-1" {
				t.Fatalf("token %+v", tok)
			}
			r := ts.last(t)
			if r.method != http.MethodPost || r.header.Get("Content-Type") != "application/x-www-form-urlencoded" {
				t.Fatalf("%s with %q", r.method, r.header.Get("Content-Type"))
			}
			for k, v := range map[string]string{"grant_type": "authorization_code", "code": "the-code",
				"redirect_uri": redirectURI, "code_verifier": "the-verifier"} {
				if r.form.Get(k) != v {
					t.Errorf("%s = %q, want %q", k, r.form.Get(k), v)
				}
			}
			user, pass, basic := basicAuth(r.header)
			switch tc.name {
			case "none":
				if r.form.Get("client_id") != "my app:1" || basic {
					t.Errorf("public client: client_id %q, basic %v", r.form.Get("client_id"), basic)
				}
			case "client_secret_basic":
				if !basic || user != "my app:1" || pass != "s3cr:et&+" {
					t.Errorf("basic auth %q:%q (%v)", user, pass, basic)
				}
				if r.form.Has("client_id") || r.form.Has("client_secret") {
					t.Error("confidential client sent client_id or the secret in the body (#72)")
				}
			case "client_secret_post":
				if basic || r.form.Get("client_id") != "my app:1" || r.form.Get("client_secret") != "s3cr:et&+" {
					t.Errorf("post auth: %v", r.form)
				}
			case "private_key_jwt":
				if basic || r.form.Has("client_id") {
					t.Error("private_key_jwt sent client_id or basic auth (#72)")
				}
				if r.form.Get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" {
					t.Errorf("client_assertion_type %q", r.form.Get("client_assertion_type"))
				}
				checkAssertion(t, r.form.Get("client_assertion"), key, "my app:1", ts.URL+"/token")
			}
		})
	}
}

// basicAuth decodes RFC 6749 §2.3.1 Basic credentials (form-encoded, then
// base64).
func basicAuth(h http.Header) (string, string, bool) {
	v, ok := strings.CutPrefix(h.Get("Authorization"), "Basic ")
	if !ok {
		return "", "", false
	}
	b, err := base64.StdEncoding.DecodeString(v)
	if err != nil {
		return "", "", false
	}
	u, p, ok := strings.Cut(string(b), ":")
	u, _ = url.QueryUnescape(u)
	p, _ = url.QueryUnescape(p)
	return u, p, ok
}

// checkAssertion verifies a client assertion the way a server does.
// smart-2.2-client #321-#323, #327-#332.
func checkAssertion(t *testing.T, raw string, key *sandboxtest.Key, clientID, aud string) {
	t.Helper()
	obj, err := jose.ParseSigned(raw, []jose.SignatureAlgorithm{key.Alg})
	if err != nil {
		t.Fatalf("assertion: %v", err)
	}
	h := obj.Signatures[0].Header
	if h.KeyID != key.KID || h.ExtraHeaders[jose.HeaderType] != "JWT" {
		t.Errorf("header kid %q typ %v", h.KeyID, h.ExtraHeaders[jose.HeaderType])
	}
	payload, err := obj.Verify(key.Private.Public())
	if err != nil {
		t.Fatalf("assertion signature: %v", err)
	}
	var c struct {
		Iss, Sub, Aud, Jti string
		Exp                int64
	}
	if err := json.Unmarshal(payload, &c); err != nil {
		t.Fatal(err)
	}
	if c.Iss != clientID || c.Sub != clientID || c.Aud != aud || c.Jti == "" {
		t.Errorf("claims %+v", c)
	}
	if left := time.Until(time.Unix(c.Exp, 0)); left <= 0 || left > 5*time.Minute {
		t.Errorf("exp %v ahead, want within five minutes", left)
	}
}

// TestRefresh_Request: grant_type=refresh_token with the refresh token and,
// when narrowing, the scope in the server's syntax. smart-2.2-client #105-#107.
func TestRefresh_Request(t *testing.T) {
	ts := newTokenServer(t, okToken)
	c := rawClient(t, ts.URL, oauth.ClientAuth{})
	tok, err := c.Refresh(context.Background(), "old-rt", nil)
	if err != nil {
		t.Fatal(err)
	}
	r := ts.last(t)
	if r.form.Get("grant_type") != "refresh_token" || r.form.Get("refresh_token") != "old-rt" || r.form.Has("scope") {
		t.Fatalf("form %v", r.form)
	}
	if !tok.RefreshRotated || tok.RefreshToken != "rt-1" {
		t.Fatal("a new refresh token in the response replaces the old (#117)")
	}
	if _, err := c.Refresh(context.Background(), "old-rt", []string{"patient/Observation.read"}); err != nil {
		t.Fatal(err)
	}
	if got := ts.last(t).form.Get("scope"); got != "patient/Observation.rs" {
		t.Fatalf("scope %q, want the v2 spelling", got)
	}
	if _, err := c.Refresh(context.Background(), "", nil); !errors.Is(err, oauth.ErrInvalidGrant) {
		t.Fatalf("empty refresh token: %v", err)
	}
}

// TestClientCredentials_Request: smart-2.2-client #234-#239.
func TestClientCredentials_Request(t *testing.T) {
	ts := newTokenServer(t, okToken)
	key := sandboxtest.NewKey(t, "RS384")
	c := rawClient(t, ts.URL, oauth.ClientAuth{Method: oauth.AuthPrivateKeyJWT, Signer: &keySigner{t: t, key: key, clientID: "my app:1"}})
	if _, err := c.ClientCredentials(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	r := ts.last(t)
	if r.form.Get("grant_type") != "client_credentials" || r.form.Get("scope") != "system/*.rs" {
		t.Fatalf("form %v", r.form)
	}
	checkAssertion(t, r.form.Get("client_assertion"), key, "my app:1", ts.URL+"/token")
	first := r.form.Get("client_assertion")
	if _, err := c.ClientCredentials(context.Background(), []string{"system/Patient.read"}); err != nil {
		t.Fatal(err)
	}
	r = ts.last(t)
	if r.form.Get("scope") != "system/Patient.rs" || r.form.Get("client_assertion") == first {
		t.Fatalf("second request: scope %q, same assertion %v", r.form.Get("scope"), r.form.Get("client_assertion") == first)
	}
}

// TestTokenEndpoint_Hostile: what a broken or hostile token endpoint can
// answer, and how each is classified. Nothing secret is in any error.
func TestTokenEndpoint_Hostile(t *testing.T) {
	const secret = "client-secret-SENTINEL"
	const refresh = "refresh-token-SENTINEL"
	elsewhere := newTokenServer(t, okToken)
	cases := []struct {
		name    string
		handler http.HandlerFunc
		want    error
		check   func(t *testing.T, tok *oauth.Token, err error)
	}{
		{"html 200", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "<html>login</html>") }, oauth.ErrBadResponse, nil},
		{"no access_token", jsonBody(200, `{"token_type":"Bearer"}`), oauth.ErrBadResponse, nil},
		{"access_token not a string", jsonBody(200, `{"access_token":{"x":1},"token_type":"Bearer"}`), oauth.ErrBadResponse, nil},
		{"mac token", jsonBody(200, `{"access_token":"a","token_type":"mac"}`), oauth.ErrBadResponse, nil},
		{"patient path traversal", jsonBody(200, `{"access_token":"a","token_type":"Bearer","patient":"../../admin"}`), oauth.ErrBadResponse, nil},
		{"expires_in junk", jsonBody(200, `{"access_token":"a","token_type":"Bearer","expires_in":"soon"}`), oauth.ErrBadResponse, nil},
		{"expires_in string", jsonBody(200, `{"access_token":"a","token_type":"Bearer","expires_in":"600"}`), nil,
			func(t *testing.T, tok *oauth.Token, _ error) {
				if d := time.Until(tok.Expiry); d < 590*time.Second || d > 610*time.Second {
					t.Errorf("expiry in %v", d)
				}
			}},
		{"expires_in huge", jsonBody(200, `{"access_token":"a","token_type":"Bearer","expires_in":1e300}`), nil,
			func(t *testing.T, tok *oauth.Token, _ error) {
				if tok.Expiry.Before(time.Now().Add(365 * 24 * time.Hour)) {
					t.Errorf("expiry %v", tok.Expiry)
				}
			}},
		{"expires_in negative", jsonBody(200, `{"access_token":"a","token_type":"Bearer","expires_in":-5}`), nil,
			func(t *testing.T, tok *oauth.Token, _ error) {
				if !tok.Expiry.IsZero() {
					t.Errorf("expiry %v, want unknown", tok.Expiry)
				}
			}},
		{"scope as a list", jsonBody(200, `{"access_token":"a","token_type":"Bearer","scope":["openid","patient/*.rs"]}`), nil,
			func(t *testing.T, tok *oauth.Token, _ error) {
				if !tok.HasScope("patient/*.rs") {
					t.Errorf("scopes %v", tok.Scopes)
				}
			}},
		{"grant expiration", jsonBody(200, `{"access_token":"a","token_type":"Bearer","access_grant_expiration":"2027-04-14 15:29:00Z"}`), nil,
			func(t *testing.T, tok *oauth.Token, _ error) {
				if !tok.GrantExpiry.Equal(time.Date(2027, 4, 14, 15, 29, 0, 0, time.UTC)) {
					t.Errorf("grant expiry %v", tok.GrantExpiry)
				}
			}},
		{"grant expiration junk", jsonBody(200, `{"access_token":"a","token_type":"Bearer","access_grant_expiration":"next year"}`), oauth.ErrBadResponse, nil},
		{"huge body", func(w http.ResponseWriter, _ *http.Request) {
			fmt.Fprint(w, `{"access_token":"`+strings.Repeat("a", 2<<20)+`","token_type":"Bearer"}`)
		}, oauth.ErrBadResponse, nil},
		{"redirect elsewhere", func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, elsewhere.URL+"/steal", http.StatusTemporaryRedirect)
		}, oauth.ErrBadResponse, func(t *testing.T, _ *oauth.Token, _ error) {
			if elsewhere.count() != 0 {
				t.Error("the redirect was followed: credentials went to another server")
			}
		}},
		{"invalid_grant echoing secrets", jsonBody(400, `{"error":"invalid_grant","error_description":"token `+refresh+` for secret `+secret+` is revoked"}`),
			oauth.ErrInvalidGrant, nil},
		{"500 html", func(w http.ResponseWriter, _ *http.Request) { http.Error(w, "<h1>oops</h1>", 500) }, oauth.ErrTransient, nil},
		{"500 invalid_grant", jsonBody(500, `{"error":"invalid_grant"}`), oauth.ErrInvalidGrant, nil},
		{"429 with date", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Retry-After", time.Now().Add(time.Minute).UTC().Format(http.TimeFormat))
			w.WriteHeader(429)
		}, oauth.ErrTransient, func(t *testing.T, _ *oauth.Token, err error) {
			var oe *oauth.Error
			if !errors.As(err, &oe) || oe.RetryAfter < 30*time.Second || oe.RetryAfter > 61*time.Second {
				t.Errorf("retry after: %v", err)
			}
		}},
		{"401 invalid_client", jsonBody(401, `{"error":"invalid_client"}`), oauth.ErrInvalidClient, nil},
		{"400 invalid_scope", jsonBody(400, `{"error":"invalid_scope","error_description":"no"}`), oauth.ErrRejected, nil},
		{"400 control characters", jsonBody(400, `{"error":"invalid_request\u0000\u001b[31m","error_description":"line1\nline2"}`), oauth.ErrRejected,
			func(t *testing.T, _ *oauth.Token, err error) {
				if strings.ContainsAny(err.Error(), "\x00\x1b\n") {
					t.Errorf("control characters in %q", err.Error())
				}
			}},
		{"connection cut", func(w http.ResponseWriter, _ *http.Request) {
			hj, _ := w.(http.Hijacker)
			conn, _, _ := hj.Hijack()
			conn.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{\"access"))
			conn.Close()
		}, oauth.ErrTransient, nil},
		{"slow", func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-r.Context().Done():
			case <-time.After(5 * time.Second):
			}
		}, oauth.ErrTransient, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ts := newTokenServer(t, tc.handler)
			c := rawClient(t, ts.URL, oauth.ClientAuth{Method: oauth.AuthClientSecretPost, Secret: secret}, func(cfg *oauth.ClientConfig) {
				cfg.HTTPClient = &http.Client{Timeout: 300 * time.Millisecond}
			})
			tok, err := c.Refresh(context.Background(), refresh, nil)
			switch {
			case tc.want == nil && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.want != nil && !errors.Is(err, tc.want):
				t.Fatalf("error %v, want %v", err, tc.want)
			}
			if err != nil {
				for _, s := range []string{secret, refresh} {
					if strings.Contains(err.Error(), s) || strings.Contains(fmt.Sprintf("%+v %#v", err, err), s) {
						t.Fatalf("error carries a secret: %v", err)
					}
				}
			}
			if tc.check != nil {
				tc.check(t, tok, err)
			}
		})
	}
}

func jsonBody(status int, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		fmt.Fprint(w, body)
	}
}

// TestErrorClassification: the OAuth error code decides before the status.
func TestErrorClassification(t *testing.T) {
	cases := []struct {
		e    *oauth.Error
		want error
	}{
		{&oauth.Error{Code: "invalid_grant", Status: 400}, oauth.ErrInvalidGrant},
		{&oauth.Error{Code: "invalid_grant", Status: 503}, oauth.ErrInvalidGrant},
		{&oauth.Error{Code: "temporarily_unavailable", Status: 400}, oauth.ErrTransient},
		{&oauth.Error{Code: "server_error", Status: 400}, oauth.ErrTransient},
		{&oauth.Error{Status: 502}, oauth.ErrTransient},
		{&oauth.Error{Status: 429}, oauth.ErrTransient},
		{&oauth.Error{Status: 401}, oauth.ErrInvalidClient},
		{&oauth.Error{Code: "invalid_client", Status: 400}, oauth.ErrInvalidClient},
		{&oauth.Error{Code: "access_denied"}, oauth.ErrAccessDenied},
		{&oauth.Error{Code: "unauthorized_client", Status: 400}, oauth.ErrRejected},
	}
	all := []error{oauth.ErrInvalidGrant, oauth.ErrTransient, oauth.ErrInvalidClient, oauth.ErrAccessDenied, oauth.ErrRejected}
	for _, tc := range cases {
		for _, s := range all {
			if got := errors.Is(tc.e, s); got != (s == tc.want) {
				t.Errorf("%v: errors.Is(%v) = %v", tc.e, s, got)
			}
		}
	}
}

// TestNew_Refuses: configurations that cannot work are refused before any
// request. smart-2.2-client #1, #229, #230, #232.
func TestNew_Refuses(t *testing.T) {
	ok := oauth.ClientConfig{Endpoints: oauth.Endpoints{TokenURL: "https://ehr.example/token", AuthorizeURL: "https://ehr.example/authorize"},
		FHIRBase: "https://ehr.example/fhir", ClientID: "c", RedirectURI: redirectURI}
	if _, err := oauth.New(ok); err != nil {
		t.Fatalf("a good config: %v", err)
	}
	key := sandboxtest.NewKey(t, "ES384")
	cases := map[string]func(*oauth.ClientConfig){
		"plain http token":     func(c *oauth.ClientConfig) { c.Endpoints.TokenURL = "http://ehr.example/token" },
		"plain http authorize": func(c *oauth.ClientConfig) { c.Endpoints.AuthorizeURL = "http://ehr.example/authorize" },
		"plain http base":      func(c *oauth.ClientConfig) { c.FHIRBase = "http://ehr.example/fhir" },
		"relative token":       func(c *oauth.ClientConfig) { c.Endpoints.TokenURL = "/token" },
		"no token url":         func(c *oauth.ClientConfig) { c.Endpoints.TokenURL = "" },
		"no client id":         func(c *oauth.ClientConfig) { c.ClientID = "" },
		"unknown method":       func(c *oauth.ClientConfig) { c.Auth.Method = "tls_client_auth" },
		"secret method no secret": func(c *oauth.ClientConfig) {
			c.Auth.Method = oauth.AuthClientSecretBasic
		},
		"jwt without signer":    func(c *oauth.ClientConfig) { c.Auth.Method = oauth.AuthPrivateKeyJWT },
		"confidential only":     func(c *oauth.ClientConfig) { c.Profile.ConfidentialOnly = true },
		"vendor refuses method": func(c *oauth.ClientConfig) { c.Profile.ClientAuthMethods = []string{oauth.AuthPrivateKeyJWT} },
		"server refuses method": func(c *oauth.ClientConfig) {
			c.Auth = oauth.ClientAuth{Method: oauth.AuthClientSecretPost, Secret: "x"}
			c.Endpoints.TokenAuthMethods = []string{"private_key_jwt"}
		},
		"vendor refuses alg": func(c *oauth.ClientConfig) {
			c.Auth = oauth.ClientAuth{Method: oauth.AuthPrivateKeyJWT, Signer: &keySigner{t: t, key: key, clientID: "c"}}
			c.Profile.JWTAlgorithms = []string{"RS384"}
		},
		"server refuses alg": func(c *oauth.ClientConfig) {
			c.Auth = oauth.ClientAuth{Method: oauth.AuthPrivateKeyJWT, Signer: &keySigner{t: t, key: key, clientID: "c"}}
			c.Endpoints.SigningAlgs = []string{"RS384"}
		},
		"no S256": func(c *oauth.ClientConfig) {
			c.Profile.PKCERequired = true
			c.Endpoints.CodeChallengeMethods = []string{"plain"}
		},
	}
	for name, mod := range cases {
		cfg := ok
		cfg.Endpoints.CodeChallengeMethods = nil
		mod(&cfg)
		if _, err := oauth.New(cfg); !errors.Is(err, oauth.ErrConfig) {
			t.Errorf("%s: %v, want ErrConfig", name, err)
		}
	}
	// Loopback http is fine (development, the sandbox).
	lo := ok
	lo.Endpoints.TokenURL = "http://127.0.0.1:9100/token"
	lo.Endpoints.AuthorizeURL = "http://localhost:9100/authorize"
	lo.FHIRBase = "http://[::1]:9100/fhir"
	if _, err := oauth.New(lo); err != nil {
		t.Errorf("loopback: %v", err)
	}
}

// TestTLS_OldVersionRefused: the default client will not speak TLS 1.1 to
// a token endpoint or during discovery. smart-2.2-client #318, #230.
func TestTLS_OldVersionRefused(t *testing.T) {
	ts := httptest.NewUnstartedServer(http.HandlerFunc(okToken))
	ts.TLS = &tls.Config{MaxVersion: tls.VersionTLS11}
	ts.Config.ErrorLog = log.New(io.Discard, "", 0)
	ts.StartTLS()
	defer ts.Close()
	_, err := oauth.Discover(context.Background(), nil, ts.URL+"/fhir")
	if err == nil || !strings.Contains(err.Error(), "protocol version") {
		t.Fatalf("TLS 1.1 server: %v, want a protocol version failure", err)
	}
	c := rawClient(t, ts.URL, oauth.ClientAuth{})
	_, err = c.Refresh(context.Background(), "rt", nil)
	if !errors.Is(err, oauth.ErrTransient) || !strings.Contains(err.Error(), "protocol version") {
		t.Fatalf("token request to a TLS 1.1 server: %v", err)
	}
}

// TestParseTokenResponse_Token: a direct parse, with the SMART context.
func TestParseTokenResponse_Token(t *testing.T) {
	tok, err := oauth.ParseTokenResponse(200, []byte(`{"access_token":"a","token_type":"Bearer","expires_in":60,
		"refresh_token":"r","id_token":"i","scope":"openid fhirUser","patient":"123","encounter":"e.1","need_patient_banner":true,
		"smart_style_url":"https://x/style","intent":"reconcile","tenant":"t1",
		"fhirContext":[{"reference":"Observation/1"},{"reference":"List/2","role":"https://example.org/med-list-at-home"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if tok.AccessToken != secrets.Value("a") || tok.RefreshToken != "r" || tok.IDToken != "i" || tok.Patient != "123" ||
		tok.Encounter != "e.1" || !tok.NeedPatientBanner || tok.Intent != "reconcile" || len(tok.FHIRContext) != 2 ||
		tok.FHIRContext[0].Role != "" || tok.Tenant != "t1" {
		t.Fatalf("token %+v", tok)
	}
	// Printing a token prints no secret.
	if s := fmt.Sprintf("%v %+v", tok, *tok); strings.Contains(s, `"a"`) || strings.Contains(s, "AccessToken:a ") {
		t.Fatalf("token prints its secrets: %s", s)
	}
	// Nor does logging it, or a client authentication, with a JSON handler.
	var logs strings.Builder
	auth := oauth.ClientAuth{Method: oauth.AuthClientSecretBasic, Secret: "secret-SENTINEL"}
	slog.New(slog.NewJSONHandler(&logs, nil)).Info("x", "token", tok, "auth", auth)
	if b, _ := json.Marshal(auth); strings.Contains(string(b), "SENTINEL") {
		t.Fatal("json.Marshal(ClientAuth) carries the secret")
	}
	if strings.Contains(logs.String(), `"a"`) || strings.Contains(logs.String(), `"r"`) || strings.Contains(logs.String(), "SENTINEL") {
		t.Fatalf("logs carry secrets: %s", logs.String())
	}
	if _, err := oauth.ParseTokenResponse(400, []byte(`{"error":"invalid_grant"}`)); !errors.Is(err, oauth.ErrInvalidGrant) {
		t.Fatalf("400: %v", err)
	}
}
