package pull

import (
	"strings"
	"testing"

	"github.com/medrelay/medrelay/internal/records"
)

// smart-2.2-client #202: the fhirUser claim (from the source's ID token)
// names the resource read after a pull; only a valid type/id on this
// connection's own server is ever read.
func TestFHIRUserRef(t *testing.T) {
	const base = "https://fhir.example/r4"
	for _, tc := range []struct {
		in       string
		typ, id  string
		accepted bool
	}{
		{"Patient/123", "Patient", "123", true},
		{"RelatedPerson/rp-1.a", "RelatedPerson", "rp-1.a", true},
		{base + "/Practitioner/9", "Practitioner", "9", true},
		{base + "/" + "Patient/123", "Patient", "123", true},
		{"https://other.example/r4/Patient/123", "", "", false}, // another server
		{"https://fhir.example/r4x/Patient/123", "", "", false}, // a prefix of the base is not the base
		{"Patient/123/_history/2", "", "", false},
		{"patient/123", "", "", false},
		{"Patient/", "", "", false},
		{"Patient", "", "", false},
		{"Patient/a b", "", "", false},
		{"", "", "", false},
	} {
		typ, id, ok := fhirUserRef(tc.in, base)
		if ok != tc.accepted || typ != tc.typ || id != tc.id {
			t.Errorf("fhirUserRef(%q) = %q, %q, %v; want %q, %q, %v", tc.in, typ, id, ok, tc.typ, tc.id, tc.accepted)
		}
	}
	// A base given with a trailing slash is the same server.
	if typ, id, ok := fhirUserRef(base+"/Patient/1", base+"/"); !ok || typ != "Patient" || id != "1" {
		t.Errorf("trailing-slash base: %q %q %v", typ, id, ok)
	}
}

// FuzzFHIRUserRef: whatever the claim, an accepted reference is a valid
// type and id that the claim ends with, so nothing else reaches a Read.
//
//	go test -run '^$' -fuzz FuzzFHIRUserRef -fuzztime 5s ./internal/pull
func FuzzFHIRUserRef(f *testing.F) {
	for _, s := range []string{"Patient/123", "https://fhir.example/r4/Patient/1", "https://evil.example/Patient/1",
		"Patient/../../x", "Patient/1/_history/2", "://", "Patient/%2e%2e", "https://fhir.example/r4//Patient/1"} {
		f.Add(s, "https://fhir.example/r4")
	}
	f.Fuzz(func(t *testing.T, fhirUser, base string) {
		typ, id, ok := fhirUserRef(fhirUser, base)
		if !ok {
			if typ != "" || id != "" {
				t.Fatalf("refused %q but returned %q %q", fhirUser, typ, id)
			}
			return
		}
		if !records.ValidType(typ) || !records.ValidID(id) || !strings.HasSuffix(fhirUser, typ+"/"+id) {
			t.Fatalf("%q on %q → %q %q", fhirUser, base, typ, id)
		}
	})
}
