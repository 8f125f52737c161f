package app

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/medrelay/medrelay/internal/store"
)

// A store of format 1 (change index in Badger) is marked 2 before records
// converts it, so an earlier agent then refuses it instead of finding no
// records; a store of a newer format is refused, naming both versions.
func TestStoreFormatUpgradesAndRefusesNewer(t *testing.T) {
	ctx := context.Background()
	db, err := store.Open(ctx, store.Options{Dir: filepath.Join(t.TempDir(), "store"), Key: bytes.Repeat([]byte{4}, 32), GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	meta := store.NewTable[int](db, store.Meta)
	for _, tc := range []struct {
		stored, want int
		err          string
	}{
		{1, 2, ""},
		{2, 2, ""},
		{3, 3, "store format 3 is newer than this agent understands (2)"},
	} {
		if err := meta.Put(ctx, "format", tc.stored); err != nil {
			t.Fatal(err)
		}
		err := checkFormat(ctx, db)
		if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
			t.Fatalf("format %d: %v, want %q", tc.stored, err, tc.err)
		}
		if v, _ := meta.Get(ctx, "format"); v != tc.want {
			t.Fatalf("format %d: stored %d after the check, want %d", tc.stored, v, tc.want)
		}
	}
}
