package oauth_test

import (
	"bufio"
	"encoding/csv"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// repoRoot walks up from the test's directory to the module root.
func repoRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test directory")
		}
		dir = parent
	}
}

type conformanceRow struct {
	id, level, covered string
	line               int
}

var (
	testName  = regexp.MustCompile(`\bTest[A-Za-z0-9_]+`)
	pkgPrefix = regexp.MustCompile("^`([a-z0-9_./-]+)`")
)

// TestSMARTConformanceTable keeps docs/conformance/smart-2.2-client.md
// complete: one row per requirement of ../shared's smart-2.2-client.tsv
// (when present), each saying which tests cover it (and they exist), why
// it is not tested, or what the lead's tests will cover (TODO(lead)).
func TestSMARTConformanceTable(t *testing.T) {
	root := repoRoot(t)
	table := readConformanceTable(t, filepath.Join(root, "docs", "conformance", "smart-2.2-client.md"))
	if len(table) < 100 {
		t.Fatalf("only %d rows in the table", len(table))
	}
	todo := 0
	testsByPkg := map[string]map[string]bool{}
	for _, r := range table {
		if strings.TrimSpace(r.covered) == "" {
			t.Errorf("line %d (id %s): nothing says what covers it", r.line, r.id)
			continue
		}
		for _, seg := range strings.Split(r.covered, ";") {
			seg = strings.TrimSpace(seg)
			switch {
			case strings.HasPrefix(seg, "not tested:"):
				if len(strings.TrimSpace(strings.TrimPrefix(seg, "not tested:"))) < 10 {
					t.Errorf("id %s: a reason for not testing is needed", r.id)
				}
			case strings.HasPrefix(seg, "TODO"):
				// Every row is covered now; a TODO is a gap.
				todo++
				t.Errorf("id %s: still a TODO: %s", r.id, seg)
			default:
				m := pkgPrefix.FindStringSubmatch(seg)
				if m == nil {
					t.Errorf("id %s: %q is neither `package` Tests nor \"not tested: why\"", r.id, seg)
					continue
				}
				names := testName.FindAllString(seg, -1)
				if len(names) == 0 {
					t.Errorf("id %s: %q names no test", r.id, seg)
				}
				pkg := m[1]
				if testsByPkg[pkg] == nil {
					testsByPkg[pkg] = testsIn(t, filepath.Join(root, pkg))
				}
				for _, n := range names {
					if !testsByPkg[pkg][n] {
						t.Errorf("id %s: %s has no test %s", r.id, pkg, n)
					}
				}
			}
		}
	}
	t.Logf("%d rows, %d TODO(lead) entries", len(table), todo)

	tsv := filepath.Join(root, "..", "shared", "conformance", "smart-2.2-client.tsv")
	f, err := os.Open(tsv)
	if errors.Is(err, fs.ErrNotExist) {
		t.Skipf("%s is not here: checked the table's tests, not its completeness", tsv)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cr := csv.NewReader(f)
	cr.Comma, cr.LazyQuotes, cr.FieldsPerRecord = '\t', true, -1
	recs, err := cr.ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{}
	for _, rec := range recs[1:] {
		if len(rec) < 2 {
			continue
		}
		want[rec[0]] = rec[1]
	}
	for id, level := range want {
		r, ok := table[id]
		switch {
		case !ok:
			t.Errorf("requirement %s (%s) has no row in the table", id, level)
		case r.level != level:
			t.Errorf("requirement %s is %s in the tsv, %s in the table", id, level, r.level)
		}
	}
	for id := range table {
		if _, ok := want[id]; !ok {
			t.Errorf("the table has id %s, which the tsv does not", id)
		}
	}
}

func readConformanceTable(t *testing.T, path string) map[string]conformanceRow {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rows := map[string]conformanceRow{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if !strings.HasPrefix(line, "| ") || strings.HasPrefix(line, "| id ") {
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), " | ")
		if len(cells) != 4 {
			t.Errorf("line %d: %d cells, want 4 (id, level, requirement, covered by)", n, len(cells))
			continue
		}
		id := strings.TrimSpace(cells[0])
		if _, dup := rows[id]; dup {
			t.Errorf("line %d: id %s twice", n, id)
		}
		rows[id] = conformanceRow{id: id, level: strings.TrimSpace(cells[1]), covered: strings.TrimSpace(cells[3]), line: n}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return rows
}

// testsIn lists the Test functions declared in a package directory.
func testsIn(t *testing.T, dir string) map[string]bool {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*_test.go"))
	if err != nil || len(files) == 0 {
		t.Errorf("no test files in %s", dir)
		return map[string]bool{}
	}
	decl := regexp.MustCompile(`(?m)^func (Test[A-Za-z0-9_]+)\(`)
	out := map[string]bool{}
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range decl.FindAllSubmatch(b, -1) {
			out[string(m[1])] = true
		}
	}
	return out
}
