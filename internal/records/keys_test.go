package records

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/medrelay/medrelay/internal/store"
)

// smallRuns makes the key index write a run every n pairs.
func smallRuns(t *testing.T, n int) {
	t.Helper()
	old := keyRunPairs
	keyRunPairs = n
	t.Cleanup(func() { keyRunPairs = old })
}

// keyFiles lists a store's key index files by suffix.
func keyFiles(t *testing.T, dir, suffix string) []string {
	t.Helper()
	var out []string
	for _, p := range segFiles(t, dir) {
		if filepath.Base(filepath.Dir(p)) == keysDirName && strings.HasSuffix(p, suffix) {
			out = append(out, p)
		}
	}
	return out
}

// checkAll asserts that the list holds every resource in want exactly once
// at its version (checkExactly), that each reads back at it, and the count.
func checkAll(t *testing.T, s *Store, conn string, want map[string]string) {
	t.Helper()
	ctx := context.Background()
	checkExactly(t, s, conn, want)
	for k, v := range want {
		typ, id, _ := strings.Cut(k, "/")
		r, err := s.Get(ctx, conn, typ, id)
		if err != nil {
			t.Fatalf("Get %s: %v", k, err)
		}
		got := r.VersionID
		if r.Deleted {
			got = "-"
		}
		if got != v {
			t.Fatalf("Get %s = version %q, want %q", k, got, v)
		}
	}
	if n, _ := s.Count(ctx, conn); n != len(want) {
		t.Fatalf("Count = %d, want %d", n, len(want))
	}
}

// Many runs, merged in the background, new versions, tombstones and a
// restart: every resource is found at its latest change, listed once.
func TestKeyIndexRunsMergesAndRestart(t *testing.T) {
	smallRuns(t, 50)
	dir := t.TempDir()
	open := reopener(t, dir)
	s := open()
	want := map[string]string{}
	write := func(s *Store, from, to int, ver string) {
		t.Helper()
		var rs [][]byte
		for i := from; i < to; i++ {
			typ := []string{"Patient", "Observation", "Condition"}[i%3]
			id := fmt.Sprintf("r%d", i)
			rs = append(rs, res(typ, id, ver, ""))
			want[typ+"/"+id] = ver
			if len(rs) == 37 {
				put(t, s, "c", rs...)
				rs = nil
			}
		}
		put(t, s, "c", rs...)
	}
	write(s, 0, 3000, "1")
	write(s, 1000, 1500, "2") // new versions, their pairs in later runs
	for i := 1200; i < 1300; i++ {
		typ := []string{"Patient", "Observation", "Condition"}[i%3]
		del(t, s, "c", typ, fmt.Sprintf("r%d", i), time.Time{})
		want[fmt.Sprintf("%s/r%d", typ, i)] = "-"
	}
	checkAll(t, s, "c", want)
	s.keys.merges.Wait() // (Close would abandon a running merge)
	s.Close()
	runs := keyFiles(t, dir, ".run")
	// 3600 pairs in runs of 50 would be 72 runs unmerged.
	if len(runs) == 0 || len(runs) > 20 {
		t.Fatalf("%d runs after merging", len(runs))
	}
	s = open()
	checkAll(t, s, "c", want)
	write(s, 2500, 3500, "3") // after the restart: a new journal
	checkAll(t, s, "c", want)
	s.Close()
	s = open()
	defer s.Close()
	checkAll(t, s, "c", want)
	// Re-ingesting the same versions changes nothing.
	var rs [][]byte
	for i := 0; i < 100; i++ {
		rs = append(rs, res([]string{"Patient", "Observation", "Condition"}[i%3], fmt.Sprintf("r%d", i), "1", ""))
	}
	if n := put(t, s, "c", rs...); n.Unchanged != 100 {
		t.Fatalf("re-ingest: %+v", n)
	}
}

// Keys whose hashes collide are told apart by the change entries.
func TestKeyIndexHashCollisions(t *testing.T) {
	smallRuns(t, 20)
	old := keyOf
	keyOf = func(typ, id string) uint64 { return uint64(len(id) % 2) } // two hashes for everything
	t.Cleanup(func() { keyOf = old })
	dir := t.TempDir()
	open := reopener(t, dir)
	s := open()
	want := map[string]string{}
	for v := 1; v <= 2; v++ {
		for i := 0; i < 60; i += 1 + v%2 {
			id := fmt.Sprintf("p%d", i)
			put(t, s, "c", res("Patient", id, fmt.Sprint(v), ""))
			want["Patient/"+id] = fmt.Sprint(v)
		}
	}
	checkAll(t, s, "c", want)
	s.Close()
	s = open()
	defer s.Close()
	checkAll(t, s, "c", want)
}

// A crash after the key index entries were synced but before the store's
// batch: the entries point at changes that were never stored. The resource
// reads at its stored version, and writing it again lists it once.
func TestKeyIndexAheadOfTheStore(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	open := reopener(t, dir)
	s := open()
	put(t, s, "c", res("Patient", "a", "1", ""))
	w, _ := s.NewWriter("c")
	w.Put(res("Patient", "a", "2", ""))
	w.Put(res("Patient", "b", "1", ""))
	b, _, n, err := w.send(ctx, nil) // bodies, key entries and log blocks written, not committed
	if err != nil || n.Written != 2 {
		t.Fatal(n, err)
	}
	b.Cancel()
	s.Close()
	s = open()
	defer s.Close()
	checkAll(t, s, "c", map[string]string{"Patient/a": "1"})
	put(t, s, "c", res("Patient", "a", "2", ""), res("Patient", "b", "1", ""))
	checkAll(t, s, "c", map[string]string{"Patient/a": "2", "Patient/b": "1"})
}

// A journal's last record cut or garbled by a crash is dropped; damage
// before it is a clear error, as is a key index under another key.
func TestKeyIndexDamage(t *testing.T) {
	ctx := context.Background()
	setup := func(t *testing.T) (string, func() *Store) {
		dir := t.TempDir()
		open := reopener(t, dir)
		s := open()
		put(t, s, "c", res("Patient", "a", "1", ""))
		put(t, s, "c", res("Patient", "b", "1", ""))
		s.Close()
		return dir, open
	}
	t.Run("torn tail", func(t *testing.T) {
		dir, open := setup(t)
		j := keyFiles(t, dir, ".jnl")
		if len(j) != 1 {
			t.Fatalf("journals: %v", j)
		}
		f, _ := os.OpenFile(j[0], os.O_APPEND|os.O_WRONLY, 0)
		f.Write([]byte{40, 0, 0, 0, 1, 2, 3}) // a record's length, then the crash
		f.Close()
		s := open()
		defer s.Close()
		checkAll(t, s, "c", map[string]string{"Patient/a": "1", "Patient/b": "1"})
	})
	t.Run("damage", func(t *testing.T) {
		dir, open := setup(t)
		j := keyFiles(t, dir, ".jnl")[0]
		b, _ := os.ReadFile(j)
		b[10] ^= 1 // inside the first of two records
		os.WriteFile(j, b, 0o600)
		s := open()
		defer s.Close()
		if _, err := s.Get(ctx, "c", "Patient", "a"); err == nil || !strings.Contains(err.Error(), "key index") {
			t.Fatalf("Get with a damaged journal: %v", err)
		}
	})
	t.Run("wrong key", func(t *testing.T) {
		dir := t.TempDir()
		db, open := reopenerDB(t, dir)
		s := open()
		put(t, s, "c", res("Patient", "a", "1", ""))
		s.Close()
		s = openOn(t, db, WithSegments(filepath.Join(dir, "records"), bytes.Repeat([]byte{9}, 32)))
		defer s.Close()
		if _, err := s.Get(ctx, "c", "Patient", "a"); err == nil || !strings.Contains(err.Error(), "wrong key") {
			t.Fatalf("Get under another key: %v", err)
		}
		w, _ := s.NewWriter("c")
		w.Put(res("Patient", "c", "1", ""))
		if _, err := w.Commit(ctx, nil); err == nil || !strings.Contains(err.Error(), "wrong key") {
			t.Fatalf("Commit under another key: %v", err)
		}
	})
	t.Run("lost", func(t *testing.T) {
		// Without its VERSION file the index is rebuilt from the changes.
		dir, open := setup(t)
		for _, p := range keyFiles(t, dir, "") {
			os.Remove(p)
		}
		s := open()
		defer s.Close()
		checkAll(t, s, "c", map[string]string{"Patient/a": "1", "Patient/b": "1"})
		put(t, s, "c", res("Patient", "a", "2", ""))
		checkAll(t, s, "c", map[string]string{"Patient/a": "2", "Patient/b": "1"})
	})
}

// A store written by an earlier version kept heads in a Badger table: Open
// removes them and the key index is rebuilt from the change entries.
func TestKeyIndexReplacesLegacyHeads(t *testing.T) {
	ctx := context.Background()
	db := openDB(t, "")
	defer db.Close()
	s := openOn(t, db)
	put(t, s, "c", res("Patient", "a", "1", ""), res("Patient", "b", "1", ""))
	// What an earlier version stored beside the changes.
	b := db.NewBatch()
	for _, id := range []string{"a", "b"} {
		if err := store.BatchPut(b, s.heads, headKey("c", "Patient", id), []byte("legacy")); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Flush(true); err != nil {
		t.Fatal(err)
	}
	s = openOn(t, db)
	if n, _ := s.heads.Count(ctx, ""); n != 0 {
		t.Fatalf("%d legacy heads left", n)
	}
	checkAll(t, s, "c", map[string]string{"Patient/a": "1", "Patient/b": "1"})
}

func FuzzKeyJournal(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{40, 0, 0, 0, 1, 2, 3})
	f.Add(bytes.Repeat([]byte{0xff}, 64))
	f.Fuzz(func(t *testing.T, b []byte) {
		dir := t.TempDir()
		g, err := openSegments(nil, dir, segKey)
		if err != nil {
			t.Fatal(err)
		}
		ck := &connKeys{ix: &keyIndexes{segs: g}, conn: "c", open: map[uint64]uint64{}, more: map[uint64][]uint64{}}
		p := filepath.Join(dir, "1.jnl")
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		// Never a panic; forged records do not open.
		if err := ck.replay(p, 1); err == nil && ck.nOpen != 0 {
			t.Fatalf("%d pairs from random bytes", ck.nOpen)
		}
	})
}

// failKeyRuns makes writing key index runs fail (a full disk) until the
// test ends.
func failKeyRuns(t *testing.T) {
	t.Helper()
	keyFault = func(step string) error {
		if step == "run" {
			return errors.New("no space left on device (test)")
		}
		return nil
	}
	t.Cleanup(func() { keyFault = nil })
}

// The key index is rebuilt from the change entries (its VERSION file was
// lost) and writing the rebuilt run fails, as on a full disk or at a crash.
// Nothing may then claim the index is whole: the next open rebuilds it
// again, and every resource is found once (an index missing them would
// store them again as new resources).
func TestKeyIndexRebuildCutShort(t *testing.T) {
	smallRuns(t, 12) // the rebuild writes 3 runs (too few to merge)
	ctx := context.Background()
	dir := t.TempDir()
	open := reopener(t, dir)
	s := open()
	want := map[string]string{}
	for i := range 30 {
		id := fmt.Sprintf("p%d", i)
		put(t, s, "c", res("Patient", id, "1", ""))
		want["Patient/"+id] = "1"
	}
	s.Close()
	for _, p := range keyFiles(t, dir, "") {
		os.Remove(p)
	}
	failKeyRuns(t)
	s = open()
	if _, err := s.Get(ctx, "c", "Patient", "p1"); err == nil {
		t.Fatal("Get while the rebuilt index cannot be written: no error")
	}
	s.Close()
	keyFault = nil
	s = open()
	defer s.Close()
	checkAll(t, s, "c", want)
	if runs := keyFiles(t, dir, ".run"); len(runs) < 2 {
		t.Fatalf("rebuilt as %d runs, want several", len(runs))
	}
	if n := put(t, s, "c", res("Patient", "p1", "1", ""), res("Patient", "p2", "2", "")); n.Unchanged != 1 || n.Written != 1 {
		t.Fatalf("after the rebuild: %+v", n)
	}
	want["Patient/p2"] = "2"
	checkAll(t, s, "c", want)
}

// openFDs counts the process's open file descriptors (-1: not known here).
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	return len(ents)
}

// An index that fails to load (a damaged journal after its runs) is an
// error at every use, and holds no files: each failed load closes the runs
// it had opened.
func TestKeyIndexFailedLoadKeepsNoFiles(t *testing.T) {
	if openFDs(t) < 0 {
		t.Skip("no /proc/self/fd")
	}
	smallRuns(t, 10)
	ctx := context.Background()
	dir := t.TempDir()
	open := reopener(t, dir)
	s := open()
	for i := range 35 { // 3 runs (too few to merge) and a journal
		put(t, s, "c", res("Patient", fmt.Sprintf("p%d", i), "1", ""))
	}
	s.Close()
	if runs := keyFiles(t, dir, ".run"); len(runs) != 3 {
		t.Fatalf("runs: %v", runs)
	}
	j := keyFiles(t, dir, ".jnl")
	if len(j) != 1 {
		t.Fatalf("journals: %v", j)
	}
	b, _ := os.ReadFile(j[0])
	b[10] ^= 1 // the first of its records: damage, not a torn tail
	os.WriteFile(j[0], b, 0o600)
	s = open()
	defer s.Close()
	if _, err := s.Get(ctx, "c", "Patient", "p1"); err == nil {
		t.Fatal("Get with a damaged journal: no error")
	}
	before := openFDs(t)
	for range 20 {
		if _, err := s.Get(ctx, "c", "Patient", "p1"); err == nil {
			t.Fatal("Get with a damaged journal: no error")
		}
	}
	if after := openFDs(t); after > before+5 {
		t.Fatalf("20 failed loads left %d more files open", after-before)
	}
}

// No run holds more than keyRunMaxPairs pairs, merged ones included, so
// its blocks' nonces (run id, 32-bit offset) are never used twice; at the
// real limit that is a 4 GiB run, here 100 pairs. Merges that would pass it
// are not started (none fails), and every resource is still found.
func TestKeyIndexRunsStayUnderTheNonceLimit(t *testing.T) {
	smallRuns(t, 20)
	old := keyRunMaxPairs
	keyRunMaxPairs = 100
	t.Cleanup(func() { keyRunMaxPairs = old })
	dir := t.TempDir()
	var warned messages
	open := reopener(t, dir, WithLogger(slog.New(&warned)))
	s := open()
	want := map[string]string{}
	var rs [][]byte
	for i := range 1000 {
		id := fmt.Sprintf("p%d", i)
		rs = append(rs, res("Patient", id, "1", ""))
		want["Patient/"+id] = "1"
		if len(rs) == 10 {
			put(t, s, "c", rs...)
			rs = nil
		}
	}
	s.keys.merges.Wait() // (Close would abandon a running merge)
	s.Close()
	runs := keyFiles(t, dir, ".run")
	merged := 0
	for _, p := range runs {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		n := binary.LittleEndian.Uint64(b[len(keyRunMagic):])
		if n > 100 {
			t.Fatalf("%s holds %d pairs, more than the limit (100)", filepath.Base(p), n)
		}
		if n > 20 {
			merged++
		}
	}
	if merged == 0 {
		t.Fatalf("no run was merged: %d runs", len(runs))
	}
	if got := warned.lines(); len(got) > 0 {
		t.Fatalf("%d warnings (failed merges): %q", len(got), got)
	}
	s = open()
	defer s.Close()
	checkAll(t, s, "c", want)
}

// A connection deleted while a merge of its key index runs: the merge is
// abandoned quietly and DeleteConnection returns once it has ended, having
// removed the whole directory (a merge writing into it while it was being
// removed could leave files or fail the removal).
func TestKeyIndexDeleteDuringMerge(t *testing.T) {
	smallRuns(t, 10)
	ctx := context.Background()
	dir := t.TempDir()
	var warned messages
	s := reopener(t, dir, WithLogger(slog.New(&warned)))()
	defer s.Close()
	var merging atomic.Bool
	keyFault = func(step string) error {
		if step != "merge" {
			return nil
		}
		merging.Store(true)
		// Hold the merge until DeleteConnection has taken the index out
		// of use.
		for {
			s.keys.mu.Lock()
			_, ok := s.keys.byID["c"]
			s.keys.mu.Unlock()
			if !ok {
				return nil
			}
			time.Sleep(time.Millisecond)
		}
	}
	t.Cleanup(func() { keyFault = nil })
	for i := range 40 { // the fourth run starts a merge
		put(t, s, "c", res("Patient", fmt.Sprintf("p%d", i), "1", ""))
	}
	for !merging.Load() { // the merge goroutine reaching the hook
		time.Sleep(time.Millisecond)
	}
	if err := s.DeleteConnection(ctx, "c"); err != nil {
		t.Fatal(err)
	}
	if files := segFiles(t, dir); len(files) != 0 {
		t.Fatalf("files left after DeleteConnection: %v", files)
	}
	s.keys.merges.Wait()
	if files := segFiles(t, dir); len(files) != 0 {
		t.Fatalf("files left by the merge: %v", files)
	}
	if got := warned.lines(); len(got) > 0 {
		t.Fatalf("%d warnings (a failed merge): %q", len(got), got)
	}
}

// messages keeps what a store logs at warning level, with its attributes.
type messages struct {
	mu  sync.Mutex
	got []string
}

func (m *messages) Enabled(context.Context, slog.Level) bool { return true }
func (m *messages) Handle(_ context.Context, r slog.Record) error {
	if r.Level < slog.LevelWarn {
		return nil
	}
	line := r.Message
	r.Attrs(func(a slog.Attr) bool { line += " " + a.String(); return true })
	m.mu.Lock()
	m.got = append(m.got, line)
	m.mu.Unlock()
	return nil
}
func (m *messages) WithAttrs([]slog.Attr) slog.Handler { return m }
func (m *messages) WithGroup(string) slog.Handler      { return m }

// lines returns what was logged so far.
func (m *messages) lines() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.got)
}

// A damaged key index file is named by its full path (a connection's
// directory is a hash of its id) with the way out: the index is rebuilt
// from the store once its VERSION file is removed. A merge that cannot read
// a run says which and why.
func TestKeyIndexDamageErrorsSayWhereAndWhat(t *testing.T) {
	smallRuns(t, 10)
	ctx := context.Background()
	damage := func(t *testing.T, p string, at int) {
		t.Helper()
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		b := make([]byte, 1)
		f.ReadAt(b, int64(at))
		b[0] ^= 1
		if _, err := f.WriteAt(b, int64(at)); err != nil {
			t.Fatal(err)
		}
	}
	setup := func(t *testing.T, n int) (string, func() *Store) {
		dir := t.TempDir()
		open := reopener(t, dir)
		s := open()
		for i := range n {
			put(t, s, "c", res("Patient", fmt.Sprintf("p%d", i), "1", ""))
		}
		s.Close()
		return dir, open
	}
	says := func(t *testing.T, err error, file string) {
		t.Helper()
		version := filepath.Join(filepath.Dir(file), keyVersion)
		if err == nil || !strings.Contains(err.Error(), file) || !strings.Contains(err.Error(), "remove "+version) {
			t.Fatalf("error %v does not name %s and say to remove %s", err, file, version)
		}
	}
	t.Run("journal", func(t *testing.T) {
		dir, open := setup(t, 5)
		j := keyFiles(t, dir, ".jnl")[0]
		damage(t, j, 10)
		s := open()
		defer s.Close()
		_, err := s.Get(ctx, "c", "Patient", "p1")
		says(t, err, j)
	})
	t.Run("run", func(t *testing.T) {
		dir, open := setup(t, 15)
		r := keyFiles(t, dir, ".run")[0]
		damage(t, r, keyRunHeader+100)
		s := open()
		defer s.Close()
		_, err := s.Get(ctx, "c", "Patient", "p1")
		says(t, err, r)
	})
	t.Run("the way out", func(t *testing.T) {
		// What the error says to do: remove VERSION, and the next load
		// rebuilds the index from the stored changes.
		dir, open := setup(t, 15)
		r := keyFiles(t, dir, ".run")[0]
		damage(t, r, keyRunHeader+100)
		s := open()
		_, err := s.Get(ctx, "c", "Patient", "p1")
		says(t, err, r)
		s.Close()
		if err := os.Remove(filepath.Join(filepath.Dir(r), keyVersion)); err != nil {
			t.Fatal(err)
		}
		s = open()
		defer s.Close()
		want := map[string]string{}
		for i := range 15 {
			want[fmt.Sprintf("Patient/p%d", i)] = "1"
		}
		checkAll(t, s, "c", want)
	})
	t.Run("run read by a lookup", func(t *testing.T) {
		dir, open := setup(t, 15)
		s := open()
		defer s.Close()
		if _, err := s.Get(ctx, "c", "Patient", "p1"); err != nil {
			t.Fatal(err)
		}
		r := keyFiles(t, dir, ".run")[0]
		damage(t, r, keyRunHeader+100) // after it was loaded
		_, err := s.Get(ctx, "c", "Patient", "p1")
		says(t, err, r)
	})
	t.Run("merge", func(t *testing.T) {
		dir := t.TempDir()
		var logged messages
		s := reopener(t, dir, WithLogger(slog.New(&logged)))()
		for i := range 30 { // 3 runs
			put(t, s, "c", res("Patient", fmt.Sprintf("p%d", i), "1", ""))
		}
		r := keyFiles(t, dir, ".run")[0]
		damage(t, r, keyRunHeader+100)
		for i := 30; i < 40; i++ { // the fourth starts a merge
			put(t, s, "c", res("Patient", fmt.Sprintf("p%d", i), "1", ""))
		}
		s.keys.merges.Wait() // (Close would abandon it)
		s.Close()
		got := logged.lines()
		if len(got) != 1 || !strings.Contains(got[0], r) || !strings.Contains(got[0], "block 0") {
			t.Fatalf("logged %q, want the merge's failure naming %s, block 0", got, r)
		}
	})
}

// copyDir copies the files of dir (a closed store) to a new directory.
func copyDir(t *testing.T, dir string) string {
	t.Helper()
	to := t.TempDir()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(to, rel), 0o700)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(to, rel), b, 0o600)
	})
	if err != nil {
		t.Fatal(err)
	}
	return to
}

// A power cut can lose the store's last unsynced writes (a bulk sync
// commits without fsync), the lease of the file id sequence among them, and
// the ids of files written since are handed out again. A run written with
// a repeated id must not replace the run that has it: that run may hold
// pairs of changes the store kept. Simulated by putting back a copy of the
// store taken before the run was written, with the synced key index files
// left as they are.
func TestKeyIndexRepeatedFileID(t *testing.T) {
	smallRuns(t, 10)
	ctx := context.Background()
	dir := t.TempDir()
	storeDir, segDir := filepath.Join(dir, "store"), filepath.Join(dir, "records")
	open := func() (*store.DB, *Store) {
		db := openDB(t, storeDir)
		return db, openOn(t, db, WithSegments(segDir, segKey))
	}
	want := map[string]string{}
	db, s := open()
	for i := range 5 { // in a journal
		put(t, s, "c", res("Patient", fmt.Sprintf("a%d", i), "1", ""))
		want[fmt.Sprintf("Patient/a%d", i)] = "1"
	}
	s.Close()
	db.Close()
	snapshot := copyDir(t, storeDir)
	db, s = open()
	for i := range 5 { // the tenth pair: a run holding a0-a4 and b0-b4
		put(t, s, "c", res("Patient", fmt.Sprintf("b%d", i), "1", ""))
	}
	s.Close()
	db.Close()
	runs := keyFiles(t, dir, ".run")
	if len(runs) != 1 || len(keyFiles(t, dir, ".jnl")) != 0 {
		t.Fatalf("runs %v, journals %v", runs, keyFiles(t, dir, ".jnl"))
	}
	runID, err := parseSeqHex(strings.TrimSuffix(filepath.Base(runs[0]), ".run"))
	if err != nil {
		t.Fatal(err)
	}
	// The power cut: the store as it was before the b's.
	if err := os.RemoveAll(storeDir); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(snapshot, storeDir); err != nil {
		t.Fatal(err)
	}
	db, s = open()
	// Ids since the copy come again; the next commit's journal takes the
	// one before the run's, its seal the run's.
	for {
		v, err := db.NextSeq(segSeq)
		if err != nil {
			t.Fatal(err)
		}
		if v == runID-2 {
			break
		}
		if v > runID-2 {
			t.Fatalf("the sequence is at %d after the copy was put back, past %d", v, runID-2)
		}
	}
	w, _ := s.NewWriter("c")
	for i := range 10 { // deletions: no segment takes an id
		id := fmt.Sprintf("z%d", i)
		if err := w.Delete("Patient", id, time.Time{}); err != nil {
			t.Fatal(err)
		}
		want["Patient/"+id] = "-"
	}
	if _, err := w.Commit(ctx, nil); err != nil {
		t.Fatal(err)
	}
	s.Close()
	db.Close()
	db, s = open()
	defer db.Close()
	defer s.Close()
	checkAll(t, s, "c", want)
}

// A connection written once per start of the agent does not gather a
// journal per start: at load, journals of earlier starts become a run.
func TestKeyIndexJournalsOfManyStarts(t *testing.T) {
	dir := t.TempDir()
	open := reopener(t, dir)
	want := map[string]string{}
	for i := range 3 * keyMaxJournals {
		s := open()
		id := fmt.Sprintf("p%d", i)
		put(t, s, "c", res("Patient", id, "1", ""))
		want["Patient/"+id] = "1"
		s.Close()
		if n := len(keyFiles(t, dir, ".jnl")); n > keyMaxJournals {
			t.Fatalf("after start %d: %d journals", i+1, n)
		}
	}
	s := open()
	defer s.Close()
	checkAll(t, s, "c", want)
}
