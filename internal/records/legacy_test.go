package records

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/medrelay/medrelay/internal/store"
)

// legacyChange is a change entry as earlier versions stored it in Badger.
type legacyChange struct {
	seq, prev uint64
	typ, id   string
	version   string
	deleted   bool
}

// writeLegacy stores changes the way an earlier version did: one Badger
// entry per change, the body inline, and (pendingFirst != 0) the pending
// marker of a batch a crash interrupted.
func writeLegacy(t *testing.T, db *store.DB, conn string, pendingFirst uint64, cs ...legacyChange) {
	t.Helper()
	changes := store.NewTable[[]byte](db, store.RecordChanges)
	b := db.NewBatch()
	for _, lc := range cs {
		c := change{prev: lc.prev, typ: lc.typ, id: lc.id, versionID: lc.version, deleted: lc.deleted, hash: uint64(lc.seq)}
		if !lc.deleted {
			c.json = res(lc.typ, lc.id, lc.version, "")
		}
		if err := store.BatchPut(b, changes, changeKey(conn, lc.seq, lc.typ), appendChange(nil, &c)); err != nil {
			t.Fatal(err)
		}
	}
	if pendingFirst != 0 {
		if err := store.BatchPut(b, store.NewTable[[]byte](db, store.RecordPending), conn, []byte(seqHex(pendingFirst))); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Flush(true); err != nil {
		t.Fatal(err)
	}
	// The sequence continues past every stored change, as it did then.
	for {
		if n, _ := db.NextSeq(seqName); n > 100 {
			break
		}
	}
}

// A store of an earlier version kept its change index in Badger, bodies
// inline. Open moves it to the change log: everything lists as before (an
// interrupted batch finished: each resource once, at its newest change),
// bodies written inline still read once new ones go to segments, and the
// Badger entries are gone.
func TestLegacyChangeIndexConverted(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	db, open := reopenerDB(t, dir)
	writeLegacy(t, db, "c", 7,
		legacyChange{seq: 2, typ: "Patient", id: "a", version: "1"},
		legacyChange{seq: 3, typ: "Patient", id: "b", version: "2", prev: 1}, // its prev was removed with the batch
		legacyChange{seq: 5, typ: "Observation", id: "o", version: "1"},
		// The interrupted batch wrote b@3 but did not reach the removal of
		// b@2, nor its pending marker's removal.
		legacyChange{seq: 7, typ: "Patient", id: "b", version: "3", prev: 3},
		legacyChange{seq: 8, typ: "Patient", id: "x", deleted: true, prev: 6},
	)
	writeLegacy(t, db, "d", 0, legacyChange{seq: 4, typ: "Patient", id: "a", version: "9"})
	want := []string{"Patient/a@1", "Observation/o@1", "Patient/b@3", "Patient/x@-"}
	check := func(s *Store) {
		t.Helper()
		got, _ := list(t, s, "c", Query{})
		if !slices.Equal(listed(got), want) {
			t.Fatalf("listed %v, want %v", listed(got), want)
		}
		if !bytes.Equal(got[0].JSON, res("Patient", "a", "1", "")) {
			t.Fatalf("inline body reads %q", got[0].JSON)
		}
		if n, _ := s.Count(ctx, "c"); n != len(want) {
			t.Fatalf("Count %d", n)
		}
		checkAll(t, s, "d", map[string]string{"Patient/a": "9"})
		for _, tb := range []*store.Table[[]byte]{s.changes, s.pending} {
			if n, _ := tb.Count(ctx, ""); n != 0 {
				t.Fatalf("%d legacy entries left", n)
			}
		}
	}
	s := open()
	check(s)
	g, err := s.Get(ctx, "c", "Patient", "b")
	if err != nil || g.VersionID != "3" || g.Seq != 7 {
		t.Fatalf("Get b: %+v %v", g, err)
	}
	// New bodies go to segments; the converted ones still read.
	put(t, s, "c", res("Patient", "a", "2", ""))
	want = []string{"Observation/o@1", "Patient/b@3", "Patient/x@-", "Patient/a@2"}
	got, _ := list(t, s, "c", Query{})
	if !slices.Equal(listed(got), want) || !bytes.Equal(got[3].JSON, res("Patient", "a", "2", "")) {
		t.Fatalf("after a put: %v", listed(got))
	}
	s.Close()

	// A crash after the log was committed but before the Badger entries
	// were removed: the next start removes them and converts nothing twice.
	writeLegacy(t, db, "c", 7, legacyChange{seq: 2, typ: "Patient", id: "a", version: "1"}, legacyChange{seq: 5, typ: "Observation", id: "o", version: "1"})
	s = open()
	defer s.Close()
	want = []string{"Observation/o@1", "Patient/b@3", "Patient/x@-", "Patient/a@2"}
	got, _ = list(t, s, "c", Query{})
	if !slices.Equal(listed(got), want) {
		t.Fatalf("after a second start: %v", listed(got))
	}
	for _, tb := range []*store.Table[[]byte]{s.changes, s.pending} {
		if n, _ := tb.Count(ctx, ""); n != 0 {
			t.Fatalf("after a second start: %d legacy entries left", n)
		}
	}
	if len(filesUnder(t, dir, ".log")) == 0 {
		t.Fatal("no change log files")
	}
}

// A crash during a conversion, before its log was committed, leaves a file
// no length names (here with blocks of its own): the next start removes it
// and converts again. A conversion larger than maxLogFile spreads over
// several files, all committed together. Without a records directory the
// blocks go to Badger.
func TestLegacyConversionCrashAndRollover(t *testing.T) {
	ctx := context.Background()
	smallLogFiles(t, 2<<10)
	var cs []legacyChange
	want := map[string]string{}
	for i := range 200 {
		id := fmt.Sprint("p", i)
		cs = append(cs, legacyChange{seq: uint64(10 + i), typ: "Patient", id: id, version: "1"})
		want["Patient/"+id] = "1"
	}
	t.Run("files", func(t *testing.T) {
		dir := t.TempDir()
		db, open := reopenerDB(t, dir)
		writeLegacy(t, db, "c", 0, cs...)
		// What the crashed conversion left.
		id, err := db.NextSeq(segSeq)
		if err != nil {
			t.Fatal(err)
		}
		g, err := openSegments(db, filepath.Join(dir, "records"), segKey)
		if err != nil {
			t.Fatal(err)
		}
		orphan := filepath.Join(g.connDir("c"), logDirName, seqHex(id)+".log")
		if err := os.MkdirAll(filepath.Dir(orphan), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(orphan, bytes.Repeat([]byte{3}, 5000), 0o600); err != nil {
			t.Fatal(err)
		}
		s := open()
		checkAll(t, s, "c", want)
		if _, err := os.Stat(orphan); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("the crashed conversion's file: %v", err)
		}
		if n := len(filesUnder(t, dir, ".log")); n < 2 {
			t.Fatalf("%d log files for a conversion past maxLogFile", n)
		}
		s.Close()
		s = open()
		defer s.Close()
		checkAll(t, s, "c", want)
	})
	t.Run("badger", func(t *testing.T) {
		db := openDB(t, "")
		defer db.Close()
		writeLegacy(t, db, "c", 0, cs...)
		for _, reopen := range []bool{false, true} {
			s := openOn(t, db)
			checkAll(t, s, "c", want)
			if n, _ := s.changes.Count(ctx, ""); n != 0 {
				t.Fatalf("reopened %v: %d legacy entries left", reopen, n)
			}
			s.Close()
		}
	})
}

// A damaged entry of an earlier version does not keep the store from
// opening: the rest is converted and the entry left out, with a log line
// naming its connection; a pending marker with no change entries left is
// removed.
func TestLegacyDamagedEntryLeftOut(t *testing.T) {
	ctx := context.Background()
	var logged messages
	db, open := reopenerDB(t, t.TempDir(), WithLogger(slog.New(&logged)))
	writeLegacy(t, db, "c", 0,
		legacyChange{seq: 2, typ: "Patient", id: "a", version: "1"},
		legacyChange{seq: 3, typ: "Patient", id: "b", version: "1"},
	)
	b := db.NewBatch()
	if err := store.BatchPut(b, store.NewTable[[]byte](db, store.RecordChanges), changeKey("c", 3, "Patient"), []byte{1, 0, 0xff}); err != nil {
		t.Fatal(err)
	}
	if err := store.BatchPut(b, store.NewTable[[]byte](db, store.RecordPending), "lone", []byte(seqHex(9))); err != nil {
		t.Fatal(err)
	}
	if err := b.Flush(true); err != nil {
		t.Fatal(err)
	}
	s := open() // opens despite the damaged entry
	defer s.Close()
	checkAll(t, s, "c", map[string]string{"Patient/a": "1"})
	for _, tb := range []*store.Table[[]byte]{s.changes, s.pending} {
		if n, _ := tb.Count(ctx, ""); n != 0 {
			t.Fatalf("%d legacy entries left", n)
		}
	}
	if got := logged.lines(); len(got) != 1 || !strings.Contains(got[0], "damaged change entry") || !strings.Contains(got[0], "connection=c") {
		t.Fatalf("logged %q, want one line on the damaged entry of c", got)
	}
}
