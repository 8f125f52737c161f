package connections_test

// State-machine and custody tests with medrelay-sandbox as the source: the
// manager's token endpoint is the agent's own (internal/authorize) speaking
// OAuth to the sandbox's oraclehealth tenant (access tokens of 570 s,
// refresh tokens rotated on every use, a rotated token presented again taken
// as theft). What a test needs from the source (an outage, a refused
// refresh, a slow token endpoint) is one of the sandbox's faults, and the
// sandbox, the authorizer and the manager read one test clock. Every
// behaviour here is the sandbox's own: none needs a plain httptest server.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
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

const (
	tenant   = sandbox.ProfileOracleHealth
	clientID = "connections-test"
	redirect = "http://127.0.0.1:1/oauth/callback"
)

// The authorizer's view of the world: one sandbox tenant, one credential,
// the generic SMART profile. Plain values, not scripted behaviour.
type staticSources struct{ base string }

func (s staticSources) Resolve(ctx context.Context, id string, _ authorize.Audience) (authorize.Source, error) {
	e, err := oauth.Discover(ctx, nil, s.base)
	return authorize.Source{ID: id, Vendor: "generic", FHIRBase: s.base, Endpoints: e}, err
}

type staticCreds struct{ cred authorize.Credential }

func (s staticCreds) Resolve(context.Context, string, string) (authorize.Credential, error) {
	return s.cred, nil
}
func (s staticCreds) ByID(context.Context, string) (authorize.Credential, error) { return s.cred, nil }

type staticVendors struct{}

func (staticVendors) Vendor(context.Context, string) (authorize.Vendor, error) {
	return authorize.Vendor{Plugin: "smart", Profile: oauth.Profile{EchoesOfflineAccess: true}}, nil
}

type fixture struct {
	sb   *sandbox.Sandbox
	clk  *sandboxtest.Clock // stands still until the test advances it
	opts []connections.Option
	dir  string
	db   *store.DB
	ev   *events.Log
	az   *authorize.Authorizer
	m    *connections.Manager
}

func newFixture(t *testing.T, opts ...connections.Option) *fixture {
	t.Helper()
	clk := sandboxtest.FrozenClock(time.Now())
	sb := sandboxtest.Start(t, sandboxtest.WithClock(clk))
	if err := sb.RegisterClient(tenant, sandbox.ClientConfig{ClientID: clientID, RedirectURIs: []string{redirect}}); err != nil {
		t.Fatal(err)
	}
	f := &fixture{sb: sb, dir: t.TempDir(), clk: clk, opts: opts}
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
	creds := staticCreds{authorize.Credential{ID: "cred-1", ClientID: clientID, Auth: oauth.ClientAuth{Method: oauth.AuthNone}}}
	f.az = authorize.New(db, staticSources{base: f.sb.FHIRBase(tenant)}, creds, staticVendors{}, quiet,
		authorize.Options{RedirectURI: redirect, Now: f.clk.Now})
	f.m, err = connections.New(context.Background(), db, f.ev, f.az, quiet, append([]connections.Option{connections.WithClock(f.clk.Now)}, f.opts...)...)
	if err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) reopen(t *testing.T) {
	t.Helper()
	f.db.Close()
	f.open(t)
}

// active authorizes a patient-access connection at the sandbox (a real
// standalone launch, approved at once) and activates it with the grant.
func (f *fixture) active(t *testing.T) (connections.Connection, connections.Grant) {
	t.Helper()
	ctx := context.Background()
	c, err := f.m.CreatePending(ctx, connections.Connection{AppID: "app1", Pattern: connections.PatientAccess, SourceID: "src", PatientRef: "p-1"})
	if err != nil {
		t.Fatal(err)
	}
	begun, err := f.az.Begin(ctx, sessions.BeginRequest{Connection: c, Source: sessions.Source{ID: "src"}})
	if err != nil {
		t.Fatal(err)
	}
	cb, err := f.az.Complete(ctx, sandboxtest.Approve(t, begun.URL))
	if err != nil || cb.Grant == nil {
		t.Fatalf("complete: %v %+v", err, cb)
	}
	c, err = f.m.Activate(ctx, c.ID, *cb.Grant)
	if err != nil {
		t.Fatal(err)
	}
	return c, *cb.Grant
}

// refreshes counts the refresh_token grants the sandbox answered; requests
// counts every request at its token endpoint (one refused by a fault never
// reaches the grant-type counter).
func (f *fixture) refreshes() int64 { return f.sb.Stats().Endpoints["token:refresh_token"] }
func (f *fixture) requests() int64 {
	return f.sb.Stats().Tenants[tenant][sandbox.EndpointToken]
}

// expire moves the clock past the access token's life (570 s).
func (f *fixture) expire() { f.clk.Advance(time.Hour) }

func (f *fixture) faults(t *testing.T, faults ...sandbox.Faults) {
	t.Helper()
	if err := f.sb.SetFaults(faults...); err != nil {
		t.Fatal(err)
	}
}

// outage: the token endpoint answers 503.
var outage = sandbox.Faults{Tenant: tenant, Status: http.StatusServiceUnavailable, Endpoints: []string{sandbox.EndpointToken}}

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
	f := newFixture(t)
	c, g := f.active(t)
	if c.State != connections.Active || c.PatientID == "" || c.PatientID != g.PatientID || !c.HasRefreshToken {
		t.Fatalf("after activate: %+v", c)
	}
	// The background refresh comes at 80% of the access token's life.
	now := f.clk.Now()
	if want := now.Add(time.Duration(float64(c.AccessExpiry.Sub(now)) * 0.8)); !c.NextRefreshAt.Equal(want) || !c.AccessExpiry.Equal(g.Expiry) {
		t.Errorf("next refresh %v (token expires %v): want %v", c.NextRefreshAt, c.AccessExpiry, want)
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

// smart custody: 1,000 concurrent callers of an expired connection cause one
// refresh at the source, all served its token. The token endpoint answers
// 20 ms late so that the callers overlap the refresh.
func TestConcurrentCallersCauseOneRefresh(t *testing.T) {
	f := newFixture(t)
	c, g := f.active(t)
	f.faults(t, sandbox.Faults{Tenant: tenant, SlowMillis: 20, Endpoints: []string{sandbox.EndpointToken}})
	f.expire()
	before := f.refreshes()
	var wg sync.WaitGroup
	got := make(chan string, 1000)
	for range 1000 {
		wg.Go(func() {
			tok, _, err := f.m.AccessToken(context.Background(), c.ID, false)
			if err != nil {
				got <- "error: " + err.Error()
				return
			}
			got <- tok.Reveal()
		})
	}
	wg.Wait()
	close(got)
	first := ""
	for tok := range got {
		if first == "" {
			first = tok
		}
		if strings.HasPrefix(tok, "error: ") || tok == "" || tok == g.AccessToken.Reveal() || tok != first {
			t.Fatalf("a caller got %.60q (first %.60q): want one new token for all", tok, first)
		}
	}
	if n := f.refreshes() - before; n != 1 {
		t.Fatalf("%d refresh requests at the sandbox, want 1", n)
	}
}

// A rotated refresh token is durable before anyone sees the new access
// token: after a restart the agent refreshes with the rotated one. The
// sandbox rotates on every use and revokes the grant when a rotated token
// is presented again, so a lost rotation fails the second refresh.
func TestRotatedRefreshTokenSurvivesRestart(t *testing.T) {
	f := newFixture(t)
	c, _ := f.active(t)
	before := f.refreshes()
	f.expire()
	first, _, err := f.m.AccessToken(context.Background(), c.ID, false)
	if err != nil {
		t.Fatal(err)
	}
	f.reopen(t)
	// An hour later the access token has expired: the refresh must use
	// the rotated refresh token, which the sandbox alone accepts.
	f.expire()
	tok, _, err := f.m.AccessToken(context.Background(), c.ID, false)
	if err != nil {
		t.Fatalf("after restart: %v (refresh token rotation not persisted?)", err)
	}
	if tok.Reveal() == first.Reveal() || f.refreshes()-before != 2 {
		t.Fatalf("after restart: the same token again: %v, or %d refresh requests (want 2)", tok.Reveal() == first.Reveal(), f.refreshes()-before)
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
	f := newFixture(t)
	c, _ := f.active(t)
	f.faults(t, sandbox.Faults{Tenant: tenant, RefuseRefresh: true})
	f.expire()
	_, _, err := f.m.AccessToken(context.Background(), c.ID, false)
	if !errors.Is(err, connections.ErrNotUsable) {
		t.Fatalf("err %v", err)
	}
	got, _ := f.m.Get(context.Background(), c.ID)
	if got.State != connections.RefreshFailed || !strings.Contains(got.Reason, "invalid_grant") {
		t.Fatalf("after invalid_grant: %s %q", got.State, got.Reason)
	}
	// Never deleted; the refresher tries again later. Make "later" now,
	// with the source taking the refresh token again.
	f.faults(t)
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
	f := newFixture(t)
	c, _ := f.active(t)
	f.faults(t, outage)
	f.expire()
	_, _, err := f.m.AccessToken(context.Background(), c.ID, false)
	if !errors.Is(err, connections.ErrUnavailable) {
		t.Fatalf("err %v", err)
	}
	got, _ := f.m.Get(context.Background(), c.ID)
	if got.State != connections.Active || got.RefreshFailures != 1 || !got.NextRefreshAt.After(f.clk.Now()) {
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
	f := newFixture(t)
	c, _ := f.active(t)
	f.faults(t, outage)
	f.expire()
	start := f.requests()

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
			if !strings.Contains(err.Error(), "temporarily_unavailable") {
				t.Fatalf("the error does not say what the source answered: %v", err)
			}
		}
	}
	wantCalls := func(n int64, when string) {
		t.Helper()
		if got := f.requests() - start; got != n {
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
	f.faults(t)
	callers(10)
	wantCalls(4, "inside the fourth window")
	f.clk.Advance(8 * time.Second)
	tok, _, err := f.m.AccessToken(ctx, c.ID, false)
	if err != nil || tok.IsZero() {
		t.Fatalf("after the outage: %v", err)
	}
	wantCalls(5, "after the outage")
	wantState(0)

	// A success ends the backoff: the next outage starts at 1 s again.
	f.faults(t, outage)
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

// A connection that cannot be refreshed expires without asking the source:
// no refresh token, or a grant that has ended.
func TestExpiryWithoutRefreshTokenAndAtGrantEnd(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	start := f.requests()
	now := f.clk.Now()
	c, _ := f.m.CreatePending(ctx, connections.Connection{AppID: "a", Pattern: connections.PatientAccess})
	c, _ = f.m.Activate(ctx, c.ID, connections.Grant{AccessToken: "x", Expiry: now.Add(-time.Second)})
	if _, _, err := f.m.AccessToken(ctx, c.ID, false); !errors.Is(err, connections.ErrNotUsable) {
		t.Fatalf("err %v", err)
	}
	got, _ := f.m.Get(ctx, c.ID)
	if got.State != connections.Expired {
		t.Fatalf("state %s", got.State)
	}

	d, _ := f.m.CreatePending(ctx, connections.Connection{AppID: "a", Pattern: connections.PatientAccess})
	d, _ = f.m.Activate(ctx, d.ID, connections.Grant{AccessToken: "y", RefreshToken: "r", Expiry: now.Add(-time.Second), GrantExpiry: now.Add(-time.Minute)})
	f.m.AccessToken(ctx, d.ID, false)
	got, _ = f.m.Get(ctx, d.ID)
	if got.State != connections.Expired {
		t.Fatalf("grant ended but state %s", got.State)
	}
	if n := f.requests() - start; n != 0 {
		t.Fatalf("%d token requests at the source for connections that cannot be refreshed", n)
	}
}

func TestListFiltersAndPages(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
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

// Deleting a connection destroys its tokens here and revokes the grant at
// the source: the sandbox then refuses its refresh token.
func TestDeleteDestroysTokens(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	c, g := f.active(t)
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
	ep, err := oauth.Discover(ctx, nil, f.sb.FHIRBase(tenant))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.PostForm(ep.TokenURL, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {g.RefreshToken.Reveal()}, "client_id": {clientID}})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "invalid_grant") {
		t.Fatalf("the deleted connection's refresh token at the source: %d %s", resp.StatusCode, body)
	}
}

// keySigner signs private_key_jwt assertions with a test key.
type keySigner struct {
	t        *testing.T
	key      *sandboxtest.Key
	clientID string
}

func (k *keySigner) SignAssertion(_ context.Context, aud string) (string, error) {
	return k.key.Assertion(k.t, k.clientID, aud, 4*time.Minute, nil), nil
}

func (k *keySigner) Algorithm() string { return string(k.key.Alg) }

// smart-2.2-client #263: a backend connection (no refresh token) gets a new
// access token from the background refresher before the current one expires,
// with client_credentials at the sandbox (SMART Backend Services), never a
// refresh token. The sandbox issues 2 s tokens; the refresher runs on the
// wall clock, so the test waits for its second request (up to 10 s).
func TestBackendTokenRenewedBeforeExpiry(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sb := sandboxtest.Start(t, sandboxtest.WithFaults(sandbox.Faults{Tenant: sandbox.ProfileGeneric, AccessTokenLifetime: 2}))
	key := sandboxtest.NewKey(t, "ES384")
	const backendID = "connections-backend"
	if err := sb.RegisterClient(sandbox.ProfileGeneric, sandbox.ClientConfig{ClientID: backendID, JWKS: key.JWKS(), Scope: "system/*.rs"}); err != nil {
		t.Fatal(err)
	}
	db, err := store.Open(ctx, store.Options{Dir: t.TempDir(), Key: bytes.Repeat([]byte{5}, 32), GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	creds := staticCreds{authorize.Credential{ID: "cred-backend", ClientID: backendID,
		Auth: oauth.ClientAuth{Method: oauth.AuthPrivateKeyJWT, Signer: &keySigner{t: t, key: key, clientID: backendID}}}}
	az := authorize.New(db, staticSources{base: sb.FHIRBase(sandbox.ProfileGeneric)}, creds, staticVendors{}, quiet, authorize.Options{RedirectURI: redirect})
	m, err := connections.New(ctx, db, events.New(db, quiet), az, quiet)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := m.CreatePending(ctx, connections.Connection{AppID: "a", Pattern: connections.Backend, SourceID: "src", CredentialID: "cred-backend"})
	first, err := az.Refresh(ctx, c, "")
	if err != nil {
		t.Fatal(err)
	}
	if c, err = m.Activate(ctx, c.ID, first); err != nil {
		t.Fatal(err)
	}
	if !c.NextRefreshAt.Before(first.Expiry) {
		t.Fatalf("next refresh %v is not before expiry %v", c.NextRefreshAt, first.Expiry)
	}
	grants := func() int64 { return sb.Stats().Endpoints["token:client_credentials"] }
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	deadline := time.Now().Add(10 * time.Second)
	for grants() < 2 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	<-done
	if grants() < 2 {
		t.Fatal("the background refresher never renewed the backend token")
	}
	if n := sb.Stats().Endpoints["token:refresh_token"]; n != 0 {
		t.Fatalf("%d backend renewals presented a refresh token", n)
	}
	got, _ := m.Get(context.Background(), c.ID)
	if got.State != connections.Active {
		t.Fatalf("state %s (%s)", got.State, got.Reason)
	}
}
