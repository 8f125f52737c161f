package records

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// follow lists conn from cursor after, a page of n at a time.
func follow(t *testing.T, s *Store, conn string, after uint64, n int) ([]Record, uint64) {
	t.Helper()
	return list(t, s, conn, Query{After: after, PageRecords: n})
}

// A rewrite keeps every live change at its sequence: a cursor taken before
// it continues exactly where it was, a follower part-way through a listing
// goes on without skipping or repeating anything, and Count is unchanged by
// it (and by the next rewrites, and a restart).
func TestCompactRewriteKeepsCursorsAndCount(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	open := reopener(t, dir)
	s := open()
	put(t, s, "c", patients(200, "1")...)
	all, _ := list(t, s, "c", Query{})
	mid := all[99].Seq
	put(t, s, "c", patients(150, "2")...) // 150 of 200 superseded
	wantAfter, endBefore := follow(t, s, "c", mid, 1000)
	// A follower read one page before the rewrite.
	page1, cur := list(t, s, "c", Query{Limit: 30, PageRecords: 30})
	if n, _ := s.Count(ctx, "c"); n != 200 {
		t.Fatalf("Count %d before compaction", n)
	}
	st, err := s.Compact(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	if st.Dropped != 150 {
		t.Fatalf("compaction: %+v, want 150 dropped", st)
	}
	if n, _ := s.Count(ctx, "c"); n != 200 {
		t.Fatalf("Count %d after compaction", n)
	}
	got, end := follow(t, s, "c", mid, 7)
	if !slices.Equal(listed(got), listed(wantAfter)) || end != endBefore {
		t.Fatalf("from a cursor taken before the rewrite: %v (to %d), want %v (to %d)", listed(got), end, listed(wantAfter), endBefore)
	}
	rest, _ := follow(t, s, "c", cur, 13)
	seen := map[string]bool{}
	for _, r := range append(page1, rest...) {
		if seen[r.Type+"/"+r.ID+"@"+r.VersionID] {
			t.Fatalf("the follower saw %s/%s@%s twice", r.Type, r.ID, r.VersionID)
		}
		seen[r.Type+"/"+r.ID+"@"+r.VersionID] = true
	}
	for i := range 200 {
		v := "1"
		if i < 150 {
			v = "2"
		}
		if !seen[fmt.Sprintf("Patient/p%d@%s", i, v)] {
			t.Fatalf("the follower missed Patient/p%d@%s", i, v)
		}
	}
	// More rewrites: superseded again, and tombstones.
	put(t, s, "c", patients(100, "3")...)
	for i := range 10 {
		del(t, s, "c", "Patient", fmt.Sprint("p", 190+i), time.Time{})
	}
	if _, err := s.Compact(ctx, "c"); err != nil {
		t.Fatal(err)
	}
	want := wantPatients(200, "1")
	for i := range 200 {
		switch {
		case i < 100:
			want[fmt.Sprint("Patient/p", i)] = "3"
		case i < 150:
			want[fmt.Sprint("Patient/p", i)] = "2"
		case i >= 190:
			want[fmt.Sprint("Patient/p", i)] = "-"
		}
	}
	checkAll(t, s, "c", want)
	s.Close()
	s = open()
	defer s.Close()
	checkAll(t, s, "c", want)
	if files := filesUnder(t, dir, ".log"); len(files) != 1 {
		t.Fatalf("log files after rewrites: %v", files)
	}
}

// A crash during compaction: before the rewritten log is committed it is a
// file no length names (removed at the next load, the old log read); after,
// the old files are the ones no length names. Either way every resource is
// listed once, at its version.
func TestCompactCrashMidRewrite(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	open := reopener(t, dir)
	s := open()
	put(t, s, "c", patients(100, "1")...)
	put(t, s, "c", patients(60, "2")...)
	want := wantPatients(100, "1")
	for i := range 60 {
		want[fmt.Sprint("Patient/p", i)] = "2"
	}
	wantList, _ := list(t, s, "c", Query{})
	s.Close()
	before := copyDir(t, dir)
	oldLogs := filesUnder(t, dir, ".log")
	s = open()
	if st, err := s.Compact(ctx, "c"); err != nil || st.Dropped != 60 {
		t.Fatalf("compaction: %+v %v", st, err)
	}
	s.Close()
	newLogs := filesUnder(t, dir, ".log")
	if len(newLogs) != 1 || slices.Contains(oldLogs, newLogs[0]) {
		t.Fatalf("logs %v after a rewrite of %v", newLogs, oldLogs)
	}
	check := func(t *testing.T, d string, keep, gone []string) {
		t.Helper()
		s := reopener(t, d)()
		defer s.Close()
		checkAll(t, s, "c", want)
		got, _ := list(t, s, "c", Query{})
		if !slices.Equal(listed(got), listed(wantList)) {
			t.Fatalf("listed %v, want %v", listed(got), listed(wantList))
		}
		for _, p := range keep {
			if _, err := os.Stat(strings.Replace(p, dir, d, 1)); err != nil {
				t.Fatalf("a committed log is gone: %v", err)
			}
		}
		for _, p := range gone {
			if _, err := os.Stat(strings.Replace(p, dir, d, 1)); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("%s left: %v", filepath.Base(p), err)
			}
		}
	}
	copyFile := func(t *testing.T, from, to string) {
		t.Helper()
		b, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(to, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("before the commit", func(t *testing.T) {
		// The store as before compaction, and the rewritten log written.
		d := copyDir(t, before)
		copyFile(t, newLogs[0], strings.Replace(newLogs[0], dir, d, 1))
		check(t, d, oldLogs, newLogs)
	})
	t.Run("after the commit", func(t *testing.T) {
		// The store as after compaction, the replaced files not removed.
		d := copyDir(t, dir)
		for _, p := range oldLogs {
			copyFile(t, strings.Replace(p, dir, before, 1), strings.Replace(p, dir, d, 1))
		}
		check(t, d, newLogs, oldLogs)
	})
}

// Compaction while a writer commits and readers follow the list and Get:
// a follower sees sequences only grow and ends with every resource at its
// last version, Get always finds a resource it was given, Count never
// exceeds what exists. Run with -race.
func TestCompactWhileWritersAndReadersRun(t *testing.T) {
	ctx := context.Background()
	smallLogFiles(t, 4<<10)
	dir := t.TempDir()
	s := reopener(t, dir)()
	defer s.Close()
	const n = 50
	put(t, s, "c", patients(n, "0")...)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	errs := make(chan error, 8)
	const rounds = 30
	wg.Add(1)
	go func() { // the writer: every resource again, per round
		defer wg.Done()
		defer close(stop)
		for v := 1; v <= rounds; v++ {
			w, _ := s.NewWriter("c", WithoutSync())
			for _, r := range patients(n, fmt.Sprint(v)) {
				w.Put(r)
			}
			if _, err := w.Commit(ctx, nil); err != nil {
				errs <- err
				return
			}
		}
	}()
	wg.Add(1)
	go func() { // the compactor
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := s.Compact(ctx, "c"); err != nil {
				errs <- err
				return
			}
		}
	}()
	last := map[string]string{}
	wg.Add(1)
	go func() { // a follower
		defer wg.Done()
		var cur uint64
		done := false
		for {
			select {
			case <-stop:
				done = true
			default:
			}
			_, err := s.List(ctx, "c", Query{After: cur, PageRecords: 17}, func(p []Record, next uint64) error {
				for _, r := range p {
					if r.Seq <= cur {
						return fmt.Errorf("sequence %d after %d", r.Seq, cur)
					}
					cur = r.Seq
					last[r.Type+"/"+r.ID] = r.VersionID
				}
				cur = next
				return nil
			})
			if err != nil {
				errs <- err
				return
			}
			if done {
				return
			}
		}
	}()
	wg.Add(1)
	go func() { // Get and Count
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := s.Get(ctx, "c", "Patient", fmt.Sprint("p", i%n)); err != nil {
				errs <- err
				return
			}
			if c, err := s.Count(ctx, "c"); err != nil || c != n {
				errs <- fmt.Errorf("Count %d %v", c, err)
				return
			}
		}
	}()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if !maps.Equal(last, wantPatients(n, fmt.Sprint(rounds))) {
		t.Fatalf("the follower ended with %v", last)
	}
	checkAll(t, s, "c", wantPatients(n, fmt.Sprint(rounds)))
}

// DeleteConnection while a writer commits, compaction runs and a reader
// lists: the writer ends with ErrDeleted (not another error), the reader
// with nothing or ErrDeleted, and afterwards nothing of the connection is
// left, a restart included.
func TestCompactDeleteConnectionRacesWritersAndCompaction(t *testing.T) {
	ctx := context.Background()
	smallLogFiles(t, 4<<10)
	dir := t.TempDir()
	open := reopener(t, dir)
	s := open()
	put(t, s, "c", patients(40, "0")...)
	put(t, s, "other", patients(3, "1")...)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	started := make(chan struct{}, 3)
	wg.Add(3)
	go func() {
		defer wg.Done()
		for v := 1; ; v++ {
			w, _ := s.NewWriter("c", WithoutSync())
			for _, r := range patients(40, fmt.Sprint(v)) {
				w.Put(r)
			}
			_, err := w.Commit(ctx, nil)
			if v == 1 {
				started <- struct{}{}
			}
			if errors.Is(err, ErrDeleted) {
				return
			}
			if err != nil {
				errs <- fmt.Errorf("writer: %w", err)
				return
			}
		}
	}()
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			if i == 1 {
				started <- struct{}{}
			}
			if _, err := s.Compact(ctx, "c"); err != nil {
				errs <- fmt.Errorf("compaction: %w", err)
				return
			}
			if _, gone := s.deleted.Load("c"); gone {
				return
			}
		}
	}()
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			if i == 1 {
				started <- struct{}{}
			}
			_, err := s.List(ctx, "c", Query{PageRecords: 7}, func([]Record, uint64) error { return nil })
			if errors.Is(err, ErrDeleted) {
				return
			}
			if err != nil {
				errs <- fmt.Errorf("reader: %w", err)
				return
			}
			if _, gone := s.deleted.Load("c"); gone {
				return
			}
		}
	}()
	for range 3 {
		<-started
	}
	if err := s.DeleteConnection(ctx, "c"); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	check := func(s *Store) {
		t.Helper()
		if got, _ := list(t, s, "c", Query{}); len(got) != 0 {
			t.Fatalf("listed after the delete: %d", len(got))
		}
		if n, _ := s.logs.lengths.Count(ctx, "c/"); n != 0 {
			t.Fatalf("%d log lengths left", n)
		}
		if _, err := os.Stat(filepath.Join(s.segs.connDir("c"), logDirName)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("the change log directory: %v", err)
		}
		checkAll(t, s, "other", wantPatients(3, "1"))
	}
	check(s)
	s.Close()
	s = open()
	defer s.Close()
	check(s)
}
