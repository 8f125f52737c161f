package records

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/medrelay/medrelay/internal/store"
)

var testKey = bytes.Repeat([]byte{9}, 32)

var quiet = WithLogger(slog.New(slog.DiscardHandler))

func openDB(t testing.TB, dir string) *store.DB {
	t.Helper()
	o := store.Options{Dir: dir, Key: testKey, GCInterval: -1}
	if dir == "" {
		o.InMemory = true
	}
	db, err := store.Open(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	return db
}

// openOn opens a Store over db with a quiet logger, then opts.
func openOn(t testing.TB, db *store.DB, opts ...Option) *Store {
	t.Helper()
	s, err := Open(context.Background(), db, append([]Option{quiet}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

var segKey = bytes.Repeat([]byte{7}, 32)

// openStore opens a store as the agent does: bodies in segments.
func openStore(t testing.TB) *Store {
	t.Helper()
	db := openDB(t, "")
	t.Cleanup(func() { db.Close() })
	s, err := Open(context.Background(), db, quiet, WithSegments(t.TempDir(), segKey))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// res is a resource's JSON; ver and lu may be empty.
func res(typ, id, ver, lu string) []byte {
	b := fmt.Appendf(nil, `{"resourceType":%q,"id":%q`, typ, id)
	if ver != "" || lu != "" {
		b = append(b, `,"meta":{`...)
		if ver != "" {
			b = fmt.Appendf(b, `"versionId":%q`, ver)
		}
		if lu != "" {
			if ver != "" {
				b = append(b, ',')
			}
			b = fmt.Appendf(b, `"lastUpdated":%q`, lu)
		}
		b = append(b, '}')
	}
	return fmt.Appendf(b, `,"text":{"div":"%s %s v%s"}}`, typ, id, ver)
}

func put(t testing.TB, s *Store, conn string, rs ...[]byte) Counts {
	t.Helper()
	w, err := s.NewWriter(conn, WithoutSync())
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		if _, err := w.Put(r); err != nil {
			t.Fatal(err)
		}
	}
	n, err := w.Commit(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func del(t testing.TB, s *Store, conn, typ, id string, at time.Time) Counts {
	t.Helper()
	w, _ := s.NewWriter(conn)
	if err := w.Delete(typ, id, at); err != nil {
		t.Fatal(err)
	}
	n, err := w.Commit(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func list(t testing.TB, s *Store, conn string, q Query) ([]Record, uint64) {
	t.Helper()
	var out []Record
	cur, err := s.List(context.Background(), conn, q, func(p []Record, _ uint64) error {
		out = append(out, p...)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out, cur
}

// listed renders records as "Type/id@version" ("-" suffix for tombstones).
func listed(rs []Record) []string {
	var out []string
	for _, r := range rs {
		n := r.Type + "/" + r.ID + "@" + r.VersionID
		if r.Deleted {
			n += "-"
		}
		out = append(out, n)
	}
	return out
}

func TestStoreGetListAndReingest(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	a, b, c := res("Patient", "a", "1", "2025-01-01T00:00:00Z"), res("Observation", "b", "1", ""), res("Condition", "c", "", "")
	if n := put(t, s, "conn1", a, b, c); n != (Counts{Written: 3}) {
		t.Fatalf("first put: %+v", n)
	}
	r, err := s.Get(ctx, "conn1", "Patient", "a")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(r.JSON, a) || r.VersionID != "1" || !r.LastUpdated.Equal(time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)) || r.Deleted {
		t.Fatalf("Get = %+v", r)
	}
	if _, err := s.Get(ctx, "conn1", "Patient", "zz"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing record: %v", err)
	}
	if _, err := s.Get(ctx, "conn2", "Patient", "a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("other connection sees the record: %v", err)
	}
	all, cur := list(t, s, "conn1", Query{})
	if got := listed(all); !slices.Equal(got, []string{"Patient/a@1", "Observation/b@1", "Condition/c@"}) {
		t.Fatalf("list = %v", got)
	}
	if cur != all[2].Seq {
		t.Fatalf("cursor %d, want the last record's %d", cur, all[2].Seq)
	}
	// The same resources again (a resumed download): nothing changes and
	// nothing appears twice.
	if n := put(t, s, "conn1", a, b, c); n != (Counts{Unchanged: 3}) {
		t.Fatalf("re-ingest: %+v", n)
	}
	again, cur2 := list(t, s, "conn1", Query{})
	if !slices.Equal(listed(again), listed(all)) || cur2 != cur {
		t.Fatalf("after re-ingest: %v (cursor %d), want %v (cursor %d)", listed(again), cur2, listed(all), cur)
	}
	if more, c3 := list(t, s, "conn1", Query{After: cur}); len(more) != 0 || c3 != cur {
		t.Fatalf("after the cursor: %v, cursor %d", listed(more), c3)
	}
	if n, _ := s.Count(ctx, "conn1"); n != 3 {
		t.Fatalf("count = %d", n)
	}
}

func TestStoreNewVersionMovesToTheEnd(t *testing.T) {
	s := openStore(t)
	put(t, s, "c", res("Patient", "a", "1", "2025-01-01T00:00:00Z"), res("Patient", "b", "1", "2025-01-01T00:00:00Z"))
	_, cur := list(t, s, "c", Query{})
	// Same version, different bytes (served differently): unchanged.
	same := bytes.Replace(res("Patient", "a", "1", "2025-01-01T00:00:00Z"), []byte(`"text"`), []byte(` "text"`), 1)
	if n := put(t, s, "c", same); n != (Counts{Unchanged: 1}) {
		t.Fatalf("same version: %+v", n)
	}
	if n := put(t, s, "c", res("Patient", "a", "2", "2025-02-01T00:00:00Z")); n != (Counts{Written: 1}) {
		t.Fatalf("new version: %+v", n)
	}
	all, _ := list(t, s, "c", Query{})
	if got := listed(all); !slices.Equal(got, []string{"Patient/b@1", "Patient/a@2"}) {
		t.Fatalf("list = %v", got)
	}
	if since, _ := list(t, s, "c", Query{After: cur}); !slices.Equal(listed(since), []string{"Patient/a@2"}) {
		t.Fatalf("since cursor = %v", listed(since))
	}
	// An older copy arriving late is stale.
	if n := put(t, s, "c", res("Patient", "a", "1", "2025-01-01T00:00:00Z")); n != (Counts{Stale: 1}) {
		t.Fatalf("older copy: %+v", n)
	}
	if r, _ := s.Get(context.Background(), "c", "Patient", "a"); r.VersionID != "2" {
		t.Fatalf("after stale put: version %q", r.VersionID)
	}
}

func TestStoreTombstones(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	t1 := time.Date(2025, 3, 1, 0, 0, 0, 0, time.UTC)
	put(t, s, "c", res("Patient", "a", "1", "2025-01-01T00:00:00Z"), res("Patient", "b", "1", "2025-04-01T00:00:00Z"))
	_, before := list(t, s, "c", Query{})
	if n := del(t, s, "c", "Patient", "a", t1); n != (Counts{Deleted: 1}) {
		t.Fatalf("delete: %+v", n)
	}
	r, err := s.Get(ctx, "c", "Patient", "a")
	if err != nil || !r.Deleted || r.JSON != nil {
		t.Fatalf("Get deleted = %+v, %v", r, err)
	}
	if since, _ := list(t, s, "c", Query{After: before}); !slices.Equal(listed(since), []string{"Patient/a@-"}) {
		t.Fatalf("since = %v", listed(since))
	}
	if n := del(t, s, "c", "Patient", "a", t1); n != (Counts{Unchanged: 1}) {
		t.Fatalf("second delete: %+v", n)
	}
	// A copy from before the deletion does not bring it back.
	if n := put(t, s, "c", res("Patient", "a", "1", "2025-01-01T00:00:00Z")); n != (Counts{Stale: 1}) {
		t.Fatalf("old copy after delete: %+v", n)
	}
	// A deletion older than the stored copy is stale (re-created since).
	if n := del(t, s, "c", "Patient", "b", t1); n != (Counts{Stale: 1}) {
		t.Fatalf("old deletion: %+v", n)
	}
	// A newer copy brings it back.
	if n := put(t, s, "c", res("Patient", "a", "2", "2025-05-01T00:00:00Z")); n != (Counts{Written: 1}) {
		t.Fatalf("re-created: %+v", n)
	}
	if r, _ := s.Get(ctx, "c", "Patient", "a"); r.Deleted || r.VersionID != "2" {
		t.Fatalf("after re-create: %+v", r)
	}
	// A deletion of something never stored still leaves a tombstone.
	if n := del(t, s, "c", "Patient", "never", time.Time{}); n != (Counts{Deleted: 1}) {
		t.Fatalf("delete unknown: %+v", n)
	}
	all, _ := list(t, s, "c", Query{})
	if got := listed(all); !slices.Equal(got, []string{"Patient/b@1", "Patient/a@2", "Patient/never@-"}) {
		t.Fatalf("list = %v", got)
	}
}

func TestStoreListTypesPagesAndLimits(t *testing.T) {
	s := openStore(t)
	types := []string{"Patient", "Observation", "Condition", "Encounter"}
	rng := rand.New(rand.NewPCG(1, 2))
	var rs [][]byte
	for i := range 400 {
		typ := types[rng.IntN(len(types))]
		rs = append(rs, res(typ, fmt.Sprint("r", i%300), fmt.Sprint(i), ""))
	}
	// Several commits so updates move resources around.
	for i := 0; i < len(rs); i += 37 {
		put(t, s, "c", rs[i:min(i+37, len(rs))]...)
	}
	all, end := list(t, s, "c", Query{})
	for _, want := range [][]string{{"Observation"}, {"Condition", "Patient"}, {"Encounter", "Observation", "Patient", "Condition"}} {
		var filtered []Record
		for _, r := range all {
			if slices.Contains(want, r.Type) {
				filtered = append(filtered, r)
			}
		}
		for _, pageSize := range []int{1, 7, 1000, -5} {
			if pageSize < 0 {
				// A walk cut short by its key budget, not by matches.
				defer func(old int) { maxKeysPerPage = old }(maxKeysPerPage)
				maxKeysPerPage, pageSize = -pageSize, 1000
			}
			// Page by page, continuing from each page's cursor.
			var got []Record
			var cur uint64
			for {
				p, next := list(t, s, "c", Query{Types: want, After: cur, PageRecords: pageSize, Limit: pageSize})
				got = append(got, p...)
				if next == cur {
					break
				}
				cur = next
			}
			if !slices.Equal(listed(got), listed(filtered)) {
				t.Fatalf("types %v page %d: %d records, want %d", want, pageSize, len(got), len(filtered))
			}
			if len(want) == len(types) && cur != end {
				t.Fatalf("types %v: final cursor %d, want %d", want, cur, end)
			}
		}
	}
	if _, err := s.List(context.Background(), "c", Query{Types: []string{"bad type"}}, nil); !errors.Is(err, ErrBadType) {
		t.Fatalf("bad type: %v", err)
	}
	if _, err := s.List(context.Background(), "a/b", Query{}, nil); !errors.Is(err, ErrBadConnection) {
		t.Fatalf("bad connection: %v", err)
	}
	// A page is also bounded by bytes.
	var pages int
	_, err := s.List(context.Background(), "c", Query{PageBytes: 1000}, func(p []Record, _ uint64) error {
		pages++
		return nil
	})
	if err != nil || pages < 10 {
		t.Fatalf("byte-bounded pages: %d, %v", pages, err)
	}
}

// Readers following the change index while several writers write the same
// connection never skip a change: whatever they assemble from their cursors
// is, at the end, exactly what the store holds.
func TestStoreFollowersNeverSkipWhileWritersWrite(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	const writers, perWriter = 4, 300
	var wg sync.WaitGroup
	done := make(chan struct{})
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			wr, _ := s.NewWriter("c", WithoutSync())
			for i := range perWriter {
				// Shared ids, so writers supersede each other's entries.
				id := fmt.Sprintf("r%d", (i*7+w)%200)
				lu := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(i*writers+w) * time.Second).Format(time.RFC3339)
				if _, err := wr.Put(res("Observation", id, fmt.Sprint(i*writers+w), lu)); err != nil {
					t.Error(err)
					return
				}
				if i%(5+w) == 0 {
					if _, err := wr.Commit(ctx, nil); err != nil {
						t.Error(err)
						return
					}
				}
			}
			if _, err := wr.Commit(ctx, nil); err != nil {
				t.Error(err)
			}
		}()
	}
	type seen struct {
		version string
		seq     uint64
	}
	follow := func(q Query) map[string]seen {
		got := map[string]seen{}
		var cur uint64
		step := func() {
			q.After = cur
			var err error
			cur, err = s.List(ctx, "c", q, func(p []Record, _ uint64) error {
				for _, r := range p {
					if r.Seq <= got[r.ID].seq {
						t.Errorf("%s: seq %d after %d", r.ID, r.Seq, got[r.ID].seq)
					}
					got[r.ID] = seen{r.VersionID, r.Seq}
				}
				return nil
			})
			if err != nil {
				t.Error(err)
			}
		}
		for {
			select {
			case <-done:
				step()
				return got
			default:
				step()
			}
		}
	}
	results := make(chan map[string]seen, 2)
	go func() { results <- follow(Query{PageRecords: 13}) }()
	go func() { results <- follow(Query{Types: []string{"Observation", "Patient"}, PageRecords: 11}) }()
	wg.Wait()
	close(done)
	// Each resource once in the change index, at its newest version, and
	// its head pointing there (writers plan while others' batches are
	// still being stored).
	newest := map[string]int{}
	for w := range writers {
		for i := range perWriter {
			id := fmt.Sprintf("r%d", (i*7+w)%200)
			newest[id] = max(newest[id], i*writers+w)
		}
	}
	all, _ := list(t, s, "c", Query{})
	if len(all) != len(newest) {
		t.Fatalf("change index holds %d entries for %d resources", len(all), len(newest))
	}
	for _, r := range all {
		if r.VersionID != fmt.Sprint(newest[r.ID]) {
			t.Fatalf("%s stored at version %s, newest written %d", r.ID, r.VersionID, newest[r.ID])
		}
		if g, err := s.Get(ctx, "c", "Observation", r.ID); err != nil || g.Seq != r.Seq {
			t.Fatalf("Get %s = seq %d (%v), listed at %d", r.ID, g.Seq, err, r.Seq)
		}
	}
	for range 2 {
		got := <-results
		all, _ := list(t, s, "c", Query{})
		if len(got) != len(all) {
			t.Fatalf("follower saw %d resources, store has %d", len(got), len(all))
		}
		for _, r := range all {
			if got[r.ID].version != r.VersionID {
				t.Fatalf("%s: follower ended at version %q, store has %q", r.ID, got[r.ID].version, r.VersionID)
			}
		}
	}
}

func TestStoreDeleteConnection(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	put(t, s, "c1", res("Patient", "a", "1", ""), res("Observation", "b", "1", ""))
	del(t, s, "c1", "Patient", "x", time.Time{})
	put(t, s, "c10", res("Patient", "a", "1", "")) // shares a prefix with c1
	if err := s.DeleteConnection(ctx, "c1"); err != nil {
		t.Fatal(err)
	}
	if all, _ := list(t, s, "c1", Query{}); len(all) != 0 {
		t.Fatalf("after delete: %v", listed(all))
	}
	if _, err := s.Get(ctx, "c1", "Patient", "a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get after delete: %v", err)
	}
	for _, tb := range []*store.Table[[]byte]{s.heads, s.changes, s.logs.lengths, s.logs.blocks} {
		if n, _ := tb.Count(ctx, "c1/"); n != 0 {
			t.Fatalf("%d keys left", n)
		}
	}
	if all, _ := list(t, s, "c10", Query{}); len(all) != 1 {
		t.Fatalf("other connection: %v", listed(all))
	}
	// Nothing brings the records of a deleted connection back.
	w, _ := s.NewWriter("c1")
	w.Put(res("Patient", "a", "1", ""))
	if _, err := w.Commit(ctx, nil); !errors.Is(err, ErrDeleted) {
		t.Fatalf("write after delete: %v", err)
	}
}

// A crash at any step of a commit: the bodies, key index entries and change
// log blocks written (in full, torn, or not at all) and the transaction
// that commits them and the caller's marker stored or not. After a restart
// each resource is listed once, and the caller's resume (from its last
// progress marker) ends in exactly the state of an uninterrupted commit.
// Both ways a store keeps its log: files beside the segments, and Badger.
func TestStoreCrashMidCommitRecovers(t *testing.T) {
	ctx := context.Background()
	lu := func(m int) string { return fmt.Sprintf("2025-%02d-01T00:00:00Z", m) }
	before := [][]byte{res("Patient", "a", "1", lu(1)), res("Patient", "b", "1", lu(1)), res("Condition", "c", "1", lu(1))}
	batch := func(w *Writer) {
		for _, r := range [][]byte{
			res("Patient", "a", "2", lu(2)),
			res("Observation", "d", "1", lu(2)),
			res("Patient", "a", "3", lu(3)),   // twice in one batch
			res("Condition", "c", "1", lu(1)), // unchanged
			res("Observation", "e", "1", lu(2)),
		} {
			if _, err := w.Put(r); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.Delete("Patient", "b", time.Time{}); err != nil {
			t.Fatal(err)
		}
	}
	markerTable := func(db *store.DB) *store.Table[[]byte] { return store.NewTable[[]byte](db, store.Name("test_marker")) }
	markerFor := func(db *store.DB) Marker {
		return func(b *store.Batch, _ Counts) error { return store.BatchPut(b, markerTable(db), "m", []byte("done")) }
	}
	wantBefore := []string{"Patient/a@1", "Patient/b@1", "Condition/c@1"}
	want := []string{"Condition/c@1", "Observation/d@1", "Patient/a@3", "Observation/e@1", "Patient/b@-"}
	wantSince := []string{"Observation/d@1", "Patient/a@3", "Observation/e@1", "Patient/b@-"}

	type mode struct {
		name string
		open func(t *testing.T) (open func() *Store, dir string)
	}
	modes := []mode{
		{"files", func(t *testing.T) (func() *Store, string) {
			dir := t.TempDir()
			return reopener(t, dir), dir
		}},
		{"badger", func(t *testing.T) (func() *Store, string) {
			db := openDB(t, "")
			t.Cleanup(func() { db.Close() })
			return func() *Store { return openOn(t, db) }, ""
		}},
	}
	crashes := []struct {
		name      string
		committed bool
		tear      bool // the log's uncommitted tail cut short
	}{
		{"written, not committed", false, false},
		{"written and torn, not committed", false, true},
		{"committed, not published", true, false},
	}
	for _, m := range modes {
		for _, c := range crashes {
			if c.tear && m.name == "badger" {
				continue // no file to tear: the same run as without
			}
			t.Run(m.name+"/"+c.name, func(t *testing.T) {
				open, dir := m.open(t)
				s := open()
				put(t, s, "c", before...)
				got, cur := list(t, s, "c", Query{})
				if !slices.Equal(listed(got), wantBefore) {
					t.Fatalf("before: %v", listed(got))
				}
				w, _ := s.NewWriter("c")
				batch(w)
				b, _, _, err := w.send(ctx, markerFor(s.db))
				if err == nil && c.committed {
					err = b.Flush(true)
				} else if err == nil {
					b.Cancel()
				}
				if err != nil {
					t.Fatal(err)
				}
				s.Close() // the crash: nothing published, files closed
				if c.tear {
					logs := filesUnder(t, dir, ".log")
					if len(logs) != 1 {
						t.Fatalf("log files: %v", logs)
					}
					fi, _ := os.Stat(logs[0])
					if err := os.Truncate(logs[0], fi.Size()-7); err != nil {
						t.Fatal(err)
					}
				}
				s = open()
				defer s.Close()
				mid, _ := list(t, s, "c", Query{})
				ids := map[string]bool{}
				for _, r := range mid {
					if ids[r.Type+"/"+r.ID] {
						t.Fatalf("%s/%s listed twice after the crash", r.Type, r.ID)
					}
					ids[r.Type+"/"+r.ID] = true
					if g, err := s.Get(ctx, "c", r.Type, r.ID); err != nil || g.Seq != r.Seq {
						t.Fatalf("Get %s/%s = %+v, %v; listed at %d", r.Type, r.ID, g, err, r.Seq)
					}
				}
				if n, _ := s.Count(ctx, "c"); n != len(mid) {
					t.Fatalf("Count %d, %d listed", n, len(mid))
				}
				_, err = markerTable(s.db).Get(ctx, "m")
				switch {
				case c.committed && err != nil:
					t.Fatalf("committed, but the marker is not stored: %v", err)
				case !c.committed && !errors.Is(err, store.ErrNotFound):
					t.Fatalf("not committed, but the marker is stored: %v", err)
				case !c.committed && !slices.Equal(listed(mid), wantBefore):
					t.Fatalf("not committed, but the list is %v", listed(mid))
				}
				// Resume: the caller replays unless its marker was stored.
				if !c.committed {
					w, _ := s.NewWriter("c")
					batch(w)
					if _, err := w.Commit(ctx, markerFor(s.db)); err != nil {
						t.Fatal(err)
					}
				}
				all, _ := list(t, s, "c", Query{})
				since, _ := list(t, s, "c", Query{After: cur})
				if !slices.Equal(listed(all), want) || !slices.Equal(listed(since), wantSince) {
					t.Fatalf("list %v since %v, want %v since %v", listed(all), listed(since), want, wantSince)
				}
				for _, typ := range []string{"Patient", "Observation", "Condition"} {
					byType, _ := list(t, s, "c", Query{Types: []string{typ}})
					var wantType []string
					for _, r := range all {
						if r.Type == typ {
							wantType = append(wantType, r.Type+"/"+r.ID+"@"+r.VersionID+map[bool]string{true: "-"}[r.Deleted])
						}
					}
					if !slices.Equal(listed(byType), wantType) {
						t.Fatalf("type %s lists %v, want %v", typ, listed(byType), wantType)
					}
				}
				if n, _ := s.Count(ctx, "c"); n != 5 {
					t.Fatalf("Count %d, want 5", n)
				}
				// And once more after a clean restart.
				s.Close()
				s = open()
				if again, _ := list(t, s, "c", Query{}); !slices.Equal(listed(again), want) {
					t.Fatalf("after a restart: %v", listed(again))
				}
			})
		}
	}
}

// filesUnder lists the files under dir whose names end in suffix.
func filesUnder(t *testing.T, dir, suffix string) []string {
	t.Helper()
	var out []string
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(p, suffix) {
			out = append(out, p)
		}
		return nil
	})
	return out
}

// A writer still running when its connection's records are deleted cannot
// bring them back.
func TestCommitAfterDeleteIsRefused(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	w, err := s.NewWriter("conn-del")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Put([]byte(`{"resourceType":"Patient","id":"p1"}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Commit(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Put([]byte(`{"resourceType":"Patient","id":"p2"}`)); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteConnection(ctx, "conn-del"); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Commit(ctx, nil); !errors.Is(err, ErrDeleted) {
		t.Fatalf("commit after delete: %v", err)
	}
	if n, _ := s.Count(ctx, "conn-del"); n != 0 {
		t.Fatalf("%d records after delete", n)
	}
}

// List with Reuse (pages read ahead into memory taking turns) lists what
// List without it does, for limits that end mid-page, on a page boundary
// and past the end, and for a type filter; fn copies what it keeps.
func TestListReuseListsTheSame(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	var rs [][]byte
	for i := range 250 {
		typ := []string{"Patient", "Observation", "Condition"}[i%3]
		rs = append(rs, res(typ, fmt.Sprint("r", i), "1", ""))
	}
	put(t, s, "c", rs...)
	collect := func(q Query) ([]string, uint64) {
		var out []string
		cur, err := s.List(ctx, "c", q, func(page []Record, _ uint64) error {
			for _, r := range page {
				out = append(out, r.Type+"/"+r.ID+"="+string(r.JSON))
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return out, cur
	}
	for _, q := range []Query{
		{PageRecords: 7},
		{PageRecords: 7, Limit: 30},
		{PageRecords: 10, Limit: 30},
		{PageRecords: 7, Limit: 1000},
		{PageRecords: 7, Types: []string{"Observation"}},
		{PageRecords: 7, After: 100, PageBytes: 200},
	} {
		want, wantCur := collect(q)
		q.Reuse = true
		got, gotCur := collect(q)
		if !slices.Equal(got, want) || gotCur != wantCur {
			t.Fatalf("%+v: with Reuse %d records to %d, without %d to %d", q, len(got), gotCur, len(want), wantCur)
		}
	}
	// fn failing stops the list, the page read ahead discarded.
	boom := errors.New("boom")
	n := 0
	_, err := s.List(ctx, "c", Query{PageRecords: 5, Reuse: true}, func(page []Record, _ uint64) error {
		if n++; n == 3 {
			return boom
		}
		return nil
	})
	if !errors.Is(err, boom) || n != 3 {
		t.Fatalf("fn's error: %v after %d pages", err, n)
	}
}
