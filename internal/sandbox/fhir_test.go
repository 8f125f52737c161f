package sandbox_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/medrelay/medrelay/internal/sandbox"
	"github.com/medrelay/medrelay/internal/sandbox/sandboxtest"
)

// systemToken registers an ES384 backend client and returns a system/*.rs token.
func systemToken(t testing.TB, s *sandbox.Sandbox, tenant string) string {
	t.Helper()
	key := sandboxtest.NewKey(t, "ES384")
	id := "svc-" + key.KID
	if err := s.RegisterClient(tenant, sandbox.ClientConfig{ClientID: id, JWKS: key.JWKS()}); err != nil {
		t.Fatal(err)
	}
	tokenURL := discover(t, s, tenant).Token
	tok, err := backendToken(t, tokenURL, id, key.Assertion(t, id, tokenURL, 2*time.Minute, nil), "system/*.rs")
	if err != nil {
		t.Fatalf("backend token: %v", err)
	}
	return tok.AccessToken
}

type bundle struct {
	Link []struct {
		Relation string `json:"relation"`
		URL      string `json:"url"`
	} `json:"link"`
	Entry []struct {
		FullURL  string          `json:"fullUrl"`
		Resource json.RawMessage `json:"resource"`
	} `json:"entry"`
}

type resMeta struct {
	ResourceType string `json:"resourceType"`
	ID           string `json:"id"`
	Meta         struct {
		VersionID   string `json:"versionId"`
		LastUpdated string `json:"lastUpdated"`
	} `json:"meta"`
}

// searchAll follows next links and returns every resource's meta.
func searchAll(t testing.TB, u, tok string) []resMeta {
	t.Helper()
	var out []resMeta
	for pages := 0; u != ""; pages++ {
		if pages > 10000 {
			t.Fatal("too many pages")
		}
		r, body := bearerGet(t, u, tok)
		if r.StatusCode != 200 {
			t.Fatalf("GET %s: %d %s", u, r.StatusCode, body)
		}
		var b bundle
		if err := json.Unmarshal(body, &b); err != nil {
			t.Fatal(err)
		}
		u = ""
		for _, l := range b.Link {
			if l.Relation == "next" {
				u = l.URL
			}
		}
		for _, e := range b.Entry {
			var m resMeta
			_ = json.Unmarshal(e.Resource, &m)
			out = append(out, m)
		}
	}
	return out
}

// Search pages with next links and returns exactly the data's resources.
func TestSearchPaging(t *testing.T) {
	s := sandboxtest.Start(t, sandboxtest.WithPatients(4))
	tok := systemToken(t, s, "generic")
	got := searchAll(t, s.FHIRBase("generic")+"/Condition?_count=7", tok)
	exp, err := s.ExpectedExport(sandbox.ExportParams{Tenant: "generic", Types: []string{"Condition"}})
	if err != nil {
		t.Fatal(err)
	}
	var dg sandbox.ExportDigest
	seen := map[string]bool{}
	for _, m := range got {
		if seen[m.ID] {
			t.Fatalf("duplicate %s across pages", m.ID)
		}
		seen[m.ID] = true
		dg.Add(m.ResourceType, m.ID, m.Meta.VersionID)
	}
	if dg.String() != exp.Digest {
		t.Fatalf("paged search digest %s, want %s", dg, exp.Digest)
	}
}

func TestSearchFilters(t *testing.T) {
	s := sandboxtest.Start(t, sandboxtest.WithPatients(3))
	tok := systemToken(t, s, "generic")
	base := s.FHIRBase("generic")
	all := searchAll(t, base+"/Observation?patient=pat-1&_count=1000", tok)
	cut := "2020-01-01"
	newer := searchAll(t, base+"/Observation?patient=pat-1&_count=1000&_lastUpdated=ge"+cut, tok)
	older := searchAll(t, base+"/Observation?patient=pat-1&_count=1000&_lastUpdated=lt"+cut, tok)
	if len(newer)+len(older) != len(all) || len(all) == 0 {
		t.Fatalf("_lastUpdated split %d + %d != %d", len(newer), len(older), len(all))
	}
	for _, m := range newer {
		if m.Meta.LastUpdated < cut {
			t.Fatalf("%s lastUpdated %s not ge %s", m.ID, m.Meta.LastUpdated, cut)
		}
	}
	labs := searchAll(t, base+"/Observation?patient=pat-1&_count=1000&category=laboratory", tok)
	vitals := searchAll(t, base+"/Observation?patient=pat-1&_count=1000&category=http://terminology.hl7.org/CodeSystem/observation-category|vital-signs", tok)
	if len(labs)+len(vitals) != len(all) || len(labs) == 0 || len(vitals) == 0 {
		t.Fatalf("category split %d + %d != %d", len(labs), len(vitals), len(all))
	}
	hr := searchAll(t, base+"/Observation?patient=pat-1&_count=1000&code=http://loinc.org|8867-4", tok)
	if len(hr) == 0 || len(hr) >= len(vitals) {
		t.Fatalf("code=8867-4 matched %d of %d vitals", len(hr), len(vitals))
	}
	dated := searchAll(t, base+"/Encounter?patient=pat-1&date=ge2000-01-01&date=lt2100-01-01", tok)
	if enc := searchAll(t, base+"/Encounter?patient=pat-1", tok); len(dated) != len(enc) {
		t.Fatalf("date range covering everything: %d of %d", len(dated), len(enc))
	}
	one := searchAll(t, base+"/Observation?_id="+all[3].ID, tok)
	if len(one) != 1 || one[0].ID != all[3].ID {
		t.Fatalf("_id search: %v", one)
	}
	if r, _ := bearerGet(t, base+"/Observation?bogus=1", tok); r.StatusCode != 400 {
		t.Fatalf("unknown parameter: %d, want 400", r.StatusCode)
	}
}

// Reads carry ETag and Last-Modified; conditional reads answer 304; changed
// data gets a new version; deleted data answers 410.
func TestReadVersionsAndDeletes(t *testing.T) {
	s := sandboxtest.Start(t, sandboxtest.WithPatients(2))
	tok := systemToken(t, s, "generic")
	base := s.FHIRBase("generic")
	r, body := bearerGet(t, base+"/Patient/pat-1", tok)
	if r.StatusCode != 200 || r.Header.Get("ETag") != `W/"1"` || r.Header.Get("Last-Modified") == "" {
		t.Fatalf("read: %d %v", r.StatusCode, r.Header)
	}
	if !json.Valid(body) {
		t.Fatal("invalid JSON")
	}
	req, _ := http.NewRequest("GET", base+"/Patient/pat-1", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("If-None-Match", `W/"1"`)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 304 {
		t.Fatalf("If-None-Match: %v %v", err, resp.Status)
	}
	resp.Body.Close()
	res, err := s.Mutate(sandbox.MutateRequest{Tenant: "generic", Update: 3, Delete: 2})
	if err != nil || len(res.Updated) != 3 || len(res.Deleted) != 2 {
		t.Fatalf("mutate: %v %+v", err, res)
	}
	r, body = bearerGet(t, base+"/"+res.Updated[0], tok)
	var m resMeta
	_ = json.Unmarshal(body, &m)
	if r.StatusCode != 200 || m.Meta.VersionID != "2" || r.Header.Get("ETag") != `W/"2"` {
		t.Fatalf("updated %s: %d %s", res.Updated[0], r.StatusCode, body)
	}
	if lu, _ := time.Parse(time.RFC3339Nano, m.Meta.LastUpdated); lu.Before(res.At.Add(-time.Second)) {
		t.Fatalf("updated lastUpdated %s before mutation %s", m.Meta.LastUpdated, res.At)
	}
	if r, _ := bearerGet(t, base+"/"+res.Deleted[0], tok); r.StatusCode != http.StatusGone {
		t.Fatalf("deleted %s: %d, want 410", res.Deleted[0], r.StatusCode)
	}
	typ, id, _ := strings.Cut(res.Deleted[0], "/")
	if got := searchAll(t, base+"/"+typ+"?_id="+id, tok); len(got) != 0 {
		t.Fatal("deleted resource still found by search")
	}
	if r, _ := bearerGet(t, base+"/Observation/obs-99-0", tok); r.StatusCode != 404 {
		t.Fatalf("unknown id: %d", r.StatusCode)
	}
}

func TestEverything(t *testing.T) {
	s := sandboxtest.Start(t, sandboxtest.WithPatients(2))
	tok := systemToken(t, s, "generic")
	got := searchAll(t, s.FHIRBase("generic")+"/Patient/pat-1/$everything?_count=200&_type=Patient,Condition,Encounter", tok)
	types := map[string]int{}
	for _, m := range got {
		types[m.ResourceType]++
		if m.ResourceType == "Patient" && m.ID != "pat-1" {
			t.Fatalf("$everything returned %s", m.ID)
		}
	}
	if types["Patient"] != 1 || types["Condition"] == 0 || types["Encounter"] == 0 || len(types) != 3 {
		t.Fatalf("$everything types %v", types)
	}
}

// athenahealth: one base URL for many practices; searches name the practice.
func TestAthenaPractices(t *testing.T) {
	s := sandboxtest.Start(t, sandboxtest.WithPatients(6))
	tok := systemToken(t, s, "athenahealth")
	base := s.FHIRBase("athenahealth")
	if r, body := bearerGet(t, base+"/Condition", tok); r.StatusCode != 400 || !strings.Contains(string(body), "ah-practice") {
		t.Fatalf("search without practice: %d %s", r.StatusCode, body)
	}
	got := searchAll(t, base+"/Patient?ah-practice=Organization/a-1.Practice-195901", tok)
	if len(got) != 2 || got[0].ID != "pat-1" || got[1].ID != "pat-4" {
		t.Fatalf("practice 1 patients: %v", got)
	}
	var brands struct {
		Entry []struct {
			Resource struct {
				ResourceType string `json:"resourceType"`
				Endpoint     []struct {
					Reference string `json:"reference"`
				} `json:"endpoint"`
			} `json:"resource"`
		} `json:"entry"`
	}
	getJSON(t, http.DefaultClient, s.URL()+"/brands.json", &brands)
	athenaOrgs := 0
	for _, e := range brands.Entry {
		if e.Resource.ResourceType == "Organization" && len(e.Resource.Endpoint) == 1 && e.Resource.Endpoint[0].Reference == "Endpoint/ep-athenahealth" {
			athenaOrgs++
		}
	}
	if athenaOrgs != 3 {
		t.Fatalf("athenahealth practices in brands.json sharing one endpoint: %d, want 3", athenaOrgs)
	}
}

func TestCapabilityStatement(t *testing.T) {
	s := sandboxtest.Start(t)
	var cs map[string]any
	getJSON(t, http.DefaultClient, s.FHIRBase("generic")+"/metadata", &cs)
	if cs["resourceType"] != "CapabilityStatement" || cs["fhirVersion"] != "4.0.1" {
		t.Fatalf("metadata: %v", cs)
	}
	b, _ := json.Marshal(cs)
	for _, want := range []string{"oauth-uris", `"type":"ExplanationOfBenefit"`, "SMART-on-FHIR", "patient-export"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("CapabilityStatement lacks %s", want)
		}
	}
}
