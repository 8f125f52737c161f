package records

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/medrelay/medrelay/internal/store"
)

// progressLog keeps every checkpoint an ingest wrote, as the sync job will:
// in a table of its own, in the same batch as the records.
type progressLog struct {
	table *store.Table[[]byte]
	key   string
}

type storedProgress struct {
	Position  Position    `json:"position"`
	Malformed []Malformed `json:"malformed"` // every report so far
}

func (p progressLog) checkpoint(prev *storedProgress) func(b *store.Batch, pr Progress) error {
	return func(b *store.Batch, pr Progress) error {
		next := storedProgress{Position: pr.Position, Malformed: append(slices.Clone(prev.Malformed), pr.Malformed...)}
		v, err := json.Marshal(next)
		if err != nil {
			return err
		}
		*prev = next // only what the batch will store; a failed flush is not retried here
		return store.BatchPut(b, p.table, p.key, v)
	}
}

func (p progressLog) load(t testing.TB) storedProgress {
	t.Helper()
	var sp storedProgress
	v, err := p.table.Get(context.Background(), p.key)
	if errors.Is(err, store.ErrNotFound) {
		return sp
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(v, &sp); err != nil {
		t.Fatal(err)
	}
	return sp
}

func TestIngestNDJSONReportsAndSkipsMalformedLines(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	in := "\xEF\xBB\xBF" + string(res("Patient", "a", "1", "")) + "\r\n" +
		"\n" + // blank: skipped silently
		`{"resourceType":"Patient","id":"b"` + "\n" + // cut
		`{"resourceType":"Patient"}` + "\n" + // no id
		"   " + string(res("Observation", "c", "1", "")) + "  \n" +
		`not json at all` + "\n" +
		strings.Repeat("x", 300) + "\n" + // longer than MaxLineBytes below
		string(res("Observation", "d", "1", "")) // no final newline
	var sp storedProgress
	pl := progressLog{table: store.NewTable[[]byte](s.db, store.Name("test_progress")), key: "f"}
	r, err := s.IngestNDJSON(ctx, "c", strings.NewReader(in), IngestOptions{File: "Patient.ndjson", Checkpoint: pl.checkpoint(&sp), MaxLineBytes: 200})
	if err != nil {
		t.Fatal(err)
	}
	if r.Lines != 8 || r.Malformed != 4 || r.Counts != (Counts{Written: 3}) || r.Position != (Position{Offset: int64(len(in)), Line: 8}) {
		t.Fatalf("result %+v", r)
	}
	got := pl.load(t)
	if got.Position != r.Position {
		t.Fatalf("stored position %+v, want %+v", got.Position, r.Position)
	}
	var lines []int64
	for _, m := range got.Malformed {
		lines = append(lines, m.Line)
		if m.File != "Patient.ndjson" || m.Reason == "" || !strings.HasPrefix(in[m.Offset:], strings.Split(in, "\n")[m.Line-1][:1]) {
			t.Errorf("report %+v", m)
		}
	}
	if !slices.Equal(lines, []int64{3, 4, 6, 7}) {
		t.Fatalf("malformed lines %v, want [3 4 6 7]: %v", lines, got.Malformed)
	}
	all, _ := list(t, s, "c", Query{})
	if got := listed(all); !slices.Equal(got, []string{"Patient/a@1", "Observation/c@1", "Observation/d@1"}) {
		t.Fatalf("stored %v", got)
	}
	// Stored bytes are the line without its end-of-line and blanks.
	if r, _ := s.Get(ctx, "c", "Patient", "a"); !bytes.Equal(r.JSON, res("Patient", "a", "1", "")) {
		t.Fatalf("stored %q", r.JSON)
	}
}

// cutReader serves data up to cut, then fails like a dropped connection.
type cutReader struct {
	data []byte
	cut  int
	off  int
}

func (c *cutReader) Read(p []byte) (int, error) {
	if c.off >= c.cut {
		return 0, errors.New("connection reset by peer")
	}
	n := copy(p, c.data[c.off:c.cut])
	c.off += n
	return n, nil
}

// ndjsonFile is n resources, some repeated with newer versions, some lines
// broken; want is what the store must end up with.
func ndjsonFile(n int) (file []byte, want map[string]string, malformed int) {
	want = map[string]string{}
	base := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	types := []string{"Patient", "Observation", "Condition"}
	for i := range n {
		if i%97 == 13 {
			file = append(file, `{"resourceType":"Observation","id":"broken"`...)
			file = append(file, '\n')
			malformed++
			continue
		}
		typ := types[i%3]
		id := fmt.Sprintf("r%d", i%(n*3/4))
		ver := fmt.Sprint(i)
		file = append(file, res(typ, id, ver, base.Add(time.Duration(i)*time.Minute).Format(time.RFC3339))...)
		file = append(file, '\n')
		want[typ+"/"+id] = ver
	}
	return file, want, malformed
}

// checkExactly asserts that the list holds each resource of want exactly
// once, at its version ("-": a tombstone), and nothing else.
func checkExactly(t *testing.T, s *Store, conn string, want map[string]string) {
	t.Helper()
	all, _ := list(t, s, conn, Query{})
	seen := map[string]bool{}
	for _, r := range all {
		k := r.Type + "/" + r.ID
		if seen[k] {
			t.Fatalf("%s listed twice", k)
		}
		seen[k] = true
		got := r.VersionID
		if r.Deleted {
			got = "-"
		}
		if want[k] != got {
			t.Fatalf("%s at version %q, want %q", k, got, want[k])
		}
	}
	if len(all) != len(want) {
		t.Fatalf("%d resources stored, want %d", len(all), len(want))
	}
}

// A download cut in the middle of a line: what came before is committed with
// its position, and resuming from that position (an HTTP Range request)
// completes the file with nothing lost and nothing twice.
func TestIngestNDJSONCutMidStreamResumes(t *testing.T) {
	ctx := context.Background()
	file, want, malformed := ndjsonFile(3000)
	for _, cut := range []int{0, 1, len(file) / 3, len(file)/2 + 17, len(file) - 1} {
		s := openStore(t)
		var sp storedProgress
		pl := progressLog{table: store.NewTable[[]byte](s.db, store.Name("test_progress")), key: "f"}
		opts := IngestOptions{File: "f.ndjson", Checkpoint: pl.checkpoint(&sp), BatchRecords: 100, NoSync: true}
		_, err := s.IngestNDJSON(ctx, "c", &cutReader{data: file, cut: cut}, opts)
		if err == nil || !strings.Contains(err.Error(), "connection reset") {
			t.Fatalf("cut at %d: error %v", cut, err)
		}
		pos := pl.load(t).Position
		if pos.Offset > int64(cut) || (pos.Offset > 0 && file[pos.Offset-1] != '\n') {
			t.Fatalf("cut at %d: committed through %d, not a line end", cut, pos.Offset)
		}
		opts.Start = pos
		res, err := s.IngestNDJSON(ctx, "c", bytes.NewReader(file[pos.Offset:]), opts)
		if err != nil {
			t.Fatal(err)
		}
		if res.Position.Offset != int64(len(file)) || res.Position.Line != int64(bytes.Count(file, []byte("\n"))) {
			t.Fatalf("cut at %d: ended at %+v", cut, res.Position)
		}
		checkExactly(t, s, "c", want)
		if got := len(pl.load(t).Malformed); got != malformed {
			t.Fatalf("cut at %d: %d malformed reports, want %d", cut, got, malformed)
		}
	}
}

func TestIngestNDJSONDeletedEntries(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	put(t, s, "c", res("Patient", "a", "1", "2025-01-01T00:00:00Z"), res("Patient", "b", "1", "2025-01-01T00:00:00Z"), res("Patient", "c", "3", "2025-09-01T00:00:00Z"))
	txTime := time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)
	in := `{"resourceType":"Bundle","type":"transaction","entry":[{"request":{"method":"DELETE","url":"Patient/a"}}]}
{"resourceType":"Bundle","type":"transaction","entry":[{"request":{"method":"DELETE","url":"https://ehr.example/fhir/Patient/b/_history/4"}},{"request":{"method":"DELETE","url":"Patient/c"}}]}
{"resourceType":"Bundle","entry":[{"request":{"method":"DELETE","url":"Patient"}}]}
{"resourceType":"Patient","id":"x"}
`
	var sp storedProgress
	pl := progressLog{table: store.NewTable[[]byte](s.db, store.Name("test_progress")), key: "d"}
	r, err := s.IngestNDJSON(ctx, "c", strings.NewReader(in), IngestOptions{File: "deleted.ndjson", Deleted: true, DeletedAt: txTime, Checkpoint: pl.checkpoint(&sp)})
	if err != nil {
		t.Fatal(err)
	}
	// c was updated after the export's transaction time: its deletion is stale.
	if r.Counts != (Counts{Deleted: 2, Stale: 1}) || r.Malformed != 2 {
		t.Fatalf("result %+v", r)
	}
	for id, gone := range map[string]bool{"a": true, "b": true, "c": false} {
		if g, _ := s.Get(ctx, "c", "Patient", id); g.Deleted != gone {
			t.Errorf("Patient/%s deleted=%v", id, g.Deleted)
		}
	}
	// An output file of the same export processed after the deleted file
	// does not bring a deleted resource back.
	if n := put(t, s, "c", res("Patient", "a", "1", "2025-01-01T00:00:00Z")); n != (Counts{Stale: 1}) {
		t.Fatalf("late output line: %+v", n)
	}
	if got := pl.load(t).Malformed; len(got) != 2 || got[0].Line != 3 || got[1].Line != 4 {
		t.Fatalf("malformed %+v", got)
	}
}

func TestSplitRef(t *testing.T) {
	for in, want := range map[string]string{
		"Patient/1":                             "Patient 1",
		"https://x/fhir/Observation/o.1":        "Observation o.1",
		"Observation/o1/_history/2":             "Observation o1",
		"https://x/fhir/Patient/p?_format=json": "Patient p",
		"Patient":                               "",
		"patient/1":                             "",
		"Patient/a b":                           "",
		"":                                      "",
	} {
		typ, id, ok := splitRef(in)
		got := ""
		if ok {
			got = typ + " " + id
		}
		if got != want {
			t.Errorf("splitRef(%q) = %q, want %q", in, got, want)
		}
	}
}

// FuzzIngestNDJSON feeds arbitrary bytes as an NDJSON file (resources and
// deleted entries): ingest never fails on content, every line is either
// stored or reported, and the position covers the whole input.
func FuzzIngestNDJSON(f *testing.F) {
	file, _, _ := ndjsonFile(20)
	f.Add(file, false)
	f.Add([]byte("{\"resourceType\":\"Bundle\",\"entry\":[{\"request\":{\"method\":\"DELETE\",\"url\":\"Patient/1\"}}]}\n\n{}\n"), true)
	f.Add([]byte("\xEF\xBB\xBF{\"resourceType\":\"Patient\",\"id\":\"1\"}\r\n{\"resourceType\":\"Patient\",\"id\":\"2\""), false)
	f.Add([]byte("\n\n\n"), false)
	db := openDB(f, "")
	defer db.Close()
	s, err := Open(context.Background(), db, quiet, WithSegments(f.TempDir(), segKey))
	if err != nil {
		f.Fatal(err)
	}
	n := 0
	f.Fuzz(func(t *testing.T, in []byte, deleted bool) {
		n++
		conn := fmt.Sprint("fuzz", n)
		var reports int
		r, err := s.IngestNDJSON(context.Background(), conn, bytes.NewReader(in), IngestOptions{
			Deleted: deleted, MaxLineBytes: 1 << 10, BatchRecords: 3, NoSync: true,
			Checkpoint: func(_ *store.Batch, p Progress) error { reports += len(p.Malformed); return nil },
		})
		if err != nil {
			t.Fatal(err)
		}
		if r.Position.Offset != int64(len(in)) {
			t.Fatalf("position %+v for %d bytes", r.Position, len(in))
		}
		if int64(reports) != r.Malformed {
			t.Fatalf("%d reports, %d malformed", reports, r.Malformed)
		}
		all, _ := list(t, s, conn, Query{})
		if n := r.Counts.Written + r.Counts.Deleted; len(all) > n {
			t.Fatalf("%d listed, %d written", len(all), n)
		}
	})
}
