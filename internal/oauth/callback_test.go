package oauth_test

import (
	"errors"
	"net/url"
	"strings"
	"testing"

	"github.com/medrelay/medrelay/internal/oauth"
)

// TestParseCallback: what may arrive at the redirect URI. smart-2.2-client
// #4, #60.
func TestParseCallback(t *testing.T) {
	cases := []struct {
		q    string
		want error
	}{
		{"code=abc&state=s1&iss=https%3A%2F%2Fehr", nil},
		{"code=abc", oauth.ErrBadCallback},                   // no state
		{"code=abc&state=", oauth.ErrBadCallback},            // empty state
		{"code=abc&state=s1&state=s2", oauth.ErrBadCallback}, // repeated
		{"code=a&code=b&state=s1", oauth.ErrBadCallback},
		{"state=s1", oauth.ErrBadCallback}, // neither code nor error
		{"code=abc&state=" + strings.Repeat("s", 600), oauth.ErrBadCallback},
		{"code=" + strings.Repeat("c", 5000) + "&state=s1", oauth.ErrBadCallback},
		{"code=abc&state=s%0A1", oauth.ErrBadCallback}, // not a state of ours
		{"error=access_denied&error_description=the+patient+declined&state=s1", oauth.ErrAccessDenied},
		{"error=server_error&state=s1", oauth.ErrTransient},
		{"error=invalid_scope&state=s1", oauth.ErrRejected},
	}
	for _, tc := range cases {
		q, _ := url.ParseQuery(tc.q)
		cb, err := oauth.ParseCallback(q)
		if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("%.60s: %v, want %v", tc.q, err, tc.want)
			continue
		}
		if err == nil && (cb.Code.Reveal() != "abc" || cb.State != "s1" || cb.Iss != "https://ehr") {
			t.Errorf("%s: %+v", tc.q, cb)
		}
	}
	q, _ := url.ParseQuery("error=access_denied&error_description=%3Cscript%3E%0A&state=s1&code=leftover")
	cb, _ := oauth.ParseCallback(q)
	if cb.Error != "access_denied" || !cb.Code.IsZero() || strings.Contains(cb.ErrorDescription, "\n") {
		t.Errorf("error response: %+v", cb)
	}
}

// TestCheckIssuer: RFC 9207.
func TestCheckIssuer(t *testing.T) {
	known := authClient(t, func(cfg *oauth.ClientConfig) { cfg.Endpoints.Issuer = "https://ehr.example/oauth2" })
	if err := known.CheckIssuer("https://ehr.example/oauth2"); err != nil {
		t.Error(err)
	}
	for _, iss := range []string{"https://ehr.example/oauth2/", "https://evil.example/oauth2", "https://ehr.example/fhir/r4"} {
		if err := known.CheckIssuer(iss); !errors.Is(err, oauth.ErrBadCallback) {
			t.Errorf("iss %s accepted: %v", iss, err)
		}
	}
	if err := known.CheckIssuer(""); err != nil {
		t.Errorf("no iss from a server that did not promise it: %v", err)
	}
	strict := authClient(t, func(cfg *oauth.ClientConfig) {
		cfg.Endpoints.Issuer = "https://ehr.example/oauth2"
		cfg.Endpoints.IssParameterSupported = true
	})
	if err := strict.CheckIssuer(""); !errors.Is(err, oauth.ErrBadCallback) {
		t.Errorf("no iss from a server that promised it: %v", err)
	}
	// Issuer not discovered: the FHIR base stands in.
	base := authClient(t)
	if err := base.CheckIssuer("https://ehr.example/fhir/r4"); err != nil {
		t.Error(err)
	}
	if err := base.CheckIssuer("https://other.example/fhir/r4"); !errors.Is(err, oauth.ErrBadCallback) {
		t.Errorf("another server: %v", err)
	}
}
