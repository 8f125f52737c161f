package connections_test

// State-machine and custody tests with a scripted token endpoint. The
// protocol itself (refresh against a real authorization server, rotation and
// reuse detection) is tested end to end against medrelay-sandbox in
// internal/app.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/medrelay/medrelay/internal/connections"
	"github.com/medrelay/medrelay/internal/errdefs"
	"github.com/medrelay/medrelay/internal/events"
	"github.com/medrelay/medrelay/internal/sandbox/sandboxtest"
	"github.com/medrelay/medrelay/internal/secrets"
	"github.com/medrelay/medrelay/internal/store"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// endpoint is a scripted authorization server: it rotates refresh tokens and
// refuses a refresh token it did not issue last.
type endpoint struct {
	mu      sync.Mutex
	calls   atomic.Int64
	current string // the refresh token it accepts
	n       int
	fail    error
	delay   time.Duration
	life    time.Duration
}

func (e *endpoint) Refresh(ctx context.Context, c connections.Connection, rt secrets.Value) (connections.Grant, error) {
	e.calls.Add(1)
	if e.delay > 0 {
		time.Sleep(e.delay)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.fail != nil {
		return connections.Grant{}, e.fail
	}
	if rt.Reveal() != e.current {
		return connections.Grant{}, fmt.Errorf("%w: unknown refresh token", connections.ErrGrantInvalid)
	}
	e.n++
	e.current = fmt.Sprintf("rt-%d", e.n)
	return connections.Grant{
		AccessToken:  secrets.Value(fmt.Sprintf("at-%d", e.n)),
		RefreshToken: secrets.Value(e.current),
		Expiry:       time.Now().Add(e.life),
	}, nil
}

type fixture struct {
	clk  *sandboxtest.Clock // stands still until the test advances it
	opts []connections.Option
	dir  string
	db   *store.DB
	ev   *events.Log
	m    *connections.Manager
	ep   *endpoint
}

func newFixture(t *testing.T, ep *endpoint, opts ...connections.Option) *fixture {
	t.Helper()
	f := &fixture{dir: t.TempDir(), ep: ep, clk: sandboxtest.FrozenClock(time.Now()), opts: opts}
	f.open(t)
	t.Cleanup(func() { f.db.Close() })
	return f
}

func (f *fixture) open(t *testing.T) {
	t.Helper()
	db, err := store.Open(context.Background(), store.Options{Dir: f.dir, Key: bytes.Repeat([]byte{5}, 32), GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	f.db = db
	f.ev = events.New(db, quiet)
	f.m, err = connections.New(context.Background(), db, f.ev, f.ep, quiet, append([]connections.Option{connections.WithClock(f.clk.Now)}, f.opts...)...)
	if err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) reopen(t *testing.T) {
	t.Helper()
	f.db.Close()
	f.open(t)
}

func (f *fixture) active(t *testing.T, accessLife time.Duration) connections.Connection {
	t.Helper()
	ctx := context.Background()
	c, err := f.m.CreatePending(ctx, connections.Connection{AppID: "app1", Pattern: connections.PatientAccess, SourceID: "src", PatientRef: "p-1"})
	if err != nil {
		t.Fatal(err)
	}
	f.ep.current = "rt-0"
	c, err = f.m.Activate(ctx, c.ID, connections.Grant{AccessToken: "at-0", RefreshToken: "rt-0", Expiry: time.Now().Add(accessLife), PatientID: "pat-9"})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func stateEvents(t *testing.T, ev *events.Log, connID string) []events.StateChange {
	t.Helper()
	all, err := ev.Read(context.Background(), events.Filter{All: true}, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	var out []events.StateChange
	for _, e := range all {
		if e.Type == events.ConnectionStateChanged && e.ConnectionID == connID {
			var sc events.StateChange
			json.Unmarshal(e.Data, &sc)
			out = append(out, sc)
		}
	}
	return out
}

func TestLifecycleEventsAndHistory(t *testing.T) {
	f := newFixture(t, &endpoint{life: time.Hour})
	c := f.active(t, time.Hour)
	if c.State != connections.Active || c.PatientID != "pat-9" || !c.HasRefreshToken {
		t.Fatalf("after activate: %+v", c)
	}
	if c.NextRefreshAt.IsZero() || c.NextRefreshAt.After(time.Now().Add(50*time.Minute)) {
		t.Errorf("next refresh %v: want about 80%% of an hour from now", c.NextRefreshAt)
	}
	evs := stateEvents(t, f.ev, c.ID)
	if len(evs) != 1 || evs[0].From != "pending" || evs[0].To != "active" {
		t.Fatalf("events %+v", evs)
	}
	h, _ := f.m.History(context.Background(), c.ID)
	if len(h) != 2 || h[1].To != connections.Active {
		t.Fatalf("history %+v", h)
	}
	// Terminal states stay terminal.
	if _, err := f.m.Fail(context.Background(), c.ID, "late"); !errors.Is(err, connections.ErrBadState) {
		t.Fatalf("active → failed allowed: %v", err)
	}
}

// smart custody: 1,000 concurrent callers of an expired connection cause one refresh.
func TestConcurrentCallersCauseOneRefresh(t *testing.T) {
	ep := &endpoint{life: time.Hour, delay: 20 * time.Millisecond}
	f := newFixture(t, ep)
	c := f.active(t, -time.Minute) // already expired
	var wg sync.WaitGroup
	got := make(chan string, 1000)
	for range 1000 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tok, _, err := f.m.AccessToken(context.Background(), c.ID, false)
			if err != nil {
				got <- "error: " + err.Error()
				return
			}
			got <- tok.Reveal()
		}()
	}
	wg.Wait()
	close(got)
	for tok := range got {
		if tok != "at-1" {
			t.Fatalf("a caller got %q", tok)
		}
	}
	if n := ep.calls.Load(); n != 1 {
		t.Fatalf("%d refresh calls, want 1", n)
	}
}

// A rotated refresh token is durable before anyone sees the new access
// token: after a restart the agent refreshes with the rotated one.
func TestRotatedRefreshTokenSurvivesRestart(t *testing.T) {
	ep := &endpoint{life: time.Hour}
	f := newFixture(t, ep)
	c := f.active(t, -time.Minute)
	if tok, _, err := f.m.AccessToken(context.Background(), c.ID, false); err != nil || tok.Reveal() != "at-1" {
		t.Fatalf("%v %v", tok.Reveal(), err)
	}
	f.reopen(t)
	// Two hours later the access token has expired: the refresh must use
	// the rotated refresh token (rt-1), which the endpoint alone accepts.
	f.clk.Advance(2 * time.Hour)
	tok, _, err := f.m.AccessToken(context.Background(), c.ID, false)
	if err != nil {
		t.Fatalf("after restart: %v (refresh token rotation not persisted?)", err)
	}
	if tok.Reveal() != "at-2" || ep.calls.Load() != 2 {
		t.Fatalf("after restart got %q with %d refresh calls", tok.Reveal(), ep.calls.Load())
	}
	got, _ := f.m.Get(context.Background(), c.ID)
	if got.State != connections.Active {
		t.Fatalf("state %s", got.State)
	}
	if f.m.Scheduled() != 1 {
		t.Fatalf("schedule not restored: %d", f.m.Scheduled())
	}
}

func TestInvalidGrantThenRecovery(t *testing.T) {
	ep := &endpoint{life: time.Hour}
	f := newFixture(t, ep)
	c := f.active(t, -time.Minute)
	ep.current = "revoked-at-the-source"
	_, _, err := f.m.AccessToken(context.Background(), c.ID, false)
	if !errors.Is(err, connections.ErrNotUsable) {
		t.Fatalf("err %v", err)
	}
	got, _ := f.m.Get(context.Background(), c.ID)
	if got.State != connections.RefreshFailed || got.Reason == "" {
		t.Fatalf("after invalid_grant: %s %q", got.State, got.Reason)
	}
	// Never deleted; the refresher tries again later. Make "later" now.
	ep.current = "rt-0"
	if _, err := f.m.Refresh(context.Background(), c.ID); err != nil {
		t.Fatalf("manual refresh: %v", err)
	}
	got, _ = f.m.Get(context.Background(), c.ID)
	if got.State != connections.Active {
		t.Fatalf("not recovered: %s %s", got.State, got.Reason)
	}
	evs := stateEvents(t, f.ev, c.ID)
	last := evs[len(evs)-1]
	if last.From != "refresh_failed" || last.To != "active" || !last.Recovered {
		t.Fatalf("recovery event %+v", last)
	}
}

func TestTransientFailureKeepsStateAndBacksOff(t *testing.T) {
	ep := &endpoint{life: time.Hour, fail: errors.New("503 from token endpoint")}
	f := newFixture(t, ep)
	c := f.active(t, -time.Minute)
	_, _, err := f.m.AccessToken(context.Background(), c.ID, false)
	if !errors.Is(err, connections.ErrUnavailable) {
		t.Fatalf("err %v", err)
	}
	got, _ := f.m.Get(context.Background(), c.ID)
	if got.State != connections.Active || got.RefreshFailures != 1 || !got.NextRefreshAt.After(time.Now()) {
		t.Fatalf("after transient: %+v", got)
	}
}

// A source briefly down: callers that need a refresh of an active
// connection ask it once per backoff window, and the others fail at once with
// the same SOURCE_UNAVAILABLE error. The window (default 1 s) doubles with
// each failure and ends with a success; an explicit Refresh is not held
// back; the connection stays active and only real attempts count as failures.
func TestTransientFailureHoldsOnDemandRefreshesBack(t *testing.T) {
	ctx := context.Background()
	ep := &endpoint{life: time.Hour, fail: errors.New("503 from token endpoint")}
	f := newFixture(t, ep)
	c := f.active(t, -time.Minute)

	callers := func(n int) {
		t.Helper()
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for range n {
			wg.Go(func() {
				_, _, err := f.m.AccessToken(ctx, c.ID, false)
				errs <- err
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if _, reason, _ := errdefs.Classify(err); !errors.Is(err, connections.ErrUnavailable) || reason != "SOURCE_UNAVAILABLE" {
				t.Fatalf("a caller got %v (reason %q), want SOURCE_UNAVAILABLE", err, reason)
			}
			if !strings.Contains(err.Error(), "503 from token endpoint") {
				t.Fatalf("the error does not say what failed: %v", err)
			}
		}
	}
	wantCalls := func(n int64, when string) {
		t.Helper()
		if got := ep.calls.Load(); got != n {
			t.Fatalf("%s: %d requests at the source, want %d", when, got, n)
		}
	}
	wantState := func(failures int) {
		t.Helper()
		got, _ := f.m.Get(ctx, c.ID)
		if got.State != connections.Active || got.RefreshFailures != failures {
			t.Fatalf("state %s with %d failures, want active with %d", got.State, got.RefreshFailures, failures)
		}
	}

	callers(50)
	wantCalls(1, "50 callers during the outage")
	wantState(1)
	f.clk.Advance(999 * time.Millisecond)
	callers(50)
	wantCalls(1, "inside the first 1 s window")
	wantState(1) // calls held back are not failures of their own
	f.clk.Advance(time.Millisecond)
	callers(50)
	wantCalls(2, "after the first window")
	wantState(2)
	f.clk.Advance(time.Second)
	callers(50)
	wantCalls(2, "1 s into the second window, which lasts 2 s")
	f.clk.Advance(time.Second)
	callers(50)
	wantCalls(3, "after the second window")
	wantState(3)

	// An administrator's refresh goes through, and fails like any attempt.
	if _, err := f.m.Refresh(ctx, c.ID); !errors.Is(err, connections.ErrUnavailable) {
		t.Fatalf("explicit refresh: %v", err)
	}
	wantCalls(4, "explicit refresh inside the window")
	wantState(4)

	// The source is back; callers are still held back until the window
	// (8 s after a fourth failure) ends, then one refresh serves them all.
	ep.mu.Lock()
	ep.fail = nil
	ep.mu.Unlock()
	callers(10)
	wantCalls(4, "inside the fourth window")
	f.clk.Advance(8 * time.Second)
	tok, _, err := f.m.AccessToken(ctx, c.ID, false)
	if err != nil || tok.Reveal() != "at-1" {
		t.Fatalf("after the outage: %q %v", tok.Reveal(), err)
	}
	wantCalls(5, "after the outage")
	wantState(0)

	// A success ends the backoff: the next outage starts at 1 s again.
	ep.mu.Lock()
	ep.fail = errors.New("503 from token endpoint")
	ep.mu.Unlock()
	f.clk.Advance(time.Minute)
	if _, _, err := f.m.AccessToken(ctx, c.ID, true); !errors.Is(err, connections.ErrUnavailable) {
		t.Fatalf("rejected token during the second outage: %v", err)
	}
	wantCalls(6, "the second outage's first failure")
	f.clk.Advance(time.Second)
	if _, _, err := f.m.AccessToken(ctx, c.ID, true); !errors.Is(err, connections.ErrUnavailable) {
		t.Fatalf("second outage: %v", err)
	}
	wantCalls(7, "1 s after the second outage's first failure")
}

func TestExpiryWithoutRefreshTokenAndAtGrantEnd(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, &endpoint{life: time.Hour})
	c, _ := f.m.CreatePending(ctx, connections.Connection{AppID: "a", Pattern: connections.PatientAccess})
	c, _ = f.m.Activate(ctx, c.ID, connections.Grant{AccessToken: "x", Expiry: time.Now().Add(-time.Second)})
	if _, _, err := f.m.AccessToken(ctx, c.ID, false); !errors.Is(err, connections.ErrNotUsable) {
		t.Fatalf("err %v", err)
	}
	got, _ := f.m.Get(ctx, c.ID)
	if got.State != connections.Expired {
		t.Fatalf("state %s", got.State)
	}

	d, _ := f.m.CreatePending(ctx, connections.Connection{AppID: "a", Pattern: connections.PatientAccess})
	d, _ = f.m.Activate(ctx, d.ID, connections.Grant{AccessToken: "y", RefreshToken: "r", Expiry: time.Now().Add(-time.Second), GrantExpiry: time.Now().Add(-time.Minute)})
	f.m.AccessToken(ctx, d.ID, false)
	got, _ = f.m.Get(ctx, d.ID)
	if got.State != connections.Expired {
		t.Fatalf("grant ended but state %s", got.State)
	}
}

func TestListFiltersAndPages(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, &endpoint{life: time.Hour})
	for i := range 5 {
		app := "a"
		if i >= 3 {
			app = "b"
		}
		f.m.CreatePending(ctx, connections.Connection{AppID: app, PatientRef: fmt.Sprint("p", i%2)})
	}
	page, next, err := f.m.List(ctx, connections.Filter{AppID: "a"}, 2, "")
	if err != nil || len(page) != 2 || next == "" {
		t.Fatalf("%d %q %v", len(page), next, err)
	}
	rest, next, _ := f.m.List(ctx, connections.Filter{AppID: "a"}, 2, next)
	if len(rest) != 1 || next != "" {
		t.Fatalf("second page %d %q", len(rest), next)
	}
	p1, _, _ := f.m.List(ctx, connections.Filter{PatientRef: "p1"}, 10, "")
	if len(p1) != 2 {
		t.Fatalf("p1: %d", len(p1))
	}
	if _, err := f.m.GetForApp(ctx, "b", page[0].ID); !errors.Is(err, connections.ErrNotFound) {
		t.Fatalf("app b sees app a's connection: %v", err)
	}
}

func TestDeleteDestroysTokens(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, &endpoint{life: time.Hour})
	c := f.active(t, time.Hour)
	if _, err := f.m.Delete(ctx, c.ID, ""); err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.m.AccessToken(ctx, c.ID, false); !errors.Is(err, connections.ErrNotUsable) {
		t.Fatalf("token after delete: %v", err)
	}
	got, _ := f.m.Get(ctx, c.ID)
	if got.State != connections.Revoked {
		t.Fatalf("state %s", got.State)
	}
}

// smart-2.2-client #263: a backend connection (no refresh token) gets a new
// access token from the background refresher before the current one expires.
func TestBackendTokenRenewedBeforeExpiry(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	db, err := store.Open(ctx, store.Options{Dir: t.TempDir(), Key: bytes.Repeat([]byte{5}, 32), GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ep := &backendEndpoint{life: 2 * time.Second}
	m, err := connections.New(ctx, db, events.New(db, quiet), ep, quiet)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := m.CreatePending(ctx, connections.Connection{AppID: "a", Pattern: connections.Backend})
	first, _ := ep.Refresh(ctx, c, "")
	if c, err = m.Activate(ctx, c.ID, first); err != nil {
		t.Fatal(err)
	}
	if !c.NextRefreshAt.Before(first.Expiry) {
		t.Fatalf("next refresh %v is not before expiry %v", c.NextRefreshAt, first.Expiry)
	}
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	deadline := time.Now().Add(10 * time.Second)
	for ep.calls.Load() < 2 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	<-done
	if ep.calls.Load() < 2 {
		t.Fatal("the background refresher never renewed the backend token")
	}
	if ep.sawRefreshToken.Load() {
		t.Fatal("a backend renewal presented a refresh token")
	}
}

type backendEndpoint struct {
	calls           atomic.Int64
	sawRefreshToken atomic.Bool
	life            time.Duration
}

func (e *backendEndpoint) Refresh(_ context.Context, c connections.Connection, rt secrets.Value) (connections.Grant, error) {
	n := e.calls.Add(1)
	if !rt.IsZero() {
		e.sawRefreshToken.Store(true)
	}
	return connections.Grant{AccessToken: secrets.Value(fmt.Sprint("cc-", n)), Expiry: time.Now().Add(e.life)}, nil
}
