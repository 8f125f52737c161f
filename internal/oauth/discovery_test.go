package oauth_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"testing"

	"github.com/medrelay/medrelay/internal/oauth"
	"github.com/medrelay/medrelay/internal/sandbox"
	"github.com/medrelay/medrelay/internal/sandbox/sandboxtest"
)

// TestDiscover_Sandbox: every tenant's smart-configuration. smart-2.2-client
// #29, #226, #227.
func TestDiscover_Sandbox(t *testing.T) {
	sb := sandboxtest.Start(t)
	for _, tenant := range sb.Tenants() {
		ep, err := oauth.Discover(context.Background(), nil, sb.FHIRBase(tenant))
		if err != nil {
			t.Fatalf("%s: %v", tenant, err)
		}
		if ep.AuthorizeURL == "" || ep.TokenURL == "" || ep.Issuer == "" || !slices.Contains(ep.CodeChallengeMethods, "S256") {
			t.Errorf("%s: %+v", tenant, ep)
		}
	}
}

// TestDiscover_Request: GET with an Accept header for JSON; relative URLs
// resolved against the FHIR base (#379); junk tolerated where harmless.
func TestDiscover_Request(t *testing.T) {
	var accept string
	ts := newTokenServer(t, func(w http.ResponseWriter, r *http.Request) {
		accept = r.Header.Get("Accept")
		if r.Method != http.MethodGet || r.URL.Path != "/r4/.well-known/smart-configuration" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprint(w, `{"authorization_endpoint":"auth/authorize","token_endpoint":"/oauth/token",
			"revocation_endpoint":"https://revoke.example/r","scopes_supported":["openid",7,null,"patient/*.rs"],
			"capabilities":"launch-standalone permission-v2","authorization_response_iss_parameter_supported":true}`)
	})
	ep, err := oauth.Discover(context.Background(), nil, ts.URL+"/r4")
	if err != nil {
		t.Fatal(err)
	}
	if accept != "application/json" {
		t.Errorf("Accept %q", accept)
	}
	if ep.AuthorizeURL != ts.URL+"/r4/auth/authorize" || ep.TokenURL != ts.URL+"/oauth/token" || ep.RevokeURL != "https://revoke.example/r" {
		t.Errorf("resolved %+v", ep)
	}
	if !slices.Equal(ep.ScopesSupported, []string{"openid", "patient/*.rs"}) || !ep.HasCapability("permission-v2") || !ep.IssParameterSupported {
		t.Errorf("lists %+v", ep)
	}
}

// TestDiscover_Failures: clear errors, classified.
func TestDiscover_Failures(t *testing.T) {
	cases := []struct {
		name    string
		handler http.HandlerFunc
		want    error
	}{
		{"404", func(w http.ResponseWriter, r *http.Request) { http.NotFound(w, r) }, oauth.ErrBadResponse},
		{"503", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(503) }, oauth.ErrTransient},
		{"not json", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "<html>") }, oauth.ErrBadResponse},
		{"no token endpoint", func(w http.ResponseWriter, _ *http.Request) {
			fmt.Fprint(w, `{"authorization_endpoint":"https://x/a"}`)
		}, oauth.ErrBadResponse},
	}
	for _, tc := range cases {
		ts := newTokenServer(t, tc.handler)
		if _, err := oauth.Discover(context.Background(), nil, ts.URL+"/fhir"); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	if _, err := oauth.Discover(context.Background(), nil, "http://ehr.example/fhir"); !errors.Is(err, oauth.ErrConfig) {
		t.Errorf("plain http: %v", err)
	}
	// The sandbox's Blue Button tenant publishes its slash-terminated URLs.
	sb := sandboxtest.Start(t)
	ep, err := oauth.Discover(context.Background(), nil, sb.FHIRBase(sandbox.ProfileBlueButton))
	if err != nil || ep.TokenURL[len(ep.TokenURL)-1] != '/' {
		t.Errorf("blue button: %v %s", err, ep.TokenURL)
	}
}
