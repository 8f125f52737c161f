package store_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/medrelay/medrelay/internal/store"
)

var testKey = bytes.Repeat([]byte{7}, 32)

func open(t *testing.T, dir string) *store.DB {
	t.Helper()
	db, err := store.Open(context.Background(), store.Options{Dir: dir, Key: testKey, GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	return db
}

type thing struct {
	Name  string `json:"name"`
	Count int    `json:"count"`
}

func TestTablePutGetScanDelete(t *testing.T) {
	ctx := context.Background()
	db := open(t, t.TempDir())
	defer db.Close()
	tb := store.NewTable[thing](db, store.Meta)
	for i := range 5 {
		if err := tb.Put(ctx, fmt.Sprintf("k%d", i), thing{Name: "n", Count: i}); err != nil {
			t.Fatal(err)
		}
	}
	got, err := tb.Get(ctx, "k3")
	if err != nil || got.Count != 3 {
		t.Fatalf("Get k3 = %+v, %v", got, err)
	}
	if _, err := tb.Get(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("missing key: %v, want ErrNotFound", err)
	}
	var keys []string
	if err := tb.Scan(ctx, store.ScanOptions{After: "k1", Limit: 2}, func(k string, _ thing) error {
		keys = append(keys, k)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(keys) != "[k2 k3]" {
		t.Fatalf("scan after k1 limit 2 = %v", keys)
	}
	keys = nil
	if err := tb.Scan(ctx, store.ScanOptions{Reverse: true, After: "k3"}, func(k string, _ thing) error {
		keys = append(keys, k)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(keys) != "[k2 k1 k0]" {
		t.Fatalf("reverse scan before k3 = %v", keys)
	}
	if err := tb.Delete(ctx, "k0"); err != nil {
		t.Fatal(err)
	}
	if n, _ := tb.Count(ctx, ""); n != 4 {
		t.Fatalf("count after delete = %d, want 4", n)
	}
	// Tables do not see each other's keys.
	other := store.NewTable[thing](db, store.Apps)
	if n, _ := other.Count(ctx, ""); n != 0 {
		t.Fatalf("other table sees %d keys", n)
	}
}

func TestModifyIsAtomicUnderConcurrency(t *testing.T) {
	ctx := context.Background()
	db := open(t, t.TempDir())
	defer db.Close()
	tb := store.NewTable[thing](db, store.Meta)
	const n = 50
	errs := make(chan error, n)
	for range n {
		go func() {
			_, err := tb.Modify(ctx, "counter", func(cur thing, _ bool) (thing, error) {
				cur.Count++
				return cur, nil
			})
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	got, _ := tb.Get(ctx, "counter")
	if got.Count != n {
		t.Fatalf("counter = %d, want %d (lost updates)", got.Count, n)
	}
}

func TestBatchAndTTL(t *testing.T) {
	ctx := context.Background()
	db := open(t, t.TempDir())
	defer db.Close()
	tb := store.NewTable[[]byte](db, store.Meta)
	b := db.NewBatch()
	for i := range 20000 {
		if err := store.BatchPut(b, tb, fmt.Sprintf("r%06d", i), []byte(`{"resourceType":"Observation"}`)); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Flush(true); err != nil {
		t.Fatal(err)
	}
	if n, _ := tb.Count(ctx, "r"); n != 20000 {
		t.Fatalf("batch wrote %d, want 20000", n)
	}
	if err := tb.Put(ctx, "short", []byte("x"), store.WithTTL(time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := tb.Get(ctx, "short"); err != nil {
		t.Fatal(err)
	}
}

func TestSequenceNeverRepeatsAcrossReopen(t *testing.T) {
	dir := t.TempDir()
	db := open(t, dir)
	last := uint64(0)
	for range 10 {
		v, err := db.NextSeq("events")
		if err != nil || v <= last {
			t.Fatalf("seq %d after %d: %v", v, last, err)
		}
		last = v
	}
	db.Close()
	db = open(t, dir)
	defer db.Close()
	v, err := db.NextSeq("events")
	if err != nil || v <= last {
		t.Fatalf("after reopen seq %d, last was %d: %v", v, last, err)
	}
}

// The store is encrypted at rest: a sentinel secret written through the
// store, small and large (value log), must not appear in any file.
func TestSentinelSecretNotInStoreFiles(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	db := open(t, dir)
	sentinel := "SENTINEL-client-secret-5f0e1c2d9a"
	tb := store.NewTable[thing](db, store.Meta)
	if err := tb.Put(ctx, "small", thing{Name: sentinel}, store.Synced()); err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte(sentinel), 2000) // above the value threshold: goes to the value log
	if err := store.NewTable[[]byte](db, store.Apps).Put(ctx, "big", big, store.Synced()); err != nil {
		t.Fatal(err)
	}
	// Scan both while open (memtable WAL) and after close (flushed tables).
	scanFor(t, dir, sentinel)
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	scanFor(t, dir, sentinel)
	// And it is still readable with the key.
	db = open(t, dir)
	defer db.Close()
	if got, err := store.NewTable[thing](db, store.Meta).Get(ctx, "small"); err != nil || got.Name != sentinel {
		t.Fatalf("reopen: %+v %v", got, err)
	}
}

func scanFor(t *testing.T, dir, sentinel string) {
	t.Helper()
	n := 0
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		n++
		if bytes.Contains(b, []byte(sentinel)) || bytes.Contains(b, []byte(sentinel[:16])) {
			t.Errorf("plaintext secret found in %s", p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Fatal("no store files to scan")
	}
}

func TestWrongKeyAndSecondOpener(t *testing.T) {
	dir := t.TempDir()
	db := open(t, dir)
	_, err := store.Open(context.Background(), store.Options{Dir: dir, Key: testKey, GCInterval: -1})
	if !errors.Is(err, store.ErrLocked) {
		t.Fatalf("second open: %v, want ErrLocked", err)
	}
	db.Close()
	_, err = store.Open(context.Background(), store.Options{Dir: dir, Key: bytes.Repeat([]byte{8}, 32), GCInterval: -1})
	if err == nil {
		t.Fatal("opened with the wrong key")
	}
	if !bytes.Contains([]byte(err.Error()), []byte("different master key")) {
		t.Fatalf("wrong key error is unclear: %v", err)
	}
}
