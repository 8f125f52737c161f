//go:build bench && unix

package records_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/medrelay/medrelay/agent/client"
	"github.com/medrelay/medrelay/internal/api"
	"github.com/medrelay/medrelay/internal/apps"
	"github.com/medrelay/medrelay/internal/audit"
	"github.com/medrelay/medrelay/internal/ipc"
	"github.com/medrelay/medrelay/internal/records"
	"github.com/medrelay/medrelay/internal/sandbox/synth"
	"github.com/medrelay/medrelay/internal/store"
	agentv1 "github.com/medrelay/medrelay/proto/gen/medrelay/agent/v1"
)

var benchKey = bytes.Repeat([]byte{1}, 32)

// benchN is how many resources the benchmarks use: 1M, or
// $MEDRELAY_BENCH_RECORDS for a quick look.
func benchN() int {
	if v, err := strconv.Atoi(os.Getenv("MEDRELAY_BENCH_RECORDS")); err == nil && v > 0 {
		return v
	}
	return 1_000_000
}

// synthetic writes n resources of the sandbox's synthetic population as
// NDJSON, patient by patient, and returns the bytes written.
func synthetic(w io.Writer, n int) (int64, error) {
	d := synth.New(42, 1<<20)
	bw := bufio.NewWriterSize(w, 1<<20)
	var buf []byte
	var total int64
	left := n
	for p := 0; left > 0; p++ {
		for _, t := range synth.AllTypes() {
			if t.Shared() {
				continue
			}
			for k := 0; k < d.Count(p, t) && left > 0; k++ {
				buf = d.Append(buf[:0], synth.Ref{Type: t, Patient: p, K: k}, synth.Meta{})
				buf = append(buf, '\n')
				if _, err := bw.Write(buf); err != nil {
					return total, err
				}
				total += int64(len(buf))
				left--
			}
		}
	}
	return total, bw.Flush()
}

// memPeak samples the Go heap until stopped: the largest live heap (as of
// each GC) and the largest heap in use (live plus garbage not yet
// collected). It also resets and then reads the kernel's peak RSS (Linux).
type memPeak struct {
	stop  chan struct{}
	done  chan struct{}
	live  atomic.Uint64
	inuse atomic.Uint64
}

func startMemPeak() *memPeak {
	_ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) // reset VmHWM
	runtime.GC()
	m := &memPeak{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(m.done)
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		samples := []metrics.Sample{{Name: "/gc/heap/live:bytes"}, {Name: "/memory/classes/heap/objects:bytes"}}
		for {
			metrics.Read(samples)
			if v := samples[0].Value.Uint64(); v > m.live.Load() {
				m.live.Store(v)
			}
			if v := samples[1].Value.Uint64(); v > m.inuse.Load() {
				m.inuse.Store(v)
			}
			select {
			case <-m.stop:
				return
			case <-t.C:
			}
		}
	}()
	return m
}

func (m *memPeak) end() (liveMB, inuseMB, rssMB float64) {
	close(m.stop)
	<-m.done
	if b, err := os.ReadFile("/proc/self/status"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmHWM:" {
				kb, _ := strconv.ParseFloat(f[1], 64)
				rssMB = kb / 1024
			}
		}
	}
	return float64(m.live.Load()) / (1 << 20), float64(m.inuse.Load()) / (1 << 20), rssMB
}

func openBenchStore(t *testing.T, dir string) (*store.DB, *records.Store) {
	t.Helper()
	db, err := store.Open(context.Background(), store.Options{Dir: dir, Key: benchKey, GCInterval: -1, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	// As the agent opens it: bodies in segments beside the store.
	s, err := records.Open(context.Background(), db, records.WithLogger(slog.New(slog.DiscardHandler)),
		records.WithSegments(filepath.Join(dir, "segments"), bytes.Repeat([]byte{2}, 32)))
	if err != nil {
		t.Fatal(err)
	}
	return db, s
}

type ingestRun struct {
	n       int
	bytes   int64
	elapsed time.Duration
	liveMB  float64
	inuseMB float64
	rssMB   float64
}

func (r ingestRun) perSec() float64 { return float64(r.n) / r.elapsed.Seconds() }
func (r ingestRun) mbps() float64   { return float64(r.bytes) / (1 << 20) / r.elapsed.Seconds() }

// ingest streams n synthetic resources into a fresh store the way a sync
// job does (IngestNDJSON with a checkpoint per batch, fsync per batch).
func ingest(t *testing.T, dir string, n int) (ingestRun, *store.DB, *records.Store) {
	t.Helper()
	db, s := openBenchStore(t, dir)
	pr, pw := io.Pipe()
	var gen int64
	go func() {
		var err error
		gen, err = synthetic(pw, n)
		pw.CloseWithError(err)
	}()
	progress := store.NewTable[[]byte](db, store.Name("bench_progress"))
	mp := startMemPeak()
	start := time.Now()
	res, err := s.IngestNDJSON(context.Background(), "bulk", pr, records.IngestOptions{
		File: "bench.ndjson",
		Checkpoint: func(b *store.Batch, p records.Progress) error {
			return store.BatchPut(b, progress, "bench", []byte(strconv.FormatInt(p.Position.Offset, 10)))
		},
	})
	elapsed := time.Since(start)
	live, inuse, rss := mp.end()
	if err != nil {
		t.Fatal(err)
	}
	if res.Counts.Written != n || res.Malformed != 0 {
		t.Fatalf("ingest: %+v", res)
	}
	return ingestRun{n: n, bytes: gen, elapsed: elapsed, liveMB: live, inuseMB: inuse, rssMB: rss}, db, s
}

// rawBatch is the floor under ingest: the same bytes written with a bare
// WriteBatch under line-number keys, nothing parsed, no index, one fsync
// per 4 MiB as ingest does.
func rawBatch(t *testing.T, dir string, n int) ingestRun {
	t.Helper()
	db, err := store.Open(context.Background(), store.Options{Dir: dir, Key: benchKey, GCInterval: -1, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	tb := store.NewTable[[]byte](db, store.Name("bench_raw"))
	pr, pw := io.Pipe()
	var gen int64
	go func() {
		var err error
		gen, err = synthetic(pw, n)
		pw.CloseWithError(err)
	}()
	start := time.Now()
	br := bufio.NewReaderSize(pr, 1<<20)
	b := db.NewBatch()
	size, i := 0, 0
	for {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := store.BatchPut(b, tb, fmt.Sprintf("%016x", i), bytes.Clone(line[:len(line)-1])); err != nil {
			t.Fatal(err)
		}
		i++
		if size += len(line); size >= 4<<20 {
			if err := b.Flush(true); err != nil {
				t.Fatal(err)
			}
			b, size = db.NewBatch(), 0
		}
	}
	if err := b.Flush(true); err != nil {
		t.Fatal(err)
	}
	return ingestRun{n: i, bytes: gen, elapsed: time.Since(start)}
}

// TestBenchRecordIngest: 1M synthetic resources streamed into the store,
// with a raw WriteBatch of the same bytes as the floor, and the peak memory
// at 100k and 1M resources (flat memory means the same peak).
func TestBenchRecordIngest(t *testing.T) {
	n := benchN()
	small, db, _ := ingest(t, t.TempDir(), n/10)
	db.Close()
	dir := t.TempDir()
	big, db, _ := ingest(t, dir, n)
	db.Close()
	var disk int64
	_ = filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			disk += fi.Size()
		}
		return nil
	})
	raw := rawBatch(t, t.TempDir(), n)
	fmt.Printf("BENCH records.ingest  resources=%d  rate=%.0f/s  %.1fMB/s  baseline(raw WriteBatch)=%.0f/s %.1fMB/s  ratio=%.2f  store=%.0fMB\n",
		big.n, big.perSec(), big.mbps(), raw.perSec(), raw.mbps(), big.perSec()/raw.perSec(), float64(disk)/(1<<20))
	fmt.Printf("BENCH records.ingest.memory  peak_live_heap: %d=%.0fMB %d=%.0fMB  peak_heap_in_use: %d=%.0fMB %d=%.0fMB  peak_rss(process): %d=%.0fMB %d=%.0fMB\n",
		small.n, small.liveMB, big.n, big.liveMB, small.n, small.inuseMB, big.n, big.inuseMB, small.n, small.rssMB, big.n, big.rssMB)
}

// TestBenchRecordList: RecordService.ListRecords over the agent's socket
// (real API, guard and audit) against the same stored bytes read raw (the
// change log and the bodies' segment files read whole, with the
// decryption's cost), in the same run, warm.
func TestBenchRecordList(t *testing.T) {
	n := benchN()
	dir := t.TempDir()
	_, db, recs := ingest(t, dir, n)
	defer db.Close()
	log := slog.New(slog.DiscardHandler)
	al := audit.New(db, log)
	defer al.Close()
	srv := api.New(api.Deps{Logger: log, Apps: apps.NewRegistry(db), Audit: al, RecordStore: recs,
		Status: func(context.Context) (*agentv1.GetStatusResponse, error) { return &agentv1.GetStatusResponse{}, nil }})
	sock := filepath.Join(t.TempDir(), "bench.sock")
	lis, err := ipc.Listen(sock, ipc.ListenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	defer srv.Stop(time.Second)
	c, err := client.Dial(context.Background(), client.WithSocket(sock), client.WithAppToken(""))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	// Each run reports records, bytes, wall time and the process's CPU time
	// (server, client and store together): on a shared machine the CPU
	// ratio is the steadier of the two.
	type result struct {
		n         int
		size      int64
		wall, cpu time.Duration
	}
	measure := func(f func() (int, int64)) result {
		c0, start := cpuTime(), time.Now()
		n, size := f()
		return result{n, size, time.Since(start), cpuTime() - c0}
	}
	// The floor: the change log's files and the bodies' segment files read
	// whole and run through AES-256-GCM in 800-byte pieces (a body's size),
	// as List must decrypt them. It counts the log's entries from its
	// blocks' headers (16 bytes: payload length, entry count, first
	// sequence; see changelog.go).
	block, _ := aes.NewCipher(make([]byte, 32))
	gcm, _ := cipher.NewGCM(block)
	scan := func() (int, int64) {
		cnt, size := 0, int64(0)
		nonce := make([]byte, 12)
		var out []byte
		err = filepath.WalkDir(filepath.Join(dir, "segments"), func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || !(strings.HasSuffix(p, ".seg") || strings.HasSuffix(p, ".log")) {
				return err
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			size += int64(len(b))
			if strings.HasSuffix(p, ".log") {
				// Each block's header says how many entries it holds.
				for o := 0; o+16 <= len(b); {
					cnt += int(binary.BigEndian.Uint32(b[o+4:]))
					o += 16 + int(binary.BigEndian.Uint32(b[o:]))
				}
			}
			for len(b) > 0 {
				k := min(len(b), 800)
				out = gcm.Seal(out[:0], nonce, b[:k], nil)
				b = b[k:]
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return cnt, size
	}
	list := func() (int, int64) {
		st, err := c.Records.ListRecords(context.Background(), &agentv1.ListRecordsRequest{ConnectionId: "bulk", PageSize: 1000})
		if err != nil {
			t.Fatal(err)
		}
		cnt, size := 0, int64(0)
		for {
			m, err := st.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range m.GetRecords() {
				cnt++
				size += int64(len(r.GetJson()))
			}
		}
		return cnt, size
	}
	// Interleaved, best of three each: the machine is shared, and the
	// two should see the same conditions.
	var s, l result
	for i := range 3 {
		rs, rl := measure(scan), measure(list)
		if rs.n != n || rl.n != n {
			t.Fatalf("scan saw %d, list %d, want %d", rs.n, rl.n, n)
		}
		if i == 0 || rs.wall < s.wall {
			s.n, s.size, s.wall = rs.n, rs.size, rs.wall
		}
		if i == 0 || rs.cpu < s.cpu {
			s.cpu = rs.cpu
		}
		if i == 0 || rl.wall < l.wall {
			l.n, l.size, l.wall = rl.n, rl.size, rl.wall
		}
		if i == 0 || rl.cpu < l.cpu {
			l.cpu = rl.cpu
		}
	}
	sn, ssize, sd := s.n, s.size, s.wall
	ln, lsize, ld := l.n, l.size, l.wall
	sRate, lRate := float64(sn)/sd.Seconds(), float64(ln)/ld.Seconds()
	ok := "ok"
	if lRate/sRate < 0.5 {
		ok = "BELOW GOAL"
	}
	fmt.Printf("BENCH records.list  records=%d  rate=%.0f/s %.0fMB/s  baseline(change log and segment files read and AES-GCM'd)=%.0f/s %.0fMB/s  ratio=%.2f  goal>=0.5  %s  cpu: list=%v scan=%v ratio=%.2f\n",
		ln, lRate, float64(lsize)/(1<<20)/ld.Seconds(), sRate, float64(ssize)/(1<<20)/sd.Seconds(), lRate/sRate, ok,
		l.cpu.Round(time.Millisecond), s.cpu.Round(time.Millisecond), s.cpu.Seconds()/l.cpu.Seconds())
}

// TestBenchScanHeader: the header scanner against encoding/json decoding the
// same four fields (into a struct that skips everything else), over the
// same synthetic resources.
func TestBenchScanHeader(t *testing.T) {
	var buf bytes.Buffer
	if _, err := synthetic(&buf, 20000); err != nil {
		t.Fatal(err)
	}
	lines := bytes.Split(bytes.TrimSpace(buf.Bytes()), []byte("\n"))
	type fields struct {
		ResourceType string `json:"resourceType"`
		ID           string `json:"id"`
		Meta         struct {
			VersionID   string `json:"versionId"`
			LastUpdated string `json:"lastUpdated"`
		} `json:"meta"`
	}
	run := func(f func([]byte) error) time.Duration {
		best := time.Duration(1<<63 - 1)
		for range 3 {
			start := time.Now()
			for _, l := range lines {
				if err := f(l); err != nil {
					t.Fatal(err)
				}
			}
			best = min(best, time.Since(start))
		}
		return best
	}
	scan := run(func(b []byte) error { _, err := records.ScanHeader(b); return err })
	std := run(func(b []byte) error { var v fields; return json.Unmarshal(b, &v) })
	mb := float64(buf.Len()) / (1 << 20)
	fmt.Printf("BENCH records.scanheader  rate=%.0fMB/s  baseline(encoding/json, 4 fields)=%.0fMB/s  ratio=%.1f\n",
		mb/scan.Seconds(), mb/std.Seconds(), std.Seconds()/scan.Seconds())
}

// cpuTime is the CPU time this process has used (user and system).
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
