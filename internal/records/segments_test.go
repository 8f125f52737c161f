package records

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/medrelay/medrelay/internal/store"
)

// segStore opens a store on a real directory with bodies in dir/records.
func segStore(t *testing.T, dir string, key []byte) *Store {
	t.Helper()
	db := openDB(t, filepath.Join(dir, "store"))
	t.Cleanup(func() { db.Close() })
	s, err := Open(context.Background(), db, quiet, WithSegments(filepath.Join(dir, "records"), key))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// reopener returns a function that opens a new Store over dir's files (one
// Badger handle for all, as Badger allows one per process): a restart.
// opts come after the defaults (a quiet logger, segments in dir/records).
func reopener(t *testing.T, dir string, opts ...Option) func() *Store {
	t.Helper()
	_, open := reopenerDB(t, dir, opts...)
	return open
}

// reopenerDB is reopener with its Badger handle, for tests that write to
// the store before a Store opens it.
func reopenerDB(t *testing.T, dir string, opts ...Option) (*store.DB, func() *Store) {
	t.Helper()
	db := openDB(t, filepath.Join(dir, "store"))
	t.Cleanup(func() { db.Close() })
	opts = append([]Option{WithSegments(filepath.Join(dir, "records"), segKey)}, opts...)
	return db, func() *Store { return openOn(t, db, opts...) }
}

func segFiles(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	_ = filepath.WalkDir(filepath.Join(dir, "records"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			out = append(out, p)
		}
		return nil
	})
	return out
}

// Resource bodies are encrypted at rest: a sentinel inside a resource is in
// no file of the store or the segments, and the index entries point at
// bodies that read back exactly.
func TestSegmentsSealBodies(t *testing.T) {
	dir := t.TempDir()
	s := segStore(t, dir, segKey)
	const sentinel = "SENTINEL-PHI-7f3a9c"
	body := []byte(`{"resourceType":"Patient","id":"p1","name":[{"text":"` + sentinel + `"}]}`)
	put(t, s, "c", body, res("Observation", "o1", "1", ""))
	r, err := s.Get(context.Background(), "c", "Patient", "p1")
	if err != nil || !bytes.Equal(r.JSON, body) {
		t.Fatalf("Get = %s, %v", r.JSON, err)
	}
	if len(segFiles(t, dir)) == 0 {
		t.Fatal("no segment written")
	}
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(b, []byte(sentinel)) || bytes.Contains(b, []byte(`"resourceType":"Patient"`)) {
			t.Errorf("%s holds a resource in plaintext", p)
		}
		return nil
	})
}

// A body that was altered, a segment that is gone and a wrong key are
// clear errors naming the record, never a panic or wrong bytes.
func TestSegmentsDamageIsAClearError(t *testing.T) {
	ctx := context.Background()
	t.Run("altered", func(t *testing.T) {
		dir := t.TempDir()
		s := segStore(t, dir, segKey)
		put(t, s, "c", res("Patient", "p1", "1", ""))
		f := segFiles(t, dir)[0]
		b, _ := os.ReadFile(f)
		b[len(b)/2] ^= 1
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := s.Get(ctx, "c", "Patient", "p1")
		if err == nil || !strings.Contains(err.Error(), "Patient/p1") || !strings.Contains(err.Error(), "does not open") {
			t.Fatalf("Get of an altered body: %v", err)
		}
	})
	t.Run("missing", func(t *testing.T) {
		dir := t.TempDir()
		s := segStore(t, dir, segKey)
		put(t, s, "c", res("Patient", "p1", "1", ""))
		s.Close() // drop open handles, as after a restart
		for _, f := range segFiles(t, dir) {
			os.Remove(f)
		}
		_, err := s.Get(ctx, "c", "Patient", "p1")
		if !errors.Is(err, ErrBodyMissing) {
			t.Fatalf("Get with the segment gone: %v", err)
		}
		if _, err := s.List(ctx, "c", Query{}, func([]Record, uint64) error { return nil }); !errors.Is(err, ErrBodyMissing) {
			t.Fatalf("List with the segment gone: %v", err)
		}
	})
	t.Run("truncated", func(t *testing.T) {
		dir := t.TempDir()
		s := segStore(t, dir, segKey)
		put(t, s, "c", res("Patient", "p1", "1", ""), res("Patient", "p2", "1", ""))
		s.Close()
		f := segFiles(t, dir)[0]
		fi, _ := os.Stat(f)
		if err := os.Truncate(f, fi.Size()-5); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Get(ctx, "c", "Patient", "p2"); !errors.Is(err, ErrBodyMissing) {
			t.Fatalf("Get past the end: %v", err)
		}
		if r, err := s.Get(ctx, "c", "Patient", "p1"); err != nil || r.ID != "p1" {
			t.Fatalf("the body before the cut: %+v %v", r, err)
		}
	})
	t.Run("wrong key", func(t *testing.T) {
		dir := t.TempDir()
		db := openDB(t, filepath.Join(dir, "store"))
		defer db.Close()
		s, _ := Open(ctx, db, quiet, WithSegments(filepath.Join(dir, "records"), segKey))
		put(t, s, "c", res("Patient", "p1", "1", ""))
		s.Close()
		s2, _ := Open(ctx, db, quiet, WithSegments(filepath.Join(dir, "records"), bytes.Repeat([]byte{8}, 32)))
		defer s2.Close()
		if _, err := s2.Get(ctx, "c", "Patient", "p1"); err == nil || !strings.Contains(err.Error(), "wrong key") {
			t.Fatalf("Get under another key: %v", err)
		}
	})
}

// Segments rotate at their size limit, a restarted store never appends to
// a segment it did not create (a body's nonce is its segment and offset),
// and lists read across segments in change order.
func TestSegmentsRotateAndRestart(t *testing.T) {
	old := maxSegment
	maxSegment = 600
	t.Cleanup(func() { maxSegment = old })
	dir := t.TempDir()
	open := reopener(t, dir)
	s := open()
	var want []string
	for i := range 20 {
		put(t, s, "c", res("Observation", fmt.Sprint("o", i), "1", ""))
		want = append(want, fmt.Sprintf("Observation/o%d@1", i))
	}
	n := len(segFiles(t, dir))
	if n < 3 {
		t.Fatalf("%d segments for 20 bodies of ~130 bytes with a 600-byte limit", n)
	}
	s.Close()
	sizes := map[string]int64{}
	for _, f := range segFiles(t, dir) {
		fi, _ := os.Stat(f)
		sizes[f] = fi.Size()
	}
	s = open()
	defer s.Close()
	put(t, s, "c", res("Observation", "after", "1", ""))
	want = append(want, "Observation/after@1")
	for f, size := range sizes {
		if fi, _ := os.Stat(f); fi.Size() != size {
			t.Errorf("%s grew after a restart", f)
		}
	}
	got, _ := list(t, s, "c", Query{PageRecords: 7})
	if fmt.Sprint(listed(got)) != fmt.Sprint(want) {
		t.Fatalf("listed %v\nwant %v", listed(got), want)
	}
}

// Deleting a connection's records removes its segments, and other
// connections' records stay.
func TestSegmentsGoWithTheConnection(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := segStore(t, dir, segKey)
	put(t, s, "gone", res("Patient", "a", "1", ""))
	put(t, s, "kept", res("Patient", "b", "1", ""))
	if _, err := s.Get(ctx, "gone", "Patient", "a"); err != nil {
		t.Fatal(err)
	}
	onDisk := func() (n int64) {
		for _, f := range segFiles(t, dir) {
			if strings.HasSuffix(f, ".seg") {
				fi, _ := os.Stat(f)
				n += fi.Size()
			}
		}
		return n
	}
	if got, want := s.SegmentBytes(), onDisk(); got != want || got == 0 {
		t.Fatalf("SegmentBytes = %d, files hold %d", got, want)
	}
	if err := s.DeleteConnection(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	if got, want := s.SegmentBytes(), onDisk(); got != want {
		t.Fatalf("after the delete SegmentBytes = %d, files hold %d", got, want)
	}
	if _, err := os.Stat(s.segs.connDir("gone")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("segments of a deleted connection: %v", err)
	}
	if r, err := s.Get(ctx, "kept", "Patient", "b"); err != nil || r.ID != "b" {
		t.Fatalf("other connection: %+v %v", r, err)
	}
}

// Replaced bodies are reclaimed: Compact copies what is still referenced
// out of mostly-garbage segments, the next run deletes them, and every
// record reads the same before, during and after, while writers write.
func TestSegmentsCompactReclaimsReplacedBodies(t *testing.T) {
	old := maxSegment
	maxSegment = 4 << 10
	t.Cleanup(func() { maxSegment = old })
	ctx := context.Background()
	dir := t.TempDir()
	s := segStore(t, dir, segKey)
	version := func(v int) [][]byte {
		var rs [][]byte
		for i := range 40 {
			rs = append(rs, res("Observation", fmt.Sprint("o", i), fmt.Sprint(v), fmt.Sprintf("2025-01-%02dT00:00:00Z", v)))
		}
		return rs
	}
	put(t, s, "c", version(1)...)
	put(t, s, "keep", res("Patient", "k", "1", ""))
	// Replace most resources three times: their older bodies are garbage.
	for v := 2; v <= 4; v++ {
		put(t, s, "c", version(v)[:30]...)
	}
	size := func() (n int64) {
		for _, f := range segFiles(t, dir) {
			fi, _ := os.Stat(f)
			n += fi.Size()
		}
		return n
	}
	want := func() []string {
		got, _ := list(t, s, "c", Query{})
		return listed(got)
	}
	before, sizeBefore := want(), size()

	// A writer keeps writing another connection's records meanwhile.
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			w, _ := s.NewWriter("c", WithoutSync())
			if _, err := w.Put(res("Patient", fmt.Sprint("p", i%10), fmt.Sprint(i), "")); err != nil {
				done <- err
				return
			}
			if _, err := w.Commit(ctx, nil); err != nil {
				done <- err
				return
			}
		}
	}()
	st, err := s.Compact(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	if st.Rewritten == 0 || st.Moved == 0 {
		t.Fatalf("first run: %+v", st)
	}
	if got := filterPrefix(want(), "Observation/"); fmt.Sprint(got) != fmt.Sprint(before) {
		t.Fatalf("after moving: %v\nwant %v", got, before)
	}
	close(stop)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// The writer's Patients came after: compare the Observations.
	before = filterPrefix(before, "Observation/")
	s.CompactAll(ctx) // the second run deletes what nothing refers to
	if got := filterPrefix(want(), "Observation/"); fmt.Sprint(got) != fmt.Sprint(before) {
		t.Fatalf("after deleting: %v\nwant %v", got, before)
	}
	if after := size(); after >= sizeBefore {
		t.Fatalf("segments hold %d bytes, %d before compaction", after, sizeBefore)
	}
	for _, r := range version(1)[30:] {
		h, _ := ScanHeader(r)
		g, err := s.Get(ctx, "c", h.Type, h.ID)
		if err != nil || !bytes.Equal(g.JSON, r) {
			t.Fatalf("Get %s after compaction: %s %v", h.ID, g.JSON, err)
		}
	}
	if g, err := s.Get(ctx, "keep", "Patient", "k"); err != nil || g.ID != "k" {
		t.Fatalf("another connection: %+v %v", g, err)
	}
}

func filterPrefix(in []string, p string) []string {
	var out []string
	for _, s := range in {
		if strings.HasPrefix(s, p) {
			out = append(out, s)
		}
	}
	return out
}

// A connection written after many restarts has many small segments (each
// process appends to its own): compaction merges them, and the records
// read the same.
func TestSegmentsCompactMergesSmallSegments(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	open := reopener(t, dir)
	var s *Store
	for i := range 12 { // a restart before each write: a segment each
		if s != nil {
			s.Close()
		}
		s = open()
		put(t, s, "c", res("Observation", fmt.Sprint("o", i), "1", ""))
	}
	defer s.Close()
	count := func() (n int) {
		for _, f := range segFiles(t, dir) {
			if strings.HasSuffix(f, ".seg") {
				n++
			}
		}
		return n
	}
	if n := count(); n != 12 {
		t.Fatalf("%d segments after 12 restarts with a write each", n)
	}
	before, _ := list(t, s, "c", Query{})
	if _, err := s.Compact(ctx, "c"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Compact(ctx, "c"); err != nil { // deletes the emptied ones
		t.Fatal(err)
	}
	if n := count(); n > 2 {
		t.Fatalf("%d segments after compaction", n)
	}
	after, _ := list(t, s, "c", Query{})
	if fmt.Sprint(listed(after)) != fmt.Sprint(listed(before)) {
		t.Fatalf("listed %v, before %v", listed(after), listed(before))
	}
	for i, r := range after {
		if !bytes.Equal(r.JSON, before[i].JSON) {
			t.Fatalf("%s reads differently after compaction", r.ID)
		}
	}
	if s.SegmentBytes() <= 0 {
		t.Fatal("no segment bytes counted")
	}
}

// The hourly compactor looks at every connection once, then only at those
// written since: a large connection nobody writes is not rescanned.
func TestCompactAllLooksAtWrittenConnections(t *testing.T) {
	ctx := context.Background()
	s := segStore(t, t.TempDir(), segKey)
	for _, c := range []string{"a", "b", "c"} {
		put(t, s, c, res("Patient", "p", "1", ""))
	}
	if n := s.CompactAll(ctx); n != 3 {
		t.Fatalf("first run looked at %d connections, want all 3", n)
	}
	if n := s.CompactAll(ctx); n != 0 {
		t.Fatalf("nothing written since: looked at %d", n)
	}
	put(t, s, "b", res("Patient", "p", "2", ""))
	if n := s.CompactAll(ctx); n != 1 {
		t.Fatalf("after writing b: looked at %d, want 1", n)
	}
}
