package webhooks_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/medrelay/medrelay/agent/client"
	"github.com/medrelay/medrelay/internal/events"
	"github.com/medrelay/medrelay/internal/sandbox/sandboxtest"
	"github.com/medrelay/medrelay/internal/store"
	"github.com/medrelay/medrelay/internal/webhooks"
)

// newClock is the shared test clock, standing at a fixed time until the
// test advances it: the retry schedule spans days and tests never sleep
// that long. The manager waits on its After channels; Waiting says when.
func newClock() *sandboxtest.Clock {
	return sandboxtest.FrozenClock(time.Date(2026, 11, 23, 9, 0, 0, 0, time.UTC))
}

// eventually polls cond until it holds; the deadline only keeps a broken
// test from hanging, it is not a timing assertion.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func openDB(t *testing.T, dir string) *store.DB {
	t.Helper()
	db, err := store.Open(context.Background(), store.Options{Dir: dir, Key: bytes.Repeat([]byte{7}, 32), GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	return db
}

// env is a store, an event log and a started manager.
type env struct {
	t      *testing.T
	dir    string
	db     *store.DB
	log    *events.Log
	m      *webhooks.Manager
	clock  *sandboxtest.Clock
	opts   []webhooks.Option
	logger *slog.Logger
}

func newEnv(t *testing.T, opts ...webhooks.Option) *env {
	t.Helper()
	e := &env{t: t, dir: t.TempDir(), clock: newClock(), logger: quiet}
	e.opts = append([]webhooks.Option{webhooks.WithClock(e.clock), webhooks.WithTimeout(2 * time.Second)}, opts...)
	e.open()
	t.Cleanup(e.close)
	return e
}

func (e *env) open() {
	e.db = openDB(e.t, e.dir)
	e.log = events.New(e.db, e.logger)
	e.m = webhooks.New(e.db, e.log, e.logger, e.opts...)
	if err := e.m.Start(context.Background()); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) close() {
	if e.m != nil {
		e.m.Stop()
		e.m = nil
	}
	if e.db != nil {
		e.db.Close()
		e.db = nil
	}
}

// restart stops everything and opens the same store again, as after a
// crash or an upgrade.
func (e *env) restart() {
	e.close()
	e.open()
}

func (e *env) create(app, url string, types ...string) (webhooks.Endpoint, string) {
	e.t.Helper()
	ep, sec, err := e.m.Create(context.Background(), app, webhooks.CreateRequest{URL: url, Types: types})
	if err != nil {
		e.t.Fatal(err)
	}
	return ep, sec.Reveal()
}

func (e *env) append(app, typ string, data any) events.Event {
	e.t.Helper()
	ev, err := e.log.Append(context.Background(), events.Event{Type: typ, AppID: app, ConnectionID: "conn-" + app}, data)
	if err != nil {
		e.t.Fatal(err)
	}
	return ev
}

func (e *env) status(id string) webhooks.Status {
	e.t.Helper()
	st, err := e.m.Get(context.Background(), webhooks.Access{All: true}, id)
	if err != nil {
		e.t.Fatal(err)
	}
	return st
}

// delivery is one request a receiver got.
type delivery struct {
	Header http.Header
	Body   []byte
	Event  *client.WebhookEvent
	// VerifyErr is the result of verifying the signature with the
	// receiver's secret at the fake clock's time.
	VerifyErr error
}

// receiver is a real HTTP server that records deliveries and answers what
// respond says (200 by default).
type receiver struct {
	srv *httptest.Server

	mu      sync.Mutex
	got     []delivery
	secret  string
	now     func() time.Time
	respond func(n int, d delivery) int
}

func newReceiver(t *testing.T, now func() time.Time) *receiver {
	r := &receiver{now: now}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		secret, respond := r.secret, r.respond
		n := len(r.got)
		r.mu.Unlock()
		d := delivery{Header: req.Header.Clone(), Body: body}
		d.VerifyErr = client.VerifyWebhookSignature(req.Header.Get(client.WebhookSignatureHeader), body, secret, client.WithWebhookClock(r.now))
		req.Body = io.NopCloser(bytes.NewReader(body))
		d.Event, _ = client.ReadWebhook(req, secret, client.WithWebhookClock(r.now))
		code := http.StatusOK
		if respond != nil {
			code = respond(n, d)
		}
		r.mu.Lock()
		r.got = append(r.got, d)
		r.mu.Unlock()
		w.WriteHeader(code)
		io.WriteString(w, "answer "+strconv.Itoa(code))
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) setSecret(s string) {
	r.mu.Lock()
	r.secret = s
	r.mu.Unlock()
}

func (r *receiver) setRespond(f func(n int, d delivery) int) {
	r.mu.Lock()
	r.respond = f
	r.mu.Unlock()
}

func (r *receiver) deliveries() []delivery {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]delivery(nil), r.got...)
}

func (r *receiver) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.got)
}
