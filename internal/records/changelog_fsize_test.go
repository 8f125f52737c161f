//go:build linux

package records

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"
)

// withFileSizeLimit runs fn with writes past n bytes of any file failing
// (write(2) stores what fits, then fails, as on a full disk).
func withFileSizeLimit(t *testing.T, n int64, fn func()) {
	t.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_FSIZE, &lim); err != nil {
		t.Skip(err)
	}
	low := lim
	low.Cur = uint64(n)
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &low); err != nil {
		t.Skip(err)
	}
	defer func() {
		if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &lim); err != nil {
			t.Fatal(err)
		}
	}()
	fn()
}

// A log append the disk cut short fails its commit; the cut file is not
// appended to again (the offsets past its committed length, nonces, are
// spent), the next commit takes a new file, and a restart reads every
// committed change.
func TestChangeLogWriteCutShort(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	open := reopener(t, dir)
	s := open()
	put(t, s, "c", patients(100, "1")...)
	logs := filesUnder(t, dir, ".log")
	jnls := keyFiles(t, dir, ".jnl")
	if len(logs) != 1 || len(jnls) != 1 {
		t.Fatalf("logs %v, journals %v", logs, jnls)
	}
	lfi, _ := os.Stat(logs[0])
	jfi, _ := os.Stat(jnls[0])
	// A deletion writes no body: the journal and the log are the files its
	// commit writes with write(2); the journal's record fits under the
	// limit, the log's block does not.
	if jfi.Size()+100 > lfi.Size() {
		t.Fatalf("journal %d bytes, log %d: the test needs the log larger", jfi.Size(), lfi.Size())
	}
	w, _ := s.NewWriter("c")
	if err := w.Delete("Patient", "x", time.Time{}); err != nil {
		t.Fatal(err)
	}
	var err error
	withFileSizeLimit(t, lfi.Size()+10, func() { _, err = w.Commit(ctx, nil) })
	if err == nil {
		t.Fatal("commit past the file size limit: no error")
	}
	if fi, _ := os.Stat(logs[0]); fi.Size() != lfi.Size()+10 {
		t.Fatalf("log %d bytes after the cut write, want %d", fi.Size(), lfi.Size()+10)
	}
	del(t, s, "c", "Patient", "y", time.Time{})
	if fi, _ := os.Stat(logs[0]); fi.Size() != lfi.Size()+10 {
		t.Fatalf("cut log %d bytes after the next commit, want %d", fi.Size(), lfi.Size()+10)
	}
	if n := len(filesUnder(t, dir, ".log")); n != 2 {
		t.Fatalf("%d log files after the next commit, want the cut one and a new one", n)
	}
	want := wantPatients(100, "1")
	want["Patient/y"] = "-"
	checkAll(t, s, "c", want)
	s.Close()
	s = open()
	defer s.Close()
	checkAll(t, s, "c", want)
}

// A compaction's rewrite the disk cuts short fails and leaves the log as
// it was (the cut file removed), and the next run rewrites the log.
func TestChangeLogRewriteCutShort(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	open := reopener(t, dir)
	s := open()
	put(t, s, "c", patients(100, "1")...)
	put(t, s, "c", patients(100, "2")...)
	before := filesUnder(t, dir, ".log")
	var err error
	withFileSizeLimit(t, 100, func() { _, err = s.Compact(ctx, "c") })
	if err == nil {
		t.Fatal("a rewrite past the file size limit: no error")
	}
	want := wantPatients(100, "2")
	checkAll(t, s, "c", want)
	// The cut file is removed at once (nothing commits it).
	if cut := filesUnder(t, dir, ".log"); !slices.Equal(cut, before) {
		t.Fatalf("log files %v after a cut rewrite of %v", cut, before)
	}
	if st, err := s.Compact(ctx, "c"); err != nil || st.Dropped != 100 {
		t.Fatalf("the next run: %+v %v", st, err)
	}
	checkAll(t, s, "c", want)
	s.Close()
	s = open()
	defer s.Close()
	checkAll(t, s, "c", want)
	after := filesUnder(t, dir, ".log")
	if len(after) != 1 {
		t.Fatalf("log files after a restart: %v", after)
	}
	if slices.Contains(before, after[0]) {
		t.Fatalf("the rewritten log is %s, an earlier file", filepath.Base(after[0]))
	}
}
