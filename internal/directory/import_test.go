package directory

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/medrelay/medrelay/internal/directory/importers"
)

// TestImportCatalogData imports every file of ../shared/catalog-data and
// checks the summaries: counts by vendor, rejected rows, the athenahealth
// practices kept apart although they share one base URL, formats that hold
// no sources reported as such.
func TestImportCatalogData(t *testing.T) {
	if raceDetector {
		// The import code's concurrency is raced by the smaller tests; the
		// whole corpus (75,000 rows) takes minutes under the detector, so
		// `make test` runs this test again without it.
		t.Skip("whole-corpus import: run without -race (make test does)")
	}
	root := catalogData(t)
	c := newCatalog(t, openStore(t))
	sums := importAll(t, c, root)
	first := snapshot(t, c, nil)
	if len(sums) < 200 {
		t.Fatalf("imported %d files, want every file of the corpus (>200)", len(sums))
	}
	get := func(rel string) *Summary {
		t.Helper()
		s, ok := sums[rel]
		if !ok {
			t.Fatalf("no summary for %s", rel)
		}
		return s
	}
	sources := func(s *Summary) int { return s.Created + s.Updated + s.Unchanged }

	// 1upHealth's payer list: the malformed URL is rejected by row, the rest
	// imported; a cell naming two brands gives two sources on one endpoint.
	one := get("lantern/oneupdata.csv")
	if one.Format != importers.FormatPayerBrandsCSV || one.RejectedCount != 2 || one.Entries != 50 {
		t.Errorf("oneupdata.csv: format %s, %d entries, %d rejected; want payer CSV, 50, 2", one.Format, one.Entries, one.RejectedCount)
	}
	found := false
	for _, r := range one.Rejected {
		if strings.Contains(r.Reason, "https://api/healthpartnersfhir.com/rt") && strings.Contains(r.Reason, importers.ErrBadHost.Error()) && r.Row == 12 {
			found = true
		}
	}
	if !found {
		t.Errorf("oneupdata.csv: the malformed HealthPartners URL (line 12) is not among the rejections: %+v", one.Rejected)
	}
	if one.ByKind["payer"] != sources(one) {
		t.Errorf("oneupdata.csv: kinds %v, want all payer", one.ByKind)
	}

	// athenahealth: 17,136 rows, one base URL, practices kept apart.
	ath := get("lantern/athenahealth_Inc_EndpointSources.json")
	if ath.Rows != 17136 || ath.Endpoints != 1 {
		t.Errorf("athenahealth: %d rows, %d endpoints; want 17136 rows sharing 1 endpoint", ath.Rows, ath.Endpoints)
	}
	if n := ath.ByVendor["athenahealth"]; n < 16000 || n != sources(ath) {
		t.Errorf("athenahealth: %d athenahealth sources of %d, want >16000 kept apart", n, sources(ath))
	}
	if ath.Duplicates+sources(ath) != ath.Entries {
		t.Errorf("athenahealth: %d sources + %d duplicates != %d entries", sources(ath), ath.Duplicates, ath.Entries)
	}

	// Oracle Health's R4 lists: patient and provider endpoints of a tenant
	// are one brand.
	pat := get("oracle-ignite/millennium_patient_r4_endpoints.json")
	prov := get("oracle-ignite/millennium_provider_r4_endpoints.json")
	if pat.Format != importers.FormatFHIRBundle || pat.Entries != 1359 || pat.ByVendor["oraclehealth"] != 1359 {
		t.Errorf("oracle patient: %s %d entries %v", pat.Format, pat.Entries, pat.ByVendor)
	}
	if prov.Entries != 1451 || prov.ByVendor["oraclehealth"] != 1451 {
		t.Errorf("oracle provider: %d entries %v", prov.Entries, prov.ByVendor)
	}
	if s := get("cerner-ignite-legacy/dstu2-patient-endpoints.json"); s.Format != importers.FormatCernerLegacy || s.Entries != 1194 || s.ByVendor["oraclehealth"] != sources(s) {
		t.Errorf("cerner legacy: %s %d %v", s.Format, s.Entries, s.ByVendor)
	}
	// Epic's list does not name its vendor: rows get it from their URL.
	if s := get("lantern-vendor-raw/EpicEndpointSourcesR4.json"); s.Entries != 265 || s.ByVendor["epic"] < 260 || s.RejectedCount != 0 {
		t.Errorf("epic R4: %d entries %v, %d rejected", s.Entries, s.ByVendor, s.RejectedCount)
	}

	// SMART 2.2 brands examples (final extension URLs).
	for file, want := range map[string]int{"Bundle-example1.json": 1, "Bundle-example2.json": 3, "Bundle-example3.json": 1, "Bundle-example4.json": 2} {
		s := get("smart-app-launch-brands/" + file)
		if s.Format != importers.FormatBrands || s.Entries != want || s.RejectedCount != 0 {
			t.Errorf("%s: %s, %d entries (want %d), %d rejected %v", file, s.Format, s.Entries, want, s.RejectedCount, s.Rejected)
		}
	}
	// One brand, several portals; several brands, one endpoint.
	if s := get("smart-app-launch-brands/Bundle-example4.json"); s.Endpoints != 1 {
		t.Errorf("example4: %d endpoints for its two brands, want 1", s.Endpoints)
	}
	res, err := c.Search(context.Background(), SearchParams{Query: "ExampleHospital", Limit: 1})
	if err != nil || len(res.Hits) != 1 || len(res.Hits[0].Source.Portals) != 2 || len(res.Hits[0].Endpoints) != 2 {
		t.Errorf("example3: one brand with two portals and two endpoints: %+v %v", res.Hits, err)
	}
	// Draft-era bundles: Epic's hides a brand; MEDITECH's has 9 brands.
	if s := get("argonaut-brands-connectathon/connectathon-epic.json"); s.Entries != 2 || s.Skipped != 1 || s.ByVendor["epic"] != 2 {
		t.Errorf("connectathon-epic: %d entries, %d skipped, %v", s.Entries, s.Skipped, s.ByVendor)
	}
	if s := get("argonaut-brands-connectathon/connectathon-meditech.json"); s.Entries != 9 || s.ByVendor["meditech"] < 8 {
		t.Errorf("connectathon-meditech: %d entries %v", s.Entries, s.ByVendor)
	}
	// CMS SMA directory: the workbook and its data sheet agree; the
	// Overview sheet holds no data and says so.
	x, csv := get("cms-sma-directory/SMAEndpointDirectory.xlsx"), get("cms-sma-directory/SMAEndpointDirectory.sheet-SMA-Endpoint-Directory.derived.csv")
	if x.Format != importers.FormatSMA || x.Entries != 34 || x.RejectedCount != 22 || csv.Entries != x.Entries || csv.RejectedCount != x.RejectedCount {
		t.Errorf("SMA: xlsx %s %d/%d, csv %d/%d", x.Format, x.Entries, x.RejectedCount, csv.Entries, csv.RejectedCount)
	}
	if s := get("cms-sma-directory/SMAEndpointDirectory.csv"); s.Format != importers.FormatSMAOverview || s.Entries != 0 || len(s.Notes) == 0 {
		t.Errorf("SMA overview: %s %d %v", s.Format, s.Entries, s.Notes)
	}
	if s := get("lantern/CHPLEndpointResourcesList.json"); s.Format != importers.FormatLanternIndex || s.Entries != 0 || s.Skipped != 235 {
		t.Errorf("CHPL index: %s %d %d", s.Format, s.Entries, s.Skipped)
	}
	if s := get("fasten-platform-definitions/epic.yaml"); s.Format != importers.FormatFasten || len(s.Setups) != 1 || s.Setups[0] != "epic" {
		t.Errorf("fasten epic: %s %v", s.Format, s.Setups)
	}
	if st, ok := c.Setup(context.Background(), "epic"); !ok || !strings.HasPrefix(st.From, "import:") || len(st.ClientAuthMethods) == 0 {
		t.Errorf("epic setup after importing Fasten's: %+v", st)
	}
	if s := get("lantern/Carepaths_Inc_EndpointSources.json"); s.Entries != 0 || s.RejectedCount != 1213 || !strings.Contains(s.Rejected[0].Reason, "plain http") {
		t.Errorf("carepaths: %d entries, %d rejected", s.Entries, s.RejectedCount)
	}
	if c.Len() < 40000 {
		t.Errorf("%d sources after importing the corpus, want > 40000", c.Len())
	}

	// Re-importing a list is idempotent.
	b, err := os.ReadFile(filepath.Join(root, "lantern", "oneupdata.csv"))
	if err != nil {
		t.Fatal(err)
	}
	again, err := c.Import(context.Background(), b, ImportOptions{FileName: "oneupdata.csv", ListID: "file:lantern/oneupdata.csv"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if again.Created != 0 || again.Updated != 0 || again.Suspended != 0 || again.Unchanged != sources(one) {
		t.Errorf("re-import: %+v, want all %d unchanged", again, sources(one))
	}

	// The example: the hospital first.
	res, err = c.Search(context.Background(), SearchParams{Query: "childrens mercy kansas", Limit: 3})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Hits) == 0 || res.Hits[0].Source.ID != "childrens-mercy-kansas-city" {
		t.Fatalf("childrens mercy kansas: %+v", res.Hits)
	}
	if len(res.Hits[0].Source.Lists) == 0 {
		t.Errorf("the curated source did not absorb Oracle's rows for its tenant: lists %v", res.Hits[0].Source.Lists)
	}

	// Two agents importing the same files in the same order hold the same
	// directory (the directory bench's corpus among them): no source's name
	// or merge depends on the order of a map.
	other := newCatalog(t, openStore(t))
	importAll(t, other, root)
	diffSnapshots(t, "a second import of the corpus against the first", first, snapshot(t, other, nil))
}

func lanternJSON(rows ...[2]string) []byte {
	var parts []string
	for _, r := range rows {
		parts = append(parts, fmt.Sprintf(`{"URL":%q,"OrganizationName":%q,"NPIID":"","OrganizationZipCode":"64108"}`, r[0], r[1]))
	}
	return []byte(`{"Endpoints":[` + strings.Join(parts, ",") + `]}`)
}

func TestReimportSuspendsAndReactivates(t *testing.T) {
	ctx := context.Background()
	c := newCatalog(t, openStore(t))
	v1 := lanternJSON([2]string{"https://fhir.example.org/r4/a", "Alpha Clinic"}, [2]string{"https://fhir.example.org/r4/b", "Beta Clinic"}, [2]string{"https://fhir.example.org/r4/c", "Gamma Clinic"})
	s, err := c.Import(ctx, v1, ImportOptions{FileName: "Example_EndpointSources.json"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if s.Created != 3 || s.ListID != "file:Example_EndpointSources.json" || s.ByVendor["example"] != 3 {
		t.Fatalf("first import: %+v", s)
	}
	// A newer copy without Gamma: Gamma is suspended, not deleted.
	v2 := lanternJSON([2]string{"https://fhir.example.org/r4/a", "Alpha Clinic"}, [2]string{"https://fhir.example.org/r4/b", "Beta Clinic"})
	s, err = c.Import(ctx, v2, ImportOptions{FileName: "Example_EndpointSources.json"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if s.Suspended != 1 || s.Unchanged != 2 || s.Created != 0 {
		t.Fatalf("second import: %+v", s)
	}
	res, err := c.Search(ctx, SearchParams{Query: "gamma clinic"})
	if err != nil || len(res.Hits) == 0 {
		t.Fatalf("search gamma: %v %v", res, err)
	}
	g := res.Hits[0].Source
	if g.Name != "Gamma Clinic" || g.Status != StatusSuspended {
		t.Fatalf("gamma: %s %s", g.Name, g.Status)
	}
	// Active before suspended: "clinic" ranks Alpha and Beta above Gamma.
	res, _ = c.Search(ctx, SearchParams{Query: "clinic", Vendor: "example"})
	if len(res.Hits) != 3 || res.Hits[2].Source.Name != "Gamma Clinic" {
		t.Fatalf("clinic: %v", names(res))
	}
	if res, _ := c.Search(ctx, SearchParams{Query: "clinic", Vendor: "example", ExcludeSuspended: true}); len(res.Hits) != 2 {
		t.Fatalf("exclude suspended: %v", names(res))
	}
	// The state comes from the ZIP code.
	if res, _ := c.Search(ctx, SearchParams{Query: "clinic", State: "MO"}); len(res.Hits) != 3 {
		t.Fatalf("state MO: %v", names(res))
	}
	// Back in the list: active again.
	s, err = c.Import(ctx, v1, ImportOptions{FileName: "Example_EndpointSources.json"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if s.Reactivated != 1 || s.Suspended != 0 {
		t.Fatalf("third import: %+v", s)
	}
	// What was written survives a restart.
	c2 := newCatalog(t, c.db)
	e, err := c2.Get(ctx, g.ID)
	if err != nil || e.Source.Status != StatusActive || len(e.Endpoints) != 1 {
		t.Fatalf("after reload: %+v %v", e, err)
	}
	if _, err := c2.Get(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing source: %v", err)
	}
}

func names(r SearchResult) []string {
	var out []string
	for _, h := range r.Hits {
		out = append(out, h.Source.Name)
	}
	return out
}

func TestImportRejectsBadInput(t *testing.T) {
	ctx := context.Background()
	c := newCatalog(t, openStore(t))
	if _, err := c.Import(ctx, []byte("hello world"), ImportOptions{FileName: "x.txt"}, nil); !errors.Is(err, ErrImportFormat) {
		t.Fatalf("unknown format: %v", err)
	}
	if _, err := c.Import(ctx, []byte(`{"resourceType":"Bundle","entry":[{"resource":`), ImportOptions{FileName: "x.json"}, nil); !errors.Is(err, ErrImportInvalid) {
		t.Fatalf("truncated bundle: %v", err)
	}
	if _, err := c.ImportURL(ctx, "http://example.com/list.json", ImportOptions{}, nil); !errors.Is(err, ErrImportURL) {
		t.Fatalf("plain http URL: %v", err)
	}
	// Dry run changes nothing.
	s, err := c.Import(ctx, lanternJSON([2]string{"https://fhir.example.org/r4/a", "Alpha Clinic"}), ImportOptions{FileName: "Dry_EndpointSources.json", DryRun: true}, nil)
	if err != nil || !s.DryRun || s.Created != 1 {
		t.Fatalf("dry run: %+v %v", s, err)
	}
	if res, _ := c.Search(ctx, SearchParams{Query: "alpha clinic"}); len(res.Hits) > 0 && res.Hits[0].Source.Name == "Alpha Clinic" {
		t.Fatalf("dry run changed the directory: %v", names(res))
	}
}

// smart-2.2-client #413, #426: a list fetched again is asked for with
// If-None-Match, and a 304 costs nothing.
func TestImportURLRevalidatesWithETag(t *testing.T) {
	var conditional atomic.Int32
	body := lanternJSON([2]string{"https://fhir.example.org/r4/a", "Alpha Clinic"})
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("If-None-Match") == `"v1"` {
			conditional.Add(1)
			w.WriteHeader(http.StatusNotModified)
			return
		}
		w.Header().Set("ETag", `"v1"`)
		w.Write(body)
	}))
	defer srv.Close()
	c := newCatalog(t, openStore(t), WithHTTPClient(srv.Client()))
	var phases []string
	s, err := c.ImportURL(context.Background(), srv.URL+"/Acme_EndpointSources.json", ImportOptions{}, func(p ImportProgress) {
		if len(phases) == 0 || phases[len(phases)-1] != p.Phase {
			phases = append(phases, p.Phase)
		}
	})
	if err != nil || s.Created != 1 || s.ListID != srv.URL+"/Acme_EndpointSources.json" {
		t.Fatalf("first fetch: %+v %v", s, err)
	}
	if strings.Join(phases, ",") != "fetch,parse,merge,write,index" {
		t.Errorf("progress phases %v", phases)
	}
	s, err = c.ImportURL(context.Background(), srv.URL+"/Acme_EndpointSources.json", ImportOptions{}, nil)
	if err != nil || !s.NotModified || conditional.Load() != 1 {
		t.Fatalf("second fetch: %+v %v (conditional requests %d)", s, err, conditional.Load())
	}
}

// Documented search limits: a query over 512 characters is refused, and a
// page holds at most 200 results whatever the limit asked.
func TestSearchLimits(t *testing.T) {
	ctx := context.Background()
	c := newCatalog(t, openStore(t))
	var rows [][2]string
	for i := range 250 {
		rows = append(rows, [2]string{fmt.Sprintf("https://fhir.example.org/r4/t%d", i), fmt.Sprintf("Lakeside Clinic %d", i)})
	}
	if _, err := c.Import(ctx, lanternJSON(rows...), ImportOptions{FileName: "Lakeside_EndpointSources.json"}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Search(ctx, SearchParams{Query: strings.Repeat("a", 513)}); !errors.Is(err, ErrBadQuery) {
		t.Errorf("513-character query: %v, want ErrBadQuery", err)
	}
	if _, err := c.Search(ctx, SearchParams{Query: strings.Repeat("a", 512)}); err != nil {
		t.Errorf("512-character query: %v", err)
	}
	for _, q := range []string{"lakeside clinic", ""} {
		res, err := c.Search(ctx, SearchParams{Query: q, Vendor: "lakeside", Limit: 1000})
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Hits) != MaxLimit || MaxLimit != 200 || res.Next == "" {
			t.Errorf("query %q, limit 1000: %d hits (next %q), want a page of 200 and a next page", q, len(res.Hits), res.Next)
		}
	}
}
