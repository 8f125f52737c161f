package importers

import (
	"os"
	"path/filepath"
	"testing"
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
