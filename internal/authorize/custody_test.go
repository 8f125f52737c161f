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
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
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
// token, when set, replaces the discovered token endpoint (a gate in front
// of the sandbox's).
type staticSources struct{ base, token string }

func (s staticSources) Resolve(ctx context.Context, id string, _ authorize.Audience) (authorize.Source, error) {
	e, err := oauth.Discover(ctx, nil, s.base)
	if s.token != "" {
		e.TokenURL = s.token
	}
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
	e := newCustody(t, sb, "", opts...)
	return e.m, e.id
}

// custody is a manager with one connection authorized at the sandbox's
// oraclehealth tenant (refresh tokens rotated, no reuse grace).
type custody struct {
	db    *store.DB
	az    *authorize.Authorizer
	m     *connections.Manager
	id    string
	grant connections.Grant // the authorization's
}

// newCustody authorizes a connection; tokenURL, when set, is the token
// endpoint the authorizer uses instead of the sandbox's own.
func newCustody(t *testing.T, sb *sandbox.Sandbox, tokenURL string, opts ...connections.Option) *custody {
	t.Helper()
	ctx := context.Background()
	db, err := store.Open(ctx, store.Options{Dir: t.TempDir(), Key: bytes.Repeat([]byte{9}, 32), GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if err := sb.RegisterClient("oraclehealth", sandbox.ClientConfig{ClientID: "custody-test", RedirectURIs: []string{custodyRedirect}}); err != nil {
		t.Fatal(err)
	}
	e := &custody{db: db}
	e.az = authorize.New(db, staticSources{base: sb.FHIRBase("oraclehealth"), token: tokenURL}, staticCreds{}, staticVendors{}, quiet, authorize.Options{RedirectURI: custodyRedirect})
	e.m, err = connections.New(ctx, db, events.New(db, quiet), e.az, quiet, opts...)
	if err != nil {
		t.Fatal(err)
	}
	c, err := e.m.CreatePending(ctx, connections.Connection{AppID: "a", Pattern: connections.PatientAccess, SourceID: "oh"})
	if err != nil {
		t.Fatal(err)
	}
	e.id = c.ID
	e.grant = e.authorize(t, c)
	if _, err := e.m.Activate(ctx, c.ID, e.grant); err != nil {
		t.Fatal(err)
	}
	return e
}

const custodyRedirect = "http://127.0.0.1:1/oauth/callback"

// authorize runs one standalone authorization for c at the sandbox and
// returns its grant (not stored).
func (e *custody) authorize(t *testing.T, c connections.Connection) connections.Grant {
	t.Helper()
	ctx := context.Background()
	begun, err := e.az.Begin(ctx, sessions.BeginRequest{Connection: c, Source: sessions.Source{ID: "oh"}})
	if err != nil {
		t.Fatal(err)
	}
	cb, err := e.az.Complete(ctx, sandboxtest.Approve(t, begun.URL))
	if err != nil || cb.Grant == nil {
		t.Fatalf("complete: %v %+v", err, cb)
	}
	return *cb.Grant
}

// gate is a real HTTP server in front of the sandbox's token endpoint that
// holds requests when told to, so a test can keep a refresh in flight for as
// long as it needs. Held requests go on to the sandbox when released.
type gate struct {
	url       string
	hold      atomic.Int64  // how many of the next requests to hold
	arrived   chan struct{} // one per held request
	release   chan struct{} // closed: held requests go on
	abandoned atomic.Int64  // held requests the client gave up on
	held      atomic.Int64  // requests being held now
	once      sync.Once
}

func newGate(t *testing.T, sb *sandbox.Sandbox, tenant string) *gate {
	t.Helper()
	ep, err := oauth.Discover(context.Background(), nil, sb.FHIRBase(tenant))
	if err != nil {
		t.Fatal(err)
	}
	target, err := url.Parse(ep.TokenURL)
	if err != nil {
		t.Fatal(err)
	}
	g := &gate{arrived: make(chan struct{}, 100), release: make(chan struct{})}
	rp := &httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) {
		u := *target
		pr.Out.URL, pr.Out.Host = &u, ""
	}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if g.hold.Add(-1) >= 0 {
			g.held.Add(1)
			g.arrived <- struct{}{}
			select {
			case <-g.release:
				g.held.Add(-1)
			case <-r.Context().Done():
				g.held.Add(-1)
				g.abandoned.Add(1)
				return
			}
		}
		rp.ServeHTTP(w, r)
	}))
	g.url = srv.URL + "/token"
	t.Cleanup(func() { g.open(); srv.Close() })
	return g
}

// holdNext holds the next n token requests until open.
func (g *gate) holdNext(n int64) { g.hold.Store(n) }

// open lets held requests (and every later one) through.
func (g *gate) open() { g.once.Do(func() { close(g.release) }) }

// waitHeld waits until a held request has arrived.
func (g *gate) waitHeld(t *testing.T) {
	t.Helper()
	<-g.arrived
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

// A source briefly down: while its token endpoint answers 503, the callers
// of an active connection whose access token has expired cause at most one
// token request per backoff window; the others fail at once with the same
// SOURCE_UNAVAILABLE error. An administrator's refresh still goes through,
// the connection stays active, and after the fault the first call past the
// window gets a token.
func TestOutageOneRefreshRequestPerWindow(t *testing.T) {
	// Issued tokens are already inside the custody skew: every call needs a refresh.
	sb := sandboxtest.Start(t, sandboxtest.WithFaults(sandbox.Faults{Tenant: "oraclehealth", AccessTokenLifetime: 1}))
	clk := &sandboxtest.Clock{}
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

// fhirRead reports the status of a FHIR read of the patient with tok: 200
// means the source takes the token.
func fhirRead(t *testing.T, sb *sandbox.Sandbox, patient string, tok string) int {
	t.Helper()
	req, _ := http.NewRequest("GET", sb.FHIRBase("oraclehealth")+"/Patient/"+patient, nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	r, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
	return r.StatusCode
}

// The re-read after invalid_grant (DESIGN §4): the source refuses a refresh
// because the connection was authorized again while the refresh was in
// flight (here by a second manager over the same store, as after a restart
// that overlapped a refresh) and the old grant revoked. The caller gets a
// token of the newer grant, never an empty token with no error: the newer
// access token itself when it is fresh, else one refreshed with the newer
// refresh token. The connection stays active.
func TestGrantReplacedWhileRefreshing(t *testing.T) {
	for _, tc := range []struct {
		name string
		// newer grant's access token lifetime at the sandbox (0: normal)
		newerLife int
	}{
		{"newer token fresh", 0},
		{"newer token expiring", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			// The first grant's access token is inside the custody skew at once.
			sb := sandboxtest.Start(t, sandboxtest.WithFaults(sandbox.Faults{Tenant: "oraclehealth", AccessTokenLifetime: 1}))
			g := newGate(t, sb, "oraclehealth")
			e := newCustody(t, sb, g.url)
			other, err := connections.New(ctx, e.db, events.New(e.db, quiet), e.az, quiet)
			if err != nil {
				t.Fatal(err)
			}

			g.holdNext(1)
			type result struct {
				tok string
				err error
			}
			done := make(chan result, 1)
			go func() {
				tok, _, err := e.m.AccessToken(ctx, e.id, false)
				done <- result{tok.Reveal(), err}
			}()
			g.waitHeld(t) // the refresh with the first grant's refresh token is in flight

			var faults []sandbox.Faults
			if tc.newerLife > 0 {
				faults = append(faults, sandbox.Faults{Tenant: "oraclehealth", AccessTokenLifetime: tc.newerLife})
			}
			if err := sb.SetFaults(faults...); err != nil {
				t.Fatal(err)
			}
			c, _ := other.Get(ctx, e.id)
			newer := e.authorize(t, c)
			if _, err := other.Activate(ctx, e.id, newer); err != nil {
				t.Fatal(err)
			}
			if err := e.az.RevokeGrant(ctx, c, e.grant.RefreshToken, ""); err != nil {
				t.Fatal(err)
			}
			if err := sb.SetFaults(); err != nil { // tokens refreshed from now on live normally
				t.Fatal(err)
			}
			refreshes := sb.Stats().Endpoints["token:refresh_token"]
			g.open()

			r := <-done
			if r.err != nil || r.tok == "" {
				t.Fatalf("AccessToken after the grant was replaced: token %q, err %v", r.tok, r.err)
			}
			after := sb.Stats().Endpoints["token:refresh_token"] - refreshes
			if tc.newerLife == 0 {
				if r.tok != newer.AccessToken.Reveal() {
					t.Fatal("got a token that is not the newer grant's fresh access token")
				}
				if after != 1 {
					t.Fatalf("%d refresh requests, want 1 (the refused one)", after)
				}
			} else if r.tok == newer.AccessToken.Reveal() || after != 2 {
				t.Fatalf("%d refresh requests (same token: %v), want 2: the refused one and one with the newer refresh token",
					after, r.tok == newer.AccessToken.Reveal())
			}
			if st := fhirRead(t, sb, newer.PatientID, r.tok); st != http.StatusOK {
				t.Fatalf("the token handed out is refused by the source: HTTP %d", st)
			}
			if c, _ := e.m.Get(ctx, e.id); c.State != connections.Active {
				t.Fatalf("state %s (%s), want active: the newer grant works", c.State, c.Reason)
			}
		})
	}
}

// cueDeadline is a caller's context whose deadline passes when the test
// closes done.
type cueDeadline struct {
	context.Context
	done chan struct{}
}

func (c *cueDeadline) Done() <-chan struct{} { return c.done }

func (c *cueDeadline) Err() error {
	select {
	case <-c.done:
		return context.DeadlineExceeded
	default:
		return nil
	}
}

// A refresh that hangs at the source does not hold its callers: a caller
// whose context ends, whether it is waiting behind the refresh or started it,
// returns its context's error while the request is still held, and the
// refresh goes on: once the source answers, its token serves the callers
// still there and the next ones, with no second request.
func TestCallerLeavesHangingRefresh(t *testing.T) {
	for _, tc := range []struct {
		name string
		// the caller with the short deadline started the refresh
		starts bool
		// ... with an explicit Refresh (an administrator's)
		explicit bool
	}{
		{"caller waiting behind the refresh", false, false},
		{"caller that started the refresh", true, false},
		{"explicit refresh that started it", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Issued tokens are inside the custody skew at once: every call needs a refresh.
			sb := sandboxtest.Start(t, sandboxtest.WithFaults(sandbox.Faults{Tenant: "oraclehealth", AccessTokenLifetime: 1}))
			g := newGate(t, sb, "oraclehealth")
			e := newCustody(t, sb, g.url)
			if err := sb.SetFaults(); err != nil { // the refreshed token lives normally
				t.Fatal(err)
			}
			refreshes := func() int64 { return sb.Stats().Endpoints["token:refresh_token"] }
			before := refreshes()
			activated, _ := e.m.Get(context.Background(), e.id)

			type result struct {
				tok string
				err error
			}
			patient := make(chan result, 1)
			call := func() {
				tok, _, err := e.m.AccessToken(context.Background(), e.id, false)
				patient <- result{tok.Reveal(), err}
			}
			g.holdNext(1)
			if !tc.starts {
				go call()
				g.waitHeld(t)
			}
			var err error
			short := func(ctx context.Context) {
				if tc.explicit {
					_, err = e.m.Refresh(ctx, e.id)
				} else {
					_, _, err = e.m.AccessToken(ctx, e.id, false)
				}
			}
			if tc.starts {
				// Its deadline passes once its refresh is held: a 50 ms
				// timeout could pass, on a stalled machine, before the call
				// even started one.
				ctx := &cueDeadline{Context: context.Background(), done: make(chan struct{})}
				returned := make(chan struct{})
				go func() { short(ctx); close(returned) }()
				g.waitHeld(t)
				go call()
				close(ctx.done)
				<-returned
			} else {
				ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
				short(ctx)
				cancel()
			}
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("caller whose deadline passed got %v, want context.DeadlineExceeded", err)
			}
			// Returned while the refresh is still held at the gate (it is
			// opened only below), not once the refresh gave up: a refresh
			// that ended, either way, has been recorded on the connection.
			if c, _ := e.m.Get(context.Background(), e.id); c.RefreshFailures != 0 || !c.LastRefreshAt.Equal(activated.LastRefreshAt) {
				t.Fatalf("when the caller returned the refresh had ended: %d failures (%s), last refresh %v",
					c.RefreshFailures, c.LastError, c.LastRefreshAt)
			}
			if held, gaveUp := g.held.Load(), g.abandoned.Load(); held != 1 || gaveUp != 0 {
				t.Fatalf("when the caller returned: %d requests held, %d abandoned; want the refresh still in flight", held, gaveUp)
			}
			g.open()
			r := <-patient
			if r.err != nil || r.tok == "" {
				t.Fatalf("the caller without a deadline: token %q, err %v", r.tok, r.err)
			}
			tok, _, err := e.m.AccessToken(context.Background(), e.id, false)
			if err != nil || tok.Reveal() != r.tok {
				t.Fatalf("next caller: %v (same token: %v)", err, tok.Reveal() == r.tok)
			}
			if n := refreshes() - before; n != 1 {
				t.Fatalf("%d refresh requests, want 1: the held refresh serves everyone", n)
			}
			if st := fhirRead(t, sb, e.grant.PatientID, r.tok); st != http.StatusOK {
				t.Fatalf("the refreshed token is refused by the source: HTTP %d", st)
			}
		})
	}
}

// A source that answers the refresh with 429 or 503 and Retry-After says
// when to come back: on-demand callers are held back at least that long
// (the 1 s doubling window alone would ask again after 1 s), capped by
// OnDemandMaxBackoff (30 s by default), and the background refresher's next
// attempt waits for it too (capped by MaxBackoff).
func TestRetryAfterHoldsRefreshesBack(t *testing.T) {
	for _, tc := range []struct {
		name       string
		status     int
		retryAfter int           // seconds, from the source
		window     time.Duration // on-demand callers held back this long
	}{
		{"429 Retry-After 20 s", http.StatusTooManyRequests, 20, 20 * time.Second},
		{"503 Retry-After 120 s, capped", http.StatusServiceUnavailable, 120, 30 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			// Issued tokens are inside the custody skew at once: every call needs a refresh.
			sb := sandboxtest.Start(t, sandboxtest.WithFaults(sandbox.Faults{Tenant: "oraclehealth", AccessTokenLifetime: 1}))
			// Only the test moves this clock, so a window's last millisecond
			// is the last millisecond however slow the machine.
			clk := sandboxtest.FrozenClock(time.Now())
			m, id := authorized(t, sb, connections.WithClock(clk.Now)) // default policy: 1 s → 30 s
			busy := sandbox.Faults{Tenant: "oraclehealth", Status: tc.status, RetryAfter: tc.retryAfter, Endpoints: []string{sandbox.EndpointToken}}
			if err := sb.SetFaults(busy); err != nil {
				t.Fatal(err)
			}
			// A refused request never reaches the grant-type counter: count them all.
			requests := func() int64 { return sb.Stats().Tenants["oraclehealth"]["token"] }
			start := requests()
			call := func(n int64, when string) {
				t.Helper()
				_, _, err := m.AccessToken(ctx, id, false)
				if _, reason, _ := errdefs.Classify(err); reason != "SOURCE_UNAVAILABLE" {
					t.Fatalf("%s: %v (reason %q), want SOURCE_UNAVAILABLE", when, err, reason)
				}
				if got := requests() - start; got != n {
					t.Fatalf("%s: %d token requests at the sandbox, want %d", when, got, n)
				}
			}

			failedAt := clk.Now()
			call(1, "the first call")
			c, _ := m.Get(ctx, id)
			if wait := c.NextRefreshAt.Sub(failedAt); wait < time.Duration(tc.retryAfter)*time.Second {
				t.Errorf("background refresh scheduled %v after the failure, want at least the Retry-After (%d s)", wait, tc.retryAfter)
			}
			clk.Advance(time.Second)
			call(1, "1 s later (the window without Retry-After)")
			clk.Advance(tc.window - time.Second - time.Millisecond)
			call(1, "just before the window ends")
			clk.Advance(time.Millisecond)
			call(2, "when the window ends")

			// The source is back: the next window (at least as long) ends,
			// then a call gets a token.
			if err := sb.SetFaults(); err != nil {
				t.Fatal(err)
			}
			clk.Advance(tc.window)
			if tok, _, err := m.AccessToken(ctx, id, false); err != nil || tok.IsZero() {
				t.Fatalf("after the outage: %v", err)
			}
		})
	}
}

// Stopping the agent while the background refresher waits for the source:
// the refresh is not cancelled (the source rotates the refresh token as it
// answers), Run returns only after it ended, and the rotated token is
// stored, so the connection keeps working (with the sandbox's reuse
// detection, presenting the old refresh token would end the grant).
func TestShutdownDuringBackgroundRefreshKeepsRotatedToken(t *testing.T) {
	ctx := context.Background()
	// A 1 s access token: the refresher is due at 80% of it.
	sb := sandboxtest.Start(t, sandboxtest.WithFaults(sandbox.Faults{Tenant: "oraclehealth", AccessTokenLifetime: 1}))
	g := newGate(t, sb, "oraclehealth")
	e := newCustody(t, sb, g.url)
	if err := sb.SetFaults(); err != nil { // the refreshed token lives normally
		t.Fatal(err)
	}
	before, _ := e.m.Get(ctx, e.id)

	g.holdNext(1)
	runCtx, stop := context.WithCancel(ctx)
	ran := make(chan struct{})
	go func() { e.m.Run(runCtx); close(ran) }()
	g.waitHeld(t) // the background refresh is at the source
	stop()        // the agent shuts down
	g.open()
	<-ran

	c, _ := e.m.Get(ctx, e.id)
	if c.State != connections.Active || !c.LastRefreshAt.After(before.LastRefreshAt) || c.RefreshFailures != 0 {
		t.Fatalf("after shutdown during a refresh: %s (%s), last refresh %v (before %v), %d failures (%s): the refreshed grant was not stored",
			c.State, c.Reason, c.LastRefreshAt, before.LastRefreshAt, c.RefreshFailures, c.LastError)
	}
	// The stored grant is the rotated one: the next refresh works.
	if _, err := e.m.Refresh(ctx, e.id); err != nil {
		t.Fatalf("refresh after the restart: %v", err)
	}
	tok, _, err := e.m.AccessToken(ctx, e.id, false)
	if err != nil || fhirRead(t, sb, e.grant.PatientID, tok.Reveal()) != http.StatusOK {
		t.Fatalf("token after the restart: %v", err)
	}
}
