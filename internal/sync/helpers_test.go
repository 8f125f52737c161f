package sync

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	stdsync "sync"
	"testing"
	"time"

	"github.com/medrelay/medrelay/internal/connections"
	"github.com/medrelay/medrelay/internal/events"
	"github.com/medrelay/medrelay/internal/pluginhost"
	"github.com/medrelay/medrelay/internal/records"
	"github.com/medrelay/medrelay/internal/sandbox"
	"github.com/medrelay/medrelay/internal/sandbox/sandboxtest"
	"github.com/medrelay/medrelay/internal/secrets"
	"github.com/medrelay/medrelay/internal/store"
)

// binDir holds the binaries the tests run, built once per test binary:
// plugins/medrelay-plugin-smart (with its manifest), medrelayd and medrelay.
var binDir string

func TestMain(m *testing.M) {
	flag.Parse()
	dir, err := os.MkdirTemp("", "sync-test-bins")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := 1
	if err := buildBinaries(dir); err != nil {
		fmt.Fprintln(os.Stderr, "building test binaries:", err)
	} else {
		binDir = dir
		code = m.Run()
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

func buildBinaries(dir string) error {
	cmd := exec.Command("go", "build", "-o", dir+string(os.PathSeparator), "../../plugins/smart")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%v: %s", err, out)
	}
	plugins := filepath.Join(dir, "plugins")
	if err := os.Mkdir(plugins, 0o755); err != nil {
		return err
	}
	bin := filepath.Join(plugins, pluginhost.BinaryPrefix+"smart")
	if err := os.Rename(filepath.Join(dir, "smart"), bin); err != nil {
		return err
	}
	if out, err := exec.Command(bin, "manifest", "--write").CombinedOutput(); err != nil {
		return fmt.Errorf("manifest: %v: %s", err, out)
	}
	return nil
}

var (
	buildMu    stdsync.Mutex
	buildOnces = map[string]*stdsync.Once{}
	buildErr   error
)

func buildOnce(name string) *stdsync.Once {
	buildMu.Lock()
	defer buildMu.Unlock()
	if buildOnces[name] == nil {
		buildOnces[name] = &stdsync.Once{}
	}
	return buildOnces[name]
}

// buildCommand builds a command of agent/cmd once per test binary (only
// the tests that run a whole agent need them).
func buildCommand(t testing.TB, name string) string {
	t.Helper()
	buildOnce(name).Do(func() {
		cmd := exec.Command("go", "build", "-o", binDir+string(os.PathSeparator), "../../agent/cmd/"+name)
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("%v: %s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatalf("building the agent: %v", buildErr)
	}
	return filepath.Join(binDir, name)
}

// logBuf collects logs; printed when a test fails.
type logBuf struct {
	mu  stdsync.Mutex
	buf bytes.Buffer
}

func (l *logBuf) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(b)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// request is one request the sandbox saw.
type request struct {
	At     time.Time
	Method string
	Path   string
}

// requestLog records the sandbox's requests (its debug log line per request).
type requestLog struct {
	mu   stdsync.Mutex
	reqs []request
}

func (r *requestLog) Debug(msg string, args ...any) {
	if msg != "request" {
		return
	}
	var q request
	q.At = time.Now()
	for i := 0; i+1 < len(args); i += 2 {
		switch args[i] {
		case "method":
			q.Method, _ = args[i+1].(string)
		case "path":
			q.Path, _ = args[i+1].(string)
		}
	}
	r.mu.Lock()
	r.reqs = append(r.reqs, q)
	r.mu.Unlock()
}
func (r *requestLog) Info(string, ...any) {}
func (r *requestLog) Warn(string, ...any) {}

func (r *requestLog) all() []request {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.reqs)
}

// filesRequested returns the bulk file paths requested (GET) from index on.
func (r *requestLog) filesRequested(from int) []string {
	var out []string
	for _, q := range r.all()[from:] {
		if q.Method == http.MethodGet && strings.Contains(q.Path, "/bulk/") && strings.HasSuffix(q.Path, ".ndjson") {
			out = append(out, q.Path)
		}
	}
	return out
}

const (
	testClient = "sync-test"
	testTenant = "generic"
)

// backendTokens is a real client_credentials flow against the sandbox:
// the connections' TokenEndpoint in these tests.
type backendTokens struct {
	sb     *sandbox.Sandbox
	tenant string
	key    *sandboxtest.Key
	t      testing.TB
	static string // when set, every grant is this token (non-sandbox servers)
}

func (b *backendTokens) Refresh(ctx context.Context, c connections.Connection, _ secrets.Value) (connections.Grant, error) {
	if b.static != "" {
		return connections.Grant{AccessToken: secrets.Value(b.static), TokenType: "Bearer", Expiry: time.Now().Add(time.Hour)}, nil
	}
	tokenURL := b.sb.URL() + "/" + b.tenant + "/auth/token"
	form := url.Values{
		"grant_type":            {"client_credentials"},
		"scope":                 {"system/*.rs"},
		"client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"},
		"client_assertion":      {b.key.Assertion(b.t, testClient, tokenURL, 4*time.Minute, nil)},
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, tokenURL, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return connections.Grant{}, err
	}
	defer resp.Body.Close()
	var tok struct {
		AccessToken string `json:"access_token"`
		ExpiresIn   int    `json:"expires_in"`
		Scope       string `json:"scope"`
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &tok) != nil || tok.AccessToken == "" {
		return connections.Grant{}, fmt.Errorf("token: HTTP %d: %s", resp.StatusCode, body)
	}
	return connections.Grant{AccessToken: secrets.Value(tok.AccessToken), TokenType: "Bearer",
		Expiry: time.Now().Add(time.Duration(tok.ExpiresIn) * time.Second), Scopes: strings.Fields(tok.Scope)}, nil
}

// custody hands the plugins tokens from the connections.
type custody struct{ m *connections.Manager }

func (c custody) AccessToken(ctx context.Context, id string, rejected bool) (pluginhost.Token, error) {
	tok, exp, err := c.m.AccessToken(ctx, id, rejected)
	if err != nil {
		return pluginhost.Token{}, err
	}
	return pluginhost.Token{AccessToken: tok.Reveal(), TokenType: "Bearer", Expiry: exp}, nil
}

// env is an engine with everything real around it: a sandbox, a store on
// disk, connections with a backend connection, the smart plugin in a
// plugin host, the record store and the event log.
type env struct {
	t      *testing.T
	sb     *sandbox.Sandbox
	reqs   *requestLog
	tenant string
	db     *store.DB
	ev     *events.Log
	conns  *connections.Manager
	host   *pluginhost.Host
	recs   *records.Store
	conn   connections.Connection
	logs   *logBuf
	log    *slog.Logger
	opts   Options
	tokens *backendTokens

	eng    *Engine
	cancel context.CancelFunc
	done   chan struct{}
}

type envConfig struct {
	sandbox []sandboxtest.Option
	opts    Options
	// fhirBase replaces the sandbox (another server), with a static token.
	fhirBase string
}

type envOption func(*envConfig)

func withSandbox(o ...sandboxtest.Option) envOption {
	return func(c *envConfig) { c.sandbox = append(c.sandbox, o...) }
}

func withOptions(f func(*Options)) envOption { return func(c *envConfig) { f(&c.opts) } }

func withServer(fhirBase string) envOption { return func(c *envConfig) { c.fhirBase = fhirBase } }

// fastOptions keep waits short in tests.
func fastOptions() Options {
	return Options{Backoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond, PollInterval: 20 * time.Millisecond,
		MaxPollInterval: 200 * time.Millisecond, MinEvery: 50 * time.Millisecond, BatchRecords: 500}
}

func newEnv(t *testing.T, opts ...envOption) *env {
	t.Helper()
	cfg := envConfig{opts: fastOptions()}
	for _, o := range opts {
		o(&cfg)
	}
	e := &env{t: t, tenant: testTenant, logs: &logBuf{}, reqs: &requestLog{}, opts: cfg.opts}
	e.log = slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("log:\n%s", e.logs.String())
		}
	})
	ctx := context.Background()
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	db, err := store.Open(ctx, store.Options{Dir: filepath.Join(t.TempDir(), "store"), Key: key, GCInterval: -1, Logger: e.log})
	if err != nil {
		t.Fatal(err)
	}
	e.db = db
	t.Cleanup(func() { db.Close() })
	e.ev = events.New(db, e.log)

	fhirBase := cfg.fhirBase
	e.tokens = &backendTokens{t: t, tenant: e.tenant, static: "static-test-token"}
	if fhirBase == "" {
		k := sandboxtest.NewKey(t, "ES384")
		sbOpts := append([]sandboxtest.Option{
			sandboxtest.WithPatients(6),
			sandboxtest.WithConfig(func(c *sandbox.Config) { c.BulkFileResources = 400; c.Logger = e.reqs }),
			sandboxtest.WithClients(sandbox.ClientConfig{Tenant: e.tenant, ClientID: testClient, JWKS: k.JWKS()}),
		}, cfg.sandbox...)
		e.sb = sandboxtest.Start(t, sbOpts...)
		fhirBase = e.sb.FHIRBase(e.tenant)
		e.tokens = &backendTokens{sb: e.sb, tenant: e.tenant, key: k, t: t}
	}
	e.conns, err = connections.New(ctx, db, e.ev, e.tokens, e.log)
	if err != nil {
		t.Fatal(err)
	}
	e.host = pluginhost.New(pluginhost.Options{Dir: filepath.Join(binDir, "plugins"), StateDir: t.TempDir(), Tokens: custody{e.conns}, Logger: e.log,
		HealthInterval: time.Second, BackoffInitial: 50 * time.Millisecond, BackoffMax: time.Second})
	sctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := e.host.Start(sctx); err != nil {
		t.Fatal(err)
	}
	if err := e.host.WaitRunning(sctx, "smart"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = e.host.Stop(ctx)
	})
	if e.recs, err = records.Open(ctx, db, records.WithLogger(e.log)); err != nil {
		t.Fatal(err)
	}
	e.conn = e.newConnection(fhirBase)
	e.start()
	t.Cleanup(e.stop)
	return e
}

// newConnection makes an active backend connection to fhirBase.
func (e *env) newConnection(fhirBase string) connections.Connection {
	e.t.Helper()
	ctx := context.Background()
	c, err := e.conns.CreatePending(ctx, connections.Connection{Pattern: connections.Backend, SourceID: "sandbox-" + e.tenant,
		Plugin: "smart", FHIRBase: fhirBase, Scopes: []string{"system/*.rs"}})
	if err != nil {
		e.t.Fatal(err)
	}
	g, err := e.tokens.Refresh(ctx, c, "")
	if err != nil {
		e.t.Fatal(err)
	}
	if c, err = e.conns.Activate(ctx, c.ID, g); err != nil {
		e.t.Fatal(err)
	}
	return c
}

// start runs a (new) engine on the env's store.
func (e *env) start() {
	e.eng = New(e.db, e.conns, e.host, e.recs, e.ev, e.log, e.opts)
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel, e.done = cancel, make(chan struct{})
	go func() {
		defer close(e.done)
		e.eng.Run(ctx)
	}()
}

// stop stops the engine as the agent does at shutdown.
func (e *env) stop() {
	if e.cancel == nil {
		return
	}
	e.cancel()
	<-e.done
	e.cancel = nil
}

func (e *env) startSync(r StartRequest) View {
	e.t.Helper()
	if r.ConnectionID == "" {
		r.ConnectionID = e.conn.ID
	}
	v, _, err := e.eng.Start(context.Background(), "", r)
	if err != nil {
		e.t.Fatalf("start: %v", err)
	}
	return v
}

// wait waits until the sync ends (or the test's patience does).
func (e *env) wait(id string) View {
	e.t.Helper()
	return e.waitFor(id, func(v View) bool { return v.State.Terminal() && v.EventSent }, 90*time.Second)
}

func (e *env) waitFor(id string, cond func(View) bool, patience time.Duration) View {
	e.t.Helper()
	deadline := time.After(patience)
	for {
		ch := e.eng.Changed()
		v, err := e.eng.Get(context.Background(), "", id, true)
		if err != nil {
			e.t.Fatalf("get %s: %v", id, err)
		}
		if cond(v) {
			return v
		}
		select {
		case <-ch:
		case <-time.After(100 * time.Millisecond):
		case <-deadline:
			e.t.Fatalf("sync %s: condition not met; now %s/%s: %s (waiting: %s)", id, v.State, v.Phase, v.Error, v.Waiting)
		}
	}
}

// stored is what the record store holds for a connection: counts per type
// and the sandbox's digest over (type, id, versionId), tombstones apart.
type stored struct {
	Counts  map[string]int
	Total   int
	Digest  string
	Deleted []string
}

func (e *env) stored(conn string) stored {
	e.t.Helper()
	out := stored{Counts: map[string]int{}}
	var dg sandbox.ExportDigest
	_, err := e.recs.List(context.Background(), conn, records.Query{}, func(page []records.Record, _ uint64) error {
		for _, r := range page {
			if r.Deleted {
				out.Deleted = append(out.Deleted, r.Type+"/"+r.ID)
				continue
			}
			out.Counts[r.Type]++
			out.Total++
			dg.Add(r.Type, r.ID, r.VersionID)
		}
		return nil
	})
	if err != nil {
		e.t.Fatal(err)
	}
	slices.Sort(out.Deleted)
	out.Digest = dg.String()
	return out
}

// expect compares the store with what the sandbox says the export holds.
func (e *env) expect(conn string, p sandbox.ExportParams) sandbox.ExportExpectation {
	e.t.Helper()
	if p.Tenant == "" {
		p.Tenant = e.tenant
	}
	want, err := e.sb.ExpectedExport(p)
	if err != nil {
		e.t.Fatal(err)
	}
	got := e.stored(conn)
	if got.Total != want.Total || got.Digest != want.Digest {
		e.t.Errorf("store holds %d resources (digest %s), the export %d (digest %s)", got.Total, got.Digest, want.Total, want.Digest)
	}
	for typ, n := range want.Counts {
		if got.Counts[typ] != n {
			e.t.Errorf("%s: %d stored, %d exported", typ, got.Counts[typ], n)
		}
	}
	for typ, n := range got.Counts {
		if _, ok := want.Counts[typ]; !ok {
			e.t.Errorf("%s: %d stored, none exported", typ, n)
		}
	}
	return want
}

// eventsOf returns the sync events of the log.
func (e *env) syncEvents() []events.Event {
	e.t.Helper()
	out, err := e.ev.Read(context.Background(), events.Filter{All: true, Types: map[string]bool{events.RecordsSyncCompleted: true, events.RecordsSyncFailed: true}}, 0, 1000)
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}
