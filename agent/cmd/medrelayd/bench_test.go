//go:build bench

package main_test

// Issue 6 bench: 100,000 active connections in the store → the agent's start
// time and memory (a real medrelayd process), and the CPU the refresher
// spends keeping connections fresh (real refreshes against the sandbox,
// measured per refresh and extrapolated).

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/medrelay/medrelay/agent/client"
	"github.com/medrelay/medrelay/internal/connections"
	"github.com/medrelay/medrelay/internal/home"
	"github.com/medrelay/medrelay/internal/pull"
	"github.com/medrelay/medrelay/internal/sandbox"
	"github.com/medrelay/medrelay/internal/sandbox/sandboxtest"
	"github.com/medrelay/medrelay/internal/secrets"
	"github.com/medrelay/medrelay/internal/store"
	agentv1 "github.com/medrelay/medrelay/proto/gen/medrelay/agent/v1"
)

// storedTokens has the JSON shape of the connections' custody record.
type storedTokens struct {
	Access   string    `json:"access"`
	Refresh  string    `json:"refresh,omitempty"`
	Expiry   time.Time `json:"expiry"`
	IssuedAt time.Time `json:"issued_at"`
	Version  uint64    `json:"version"`
}

func populate(t *testing.T, homeDir string, n int) {
	t.Helper()
	layout, _ := home.ForHome(homeDir)
	if err := layout.Prepare(); err != nil {
		t.Fatal(err)
	}
	keys, _, err := secrets.Load(layout.KeyFile, true)
	if err != nil {
		t.Fatal(err)
	}
	db, err := store.Open(context.Background(), store.Options{Dir: layout.StoreDir, Key: keys.StoreKey(), GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	conns := store.NewTable[connections.Connection](db, store.Connections)
	pulls := store.NewTable[pull.State](db, store.PullStates)
	toks := store.NewTable[storedTokens](db, store.ConnectionTokens)
	now := time.Now().UTC()
	b := db.NewBatch()
	for i := range n {
		id := fmt.Sprintf("conn_bench%08d", i)
		// Spread over a day so the refresher has nothing due at start.
		next := now.Add(time.Hour + time.Duration(i)*(23*time.Hour)/time.Duration(n))
		c := connections.Connection{
			ID: id, AppID: fmt.Sprintf("app_%03d", i%50), Pattern: connections.PatientAccess,
			SourceID: "epic-sandbox", Vendor: "epic", Plugin: "epic", FHIRBase: "https://fhir.example.org/api/FHIR/R4",
			PatientRef: fmt.Sprintf("mrn-%d", i), PatientID: fmt.Sprintf("e%07d", i),
			Scopes: []string{"launch/patient", "openid", "fhirUser", "offline_access", "patient/*.rs"},
			State:  connections.Active, StateChangedAt: now, CreatedAt: now,
			AccessExpiry: next.Add(10 * time.Minute), HasRefreshToken: true, LastRefreshAt: now, NextRefreshAt: next,
		}
		if err := store.BatchPut(b, conns, id, c); err != nil {
			t.Fatal(err)
		}
		// Pulled an hour ago, next pull in five hours.
		if err := store.BatchPut(b, pulls, id, pull.State{ConnectionID: id, LastSuccessStart: now.Add(-time.Hour), LastSuccessEnd: now.Add(-time.Hour), NextAt: now.Add(5 * time.Hour)}); err != nil {
			t.Fatal(err)
		}
		if err := store.BatchPut(b, toks, id, storedTokens{Access: "at-" + id, Refresh: "rt-" + id, Expiry: c.AccessExpiry, IssuedAt: now, Version: 1}); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Flush(true); err != nil {
		t.Fatal(err)
	}
}

// procStatus reads a field (kB) of /proc/PID/status.
func procStatus(pid int, field string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, field+":") {
			f := strings.Fields(line)
			v, _ := strconv.ParseInt(f[1], 10, 64)
			return v
		}
	}
	return -1
}

func TestBenchConnectionsStart(t *testing.T) {
	const n = 100_000
	homeDir := filepath.Join(t.TempDir(), "h")
	t0 := time.Now()
	populate(t, homeDir, n)
	t.Logf("populated %d connections in %v", n, time.Since(t0))

	// Baseline: an agent with no connections, same machine, same run.
	empty := filepath.Join(t.TempDir(), "empty")
	startEmpty := time.Now()
	de := startDaemon(t, empty)
	baseline := time.Since(startEmpty)
	baseRSS := procStatus(de.cmd.Process.Pid, "VmHWM")
	de.cmd.Process.Kill()
	<-de.done

	// The first start after the populate builds the connection index from
	// the records (as after an upgrade); the steady state is the next one.
	first := time.Now()
	d := startDaemon(t, homeDir)
	firstStart := time.Since(first)
	d.cmd.Process.Signal(syscall.SIGTERM)
	<-d.done

	start := time.Now()
	d = startDaemon(t, homeDir, "--http-addr", "127.0.0.1:0", "--log-level", "debug")
	elapsed := time.Since(start)
	for _, l := range strings.Split(d.log.String(), "\n") {
		if strings.Contains(l, "took=") || strings.Contains(l, "directory loaded") {
			t.Log(l)
		}
	}
	c, err := client.Dial(context.Background(), client.WithSocket(client.HomeSocket(homeDir)), client.WithAppToken(""))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	st, err := c.Admin.GetStatus(context.Background(), &agentv1.GetStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.GetConnectionCount() != n {
		t.Fatalf("agent sees %d connections, want %d", st.GetConnectionCount(), n)
	}
	peak := procStatus(d.cmd.Process.Pid, "VmHWM")
	rss := procStatus(d.cmd.Process.Pid, "VmRSS")
	// Idle CPU over 5 s with 100k connections scheduled (none due).
	cpu0 := cpuTicks(d.cmd.Process.Pid)
	time.Sleep(5 * time.Second)
	idle := float64(cpuTicks(d.cmd.Process.Pid)-cpu0) / 100 / 5
	verdict := "ok"
	if elapsed > 2*time.Second || peak > 300*1024 {
		verdict = "MISSED"
	}
	fmt.Printf("BENCH agent.start.100k_connections  start=%v (socket answering; first start rebuilding the index %v)  baseline(empty store)=%v  peak_rss=%dMB rss=%dMB  baseline_peak_rss=%dMB  idle_cpu=%.3f cores  goal start<=2s rss<=300MB  %s\n",
		elapsed.Round(time.Millisecond), firstStart.Round(time.Millisecond), baseline.Round(time.Millisecond), peak/1024, rss/1024, baseRSS/1024, idle, verdict)
}

func cpuTicks(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	u, _ := strconv.ParseInt(f[11], 10, 64)
	k, _ := strconv.ParseInt(f[12], 10, 64)
	return u + k
}

// TestBenchRefresherCPU: real connections at the sandbox whose tokens come
// due together; the agent's CPU time per refresh, above its idle rate, and
// what that means for 100,000 connections.
func TestBenchRefresherCPU(t *testing.T) {
	const n = 500
	ctx := context.Background()
	sb := sandboxtest.Start(t, sandboxtest.WithPatients(5), sandboxtest.WithOpenRegistration())
	homeDir := filepath.Join(t.TempDir(), "h")
	httpAddr := freeAddr(t)
	d := startDaemon(t, homeDir, "--http-addr", httpAddr)
	c := dialHome(t, homeDir)
	defer c.Close()
	st, _ := c.Directory.Import(ctx)
	st.Send(&agentv1.DirectoryServiceImportRequest{Part: &agentv1.DirectoryServiceImportRequest_Start{Start: &agentv1.ImportStart{Url: sb.URL() + "/brands.json"}}})
	st.CloseSend()
	for {
		if _, err := st.Recv(); err != nil {
			break
		}
	}
	res, _ := c.Directory.Search(ctx, &agentv1.DirectoryServiceSearchRequest{Query: "sandbox", PageSize: 50})
	src := ""
	for _, r := range res.GetResults() {
		if strings.TrimRight(r.GetSource().GetFhirBaseUrl(), "/") == sb.FHIRBase("generic") {
			src = r.GetSource().GetId()
		}
	}
	c.Credentials.SetCredential(ctx, &agentv1.SetCredentialRequest{SourceId: src, ClientId: "bench", AuthMethod: agentv1.ClientAuthMethod_CLIENT_AUTH_METHOD_NONE})
	sb.RegisterClient("generic", sandbox.ClientConfig{ClientID: "bench", RedirectURIs: []string{"http://" + httpAddr + "/oauth/callback"}})
	// Tokens of 40 s: the refresher renews them at 80%, all within seconds
	// of each other.
	sb.SetFaults(sandbox.Faults{Tenant: "generic", AccessTokenLifetime: 40})
	hc := &http.Client{CheckRedirect: func(req *http.Request, _ []*http.Request) error {
		if strings.HasPrefix(req.URL.Path, "/done") {
			return http.ErrUseLastResponse
		}
		return nil
	}}
	for i := range n {
		s, err := c.Sessions.CreateSession(ctx, &agentv1.CreateSessionRequest{PatientRef: fmt.Sprint("p", i), ReturnUrl: "http://127.0.0.1:1/done", SourceId: src})
		if err != nil {
			t.Fatal(err)
		}
		r, err := hc.Get(s.GetSession().GetUrl())
		if err != nil {
			t.Fatal(err)
		}
		r.Body.Close()
	}
	created := time.Now()
	sb.SetFaults()
	pid := d.cmd.Process.Pid
	base := sb.Stats().Endpoints["token:refresh_token"]
	// Idle rate first (nothing due for ~25 s).
	time.Sleep(3 * time.Second)
	i0, t0 := cpuTicks(pid), time.Now()
	time.Sleep(10 * time.Second)
	idleRate := float64(cpuTicks(pid)-i0) / 100 / time.Since(t0).Seconds()
	// Then the refreshes.
	c0, w0 := cpuTicks(pid), time.Now()
	deadline := created.Add(90 * time.Second)
	for sb.Stats().Endpoints["token:refresh_token"]-base < n && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
	}
	done := sb.Stats().Endpoints["token:refresh_token"] - base
	wall := time.Since(w0).Seconds()
	cpu := float64(cpuTicks(pid)-c0)/100 - idleRate*wall
	per := cpu / float64(max(done, 1))
	fmt.Printf("BENCH agent.refresher  refreshes=%d in %.1fs  cpu_per_refresh=%.2fms (above idle %.3f cores)  "+
		"100k connections: daily keep-alive=%.0f cpu-s/day (%.4f cores); 10-minute tokens refreshed at 80%%=%.2f cores\n",
		done, wall, per*1000, idleRate, per*100000, per*100000/86400, per*100000/(8*60))
	if done < n {
		t.Fatalf("only %d of %d connections refreshed", done, n)
	}
}
