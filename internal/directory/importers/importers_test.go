package importers

import (
	"archive/zip"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestNormalizeBaseURL(t *testing.T) {
	for in, want := range map[string]string{
		"https://fhir.example.org/r4/":                         "https://fhir.example.org/r4",
		"HTTPS://FHIR.Example.org:443/R4/Tenant":               "https://fhir.example.org/R4/Tenant",
		" https://mtrestapis-live01.arh.org:443/v1/uscore/R4 ": "https://mtrestapis-live01.arh.org/v1/uscore/R4",
		"http://127.0.0.1:9100/epic/fhir":                      "http://127.0.0.1:9100/epic/fhir",
		"http://localhost:8080/fhir":                           "http://localhost:8080/fhir",
	} {
		got, err := NormalizeBaseURL(in)
		if err != nil || got != want {
			t.Errorf("NormalizeBaseURL(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for in, want := range map[string]error{
		"":                                       ErrNoURL,
		"api/eyesite/R4":                         ErrNoScheme,
		"fhir.footholdtechnology.com/cgc":        ErrNoScheme,
		"http://developer.carepaths.com/x/api":   ErrPlainHTTP,
		"https://api/healthpartnersfhir.com/rt":  ErrBadHost,
		"https://null/v1/uscore/R4":              ErrBadHost,
		"ftp://fhir.example.org/r4":              ErrBadScheme,
		"https://fhir.example.org/r4?x=1":        ErrQuery,
		"https://user:pw@fhir.example.org/r4":    ErrUserinfo,
		"https://enhancedeyecare.x.com\t/API/R4": ErrURLHasSpaces,
		"https://" + strings.Repeat("a", 2050):   ErrURLTooLong,
	} {
		if _, err := NormalizeBaseURL(in); !errors.Is(err, want) {
			t.Errorf("NormalizeBaseURL(%q): %v, want %v", in, err, want)
		}
	}
}

func TestDetect(t *testing.T) {
	for data, want := range map[string]string{
		`{"resourceType":"Bundle","entry":[]}`: FormatFHIRBundle,
		`{"entry":[{"resource":{"extension":[{"url":"http://hl7.org/fhir/StructureDefinition/organization-brand"}]}}],"resourceType":"Bundle"}`: FormatBrands,
		`{"endpoints":[]}`: FormatCernerLegacy,
		`{"Endpoints":[]}`: FormatLantern,
		`[{"FormatType":"Lantern","URL":"x","EndpointName":"y","FileName":"z"}]`: FormatLanternIndex,
		"State,endpoint,developer_name\nAlaska,https://a.b/r4,x\n":               FormatMedicaidCSV,
		"developer,source\nAetna,https://x.y\n":                                  FormatPayerIndexCSV,
		"platform_type: epic\nconfidential: false\n":                             FormatFasten,
	} {
		got, err := Detect([]byte(data))
		if err != nil || got != want {
			t.Errorf("Detect(%.40q) = %q, %v; want %q", data, got, err, want)
		}
	}
	for _, bad := range []string{"", "   ", "hello", `{"resourceType":"Patient"}`, `[1,2]`, `{`} {
		if _, err := Detect([]byte(bad)); err == nil {
			t.Errorf("Detect(%q) accepted", bad)
		}
	}
}

// A brands bundle whose affiliate (partOf) has no access details of its own
// inherits its parent's; one whose parent is missing is rejected with why.
func TestBrandsAffiliates(t *testing.T) {
	data := `{"resourceType":"Bundle","type":"collection","entry":[
	 {"fullUrl":"https://x/Organization/p","resource":{"resourceType":"Organization","id":"p","name":"Parent Health",
	  "extension":[{"url":"http://hl7.org/fhir/StructureDefinition/organization-portal","extension":[
	   {"url":"portalName","valueString":"MyParent"},{"url":"portalEndpoint","valueReference":{"reference":"Endpoint/e"}}]}]}},
	 {"fullUrl":"https://x/Organization/a","resource":{"resourceType":"Organization","id":"a","name":"Affiliate Clinic","partOf":{"reference":"Organization/p"},
	  "extension":[{"url":"http://hl7.org/fhir/StructureDefinition/organization-brand","extension":[{"url":"brandLogo","valueUrl":"https://x/logo.png"}]}]}},
	 {"fullUrl":"https://x/Organization/o","resource":{"resourceType":"Organization","id":"o","name":"Orphan","partOf":{"reference":"Organization/missing"}}},
	 {"fullUrl":"https://x/Endpoint/e","resource":{"resourceType":"Endpoint","id":"e","address":"https://fhir.parent.org/r4",
	  "extension":[{"url":"http://hl7.org/fhir/StructureDefinition/endpoint-fhir-version","valueCode":"4.0.1"}]}}]}`
	l, err := Parse(context.Background(), []byte(data), Hint{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if l.Format != FormatBrands || len(l.Entries) != 2 || len(l.Rejected) != 1 {
		t.Fatalf("%s: %d entries, rejected %+v", l.Format, len(l.Entries), l.Rejected)
	}
	a := l.Entries[1]
	if a.Name != "Affiliate Clinic" || len(a.Endpoints) != 1 || a.Endpoints[0].URL != "https://fhir.parent.org/r4" || a.Endpoints[0].FHIRVersion != "4.0.1" || a.Portals[0].Name != "MyParent" || a.Logo != "https://x/logo.png" {
		t.Fatalf("affiliate: %+v", a)
	}
	if r := l.Rejected[0]; r.Ref != "o" || !strings.Contains(r.Reason, "not in the bundle") {
		t.Fatalf("orphan: %+v", r)
	}
}

// Rows that cannot be read are rejected one by one; the rest imports.
func TestLanternRowsRejectedByRow(t *testing.T) {
	data := `{"Endpoints":[{"URL":"https://a.example.org/r4","OrganizationName":"A"},{"URL":"https://b.example.org/r4","OrganizationName":7},
	{"URL":"http://c.example.org/r4","OrganizationName":"C"},{"URL":"https://d.example.org/r4","OrganizationName":""}]}`
	l, err := Parse(context.Background(), []byte(data), Hint{FileName: "Acme_Inc_EndpointSources.json"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Entries) != 1 || l.Vendor != "acme" || len(l.Rejected) != 3 {
		t.Fatalf("%+v", l)
	}
	for i, want := range []string{"malformed row", "plain http", "no organization name"} {
		if r := l.Rejected[i]; r.Row != i+2 || !strings.Contains(r.Reason, want) {
			t.Errorf("rejection %d: %+v, want row %d %q", i, r, i+2, want)
		}
	}
}

// seeds returns the seed corpus of a fuzz target: small hand-written inputs,
// plus the real files of ../shared/catalog-data matching glob when present.
func seeds(f *testing.F, glob string, small ...string) {
	for _, s := range small {
		f.Add([]byte(s))
	}
	root := ""
	if dir, err := os.Getwd(); err == nil {
		for d := dir; ; d = filepath.Dir(d) {
			if st, err := os.Stat(filepath.Join(d, "..", "shared", "catalog-data")); err == nil && st.IsDir() {
				root = filepath.Join(d, "..", "shared", "catalog-data")
				break
			}
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	if root == "" {
		return
	}
	files, _ := filepath.Glob(filepath.Join(root, glob))
	for _, p := range files {
		if b, err := os.ReadFile(p); err == nil && len(b) < 64<<10 {
			f.Add(b)
		}
	}
}

func fuzzFormat(f *testing.F, format string) {
	f.Fuzz(func(t *testing.T, data []byte) {
		l, err := Parse(context.Background(), data, Hint{Format: format, FileName: "Fuzz_EndpointSources.json"}, nil)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrUnknownFormat) {
				t.Fatalf("unexpected error kind: %v", err)
			}
			return
		}
		for _, e := range l.Entries {
			if e.Name == "" {
				t.Fatalf("entry without a name: %+v", e)
			}
			for _, ep := range e.Endpoints {
				if n, err := NormalizeBaseURL(ep.URL); err != nil || n != ep.URL {
					t.Fatalf("entry with an unnormalized endpoint %q: %v", ep.URL, err)
				}
			}
		}
	})
}

func FuzzBrandsBundle(f *testing.F) {
	seeds(f, "smart-app-launch-brands/*.json",
		`{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"Organization","name":"X","extension":[{"url":"http://hl7.org/fhir/StructureDefinition/organization-portal","extension":[{"url":"portalEndpoint","valueReference":{"reference":"Endpoint/e"}}]}]}},{"resource":{"resourceType":"Endpoint","id":"e","address":"https://x.org/r4"}}]}`)
	seeds(f, "argonaut-brands-connectathon/*.json")
	fuzzFormat(f, FormatBrands)
}

func FuzzFHIRBundle(f *testing.F) {
	seeds(f, "oracle-ignite/soarian*.json",
		`{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"Endpoint","name":"A","address":"https://a.org/api/FHIR/R4","contained":[{"resourceType":"Organization","name":"B"}]}}]}`,
		`{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"Organization","id":"O1","name":"N","address":[{"city":"C","state":"MO","postalCode":"64108"}],"endpoint":[{"reference":"Endpoint/1"}]}},{"resource":{"resourceType":"Endpoint","id":"1","address":"https://fhir-ehr.cerner.com/r4/1/"}}]}`)
	fuzzFormat(f, FormatFHIRBundle)
}

func FuzzCernerLegacy(f *testing.F) {
	seeds(f, "nothing", `{"endpoints":[{"name":"A","baseUrl":"https://fhir-myrecord.cerner.com/dstu2/x/","type":"prod"}]}`, `{"endpoints":null}`)
	fuzzFormat(f, FormatCernerLegacy)
}

func FuzzLantern(f *testing.F) {
	seeds(f, "lantern/Medicare_*EndpointSources.json", `{"Endpoints":[{"URL":"https://a.org/r4","OrganizationName":"A","NPIID":"1","OrganizationZipCode":"64108"}]}`)
	seeds(f, "lantern/MedicaidState_EndpointSources.json")
	fuzzFormat(f, FormatLantern)
}

func FuzzLanternIndex(f *testing.F) {
	seeds(f, "lantern/*ResourcesList.json", `[{"FormatType":"Lantern","URL":"https://x","EndpointName":"X","FileName":"X.json"}]`)
	fuzzFormat(f, FormatLanternIndex)
}

func FuzzPayerCSV(f *testing.F) {
	seeds(f, "lantern/oneupdata.csv", "Parent Organization Name,Brand Name(s),Prod FHIR URL,Notes\nA,\"B\nC\",https://api.afhir.com/r4,\n")
	fuzzFormat(f, FormatPayerBrandsCSV)
}

func FuzzMedicaidCSV(f *testing.F) {
	seeds(f, "lantern/medicaid-state-endpoints.csv", "State,endpoint,developer_name\nAlaska,https://api.alaskafhir.com/r4/Patient,1up (Gainwell)\n")
	fuzzFormat(f, FormatMedicaidCSV)
}

func FuzzSMA(f *testing.F) {
	seeds(f, "cms-sma-directory/*.derived.csv", "State,Information as of date,Status,Production Base URL for Claims Data (CARIN BB),FHIR Capability Statement Link\nAlaska,1,Active,https://a.org/r4/ExplanationOfBenefit,https://a.org/r4/metadata\n")
	fuzzFormat(f, FormatSMA)
}

func FuzzXLSX(f *testing.F) {
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	w, _ := zw.Create("xl/sharedStrings.xml")
	w.Write([]byte(`<sst><si><t>State</t></si><si><t>Status</t></si><si><t>Production Base URL for Claims</t></si><si><t>Alaska</t></si><si><r><t>Act</t></r><r><t>ive</t></r></si></sst>`))
	w, _ = zw.Create("xl/worksheets/sheet1.xml")
	w.Write([]byte(`<worksheet><sheetData><row r="1"><c r="A1" t="s"><v>0</v></c><c r="B1" t="s"><v>1</v></c><c r="C1" t="s"><v>2</v></c></row><row r="2"><c r="A2" t="s"><v>3</v></c><c r="B2" t="s"><v>4</v></c><c r="C2" t="inlineStr"><is><t>https://a.org/r4/Patient</t></is></c></row></sheetData></worksheet>`))
	zw.Close()
	f.Add(buf.Bytes())
	seeds(f, "cms-sma-directory/*.xlsx-none")
	f.Fuzz(func(t *testing.T, data []byte) {
		if !bytes.HasPrefix(data, []byte("PK\x03\x04")) {
			data = append([]byte("PK\x03\x04"), data...)
		}
		l, err := Parse(context.Background(), data, Hint{}, nil)
		if err != nil {
			return
		}
		for _, e := range l.Entries {
			if e.Name == "" || len(e.Endpoints) == 0 {
				t.Fatalf("bad entry %+v", e)
			}
		}
	})
}

func FuzzFasten(f *testing.F) {
	seeds(f, "fasten-platform-definitions/epic.yaml", "platform_type: cerner\nconfidential: true\ncode_challenge_methods_supported: [S256]\n")
	fuzzFormat(f, FormatFasten)
}

// FuzzDetect throws anything at detection and parsing together.
func FuzzDetect(f *testing.F) {
	seeds(f, "lantern/payer-patient-access.csv", `{"resourceType":"Bundle"}`, "PK\x03\x04", "platform_type: x", "[]", "{}")
	f.Fuzz(func(t *testing.T, data []byte) {
		if _, err := Parse(context.Background(), data, Hint{FileName: "x"}, nil); err != nil && !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrUnknownFormat) {
			t.Fatalf("unexpected error kind: %v", err)
		}
	})
}
