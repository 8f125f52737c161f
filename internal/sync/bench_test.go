//go:build bench

package sync

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	stdsync "sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/medrelay/medrelay/internal/sandbox"
	"github.com/medrelay/medrelay/internal/sandbox/sandboxtest"
	agentv1 "github.com/medrelay/medrelay/proto/gen/medrelay/agent/v1"
	"google.golang.org/protobuf/encoding/protojson"
)

// TestBenchBulk measures, in one run per export size: (a) the limit, every
// file of the export's manifest downloaded with the agent's parallelism
// into io.Discard; (b) `medrelay sync` end to end into the store of a real
// medrelayd (kick-off, polling, downloads through the plugin, ingest). It
// prints b/a (goal ≤ 1.5), resources per second and the agent's peak RSS
// (goal ≤ 200 MB whatever the size). Sizes: MEDRELAY_BENCH_BULK_SIZES
// (default 1000000; e.g. "1000000,5000000"); MEDRELAY_TEST_AGENT_GOMEMLIMIT
// runs the agent with that GOMEMLIMIT (e.g. 150MiB).
func TestBenchBulk(t *testing.T) {
	sizes := []int{1_000_000}
	if v := os.Getenv("MEDRELAY_BENCH_BULK_SIZES"); v != "" {
		sizes = nil
		for _, s := range strings.Split(v, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(s))
			if err != nil || n <= 0 {
				t.Fatalf("MEDRELAY_BENCH_BULK_SIZES: %q", s)
			}
			sizes = append(sizes, n)
		}
	}
	for _, n := range sizes {
		t.Run(fmt.Sprint(n), func(t *testing.T) { benchBulk(t, n) })
	}
}

// perPatient is about how many resources a sandbox patient has.
const perPatient = 415

func benchBulk(t *testing.T, resources int) {
	patients := (resources + perPatient - 1) / perPatient
	e := newAgentEnv(t, sandboxtest.WithPatients(patients))
	want, err := e.sb.ExpectedExport(sandbox.ExportParams{Tenant: testTenant})
	if err != nil {
		t.Fatal(err)
	}
	e.credential(true)
	conn := e.connect()
	// The agent downloads as many files at once as the plugin's rate
	// limit allows: 8 for the smart plugin (plugins/smart).
	parallel := 8

	// (a) The limit: the same export's files, downloaded raw.
	base, bytes := baselineDownload(t, e, parallel)

	// (b) medrelay sync, end to end.
	idle := memOf(e.a.cmd.Process.Pid)
	var rss peakRSS
	rss.watch(e.a.cmd.Process.Pid)
	stopProfiles := profileAgent(t)
	start := time.Now()
	var st agentv1.StartSyncResponse
	if err := protojson.Unmarshal(e.run("--json", "sync", "start", conn.GetId()), &st); err != nil {
		t.Fatal(err)
	}
	v := waitSyncFor(t, e, st.GetSync().GetId(), 2*time.Hour)
	took := time.Since(start)
	peak := rss.stop()
	stopProfiles()
	if v.GetState() != agentv1.SyncState_SYNC_STATE_COMPLETED || v.GetResources() != int64(want.Total) {
		t.Fatalf("sync %s (%s): %d of %d resources", v.GetState(), v.GetError(), v.GetResources(), want.Total)
	}
	ratio := took.Seconds() / base.Seconds()
	verdict := func(ok bool) string {
		if ok {
			return "ok"
		}
		return "MISSED"
	}
	fmt.Printf("BENCH sync.bulk  resources=%d  files=%d  bytes=%dMB  sync=%s  baseline(download only, %d parallel, /dev/null)=%s  ratio=%.2f  goal<=1.5  %s\n",
		want.Total, v.GetFilesTotal(), bytes>>20, took.Round(10*time.Millisecond), parallel, base.Round(10*time.Millisecond), ratio, verdict(ratio <= 1.5))
	fmt.Printf("BENCH sync.bulk.rate  resources=%d  rate=%.0f resources/s  %.1f MB/s  baseline=%.0f resources/s\n",
		want.Total, float64(want.Total)/took.Seconds(), float64(bytes)/1e6/took.Seconds(), float64(want.Total)/base.Seconds())
	limit := os.Getenv("MEDRELAY_TEST_AGENT_GOMEMLIMIT")
	if limit == "" {
		limit = "none"
	}
	fmt.Printf("BENCH sync.bulk.memory  resources=%d  agent_peak_rss=%dMB (peaks: anonymous %dMB, file-backed mmap %dMB; idle before the sync %dMB; GOMEMLIMIT %s)  goal<=200MB  %s\n",
		want.Total, peak.hwm>>20, peak.anon>>20, peak.file>>20, idle["VmRSS"]>>20, limit, verdict(peak.hwm <= 200<<20))
	// What the sync left on disk (docs/bulk.md, sizing): the records
	// directory holds the resources (segments), their change log and key
	// index; the store only progress and the logs' committed lengths.
	dir := filepath.Join(e.home, "records")
	records, store := diskBytes(t, dir, ""), diskBytes(t, filepath.Join(e.home, "store"), "")
	segs, logs := diskBytes(t, dir, ".seg"), diskBytes(t, dir, ".log")
	keys := records - segs - logs
	fmt.Printf("BENCH sync.bulk.disk  resources=%d  records=%dMB (segments %dMB, change log %dMB = %.0f bytes/resource, key index and rest %dMB = %.0f bytes/resource)  store=%dMB  baseline(export NDJSON)=%dMB  (information)\n",
		want.Total, records>>20, segs>>20, logs>>20, float64(logs)/float64(want.Total), keys>>20, float64(keys)/float64(want.Total), store>>20, bytes>>20)
}

// diskBytes is the disk space the files under dir take (allocated blocks:
// Badger's files are sparse while it runs).
func diskBytes(t *testing.T, dir, suffix string) int64 {
	var n int64
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, suffix) {
			return err
		}
		fi, err := d.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil // compacted away meanwhile
		}
		if err != nil {
			return err
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			n += st.Blocks * 512
		} else {
			n += fi.Size()
		}
		return nil
	})
	if err != nil {
		t.Logf("disk use of %s: %v", dir, err)
	}
	return n
}

func waitSyncFor(t *testing.T, e *agentEnv, id string, patience time.Duration) *agentv1.Sync {
	t.Helper()
	deadline := time.Now().Add(patience)
	for {
		g, err := e.a.c.Sync.GetSync(context.Background(), &agentv1.GetSyncRequest{SyncId: id})
		if err != nil {
			t.Fatal(err)
		}
		s := g.GetSync()
		if s.GetState() == agentv1.SyncState_SYNC_STATE_COMPLETED || s.GetState() == agentv1.SyncState_SYNC_STATE_FAILED || s.GetState() == agentv1.SyncState_SYNC_STATE_CANCELLED {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("sync still %s after %s", s.GetState(), patience)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// baselineDownload kicks off the same export with a token of its own,
// waits for the manifest, and times downloading every file into
// io.Discard, parallel files at once.
func baselineDownload(t *testing.T, e *agentEnv, parallel int) (time.Duration, int64) {
	t.Helper()
	// A token for the bench's own client.
	k := sandboxtest.NewKey(t, "ES384")
	if err := e.sb.RegisterClient(testTenant, sandbox.ClientConfig{ClientID: "bench-baseline", JWKS: k.JWKS()}); err != nil {
		t.Fatal(err)
	}
	tokenURL := e.sb.URL() + "/" + testTenant + "/auth/token"
	form := url.Values{"grant_type": {"client_credentials"}, "scope": {"system/*.rs"},
		"client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"},
		"client_assertion":      {k.Assertion(t, "bench-baseline", tokenURL, 4*time.Minute, nil)}}
	resp, err := http.PostForm(tokenURL, form)
	if err != nil {
		t.Fatal(err)
	}
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&tok)
	resp.Body.Close()
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: parallel}}
	get := func(u string, h map[string]string) *http.Response {
		req, _ := http.NewRequest(http.MethodGet, u, nil)
		req.Header.Set("Authorization", "Bearer "+tok.AccessToken)
		for k, v := range h {
			req.Header.Set(k, v)
		}
		r, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	r := get(e.sb.FHIRBase(testTenant)+"/$export", map[string]string{"Accept": "application/fhir+json", "Prefer": "respond-async"})
	r.Body.Close()
	status := r.Header.Get("Content-Location")
	var man struct {
		Output []struct{ URL string } `json:"output"`
	}
	for {
		r := get(status, map[string]string{"Accept": "application/json"})
		if r.StatusCode == http.StatusOK {
			_ = json.NewDecoder(r.Body).Decode(&man)
			r.Body.Close()
			break
		}
		r.Body.Close()
		time.Sleep(100 * time.Millisecond)
	}
	var total atomic.Int64
	files := make(chan string)
	var wg stdsync.WaitGroup
	start := time.Now()
	for range parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 1<<20)
			for u := range files {
				r := get(u, map[string]string{"Accept": "application/fhir+ndjson"})
				n, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{r.Body}, buf)
				r.Body.Close()
				if err != nil || r.StatusCode != http.StatusOK {
					t.Errorf("%s: %d %v", u, r.StatusCode, err)
				}
				total.Add(n)
			}
		}()
	}
	for _, f := range man.Output {
		files <- f.URL
	}
	close(files)
	wg.Wait()
	took := time.Since(start)
	// Let the source drop the files.
	req, _ := http.NewRequest(http.MethodDelete, status, nil)
	req.Header.Set("Authorization", "Bearer "+tok.AccessToken)
	if r, err := hc.Do(req); err == nil {
		r.Body.Close()
	}
	return took, total.Load()
}

// peakRSS samples a process's memory: VmHWM (the kernel's high-water mark
// of its resident memory) and the peaks of its anonymous (heap) and
// file-backed (Badger's memory-mapped tables and logs) resident parts.
type peakRSS struct {
	pid   int
	stopc chan struct{}
	done  chan memPeak
}

type memPeak struct{ hwm, anon, file int64 }

func (p *peakRSS) watch(pid int) {
	p.pid, p.stopc, p.done = pid, make(chan struct{}), make(chan memPeak, 1)
	go func() {
		var peak memPeak
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			m := memOf(pid)
			peak.hwm, peak.anon, peak.file = max(peak.hwm, m["VmHWM"]), max(peak.anon, m["RssAnon"]), max(peak.file, m["RssFile"])
			select {
			case <-p.stopc:
				p.done <- peak
				return
			case <-tick.C:
			}
		}
	}()
}

func (p *peakRSS) stop() memPeak {
	close(p.stopc)
	peak := <-p.done
	peak.hwm = max(peak.hwm, memOf(p.pid)["VmHWM"])
	return peak
}

// memOf reads the kB fields of /proc/<pid>/status, in bytes.
func memOf(pid int) map[string]int64 {
	out := map[string]int64{}
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return out
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || !strings.HasSuffix(v, "kB") {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
		if err == nil {
			out[k] = kb << 10
		}
	}
	return out
}

// profileAgent saves the agent's CPU profile of the sync and a heap profile
// a second into /tmp/medrelay-bench-*.prof when MEDRELAY_BENCH_PPROF_ADDR
// names its admin address (the agent then serves /debug/pprof/ there).
func profileAgent(t *testing.T) (stop func()) {
	addr := os.Getenv("MEDRELAY_BENCH_PPROF_ADDR")
	if addr == "" {
		return func() {}
	}
	done := make(chan struct{})
	var wg stdsync.WaitGroup
	save := func(name, path string) {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Logf("profile %s: %v", name, err)
			return
		}
		defer resp.Body.Close()
		f, err := os.Create("/tmp/medrelay-bench-" + name + ".prof")
		if err != nil {
			t.Logf("profile %s: %v", name, err)
			return
		}
		defer f.Close()
		io.Copy(f, resp.Body)
	}
	wg.Add(2)
	go func() {
		defer wg.Done()
		save("cpu", "/debug/pprof/profile?seconds=10")
	}()
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-done:
				return
			case <-time.After(time.Second):
			}
			save(fmt.Sprintf("heap-%02d", i), "/debug/pprof/heap")
		}
	}()
	return func() { close(done); wg.Wait() }
}
