package store

import (
	"context"
	"encoding/binary"
	"log/slog"
	"testing"

	"github.com/dgraph-io/badger/v4"
)

func openSeqTest(t *testing.T, dir string) *DB {
	t.Helper()
	db, err := Open(context.Background(), Options{Dir: dir, Key: make([]byte, 32), GCInterval: -1, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return db
}

// A sequence's stored lease always covers every value handed out (it is
// written, and synced, before them), across lease renewals and reopens;
// a clean close gives the unused part back.
func TestSequenceLeaseCoversHandedOutValues(t *testing.T) {
	dir := t.TempDir()
	db := openSeqTest(t, dir)
	stored := func(db *DB) uint64 {
		var v uint64
		err := db.bdb.View(func(txn *badger.Txn) error {
			item, err := txn.Get(seqKey("ids"))
			if err != nil {
				return err
			}
			return item.Value(func(b []byte) error { v = binary.BigEndian.Uint64(b); return nil })
		})
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	var last uint64
	for i := range seqLease + 10 { // crosses a renewal
		v, err := db.NextSeq("ids")
		if err != nil || v != uint64(i+1) {
			t.Fatalf("value %d: %d, %v", i, v, err)
		}
		if s := stored(db); s <= v {
			t.Fatalf("value %d handed out with the stored lease at %d", v, s)
		}
		last = v
	}
	db.Close()
	db = openSeqTest(t, dir)
	defer db.Close()
	if v, err := db.NextSeq("ids"); err != nil || v != last+1 {
		t.Fatalf("after a clean reopen: %d, %v; want %d", v, err, last+1)
	}
}
