package records

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/medrelay/medrelay/internal/store"
)

// smallLogFiles makes the change log roll over to a new file past n bytes
// for the test.
func smallLogFiles(t *testing.T, n int64) {
	t.Helper()
	old := maxLogFile
	maxLogFile = n
	t.Cleanup(func() { maxLogFile = old })
}

// logSizes is the size of every change log file under dir.
func logSizes(t *testing.T, dir string) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	for _, p := range filesUnder(t, dir, ".log") {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		out[p] = fi.Size()
	}
	return out
}

// patients is n versions-v resources Patient/p0..p(n-1).
func patients(n int, v string) [][]byte {
	var out [][]byte
	for i := range n {
		out = append(out, res("Patient", fmt.Sprint("p", i), v, ""))
	}
	return out
}

func wantPatients(n int, v string) map[string]string {
	out := map[string]string{}
	for i := range n {
		out[fmt.Sprint("Patient/p", i)] = v
	}
	return out
}

// A block's offset is half its nonce (32 bits of it), so no block may
// start past what a file may hold. Every append (a commit, a compaction's
// rewrite, a conversion) rolls over to a new file once the file reaches
// maxLogFile, instead of only the next append: a rewrite of a large log
// would otherwise go on past 4 GiB in one file, sealing blocks whose
// nonce offset wrapped, and fail at every run.
func TestChangeLogAppendsRollOverAtMaxLogFile(t *testing.T) {
	ctx := context.Background()
	smallLogFiles(t, 8<<10)
	dir := t.TempDir()
	open := reopener(t, dir)
	s := open()
	// One commit of some 40 KiB of changes.
	put(t, s, "c", patients(500, "1")...)
	checkSizes := func(when string) int {
		t.Helper()
		sizes := logSizes(t, dir)
		for p, n := range sizes {
			if n > maxLogFile+logBlockTarget+1024 {
				t.Fatalf("%s: %s is %d bytes, past the %d-byte limit by more than a block", when, filepath.Base(p), n, maxLogFile)
			}
		}
		return len(sizes)
	}
	if n := checkSizes("a large commit"); n < 3 {
		t.Fatalf("a large commit: %d files", n)
	}
	checkAll(t, s, "c", wantPatients(500, "1"))
	// Every change superseded: the rewrite is as large again.
	put(t, s, "c", patients(500, "2")...)
	if _, err := s.Compact(ctx, "c"); err != nil {
		t.Fatal(err)
	}
	if n := checkSizes("a rewrite"); n < 3 {
		t.Fatalf("a rewrite: %d files", n)
	}
	checkAll(t, s, "c", wantPatients(500, "2"))
	s.Close()
	s = open()
	defer s.Close()
	checkAll(t, s, "c", wantPatients(500, "2"))
	if n, _ := s.Count(ctx, "c"); n != 500 {
		t.Fatalf("Count %d after a restart", n)
	}
}

// Without a records directory, blocks are Badger entries keyed by file and
// offset. A commit that fails after its blocks were stored (here its
// marker fails) must leave nothing a later load reads: the next commits to
// the same file once wrote their (smaller) blocks over the first of them,
// and the load, which reads every entry under the file's committed length,
// then listed the failed commit's changes as stored.
func TestChangeLogBadgerBlocksOfAFailedCommitStayUnread(t *testing.T) {
	ctx := context.Background()
	db := openDB(t, "")
	defer db.Close()
	s := openOn(t, db)
	put(t, s, "c", res("Patient", "first", "1", ""))
	// A failed commit of several blocks.
	w, _ := s.NewWriter("c")
	for i := range 300 {
		if _, err := w.Put(res("Observation", fmt.Sprint("lost", i), "1", "")); err != nil {
			t.Fatal(err)
		}
	}
	boom := errors.New("marker failed")
	if _, err := w.Commit(ctx, func(*store.Batch, Counts) error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("commit: %v", err)
	}
	put(t, s, "c", res("Patient", "small", "1", ""))
	put(t, s, "c", patients(300, "1")...)
	want := wantPatients(300, "1")
	want["Patient/first"], want["Patient/small"] = "1", "1"
	checkAll(t, s, "c", want)
	s.Close()
	s = openOn(t, db)
	defer s.Close()
	checkAll(t, s, "c", want)
	got, _ := list(t, s, "c", Query{})
	if len(got) != len(want) {
		t.Fatalf("after a restart %d listed, want %d: %v", len(got), len(want), listed(got)[:5])
	}
}

// A log spread over many files is rewritten into few (each process appends
// to a file of its own), but a log that fills many files is not rewritten
// again at every run for it.
func TestChangeLogCompactionMergesSmallFilesOnly(t *testing.T) {
	ctx := context.Background()
	smallLogFiles(t, 8<<10)
	dir := t.TempDir()
	open := reopener(t, dir)
	s := open()
	put(t, s, "c", patients(3000, "1")...)
	full := logSizes(t, dir)
	if len(full) <= manySegments {
		t.Fatalf("%d files, want more than %d", len(full), manySegments)
	}
	if _, err := s.Compact(ctx, "c"); err != nil {
		t.Fatal(err)
	}
	if got := logSizes(t, dir); !maps.Equal(got, full) {
		t.Fatalf("full files rewritten: %d files before, %d after", len(full), len(got))
	}
	// A file per start: many small files, merged.
	s.Close()
	for i := range manySegments + 1 {
		s = open()
		put(t, s, "c", res("Observation", fmt.Sprint("o", i), "1", ""))
		s.Close()
	}
	s = open()
	defer s.Close()
	if n := len(logSizes(t, dir)); n != len(full)+manySegments+1 {
		t.Fatalf("%d files after the restarts", n)
	}
	if _, err := s.Compact(ctx, "c"); err != nil {
		t.Fatal(err)
	}
	if n := len(logSizes(t, dir)); n > len(full)+1 {
		t.Fatalf("%d files after compaction, want at most %d", n, len(full)+1)
	}
	want := wantPatients(3000, "1")
	for i := range manySegments + 1 {
		want[fmt.Sprint("Observation/o", i)] = "1"
	}
	checkAll(t, s, "c", want)
}

// Get of a resource that a writer is replacing finds it, at one version or
// the other: the key index is read before the log, and a change superseded
// in between (its successor added to the index after the reader looked)
// made Get answer ErrNotFound for a stored resource.
func TestChangeLogGetDuringCommitsFindsTheResource(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	const n = 20
	put(t, s, "c", patients(n, "0")...)
	stop := make(chan struct{})
	werr := make(chan error, 1)
	go func() {
		defer close(stop)
		for v := 1; v <= 200; v++ {
			w, _ := s.NewWriter("c", WithoutSync())
			for _, r := range patients(n, fmt.Sprint(v)) {
				w.Put(r)
			}
			if _, err := w.Commit(ctx, nil); err != nil {
				werr <- err
				return
			}
		}
	}()
	for i := 0; ; i++ {
		select {
		case <-stop:
			select {
			case err := <-werr:
				t.Fatal(err)
			default:
			}
			return
		default:
		}
		if _, err := s.Get(ctx, "c", "Patient", fmt.Sprint("p", i%n)); err != nil {
			t.Fatalf("Get p%d while it is replaced: %v", i%n, err)
		}
	}
}

// Each start appends to a file of its own; a crash between a file's
// creation and its first commit, or a commit cut short by one, leaves a
// file no length names. A load removes exactly those: every committed
// file stays, through many restarts.
func TestChangeLogRestartsKeepCommittedFilesAndDropOrphans(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	open := reopener(t, dir)
	want := map[string]string{}
	var orphans []string
	for i := range 5 {
		s := open()
		put(t, s, "c", res("Patient", fmt.Sprint("a", i), "1", ""))
		put(t, s, "c", res("Patient", fmt.Sprint("b", i), "1", ""))
		want[fmt.Sprint("Patient/a", i)], want[fmt.Sprint("Patient/b", i)] = "1", "1"
		checkAll(t, s, "c", want)
		if got := len(logSizes(t, dir)); got != i+1 {
			t.Fatalf("start %d: %d log files, want %d", i, got, i+1)
		}
		s.Close()
		// A crash: a file created (empty, or with blocks) and never
		// committed, under an id the store handed out.
		id, err := s.db.NextSeq(segSeq)
		if err != nil {
			t.Fatal(err)
		}
		l := s.logs.get("c")
		p := l.filePath(id)
		body := []byte{}
		if i%2 == 1 {
			body = bytes.Repeat([]byte{1}, 100)
		}
		if err := os.WriteFile(p, body, 0o600); err != nil {
			t.Fatal(err)
		}
		orphans = append(orphans, p)
	}
	s := open()
	defer s.Close()
	checkAll(t, s, "c", want)
	for _, p := range orphans {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("orphan %s: %v", filepath.Base(p), err)
		}
	}
	if n, _ := s.logs.lengths.Count(ctx, "c/"); n != 5 || len(logSizes(t, dir)) != 5 {
		t.Fatalf("%d lengths, files %v", n, logSizes(t, dir))
	}
}

// A commit that fails after its blocks were written (its marker fails)
// leaves them past the file's committed length. Nothing is written over
// them (their offsets, half of their nonces, are spent): the next commit
// goes to a new file, and a restart reads neither the failed commit's
// changes nor anything else amiss.
func TestChangeLogFailedCommitSpendsItsOffsets(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	open := reopener(t, dir)
	s := open()
	put(t, s, "c", res("Patient", "a", "1", ""))
	before := logSizes(t, dir)
	w, _ := s.NewWriter("c")
	w.Put(res("Patient", "lost", "1", ""))
	boom := errors.New("marker failed")
	if _, err := w.Commit(ctx, func(*store.Batch, Counts) error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("commit: %v", err)
	}
	grown := logSizes(t, dir)
	for p, n := range before {
		if grown[p] <= n {
			t.Fatalf("the failed commit wrote nothing to %s", p)
		}
	}
	put(t, s, "c", res("Patient", "b", "1", ""))
	after := logSizes(t, dir)
	if len(after) != 2 {
		t.Fatalf("files after the next commit: %v", after)
	}
	for p, n := range grown {
		if after[p] != n {
			t.Fatalf("%s written after a failed commit: %d bytes, then %d", filepath.Base(p), n, after[p])
		}
	}
	want := map[string]string{"Patient/a": "1", "Patient/b": "1"}
	checkAll(t, s, "c", want)
	s.Close()
	s = open()
	defer s.Close()
	checkAll(t, s, "c", want)
}

// A marker too large for one transaction fails its commit with
// store.ErrTooBig (no change of it stored); the next commit works.
func TestChangeLogMarkerTooBig(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	open := reopener(t, dir)
	s := open()
	progress := store.NewTable[[]byte](s.db, store.Name("test_progress"))
	w, _ := s.NewWriter("c")
	w.Put(res("Patient", "lost", "1", ""))
	_, err := w.Commit(ctx, func(b *store.Batch, _ Counts) error {
		for i := range 200000 {
			if err := store.BatchPut(b, progress, fmt.Sprint("k", i), []byte("v")); err != nil {
				return err
			}
		}
		return nil
	})
	if !errors.Is(err, store.ErrTooBig) {
		t.Fatalf("commit with a huge marker: %v", err)
	}
	if n, _ := progress.Count(ctx, ""); n != 0 {
		t.Fatalf("%d marker entries stored", n)
	}
	put(t, s, "c", res("Patient", "a", "1", ""))
	checkAll(t, s, "c", map[string]string{"Patient/a": "1"})
	s.Close()
	s = open()
	defer s.Close()
	checkAll(t, s, "c", map[string]string{"Patient/a": "1"})
}

// A change log that does not read gives an error naming the file, what is
// wrong and the way out; never a panic, never a partial list.
func TestChangeLogDamageErrorsSayWhereAndTheWayOut(t *testing.T) {
	ctx := context.Background()
	type opener func(opts ...Option) *Store
	setup := func(t *testing.T) (string, string, opener) {
		dir := t.TempDir()
		db := openDB(t, filepath.Join(dir, "store"))
		t.Cleanup(func() { db.Close() })
		open := func(opts ...Option) *Store {
			return openOn(t, db, append([]Option{WithSegments(filepath.Join(dir, "records"), segKey)}, opts...)...)
		}
		s := open()
		put(t, s, "c", patients(300, "1")...) // several blocks
		s.Close()
		files := filesUnder(t, dir, ".log")
		if len(files) != 1 {
			t.Fatalf("log files %v", files)
		}
		return dir, files[0], open
	}
	says := func(t *testing.T, err error, file string, what ...string) {
		t.Helper()
		if err == nil {
			t.Fatalf("no error, want one naming %s", file)
		}
		for _, w := range append([]string{file, "restore the records directory from a backup"}, what...) {
			if !strings.Contains(err.Error(), w) {
				t.Fatalf("error %q does not say %q", err, w)
			}
		}
	}
	try := func(t *testing.T, open opener, opts ...Option) error {
		s := open(opts...)
		defer s.Close()
		_, err := s.List(ctx, "c", Query{}, func([]Record, uint64) error { return nil })
		if _, gerr := s.Get(ctx, "c", "Patient", "p1"); (gerr == nil) != (err == nil) {
			t.Fatalf("List: %v, but Get: %v", err, gerr)
		}
		return err
	}
	t.Run("a byte changed", func(t *testing.T) {
		_, f, open := setup(t)
		b, _ := os.ReadFile(f)
		b[len(b)/2] ^= 1
		os.WriteFile(f, b, 0o600)
		says(t, try(t, open), f, "does not open", "damaged")
	})
	t.Run("cut short", func(t *testing.T) {
		_, f, open := setup(t)
		fi, _ := os.Stat(f)
		os.Truncate(f, fi.Size()-100)
		says(t, try(t, open), f, "shorter than its committed length")
	})
	t.Run("removed", func(t *testing.T) {
		_, f, open := setup(t)
		os.Remove(f)
		says(t, try(t, open), f, "is gone")
	})
	t.Run("another key", func(t *testing.T) {
		dir, f, open := setup(t)
		says(t, try(t, open, WithSegments(filepath.Join(dir, "records"), testKey)), f, "does not open", "wrong key")
	})
}

// FuzzChangeLogBlock: random bytes as a sealed block, as an unsealed one
// (stores without a records directory) and as a whole log file never
// panic, and no block opens unless it is one the key sealed at that place.
func FuzzChangeLogBlock(f *testing.F) {
	dir := f.TempDir()
	db := openDB(f, "")
	f.Cleanup(func() { db.Close() })
	segs, err := openSegments(db, dir, segKey)
	if err != nil {
		f.Fatal(err)
	}
	ls := newChangeLogs(db, segs)
	l := ls.get("c")
	if err := os.MkdirAll(l.dir, 0o700); err != nil {
		f.Fatal(err)
	}
	const id = 5
	a := &logAppend{l: l, f: &logFile{id: id}}
	for i := range 300 {
		c := change{typ: "Patient", id: fmt.Sprint("p", i), versionID: "1", hash: uint64(i), json: []byte(`{"a":1}`)}
		if i%3 == 0 {
			c.prev = uint64(i)
		}
		if err := a.add(uint64(1000+2*i), appendChange(nil, &c), c.prev); err != nil {
			f.Fatal(err)
		}
	}
	if err := a.closeBlock(); err != nil {
		f.Fatal(err)
	}
	file := slices.Clone(a.buf)
	genuine := map[int64][]byte{}
	for _, b := range a.blocks {
		genuine[b.off] = file[b.off : b.off+b.size]
	}
	if len(genuine) < 3 {
		f.Fatalf("%d blocks", len(genuine))
	}
	plain := &changeLog{ls: &changeLogs{}, conn: "c"}
	for _, b := range a.blocks {
		blk := genuine[b.off]
		f.Add(blk, uint32(b.off))
		f.Add(blk, uint32(b.off+1))
		flipped := slices.Clone(blk)
		flipped[len(flipped)/2] ^= 0x80
		f.Add(flipped, uint32(b.off))
		f.Add(blk[:len(blk)-1], uint32(b.off))
	}
	f.Add(file, uint32(0))
	f.Add(file[:len(file)-5], uint32(0))
	f.Add([]byte{}, uint32(0))
	f.Add(make([]byte, logHeaderSize), uint32(0))
	f.Add([]byte{0, 0, 0, 4, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0x80, 0x80, 0x80}, uint32(0))
	path := l.filePath(id)
	f.Fuzz(func(t *testing.T, b []byte, off uint32) {
		// A sealed block.
		if _, _, err := l.openBlock(id, int64(off), slices.Clone(b)); err == nil {
			if g, ok := genuine[int64(off)]; !ok || !bytes.Equal(g, b) {
				t.Fatalf("a forged block opened at %d: %x", off, b)
			}
		}
		// An unsealed one (its entries read as a load reads them).
		if first, p, err := plain.openBlock(id, int64(off), slices.Clone(b)); err == nil {
			_ = eachEntry(first, p, func(_ uint64, v []byte) error {
				prevOf(v)
				return nil
			})
		}
		// A whole file, as committed.
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		lf := &logFile{id: id, size: int64(len(b))}
		n := 0
		err := l.readFile(context.Background(), lf, func(uint64, []byte) error { n++; return nil })
		if lf.f != nil {
			lf.f.Close()
		}
		if err == nil && !bytes.HasPrefix(file, b) {
			t.Fatalf("a forged file read (%d entries): %x", n, b)
		}
	})
}

// A commit that fails in a new file (a full disk, retried every few
// seconds) removes that file: nothing committed names it, and retries do
// not pile up files until the next start.
func TestChangeLogFailedCommitsLeaveNoFiles(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := reopener(t, dir)()
	defer s.Close()
	put(t, s, "c", res("Patient", "a", "1", ""))
	boom := errors.New("marker failed")
	for i := range 5 {
		w, _ := s.NewWriter("c")
		w.Put(res("Patient", fmt.Sprint("lost", i), "1", ""))
		if _, err := w.Commit(ctx, func(*store.Batch, Counts) error { return boom }); !errors.Is(err, boom) {
			t.Fatalf("commit: %v", err)
		}
	}
	// The first failure ends appends to the committed file; the next ones
	// each had a new file.
	if files := filesUnder(t, dir, ".log"); len(files) != 1 {
		t.Fatalf("log files after failed commits: %v", files)
	}
	put(t, s, "c", res("Patient", "b", "1", ""))
	checkAll(t, s, "c", map[string]string{"Patient/a": "1", "Patient/b": "1"})
}

// The superseded set (sorted slice and map of recent additions) answers as
// a plain set does, across its merges, for additions in any order and
// repeated ones.
func TestDeadSetMatchesASet(t *testing.T) {
	var d deadSet
	model := map[uint64]bool{}
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 200000 {
		s := r.Uint64N(400000) + 1
		d.add(s)
		model[s] = true
		if i%9973 == 0 {
			for range 200 {
				q := r.Uint64N(400010)
				if d.has(q) != model[q] {
					t.Fatalf("after %d adds: has(%d) = %v", i+1, q, d.has(q))
				}
			}
		}
	}
	if d.len() != len(model) {
		t.Fatalf("len %d, want %d", d.len(), len(model))
	}
	if len(d.sorted) == 0 || !slices.IsSorted(d.sorted) {
		t.Fatalf("sorted part: %d entries, sorted %v", len(d.sorted), slices.IsSorted(d.sorted))
	}
}

// A sync replacing a quarter of a connection's resources has its log
// compacted soon, not at the compactor's next hourly run: the superseded
// set leaves memory.
func TestCompactSoonWhenAQuarterIsSuperseded(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	old := minDeadCompact
	minDeadCompact = 10
	t.Cleanup(func() { minDeadCompact = old })
	s := openStore(t)
	// Under the threshold no compaction is asked for. The compactor is not
	// running yet, so a request would wait in its queue.
	put(t, s, "c", patients(40, "1")...)
	put(t, s, "c", patients(9, "2")...) // 9 of 49 superseded: under both bounds
	put(t, s, "half", patients(5, "1")...)
	put(t, s, "half", patients(5, "2")...) // half superseded, but fewer than minDeadCompact
	put(t, s, "few", patients(100, "1")...)
	put(t, s, "few", patients(12, "2")...) // minDeadCompact, but 12 of 112 is under a quarter
	if n := len(s.compactSoon); n != 0 {
		t.Fatalf("%d compactions asked for under the threshold, the first for %q", n, <-s.compactSoon)
	}
	done := make(chan struct{})
	go func() { defer close(done); s.RunCompactor(ctx, time.Hour) }()
	defer func() { cancel(); <-done }()
	l, err := s.changeLog(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	dead := func() int {
		l.mu.RLock()
		defer l.mu.RUnlock()
		return l.dead.len()
	}
	if d := dead(); d != 9 {
		t.Fatalf("%d superseded, want 9", d)
	}
	put(t, s, "c", patients(40, "3")...) // 49 of 89
	deadline := time.Now().Add(30 * time.Second)
	for dead() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("still %d superseded: no compaction", dead())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n, _ := s.Count(ctx, "c"); n != 40 {
		t.Fatalf("Count %d after compaction, want 40", n)
	}
	got, _ := list(t, s, "c", Query{})
	for _, r := range got {
		if r.VersionID != "3" {
			t.Fatalf("%s at version %s", r.ID, r.VersionID)
		}
	}
}
