package records

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func TestScanHeader(t *testing.T) {
	lu := time.Date(2025, 6, 1, 12, 30, 45, 123000000, time.UTC)
	for _, c := range []struct {
		name string
		in   string
		want Header
	}{
		{"usual order", `{"resourceType":"Patient","id":"p1","meta":{"versionId":"3","lastUpdated":"2025-06-01T12:30:45.123Z"},"name":[{"family":"X"}]}`,
			Header{Type: "Patient", ID: "p1", VersionID: "3", LastUpdated: lu}},
		{"meta and id last, after nested values", `{"resourceType":"Observation","valueQuantity":{"value":-1.5e3,"unit":"mg"},"component":[[],{},[1,true,false,null,"s\"\\\u00e9"]],"meta":{"profile":["x"],"lastUpdated":"2025-06-01T14:30:45.123+02:00","versionId":"v-9"},"id":"o.1"}`,
			Header{Type: "Observation", ID: "o.1", VersionID: "v-9", LastUpdated: lu}},
		{"no meta", ` {"id":"A-1", "resourceType" : "Condition"} `, Header{Type: "Condition", ID: "A-1"}},
		{"escaped values", `{"resourceType":"Pat\u0069ent","id":"a\u002db","meta":{"versionId":"\"1\""}}`, Header{Type: "Patient", ID: "a-b", VersionID: `"1"`}},
		{"escaped key", `{"resource\u0054ype":"Patient","id":"x"}`, Header{Type: "Patient", ID: "x"}},
		{"lastUpdated not an instant is unknown", `{"resourceType":"Patient","id":"x","meta":{"lastUpdated":"yesterday"}}`, Header{Type: "Patient", ID: "x"}},
		{"byte-order mark", "\xEF\xBB\xBF{\"resourceType\":\"Patient\",\"id\":\"x\"}", Header{Type: "Patient", ID: "x"}},
		{"id-looking keys deeper are ignored", `{"resourceType":"Encounter","subject":{"id":"no","meta":{"versionId":"no"}},"id":"e1"}`, Header{Type: "Encounter", ID: "e1"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := ScanHeader([]byte(c.in))
			if err != nil {
				t.Fatal(err)
			}
			if got.Type != c.want.Type || got.ID != c.want.ID || got.VersionID != c.want.VersionID || !got.LastUpdated.Equal(c.want.LastUpdated) {
				t.Fatalf("got %+v, want %+v", got, c.want)
			}
		})
	}
}

func TestScanHeaderRejects(t *testing.T) {
	for _, c := range []struct {
		in, why string
	}{
		{``, "end"},
		{`[]`, "object"},
		{`{"resourceType":"Patient","id":"x"`, "end"},
		{`{"resourceType":"Patient","id":"x","name":[{"family":"X"}`, "end"},
		{`{"resourceType":"Patient","id":"x"}}`, "after the resource"},
		{`{"resourceType":"Patient","id":"x"} {"a":1}`, "after the resource"},
		{`{"resourceType":"Patient"}`, "no id"},
		{`{"id":"x"}`, "no resourceType"},
		{`{"resourceType":"patient","id":"x"}`, "resource type"},
		{`{"resourceType":"Patient","id":"x/y"}`, "not a FHIR id"},
		{`{"resourceType":"Patient","id":""}`, "not a FHIR id"},
		{`{"resourceType":"Patient","id":"` + strings.Repeat("a", 65) + `"}`, "not a FHIR id"},
		{`{"resourceType":"Patient","id":7}`, "not a string"},
		{`{"resourceType":"Patient","id":"x","meta":[]}`, "meta is not"},
		{`{"resourceType":"Patient","id":"x","meta":{"versionId":1}}`, "not a string"},
		{`{"resourceType":"Patient","id":"x","id":"y"}`, "twice"},
		{`{"resourceType":"Patient","id":"x","a":01}`, "want ','"},
		{`{"resourceType":"Patient","id":"x","a":1.}`, "bad number"},
		{`{"resourceType":"Patient","id":"x","a":tru}`, "literal"},
		{"{\"resourceType\":\"Patient\",\"id\":\"x\",\"a\":\"\x01\"}", "control"},
		{`{"resourceType":"Patient","id":"x","a":"\q"}`, "escape"},
		{`{"resourceType":"Patient","id":"x","a":"\u12"}`, "escape"},
		{`{"resourceType":"Patient","id":"x",}`, "want a key"},
		{`{"resourceType":"Patient" "id":"x"}`, "want ','"},
		{`{"resourceType":"Patient","id":"x","a":[1 2]}`, "want ','"},
		{`{"resourceType":"Patient","id":"x","a":` + strings.Repeat("[", 300) + strings.Repeat("]", 300) + `}`, "nested"},
	} {
		_, err := ScanHeader([]byte(c.in))
		if err == nil {
			t.Errorf("%s: accepted", c.in)
			continue
		}
		if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), c.why) {
			t.Errorf("%.60s: error %q, want ErrMalformed mentioning %q", c.in, err, c.why)
		}
	}
}

// reference decodes the same fields with encoding/json (through maps: its
// struct decoding matches keys case-insensitively).
func reference(b []byte) (typ, id, version, updated *string, ok bool) {
	var top map[string]json.RawMessage
	if json.Unmarshal(b, &top) != nil {
		return
	}
	str := func(raw json.RawMessage) *string {
		var s string
		if raw == nil || json.Unmarshal(raw, &s) != nil {
			return nil
		}
		return &s
	}
	typ, id = str(top["resourceType"]), str(top["id"])
	var meta map[string]json.RawMessage
	if top["meta"] != nil && json.Unmarshal(top["meta"], &meta) == nil {
		version, updated = str(meta["versionId"]), str(meta["lastUpdated"])
	}
	return typ, id, version, updated, true
}

// FuzzScanHeader checks the scanner against encoding/json: whatever it
// accepts is valid JSON and yields the fields encoding/json finds, and valid
// JSON it refuses is refused for what it says, not for its syntax.
func FuzzScanHeader(f *testing.F) {
	for _, s := range []string{
		`{"resourceType":"Patient","id":"p1","meta":{"versionId":"3","lastUpdated":"2025-06-01T12:30:45.123Z"}}`,
		`{"meta":{"lastUpdated":"2025-06-01T12:30:45+02:00"},"a":[1,-2.5e+3,true,false,null,{"b":"\u00e9\n"}],"id":"x","resourceType":"Observation"}`,
		`{"resourceType":"Patient","id":"x"`,
		`{"resourceType":"Patient","id":"x","id":"y"}`,
		"\xEF\xBB\xBF{\"resourceType\":\"Patient\",\"id\":\"x\"}",
		`[1,2]`, `"x"`, `{}`, ` `, `{"resourceType":"Patient","id":"x"} x`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ScanHeader(b)
		body := b
		if len(b) >= 3 && string(b[:3]) == "\xEF\xBB\xBF" {
			body = b[3:]
		}
		valid := json.Valid(body)
		if err == nil {
			if !valid {
				t.Fatalf("accepted invalid JSON %q", b)
			}
			typ, id, version, updated, ok := reference(body)
			if !ok {
				t.Fatalf("%q: accepted, but encoding/json cannot decode it", b)
			}
			if typ == nil || *typ != h.Type || id == nil || *id != h.ID {
				t.Fatalf("%q: scanned %+v, encoding/json %v/%v", b, h, typ, id)
			}
			if version != nil && utf8.ValidString(*version) && *version != h.VersionID {
				t.Fatalf("%q: versionId %q, encoding/json %q", b, h.VersionID, *version)
			}
			if updated != nil {
				if want := parseInstant(*updated); !want.Equal(h.LastUpdated) {
					t.Fatalf("%q: lastUpdated %v, want %v", b, h.LastUpdated, want)
				}
			}
			return
		}
		if !errors.Is(err, ErrMalformed) {
			t.Fatalf("error %v is not ErrMalformed", err)
		}
		if valid && errors.Is(err, errSyntax) {
			t.Fatalf("valid JSON %q refused as a syntax error: %v", b, err)
		}
	})
}

// strPlain (eight bytes at a time) finds the same byte as a plain loop over
// strSpecial, for every start and every byte value at every position of a
// word.
func FuzzStrPlain(f *testing.F) {
	f.Add([]byte(`abcdefgh"ijk\l`), uint8(0))
	f.Add([]byte("\x80\xff\x1f\x20\x21\x22\x5b\x5c\x5d"), uint8(3))
	f.Fuzz(func(t *testing.T, b []byte, start uint8) {
		i := int(start)
		if i > len(b) {
			i = len(b)
		}
		want := i
		for want < len(b) && !strSpecial[b[want]] {
			want++
		}
		if got := strPlain(b, i); got != want {
			t.Fatalf("strPlain(%q, %d) = %d, want %d", b, i, got, want)
		}
	})
}

func TestStrPlainEveryByteAtEveryPosition(t *testing.T) {
	for c := range 256 {
		for pos := range 17 {
			b := bytes.Repeat([]byte{'a'}, 17)
			b[pos] = byte(c)
			want := 17
			if strSpecial[c] {
				want = pos
			}
			if got := strPlain(b, 0); got != want {
				t.Fatalf("byte %#x at %d: %d, want %d", c, pos, got, want)
			}
		}
	}
}
