//go:build bench

package sandbox_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/medrelay/medrelay/internal/sandbox"
	"github.com/medrelay/medrelay/internal/sandbox/sandboxtest"
)

// fetchAll downloads urls one after another into io.Discard and returns bytes and elapsed time.
func fetchAll(t *testing.T, c *http.Client, urls []string, tok string) (int64, time.Duration) {
	t.Helper()
	buf := make([]byte, 256<<10)
	start := time.Now()
	var total int64
	for _, u := range urls {
		req, _ := http.NewRequest("GET", u, nil)
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		n, err := io.CopyBuffer(io.Discard, resp.Body, buf)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("GET %s: %d %v", u, resp.StatusCode, err)
		}
		total += n
	}
	return total, time.Since(start)
}

func median(d []float64) float64 {
	sort.Float64s(d)
	return d[len(d)/2]
}

// TestBenchNDJSONServing compares the sandbox's on-the-fly NDJSON rate with
// http.FileServer serving the same bytes from disk, same client, same run.
func TestBenchNDJSONServing(t *testing.T) {
	s := sandboxtest.Start(t, sandboxtest.WithPatients(600), sandboxtest.WithConfig(func(c *sandbox.Config) { c.BulkFileResources = 50000 }))
	tok := systemToken(t, s, "generic")
	m := poll(t, kickoff(t, s.FHIRBase("generic")+"/$export", tok), tok)
	var urls []string
	for _, o := range m.Output {
		urls = append(urls, o.URL)
	}
	// Materialize the very same bytes for the file server.
	dir := t.TempDir()
	var fileURLs []string
	fs := httptest.NewServer(http.FileServer(http.Dir(dir)))
	defer fs.Close()
	for i, u := range urls {
		req, _ := http.NewRequest("GET", u, nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		name := "f" + strconv.Itoa(i) + ".ndjson"
		f, _ := os.Create(filepath.Join(dir, name))
		_, err = io.Copy(f, resp.Body)
		resp.Body.Close()
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		fileURLs = append(fileURLs, fs.URL+"/"+name)
	}
	c := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	// Pairs measured back to back, alternating which goes first, so that
	// load from elsewhere on the machine hits both sides alike; the verdict
	// uses the median of the pairwise ratios.
	var sb, fb, ratios []float64
	var size int64
	for i := range 9 {
		var n1, n2 int64
		var d1, d2 time.Duration
		if i%2 == 0 {
			n1, d1 = fetchAll(t, c, urls, tok)
			n2, d2 = fetchAll(t, c, fileURLs, "")
		} else {
			n2, d2 = fetchAll(t, c, fileURLs, "")
			n1, d1 = fetchAll(t, c, urls, tok)
		}
		if n1 != n2 {
			t.Fatalf("sandbox served %d bytes, files hold %d", n1, n2)
		}
		size = n1
		r1, r2 := float64(n1)/d1.Seconds()/1e6, float64(n2)/d2.Seconds()/1e6
		sb, fb, ratios = append(sb, r1), append(fb, r2), append(ratios, r1/r2)
	}
	rate, base, ratio := median(sb), median(fb), median(ratios)
	verdict := "ok"
	if ratio < 0.8 {
		verdict = "BELOW-GOAL"
	}
	fmt.Printf("BENCH sandbox.ndjson  rate=%.0fMB/s  baseline(fileserver)=%.0fMB/s  ratio=%.2f  goal>=0.8  %s  (%d files, %.0f MB; medians of 9 back-to-back pairs)\n",
		rate, base, ratio, verdict, len(urls), float64(size)/1e6)
}

// TestBenchExportMemory serves a whole 20,000-patient export and samples the
// process's heap while it streams; the goal is flat and under 100 MB.
func TestBenchExportMemory(t *testing.T) {
	patients := 20000
	if v := os.Getenv("SANDBOX_BENCH_PATIENTS"); v != "" {
		patients, _ = strconv.Atoi(v)
	}
	s := sandboxtest.Start(t, sandboxtest.WithPatients(patients))
	tok := systemToken(t, s, "generic")
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	var peakHeap, peakSys atomic.Uint64
	var samples []uint64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tk := time.NewTicker(100 * time.Millisecond)
		defer tk.Stop()
		for {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peakHeap.Load() {
				peakHeap.Store(ms.HeapInuse)
			}
			if ms.Sys > peakSys.Load() {
				peakSys.Store(ms.Sys)
			}
			samples = append(samples, ms.HeapInuse)
			select {
			case <-stop:
				return
			case <-tk.C:
			}
		}
	}()
	start := time.Now()
	m := poll(t, kickoff(t, s.FHIRBase("generic")+"/$export", tok), tok)
	planned := time.Since(start)
	var urls []string
	resources := 0
	for _, o := range m.Output {
		urls = append(urls, o.URL)
		resources += o.Count
	}
	n, d := fetchAll(t, &http.Client{}, urls, tok)
	close(stop)
	<-done
	// "Flat": the heap in the last quarter of the run is no larger than in the first quarter plus a margin.
	q := len(samples) / 4
	first, last := maxU(samples[:q+1]), maxU(samples[len(samples)-q-1:])
	flat := last <= first+16<<20
	hwm := vmHWM()
	verdict := "ok"
	if peakSys.Load() > 100<<20 || !flat {
		verdict = "BELOW-GOAL"
	}
	fmt.Printf("BENCH sandbox.export-memory  patients=%d  resources=%d  bytes=%.2fGB  rate=%.0fMB/s  plan=%.1fs  peak_heap_inuse=%.0fMB  peak_go_sys=%.0fMB  process_peak_rss=%s  heap_first_quarter=%.0fMB  heap_last_quarter=%.0fMB  goal=flat,<100MB  %s\n",
		patients, resources, float64(n)/1e9, float64(n)/d.Seconds()/1e6, planned.Seconds(),
		float64(peakHeap.Load())/1e6, float64(peakSys.Load())/1e6, hwm, float64(first)/1e6, float64(last)/1e6, verdict)
}

func maxU(v []uint64) uint64 {
	var m uint64
	for _, x := range v {
		m = max(m, x)
	}
	return m
}

func vmHWM() string {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return "n/a"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmHWM:") {
			return strings.Join(strings.Fields(strings.TrimPrefix(line, "VmHWM:")), "")
		}
	}
	return "n/a"
}
