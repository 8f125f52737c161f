package authorize_test

// Token custody against a real authorization server: the connections'
// manager with this package as its token endpoint, talking OAuth to
// medrelay-sandbox.

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/medrelay/medrelay/internal/authorize"
	"github.com/medrelay/medrelay/internal/connections"
	"github.com/medrelay/medrelay/internal/errdefs"
	"github.com/medrelay/medrelay/internal/events"
	"github.com/medrelay/medrelay/internal/oauth"
	"github.com/medrelay/medrelay/internal/sandbox"
	"github.com/medrelay/medrelay/internal/sandbox/sandboxtest"
	"github.com/medrelay/medrelay/internal/sessions"
	"github.com/medrelay/medrelay/internal/store"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// static adapters: one sandbox tenant, one public client, the generic profile.
type staticSources struct{ base string }

func (s staticSources) Resolve(ctx context.Context, id string, _ authorize.Audience) (authorize.Source, error) {
	e, err := oauth.Discover(ctx, nil, s.base)
	return authorize.Source{ID: id, Vendor: "generic", FHIRBase: s.base, Endpoints: e}, err
}

type staticCreds struct{}

func (staticCreds) Resolve(context.Context, string, string) (authorize.Credential, error) {
	return authorize.Credential{ID: "cred-1", ClientID: "custody-test", Auth: oauth.ClientAuth{Method: oauth.AuthNone}}, nil
}
func (c staticCreds) ByID(ctx context.Context, _ string) (authorize.Credential, error) {
	return c.Resolve(ctx, "", "")
}

type staticVendors struct{}

func (staticVendors) Vendor(context.Context, string) (authorize.Vendor, error) {
	return authorize.Vendor{Plugin: "smart", Profile: oauth.Profile{EchoesOfflineAccess: true}}, nil
}

// authorized runs a real standalone authorization and returns the manager
// holding the active connection.
func authorized(t *testing.T, sb *sandbox.Sandbox, opts ...connections.Option) (*connections.Manager, string) {
	t.Helper()
	ctx := context.Background()
	db, err := store.Open(ctx, store.Options{Dir: t.TempDir(), Key: bytes.Repeat([]byte{9}, 32), GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	const redirect = "http://127.0.0.1:1/oauth/callback"
	if err := sb.RegisterClient("oraclehealth", sandbox.ClientConfig{ClientID: "custody-test", RedirectURIs: []string{redirect}}); err != nil {
		t.Fatal(err)
	}
	az := authorize.New(db, staticSources{base: sb.FHIRBase("oraclehealth")}, staticCreds{}, staticVendors{}, quiet, authorize.Options{RedirectURI: redirect})
	ev := events.New(db, quiet)
	m, err := connections.New(ctx, db, ev, az, quiet, opts...)
	if err != nil {
		t.Fatal(err)
	}
	c, err := m.CreatePending(ctx, connections.Connection{AppID: "a", Pattern: connections.PatientAccess, SourceID: "oh"})
	if err != nil {
		t.Fatal(err)
	}
	begun, err := az.Begin(ctx, sessions.BeginRequest{Connection: c, Source: sessions.Source{ID: "oh"}})
	if err != nil {
		t.Fatal(err)
	}
	// The auto-approving sandbox redirects to the callback at once.
	hc := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	r, err := hc.Get(begun.URL)
	if err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
	loc, _ := url.Parse(r.Header.Get("Location"))
	cb, err := az.Complete(ctx, loc.Query())
	if err != nil || cb.Grant == nil {
		t.Fatalf("complete: %v %+v", err, cb)
	}
	if _, err := m.Activate(ctx, c.ID, *cb.Grant); err != nil {
		t.Fatal(err)
	}
	return m, c.ID
}

// 1,000 concurrent callers of an expired connection: exactly one refresh
// request reaches the authorization server.
func TestConcurrentCallersOneRefreshAtTheSource(t *testing.T) {
	// Access tokens that are already expired when issued (1 s lifetime is
	// inside the custody skew), so every caller needs a fresh one.
	sb := sandboxtest.Start(t, sandboxtest.WithFaults(sandbox.Faults{Tenant: "oraclehealth", AccessTokenLifetime: 1}))
	m, id := authorized(t, sb)
	sb.SetFaults() // the refreshed token lives normally
	before := sb.Stats().Endpoints["token:refresh_token"]

	var wg sync.WaitGroup
	toks := make(chan string, 1000)
	for range 1000 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tok, _, err := m.AccessToken(context.Background(), id, false)
			if err != nil {
				toks <- "error: " + err.Error()
				return
			}
			toks <- tok.Reveal()
		}()
	}
	wg.Wait()
	close(toks)
	first := ""
	for tok := range toks {
		if first == "" {
			first = tok
			// All callers failing alike would otherwise pass.
			if strings.HasPrefix(first, "error: ") {
				t.Fatalf("callers got no token: %s", first)
			}
		}
		if tok != first {
			t.Fatalf("callers got different tokens (or errors): %.40q vs %.40q", first, tok)
		}
	}
	if got := sb.Stats().Endpoints["token:refresh_token"] - before; got != 1 {
		t.Fatalf("%d refresh requests at the sandbox, want exactly 1", got)
	}
}

// The OAuth client is built per call, but the source's ID-token keys are
// fetched once: refreshes (each answered with an ID token by the sandbox)
// reuse the keys the authorization fetched, instead of asking for the
// openid-configuration and JWKS again every time.
func TestRefreshReusesIDTokenKeys(t *testing.T) {
	sb := sandboxtest.Start(t)
	m, id := authorized(t, sb)
	before := sb.Stats().Endpoints
	if before["jwks"] == 0 {
		t.Fatal("the authorization fetched no JWKS: no ID token to verify, nothing to test")
	}
	for range 3 {
		if _, err := m.Refresh(context.Background(), id); err != nil {
			t.Fatal(err)
		}
	}
	after := sb.Stats().Endpoints
	if n := after["token:refresh_token"] - before["token:refresh_token"]; n != 3 {
		t.Fatalf("%d refresh requests, want 3", n)
	}
	for _, ep := range []string{"openid-configuration", "jwks"} {
		if n := after[ep] - before[ep]; n != 0 {
			t.Errorf("%d %s requests during 3 refreshes, want 0 (keys cached)", n, ep)
		}
	}
}

// offsetClock is the connections manager's clock: the wall clock moved on by
// the test, so a backoff window can end without the test waiting for it.
type offsetClock struct {
	mu  sync.Mutex
	off time.Duration
}

func (c *offsetClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.off)
}

func (c *offsetClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.off += d
	c.mu.Unlock()
}

// A source briefly down: while its token endpoint answers 503, the callers
// of an active connection whose access token has expired cause at most one
// token request per backoff window; the others fail at once with the same
// SOURCE_UNAVAILABLE error. An administrator's refresh still goes through,
// the connection stays active, and after the fault the first call past the
// window gets a token.
func TestOutageOneRefreshRequestPerWindow(t *testing.T) {
	// Issued tokens are already inside the custody skew: every call needs a refresh.
	sb := sandboxtest.Start(t, sandboxtest.WithFaults(sandbox.Faults{Tenant: "oraclehealth", AccessTokenLifetime: 1}))
	clk := &offsetClock{}
	const window = 10 * time.Second // then 20 s, 40 s (the cap)
	m, id := authorized(t, sb, connections.WithClock(clk.Now),
		connections.WithRefreshPolicy(connections.RefreshPolicy{OnDemandBackoff: window, OnDemandMaxBackoff: 4 * window}))
	outage := sandbox.Faults{Tenant: "oraclehealth", Status: 503, Endpoints: []string{sandbox.EndpointToken}}
	if err := sb.SetFaults(outage, sandbox.Faults{Tenant: "oraclehealth", AccessTokenLifetime: 1}); err != nil {
		t.Fatal(err)
	}
	// A refused request never reaches the grant-type counter: count them all.
	requests := func() int64 { return sb.Stats().Tenants["oraclehealth"]["token"] }
	start := requests()
	wantRequests := func(n int64, when string) {
		t.Helper()
		if got := requests() - start; got != n {
			t.Fatalf("%s: %d token requests at the sandbox, want %d", when, got, n)
		}
	}
	callers := func(n int) {
		t.Helper()
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for range n {
			wg.Go(func() {
				_, _, err := m.AccessToken(context.Background(), id, false)
				errs <- err
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if _, reason, _ := errdefs.Classify(err); reason != "SOURCE_UNAVAILABLE" || !strings.Contains(err.Error(), "temporarily_unavailable") {
				t.Fatalf("a caller got %v (reason %q), want SOURCE_UNAVAILABLE naming the source's answer", err, reason)
			}
		}
	}
	wantActive := func() {
		t.Helper()
		if c, _ := m.Get(context.Background(), id); c.State != connections.Active {
			t.Fatalf("state %s (%s), want active: an outage is not a lost grant", c.State, c.Reason)
		}
	}

	callers(200)
	wantRequests(1, "200 callers during the outage")
	callers(200)
	wantRequests(1, "200 more inside the first window")
	clk.Advance(window)
	callers(200)
	wantRequests(2, "200 callers in the second window")
	clk.Advance(window)
	callers(200)
	wantRequests(2, "halfway through the second window, which is twice as long")
	wantActive()

	if _, err := m.Refresh(context.Background(), id); !errors.Is(err, connections.ErrUnavailable) {
		t.Fatalf("explicit refresh during the outage: %v", err)
	}
	wantRequests(3, "an explicit refresh")
	wantActive()

	// The source is back; the next call past the window gets a token.
	if err := sb.SetFaults(); err != nil {
		t.Fatal(err)
	}
	callers(20)
	wantRequests(3, "inside the window after the outage")
	clk.Advance(4 * window)
	tok, _, err := m.AccessToken(context.Background(), id, false)
	if err != nil || tok.IsZero() {
		t.Fatalf("after the outage: %v", err)
	}
	wantRequests(4, "the first call after the outage")
	if _, _, err := m.AccessToken(context.Background(), id, false); err != nil {
		t.Fatal(err)
	}
	wantRequests(4, "a second call with a fresh token")
	wantActive()
}
