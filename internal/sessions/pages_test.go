package sessions_test

import (
	"bytes"
	"context"
	"html"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/medrelay/medrelay/internal/connections"
	"github.com/medrelay/medrelay/internal/events"
	"github.com/medrelay/medrelay/internal/sessions"
	"github.com/medrelay/medrelay/internal/store"
)

// docs/patient-access.md says the hosted picker works without script, sets
// no cookie, and takes its script and styles only from the agent (logos,
// which come from the directory, are the exception; none are shown here). A
// picker session with nothing recommended and no query touches neither the
// directory nor the authorizer, so both are left out.
func TestPickerPageClaims(t *testing.T) {
	ctx := context.Background()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	db, err := store.Open(ctx, store.Options{Dir: t.TempDir(), Key: bytes.Repeat([]byte{3}, 32), GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	ev := events.New(db, quiet)
	conns, err := connections.New(ctx, db, ev, nil, quiet)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	srv := httptest.NewServer(mux)
	defer srv.Close()
	m := sessions.New(db, conns, ev, nil, nil, quiet, sessions.Options{PublicURL: srv.URL})
	m.Register(func(p string, h http.Handler) { mux.Handle(p, h) })

	s, link, err := m.Create(ctx, sessions.CreateRequest{AppID: "app", PatientRef: "p-1", ReturnURL: "https://app.example/done"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		url    string
		status int
	}{{link, http.StatusOK}, {srv.URL + "/connect/ses_unknown", http.StatusNotFound}} {
		resp, err := http.Get(tc.url)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		page := string(body)
		if resp.StatusCode != tc.status {
			t.Fatalf("%s: HTTP %d, want %d", tc.url, resp.StatusCode, tc.status)
		}
		if c := resp.Header.Values("Set-Cookie"); len(c) > 0 {
			t.Errorf("%s sets a cookie: %q", tc.url, c)
		}
		csp := resp.Header.Get("Content-Security-Policy")
		if !strings.Contains(csp, "default-src 'none'") || !strings.Contains(csp, "connect-src 'self'") {
			t.Errorf("%s: CSP %q does not keep the page to the agent", tc.url, csp)
		}
		// Nothing on the page is fetched from elsewhere: no src or href
		// that names a host.
		if m := regexp.MustCompile(`(?i)(src|href)\s*=\s*"(https?:)?//`).FindString(page); m != "" {
			t.Errorf("%s loads from outside: %s", tc.url, m)
		}
		if tc.status != http.StatusOK {
			continue
		}
		// Its one script runs by the nonce the CSP names (the attribute as
		// a browser reads it: html/template writes a '+' as &#43;).
		n := regexp.MustCompile(`<script nonce="([^"]+)">`).FindStringSubmatch(page)
		if n == nil || !strings.Contains(csp, "'nonce-"+html.UnescapeString(n[1])+"'") {
			t.Errorf("the script's nonce is not the CSP's: %q / %q", n, csp)
		}
		if strings.Count(page, "<script") != 1 {
			t.Errorf("%d scripts on the page, want 1", strings.Count(page, "<script"))
		}
		// Without script the search is a plain GET form back to the page.
		if !strings.Contains(page, `<form method="get" action="/connect/`+s.ID+`"`) || !strings.Contains(page, `<noscript><button type="submit">Search</button></noscript>`) {
			t.Error("no script-free search form on the picker")
		}
	}
}
