//go:build linux

package records

import (
	"context"
	"os"
	"testing"
	"time"
)

// A journal append the disk cut short (here the file size limit: write(2)
// stores part of the record, then fails, as on a full disk) fails its
// commit, and the next commit's pairs go where a replay finds them: the
// index still loads after a restart, every resource is found, and no nonce
// of the journal is used twice.
func TestKeyIndexJournalWriteCutShort(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	open := reopener(t, dir)
	s := open()
	put(t, s, "c", res("Patient", "a", "1", ""))
	j := keyFiles(t, dir, ".jnl")
	if len(j) != 1 {
		t.Fatalf("journals: %v", j)
	}
	fi, err := os.Stat(j[0])
	if err != nil {
		t.Fatal(err)
	}
	// A deletion writes no body: the journal is the only file its commit
	// writes with write(2) (Badger writes through mapped files).
	w, _ := s.NewWriter("c")
	if err := w.Delete("Patient", "x", time.Time{}); err != nil {
		t.Fatal(err)
	}
	// 10 bytes of the 36-byte record.
	withFileSizeLimit(t, fi.Size()+10, func() { _, err = w.Commit(ctx, nil) })
	if err == nil {
		t.Fatal("commit past the file size limit: no error")
	}
	if fi2, _ := os.Stat(j[0]); fi2.Size() != fi.Size()+10 {
		t.Fatalf("journal %d bytes after the cut write, want %d", fi2.Size(), fi.Size()+10)
	}
	del(t, s, "c", "Patient", "y", time.Time{})
	// The next commit went to a new journal: the cut one was neither
	// appended to nor rewritten at the offset whose nonce is spent.
	if fi2, _ := os.Stat(j[0]); fi2.Size() != fi.Size()+10 {
		t.Fatalf("cut journal %d bytes after the next commit, want %d", fi2.Size(), fi.Size()+10)
	}
	if j2 := keyFiles(t, dir, ".jnl"); len(j2) != 2 {
		t.Fatalf("journals after the next commit: %v, want the cut one and a new one", j2)
	}
	checkAll(t, s, "c", map[string]string{"Patient/a": "1", "Patient/y": "-"})
	s.Close()
	s = open()
	defer s.Close()
	checkAll(t, s, "c", map[string]string{"Patient/a": "1", "Patient/y": "-"})
}
