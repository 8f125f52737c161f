//go:build unix

package sync

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/medrelay/medrelay/agent/client"
	"github.com/medrelay/medrelay/internal/sandbox"
	"github.com/medrelay/medrelay/internal/sandbox/sandboxtest"
	agentv1 "github.com/medrelay/medrelay/proto/gen/medrelay/agent/v1"
	"google.golang.org/protobuf/encoding/protojson"
)

// agentProc is a medrelayd process started by a test.
type agentProc struct {
	t    *testing.T
	bin  string
	home string
	log  *os.File
	cmd  *exec.Cmd
	c    *client.Client
}

func startAgentProc(t *testing.T, bin, home string, log *os.File) *agentProc {
	t.Helper()
	a := &agentProc{t: t, bin: bin, home: home, log: log}
	a.start()
	t.Cleanup(func() { a.kill() })
	return a
}

func (a *agentProc) start() {
	a.t.Helper()
	a.cmd = exec.Command(a.bin, "run", "--home", a.home)
	a.cmd.Stdout, a.cmd.Stderr = a.log, a.log
	a.cmd.Env = append(os.Environ(), "MEDRELAY_APP_TOKEN=")
	if v := os.Getenv("MEDRELAY_TEST_AGENT_GOMEMLIMIT"); v != "" {
		// A soft memory limit for the agent only (bench-bulk).
		a.cmd.Env = append(a.cmd.Env, "GOMEMLIMIT="+v)
	}
	if err := a.cmd.Start(); err != nil {
		a.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for {
		c, err := client.Dial(ctx, client.WithSocket(filepath.Join(a.home, "medrelay.sock")), client.WithAppToken(""), client.WithStartupWait(30*time.Second))
		if err == nil {
			if _, err = c.Admin.GetStatus(ctx, &agentv1.GetStatusRequest{}); err == nil {
				a.c = c
				return
			}
			c.Close()
		}
		if ctx.Err() != nil {
			a.t.Fatalf("agent did not come up: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// kill SIGKILLs the agent (its plugins die with it or are reaped at the
// next start).
func (a *agentProc) kill() {
	if a.cmd == nil || a.cmd.Process == nil {
		return
	}
	if a.c != nil {
		a.c.Close()
		a.c = nil
	}
	_ = a.cmd.Process.Signal(syscall.SIGKILL)
	_ = a.cmd.Wait()
	a.cmd = nil
}

// killPlugin SIGKILLs the agent's smart plugin process; the agent
// restarts it.
func (a *agentProc) killPlugin() bool {
	a.t.Helper()
	resp, err := a.c.Plugins.ListPlugins(context.Background(), &agentv1.ListPluginsRequest{})
	if err != nil {
		a.t.Fatal(err)
	}
	for range 100 {
		for _, p := range resp.GetPlugins() {
			if p.GetName() == "smart" && p.GetPid() > 0 {
				return syscall.Kill(int(p.GetPid()), syscall.SIGKILL) == nil
			}
		}
		time.Sleep(20 * time.Millisecond)
		if resp, err = a.c.Plugins.ListPlugins(context.Background(), &agentv1.ListPluginsRequest{}); err != nil {
			a.t.Fatal(err)
		}
	}
	return false
}

// agentEnv is a medrelayd process with the sandbox in its directory.
type agentEnv struct {
	t        *testing.T
	a        *agentProc
	sb       *sandbox.Sandbox
	reqs     *requestLog
	home     string
	cli      string
	sourceID string
}

func newAgentEnv(t *testing.T, sbOpts ...sandboxtest.Option) *agentEnv {
	t.Helper()
	if testing.Short() {
		t.Skip("runs a whole agent")
	}
	e := &agentEnv{t: t, reqs: &requestLog{}}
	t0 := time.Now()
	bin := buildCommand(t, "medrelayd")
	e.cli = buildCommand(t, "medrelay")
	if d := time.Since(t0); d > time.Second {
		t.Logf("built medrelayd and medrelay in %s", d.Round(time.Millisecond))
	}
	e.sb = sandboxtest.Start(t, append([]sandboxtest.Option{sandboxtest.WithConfig(func(c *sandbox.Config) { c.Logger = e.reqs })}, sbOpts...)...)
	e.home = filepath.Join(t.TempDir(), "home")
	if err := os.MkdirAll(e.home, 0o750); err != nil {
		t.Fatal(err)
	}
	admin, pprof := "127.0.0.1:0", false
	if a := os.Getenv("MEDRELAY_BENCH_PPROF_ADDR"); a != "" {
		admin, pprof = a, true // profiles of the agent (see TestBenchBulk)
	}
	cfg := fmt.Sprintf("http_addr = \"127.0.0.1:0\"\nadmin_addr = %q\ndebug_pprof = %t\nplugin_dir = %q\n\n[log]\nlevel = \"info\"\n", admin, pprof, filepath.Join(binDir, "plugins"))
	if err := os.WriteFile(filepath.Join(e.home, "medrelay.toml"), []byte(cfg), 0o640); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(t.TempDir(), "agent.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("SYNC_TEST_LOG") != "" {
			b, _ := os.ReadFile(logf.Name())
			if len(b) > 200_000 {
				b = b[len(b)-200_000:]
			}
			t.Logf("agent log (tail):\n%s", b)
		}
	})
	e.a = startAgentProc(t, bin, e.home, logf)
	e.sourceID = importSandbox(t, e.a.c, e.sb)
	return e
}

// credential gives the agent a key for the sandbox source; register also
// tells the sandbox the key.
func (e *agentEnv) credential(register bool) {
	e.t.Helper()
	ctx := context.Background()
	_, err := e.a.c.Credentials.SetCredential(ctx, &agentv1.SetCredentialRequest{SourceId: e.sourceID, ClientId: testClient,
		GenerateKey: agentv1.KeyAlgorithm_KEY_ALGORITHM_ES384})
	if err != nil {
		e.t.Fatal(err)
	}
	if !register {
		return
	}
	jwks, err := e.a.c.Credentials.GetJWKS(ctx, &agentv1.GetJWKSRequest{})
	if err != nil {
		e.t.Fatal(err)
	}
	if err := e.sb.RegisterClient(testTenant, sandbox.ClientConfig{ClientID: testClient, JWKS: []byte(jwks.GetJwks())}); err != nil {
		e.t.Fatal(err)
	}
}

// cmd runs the CLI as an administrator and returns its output and error.
func (e *agentEnv) cmd(args ...string) ([]byte, error) {
	cmd := exec.Command(e.cli, append([]string{"--socket", filepath.Join(e.home, "medrelay.sock")}, args...)...)
	cmd.Env = append(os.Environ(), "MEDRELAY_APP_TOKEN=")
	out, err := cmd.Output()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		out = append(out, ee.Stderr...)
	}
	return out, err
}

// run runs the CLI and fails the test when it fails.
func (e *agentEnv) run(args ...string) []byte {
	e.t.Helper()
	out, err := e.cmd(args...)
	if err != nil {
		e.t.Fatalf("medrelay %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// connect makes a backend connection with the CLI.
func (e *agentEnv) connect(extra ...string) *agentv1.Connection {
	e.t.Helper()
	var cr agentv1.CreateBackendConnectionResponse
	if err := protojson.Unmarshal(e.run(append([]string{"--json", "connect", e.sourceID, "--backend"}, extra...)...), &cr); err != nil {
		e.t.Fatal(err)
	}
	c := cr.GetConnection()
	if c.GetState() != agentv1.ConnectionState_CONNECTION_STATE_ACTIVE || c.GetPattern() != "backend" {
		e.t.Fatalf("backend connection %v", c)
	}
	return c
}

// Backend connections from the CLI: refused without a credential, failed
// with the source's reason when the source does not know the key, active
// with the asked scopes when it does, and their token is obtained again
// before it expires. smart-2.2-client #225, #226, #229, #233, #235, #239,
// #263.
func TestBackendConnectionCLI(t *testing.T) {
	e := newAgentEnv(t, sandboxtest.WithPatients(2), sandboxtest.WithFaults(sandbox.Faults{AccessTokenLifetime: 2}))
	out, err := e.cmd("connect", e.sourceID, "--backend")
	if err == nil || !strings.Contains(string(out), "CREDENTIAL_MISSING") {
		t.Fatalf("without a credential: %v\n%q", err, out)
	}
	e.credential(false)
	out, err = e.cmd("connect", e.sourceID, "--backend")
	if err == nil || !strings.Contains(string(out), "failed") || !strings.Contains(string(out), "invalid_client") {
		t.Fatalf("with a key the source does not know: %v\n%s", err, out)
	}
	var list agentv1.ListConnectionsResponse
	if err := protojson.Unmarshal(e.run("--json", "connections", "list"), &list); err != nil {
		t.Fatal(err)
	}
	if len(list.GetConnections()) != 1 || list.GetConnections()[0].GetState() != agentv1.ConnectionState_CONNECTION_STATE_FAILED ||
		!strings.Contains(list.GetConnections()[0].GetReason(), "invalid_client") {
		t.Fatalf("the failed connection: %v", list.GetConnections())
	}

	e.credential(true)
	before := e.sb.Stats().Tenants[testTenant]["token:client_credentials"]
	c := e.connect("--scopes", "system/Patient.rs,system/Encounter.rs")
	if strings.Join(c.GetScopes(), " ") != "system/Patient.rs system/Encounter.rs" {
		t.Errorf("scopes %v", c.GetScopes())
	}
	// The token lives 2 s: the agent gets the next one before it expires,
	// with no request from anyone.
	deadline := time.Now().Add(20 * time.Second)
	for e.sb.Stats().Tenants[testTenant]["token:client_credentials"] < before+3 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if n := e.sb.Stats().Tenants[testTenant]["token:client_credentials"] - before; n < 3 {
		t.Fatalf("%d client_credentials grants in 20s for a 2 s token", n)
	}
	if err := e.sb.SetFaults(); err != nil { // tokens of an hour again
		t.Fatal(err)
	}
	g, err := e.a.c.Connections.GetConnection(context.Background(), &agentv1.GetConnectionRequest{ConnectionId: c.GetId()})
	if err != nil || g.GetConnection().GetState() != agentv1.ConnectionState_CONNECTION_STATE_ACTIVE {
		t.Fatalf("after renewals: %v %v", g, err)
	}
	// A sync within the scopes works with the short-lived tokens.
	var st agentv1.StartSyncResponse
	if err := protojson.Unmarshal(e.run("--json", "sync", "start", c.GetId(), "--type", "Patient,Encounter"), &st); err != nil {
		t.Fatal(err)
	}
	v := waitSync(t, e.a.c, st.GetSync().GetId())
	want, _ := e.sb.ExpectedExport(sandbox.ExportParams{Tenant: testTenant, Types: []string{"Patient", "Encounter"}})
	if v.GetState() != agentv1.SyncState_SYNC_STATE_COMPLETED || v.GetResources() != int64(want.Total) {
		t.Fatalf("sync %s (%s): %d of %d resources", v.GetState(), v.GetError(), v.GetResources(), want.Total)
	}
	if out := string(e.run("sync", "list")); !strings.Contains(out, st.GetSync().GetId()) || !strings.Contains(out, "completed") {
		t.Errorf("sync list:\n%s", out)
	}

	// An app does not see the administrator's connection or its syncs.
	ctx := context.Background()
	created, err := e.a.c.Apps.CreateApp(ctx, &agentv1.CreateAppRequest{Name: "other-app"})
	if err != nil {
		t.Fatal(err)
	}
	appc, err := client.Dial(ctx, client.WithSocket(filepath.Join(e.home, "medrelay.sock")), client.WithAppToken(created.GetToken()))
	if err != nil {
		t.Fatal(err)
	}
	defer appc.Close()
	if _, err := appc.Sync.GetSync(ctx, &agentv1.GetSyncRequest{SyncId: st.GetSync().GetId()}); !errors.Is(err, client.ErrNotFound) {
		t.Errorf("an app reads another's sync: %v", err)
	}
	if _, err := appc.Sync.StartSync(ctx, &agentv1.StartSyncRequest{ConnectionId: c.GetId()}); !errors.Is(err, client.ErrNotFound) {
		t.Errorf("an app syncs another's connection: %v", err)
	}

	// Cancelling from the CLI while the source is slow to answer: the
	// export is deleted at the source.
	if err := e.sb.SetFaults(sandbox.Faults{Endpoints: []string{"export-status"}, SlowMillis: 3000}); err != nil {
		t.Fatal(err)
	}
	polls, deletes := e.sb.Stats().Endpoints["export-status"], e.sb.Stats().Endpoints["export-delete"]
	if err := protojson.Unmarshal(e.run("--json", "sync", "start", c.GetId(), "--full"), &st); err != nil {
		t.Fatal(err)
	}
	for e.sb.Stats().Endpoints["export-status"] == polls { // polling (slowly): the export exists
		time.Sleep(20 * time.Millisecond)
	}
	if out := string(e.run("sync", "cancel", st.GetSync().GetId())); !strings.Contains(out, "cancelled") {
		t.Errorf("sync cancel:\n%s", out)
	}
	if n := e.sb.Stats().Endpoints["export-delete"]; n != deletes+1 {
		t.Errorf("export-delete %d -> %d", deletes, n)
	}
}

// The agent SIGKILLed at 20 random points of one sync and the plugin at 5:
// the store ends up holding exactly the export (counts and a digest of
// ids and versions), and no file finished before a kill is fetched again
// more than the interruptions explain.
func TestAgentKilledDuringSync(t *testing.T) {
	// Every file answers 100 ms late: the sync then lasts long enough that
	// each interruption lands while it runs (ingest alone stores this
	// export in a fraction of a second, and kills meant for its second
	// half found it completed).
	e := newAgentEnv(t, sandboxtest.WithPatients(60), sandboxtest.WithConfig(func(c *sandbox.Config) { c.BulkFileResources = 400 }),
		sandboxtest.WithFaults(sandbox.Faults{Endpoints: []string{sandbox.EndpointExportFile}, SlowMillis: 100}))
	a, sb, reqs := e.a, e.sb, e.reqs
	ctx := context.Background()
	want, err := sb.ExpectedExport(sandbox.ExportParams{Tenant: testTenant})
	if err != nil {
		t.Fatal(err)
	}
	e.credential(true)
	conn := e.connect()
	run := e.run
	var st agentv1.StartSyncResponse
	if err := protojson.Unmarshal(run("--json", "sync", "start", conn.GetId()), &st); err != nil {
		t.Fatal(err)
	}
	syncID := st.GetSync().GetId()

	// 25 interruptions at random points of the sync, measured in the
	// share of the export's resources stored: the agent 20 times, the
	// plugin 5 times (never twice in one agent's life: the plugin host
	// would take that for a crash loop).
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	const n = 25
	points := make([]float64, n)
	for i := range points {
		// Up to 85%: one wave of parallel files stores at most 8 of the
		// 74 files at once, so the sync is still running at every point.
		points[i] = rng.Float64() * 0.85
	}
	slices.Sort(points)
	plan := make([]bool, n) // true: kill the plugin
	for _, i := range rng.Perm(5) {
		plan[i*5+1+rng.IntN(4)] = true
	}
	var phases, restarts []string
	type doneAt struct {
		at   time.Time
		done map[string]bool
	}
	var stored []doneAt
	kills, pluginKills := 0, 0
	for i, plugin := range plan {
		var s *agentv1.Sync
		for {
			g, err := a.c.Sync.GetSync(ctx, &agentv1.GetSyncRequest{SyncId: syncID})
			if err != nil {
				t.Fatal(err)
			}
			s = g.GetSync()
			if float64(s.GetResources()) >= points[i]*float64(want.Total) || s.GetState() != agentv1.SyncState_SYNC_STATE_RUNNING && s.GetState() != agentv1.SyncState_SYNC_STATE_QUEUED {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		what := "agent"
		if plugin {
			what = "plugin"
		}
		phases = append(phases, fmt.Sprintf("%s at %s/%s %d/%d", what, short(s.GetState().String()), short(s.GetPhase().String()), s.GetResources(), want.Total))
		if s.GetState() != agentv1.SyncState_SYNC_STATE_RUNNING {
			t.Errorf("interruption %d (%s) came after the sync ended (%s): it tests nothing", i+1, what, s.GetState())
		}
		// Files stored before an interruption are never asked for after it.
		g, err := a.c.Sync.GetSync(ctx, &agentv1.GetSyncRequest{SyncId: syncID, Files: true})
		if err != nil {
			t.Fatal(err)
		}
		done := map[string]bool{}
		for _, f := range g.GetSync().GetFiles() {
			if f.GetDone() {
				done[urlPath(f.GetUrl())] = true
			}
		}
		stored = append(stored, doneAt{time.Now(), done})
		if plugin {
			if a.killPlugin() {
				pluginKills++
			}
			continue
		}
		a.kill()
		kills++
		t0 := time.Now()
		a.start()
		restarts = append(restarts, time.Since(t0).Round(time.Millisecond).String())
	}
	t.Logf("interruptions at: %s", strings.Join(phases, ", "))
	t.Logf("restarts took: %s", strings.Join(restarts, ", "))

	v := waitSync(t, a.c, syncID)
	if v.GetState() != agentv1.SyncState_SYNC_STATE_COMPLETED {
		t.Fatalf("sync %s: %s", v.GetState(), v.GetError())
	}
	if kills != 20 || pluginKills != 5 {
		t.Errorf("%d agent kills, %d plugin kills", kills, pluginKills)
	}
	got := listStored(t, a.c, conn.GetId())
	if got.Total != want.Total || got.Digest != want.Digest {
		t.Errorf("store holds %d resources (digest %s); the export %d (digest %s)", got.Total, got.Digest, want.Total, want.Digest)
	}
	for typ, n := range want.Counts {
		if got.Counts[typ] != n {
			t.Errorf("%s: %d stored, %d exported", typ, got.Counts[typ], n)
		}
	}
	if v.GetResources() != int64(want.Total) || v.GetMalformed() != 0 {
		t.Errorf("sync counted %d resources (%d malformed), the export has %d", v.GetResources(), v.GetMalformed(), want.Total)
	}
	// The CLI reports the sync and writes the records as NDJSON files.
	if out := string(run("sync", "status", syncID)); !strings.Contains(out, "completed") || !strings.Contains(out, fmt.Sprintf("%d of %d stored", v.GetFilesTotal(), v.GetFilesTotal())) {
		t.Errorf("sync status:\n%s", out)
	}
	dir := t.TempDir()
	run("sync", "export", conn.GetId(), "--out", dir)
	for typ, n := range want.Counts {
		b, err := os.ReadFile(filepath.Join(dir, typ+".ndjson"))
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Count(string(b), "\n"); got != n {
			t.Errorf("export %s.ndjson: %d lines, want %d", typ, got, n)
		}
	}

	for _, q := range reqs.all() {
		if q.Method != http.MethodGet || !strings.HasSuffix(q.Path, ".ndjson") {
			continue
		}
		for k, st := range stored {
			if q.At.After(st.at) && st.done[q.Path] {
				t.Errorf("%s, stored before interruption %d, requested after it", q.Path, k+1)
			}
		}
	}
	// Each interruption re-requests at most the files in flight.
	perFile := map[string]int{}
	for _, p := range reqs.filesRequested(0) {
		perFile[p]++
	}
	extra := 0
	for _, n := range perFile {
		extra += n - 1
	}
	if limit := 25 * 8; extra > limit {
		t.Errorf("%d repeated file requests for %d interruptions", extra, 25)
	}
	t.Logf("%d resources in %d files; %d repeated file requests", want.Total, len(perFile), extra)
}

func short(s string) string { return strings.ToLower(s[strings.LastIndexByte(s, '_')+1:]) }

// importSandbox imports the sandbox's brands list and returns the source
// of its generic tenant.
func importSandbox(t *testing.T, c *client.Client, sb *sandbox.Sandbox) string {
	t.Helper()
	ctx := context.Background()
	st, err := c.Directory.Import(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&agentv1.DirectoryServiceImportRequest{Part: &agentv1.DirectoryServiceImportRequest_Start{Start: &agentv1.ImportStart{Url: sb.URL() + "/brands.json"}}}); err != nil {
		t.Fatal(err)
	}
	if err := st.CloseSend(); err != nil {
		t.Fatal(err)
	}
	for {
		m, err := st.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("import: %v", err)
		}
		if m.GetSummary() != nil && m.GetSummary().GetCreated() == 0 {
			t.Fatalf("import created nothing: %v", m.GetSummary())
		}
	}
	res, err := c.Directory.Search(ctx, &agentv1.DirectoryServiceSearchRequest{Query: "generic sandbox", PageSize: 50})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res.GetResults() {
		for _, ep := range r.GetSource().GetEndpoints() {
			if ep.GetUrl() == sb.FHIRBase(testTenant) {
				return r.GetSource().GetId()
			}
		}
	}
	t.Fatalf("no source for %s among %v", sb.FHIRBase(testTenant), res.GetResults())
	return ""
}

func waitSync(t *testing.T, c *client.Client, id string) *agentv1.Sync {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	w, err := c.Sync.WatchSync(ctx, &agentv1.WatchSyncRequest{SyncId: id})
	if err != nil {
		t.Fatal(err)
	}
	var last *agentv1.Sync
	for {
		m, err := w.Recv()
		if errors.Is(err, io.EOF) {
			return last
		}
		if err != nil {
			t.Fatalf("watch: %v (last %v)", err, last)
		}
		last = m.GetSync()
	}
}

// listStored reads a connection's records through RecordService.
func listStored(t *testing.T, c *client.Client, conn string) stored {
	t.Helper()
	out := stored{Counts: map[string]int{}}
	var dg sandbox.ExportDigest
	st, err := c.Records.ListRecords(context.Background(), &agentv1.ListRecordsRequest{ConnectionId: conn, PageSize: 5000})
	if err != nil {
		t.Fatal(err)
	}
	for {
		m, err := st.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range m.GetRecords() {
			if r.GetDeleted() {
				out.Deleted = append(out.Deleted, r.GetResourceType()+"/"+r.GetId())
				continue
			}
			out.Counts[r.GetResourceType()]++
			out.Total++
			dg.Add(r.GetResourceType(), r.GetId(), r.GetVersionId())
		}
	}
	out.Digest = dg.String()
	return out
}
