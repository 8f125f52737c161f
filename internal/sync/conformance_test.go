package sync

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

type conformanceRow struct {
	id, level, covered string
	line               int
}

var (
	testNameRE = regexp.MustCompile(`\bTest[A-Za-z0-9_]+`)
	pkgRE      = regexp.MustCompile("^`([a-z0-9_./-]+)`")
	testDeclRE = regexp.MustCompile(`(?m)^func (Test[A-Za-z0-9_]+)\(`)
)

// conformance sections of docs/conformance/bulkdata-2.0-client.md: the
// heading that starts each and the tsv rows it must hold.
var conformanceSections = []struct {
	heading string
	tsv     string
	keep    func(rec []string) bool
}{
	{"## Bulk Data 2.0", "bulkdata-2.0-client.tsv", func([]string) bool { return true }},
	{"## SMART Backend Services", "smart-2.2-client.tsv", func(rec []string) bool {
		return len(rec) > 3 && strings.Contains(rec[3], "backend-services.html")
	}},
}

// TestBulkDataConformanceTable keeps docs/conformance/bulkdata-2.0-client.md
// complete: one row per requirement of ../shared's bulkdata-2.0-client.tsv
// and per backend-services row of smart-2.2-client.tsv (when present), each
// naming tests that exist or saying why it is not tested.
func TestBulkDataConformanceTable(t *testing.T) {
	root := moduleRoot(t)
	sections := readSections(t, filepath.Join(root, "docs", "conformance", "bulkdata-2.0-client.md"))
	tests := map[string]map[string]bool{}
	for _, sec := range conformanceSections {
		table := sections[sec.heading]
		if len(table) == 0 {
			t.Fatalf("no rows under %q", sec.heading)
		}
		for _, r := range table {
			checkCell(t, root, r, tests)
		}
		f, err := os.Open(filepath.Join(root, "..", "shared", "conformance", sec.tsv))
		if errors.Is(err, fs.ErrNotExist) {
			t.Logf("%s is not here: checked the table's tests, not its completeness", sec.tsv)
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		cr := csv.NewReader(f)
		cr.Comma, cr.LazyQuotes, cr.FieldsPerRecord = '\t', true, -1
		recs, err := cr.ReadAll()
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]string{}
		for _, rec := range recs[1:] {
			if len(rec) >= 2 && sec.keep(rec) {
				want[rec[0]] = rec[1]
			}
		}
		for id, level := range want {
			r, ok := table[id]
			switch {
			case !ok:
				t.Errorf("%s: requirement %s (%s) has no row", sec.tsv, id, level)
			case r.level != level:
				t.Errorf("%s: requirement %s is %s in the tsv, %s in the table", sec.tsv, id, level, r.level)
			}
		}
		for id := range table {
			if _, ok := want[id]; !ok {
				t.Errorf("%s: the table has id %s, which the list does not", sec.tsv, id)
			}
		}
	}
}

func checkCell(t *testing.T, root string, r conformanceRow, tests map[string]map[string]bool) {
	t.Helper()
	if r.covered == "" {
		t.Errorf("line %d (id %s): nothing says what covers it", r.line, r.id)
		return
	}
	for _, seg := range strings.Split(r.covered, ";") {
		seg = strings.TrimSpace(seg)
		if why, ok := strings.CutPrefix(seg, "not tested:"); ok {
			if len(strings.TrimSpace(why)) < 10 {
				t.Errorf("id %s: a reason for not testing is needed", r.id)
			}
			continue
		}
		m := pkgRE.FindStringSubmatch(seg)
		if m == nil {
			t.Errorf("id %s: %q is neither `package` Tests nor \"not tested: why\"", r.id, seg)
			continue
		}
		names := testNameRE.FindAllString(seg, -1)
		if len(names) == 0 {
			t.Errorf("id %s: %q names no test", r.id, seg)
		}
		if tests[m[1]] == nil {
			tests[m[1]] = declaredTests(t, filepath.Join(root, m[1]))
		}
		for _, n := range names {
			if !tests[m[1]][n] {
				t.Errorf("id %s: %s has no test %s", r.id, m[1], n)
			}
		}
	}
}

// readSections reads the tables of the conformance file by section.
func readSections(t *testing.T, path string) map[string]map[string]conformanceRow {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]map[string]conformanceRow{}
	var cur map[string]conformanceRow
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "## ") {
			cur = nil
			for _, sec := range conformanceSections {
				if strings.HasPrefix(line, sec.heading) {
					cur = map[string]conformanceRow{}
					out[sec.heading] = cur
				}
			}
			continue
		}
		if !strings.HasPrefix(line, "| ") || strings.HasPrefix(line, "| id ") {
			continue
		}
		if cur == nil {
			t.Errorf("line %d: a table row outside the known sections", n)
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), " | ")
		if len(cells) != 4 {
			t.Errorf("line %d: %d cells, want 4 (id, level, requirement, covered by)", n, len(cells))
			continue
		}
		id := strings.TrimSpace(cells[0])
		if _, dup := cur[id]; dup {
			t.Errorf("line %d: id %s twice", n, id)
		}
		cur[id] = conformanceRow{id: id, level: strings.TrimSpace(cells[1]), covered: strings.TrimSpace(cells[3]), line: n}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func declaredTests(t *testing.T, dir string) map[string]bool {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*_test.go"))
	if err != nil || len(files) == 0 {
		t.Errorf("no test files in %s", dir)
		return map[string]bool{}
	}
	out := map[string]bool{}
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range testDeclRE.FindAllSubmatch(b, -1) {
			out[string(m[1])] = true
		}
	}
	return out
}

func moduleRoot(t *testing.T) string {
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
