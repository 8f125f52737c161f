package sandbox_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"golang.org/x/oauth2"

	"github.com/medrelay/medrelay/internal/sandbox"
)

const redirectURI = "http://127.0.0.1:1/callback"

type smartConfig struct {
	Issuer          string   `json:"issuer"`
	Authorize       string   `json:"authorization_endpoint"`
	Token           string   `json:"token_endpoint"`
	Introspect      string   `json:"introspection_endpoint"`
	Revoke          string   `json:"revocation_endpoint"`
	JWKSURI         string   `json:"jwks_uri"`
	Capabilities    []string `json:"capabilities"`
	PKCEMethods     []string `json:"code_challenge_methods_supported"`
	AuthMethods     []string `json:"token_endpoint_auth_methods_supported"`
	GrantTypes      []string `json:"grant_types_supported"`
	ScopesSupported []string `json:"scopes_supported"`
}

func getJSON(t testing.TB, c *http.Client, u string, v any) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, u, nil)
	req.Header.Set("Accept", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if v != nil && resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(b, v); err != nil {
			t.Fatalf("GET %s: %v\n%s", u, err, b)
		}
	}
	return resp
}

// discover reads {fhirBase}/.well-known/smart-configuration (smart-2.2-client #29).
func discover(t testing.TB, s *sandbox.Sandbox, tenant string) smartConfig {
	t.Helper()
	var sc smartConfig
	if resp := getJSON(t, http.DefaultClient, s.FHIRBase(tenant)+"/.well-known/smart-configuration", &sc); resp.StatusCode != 200 {
		t.Fatalf("smart-configuration: HTTP %d", resp.StatusCode)
	}
	return sc
}

func oauthConf(t testing.TB, s *sandbox.Sandbox, tenant, clientID, secret, scope string) *oauth2.Config {
	sc := discover(t, s, tenant)
	style := oauth2.AuthStyleInParams
	if secret != "" {
		style = oauth2.AuthStyleInHeader
	}
	return &oauth2.Config{
		ClientID: clientID, ClientSecret: secret, RedirectURL: redirectURI,
		Endpoint: oauth2.Endpoint{AuthURL: sc.Authorize, TokenURL: sc.Token, AuthStyle: style},
		Scopes:   strings.Fields(scope),
	}
}

var noRedirect = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

// authorize runs the authorize request and returns the redirect's query.
func authorize(t testing.TB, authURL string) (url.Values, *http.Response) {
	t.Helper()
	resp, err := noRedirect.Get(authURL)
	if err != nil {
		t.Fatalf("authorize: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusFound {
		return nil, resp
	}
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		t.Fatalf("authorize: bad Location: %v", err)
	}
	return loc.Query(), resp
}

// standalone runs a full standalone launch with auto-approve and returns the token.
func standalone(t testing.TB, s *sandbox.Sandbox, tenant string, conf *oauth2.Config, opts ...oauth2.AuthCodeOption) *oauth2.Token {
	t.Helper()
	verifier := oauth2.GenerateVerifier()
	state := oauth2.GenerateVerifier()
	opts = append(opts, oauth2.S256ChallengeOption(verifier), oauth2.SetAuthURLParam("aud", s.FHIRBase(tenant)))
	q, resp := authorize(t, conf.AuthCodeURL(state, opts...))
	if q == nil {
		t.Fatalf("authorize: HTTP %d, want 302", resp.StatusCode)
	}
	if q.Get("error") != "" {
		t.Fatalf("authorize: %s: %s", q.Get("error"), q.Get("error_description"))
	}
	if q.Get("state") != state {
		t.Fatalf("state not echoed: got %q", q.Get("state"))
	}
	if q.Get("iss") != s.FHIRBase(tenant) {
		t.Fatalf("iss = %q", q.Get("iss"))
	}
	tok, err := conf.Exchange(context.Background(), q.Get("code"), oauth2.VerifierOption(verifier))
	if err != nil {
		t.Fatalf("exchange: %v", err)
	}
	return tok
}

func bearerGet(t testing.TB, u, token string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, u, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	req.Header.Set("Accept", "application/fhir+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

func postForm(t testing.TB, u string, form url.Values, basicUser, basicPass string) (*http.Response, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, u, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if basicUser != "" {
		req.SetBasicAuth(url.QueryEscape(basicUser), url.QueryEscape(basicPass))
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", u, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var m map[string]any
	_ = json.Unmarshal(b, &m)
	return resp, m
}

func retrieveErrorCode(err error) string {
	if re, ok := err.(*oauth2.RetrieveError); ok {
		return re.ErrorCode
	}
	return ""
}
