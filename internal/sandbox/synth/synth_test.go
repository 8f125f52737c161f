package synth

import (
	"bytes"
	"encoding/json"
	"testing"
)

func TestEveryResourceIsValidJSONWithValidReferences(t *testing.T) {
	d := New(42, 3)
	ids := map[string]bool{}
	var all [][]byte
	for _, typ := range AllTypes() {
		pats := d.Patients()
		if typ.Shared() {
			pats = 1
		}
		for p := 0; p < pats; p++ {
			pp := p
			if typ.Shared() {
				pp = -1
			}
			for k := 0; k < d.Count(pp, typ); k++ {
				ref := Ref{Type: typ, Patient: pp, K: k}
				b := d.Bytes(ref, Meta{})
				var m map[string]any
				if err := json.Unmarshal(b, &m); err != nil {
					t.Fatalf("%s: %v\n%s", ref.ID(), err, b)
				}
				if m["id"] != ref.ID() || m["resourceType"] != typ.String() {
					t.Fatalf("id/type mismatch: %s", b)
				}
				got, ok := d.ParseID(typ, ref.ID())
				if !ok || got != ref {
					t.Fatalf("ParseID(%s) = %v %v", ref.ID(), got, ok)
				}
				ids[typ.String()+"/"+ref.ID()] = true
				all = append(all, b)
			}
		}
	}
	if n := len(all); n < 3*350 || n > 3*500+50 {
		t.Fatalf("unexpected resource count %d for 3 patients", n)
	}
	for _, b := range all {
		for _, ref := range refsIn(b) {
			if !ids[ref] {
				t.Fatalf("dangling reference %s in %s", ref, b)
			}
		}
	}
}

func refsIn(b []byte) []string {
	var out []string
	for {
		i := bytes.Index(b, []byte(`"reference":"`))
		if i < 0 {
			return out
		}
		b = b[i+13:]
		j := bytes.IndexByte(b, '"')
		out = append(out, string(b[:j]))
		b = b[j:]
	}
}

func TestDeterministic(t *testing.T) {
	a, b := New(7, 5), New(7, 5)
	c := New(8, 5)
	ref := Ref{Type: Observation, Patient: 3, K: 10}
	if !bytes.Equal(a.Bytes(ref, Meta{}), b.Bytes(ref, Meta{})) {
		t.Fatal("same seed, different bytes")
	}
	if bytes.Equal(a.Bytes(ref, Meta{}), c.Bytes(ref, Meta{})) {
		t.Fatal("different seeds, same bytes")
	}
}

func TestCursorMatchesAppend(t *testing.T) {
	d := New(3, 4)
	c := d.NewCursor()
	for p := 3; p >= 0; p-- {
		for _, typ := range AllTypes() {
			pp := p
			if typ.Shared() {
				pp = -1
			}
			for k := 0; k < d.Count(pp, typ); k++ {
				ref := Ref{Type: typ, Patient: pp, K: k}
				m := Meta{Version: k % 3, LastUpdated: int64(k) * 1000, Nanos: k * 1000}
				if !bytes.Equal(c.Append(nil, ref, m), d.Append(nil, ref, m)) || c.Header(ref) != d.Header(ref) {
					t.Fatalf("cursor differs for %s", ref.ID())
				}
			}
		}
	}
}
