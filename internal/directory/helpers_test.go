package directory

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"testing"

	"github.com/medrelay/medrelay/internal/store"
)

// catalogData finds ../shared/catalog-data by walking up from the test's
// directory; tests that need it skip with a message when it is absent. The
// files are never copied into the repository.
func catalogData(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		for _, c := range []string{filepath.Join(dir, "shared", "catalog-data"), filepath.Join(dir, "..", "shared", "catalog-data")} {
			if st, err := os.Stat(c); err == nil && st.IsDir() {
				return c
			}
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Skip("../shared/catalog-data not found: the real published lists are not on this machine")
		}
		dir = parent
	}
}

// catalogFiles lists every data file under root, sorted.
func catalogFiles(t testing.TB, root string) []string {
	var files []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && d.Name() != "README.md" {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(files)
	return files
}

func openStore(t testing.TB) *store.DB {
	t.Helper()
	key := make([]byte, 32)
	for i := range key {
		key[i] = byte(i + 1)
	}
	db, err := store.Open(context.Background(), store.Options{Dir: t.TempDir(), Key: key, GCInterval: -1, CacheBytes: 16 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func newCatalog(t testing.TB, db *store.DB, opts ...Option) *Catalog {
	t.Helper()
	c := New(db, opts...)
	if err := c.Load(context.Background()); err != nil {
		t.Fatal(err)
	}
	return c
}

// importAll imports every file of the corpus.
func importAll(t testing.TB, c *Catalog, root string) map[string]*Summary {
	t.Helper()
	out := map[string]*Summary{}
	for _, p := range catalogFiles(t, root) {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(root, p)
		sum, err := c.Import(context.Background(), b, ImportOptions{FileName: filepath.Base(p), ListID: "file:" + filepath.ToSlash(rel)}, nil)
		if err != nil {
			t.Fatalf("import %s: %v", rel, err)
		}
		out[filepath.ToSlash(rel)] = sum
	}
	return out
}
