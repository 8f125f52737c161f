package directory

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"
)

// The merge's outcome depends on the rows, not on their order
// (merge.go's rules; docs/directory.md "When lists disagree").

const athenaURL = "https://api.platform.athenahealth.com/fhir/r4"

type lanternRow struct {
	URL  string `json:"URL"`
	Name string `json:"OrganizationName"`
	NPI  string `json:"NPIID"`
	ZIP  string `json:"OrganizationZipCode"`
}

func lanternList(rows ...lanternRow) []byte {
	b, err := json.Marshal(map[string][]lanternRow{"Endpoints": rows})
	if err != nil {
		panic(err)
	}
	return b
}

type brand struct {
	id, name, alias, logo, portal, portalURL, website, city, state, npi string
	endpoint                                                            string // Endpoint resource id
}

// brandsBundle is a SMART 2.2 User-access Brands bundle of the brands and
// endpoints (id → address).
func brandsBundle(brands []brand, endpoints map[string]string) []byte {
	var entries []any
	for _, b := range brands {
		org := map[string]any{"resourceType": "Organization", "id": b.id, "name": b.name,
			"extension": []any{
				map[string]any{"url": "http://hl7.org/fhir/StructureDefinition/organization-brand",
					"extension": []any{map[string]any{"url": "brandLogo", "valueUrl": b.logo}}},
				map[string]any{"url": "http://hl7.org/fhir/StructureDefinition/organization-portal",
					"extension": []any{
						map[string]any{"url": "portalName", "valueString": b.portal},
						map[string]any{"url": "portalUrl", "valueUrl": b.portalURL},
						map[string]any{"url": "portalEndpoint", "valueReference": map[string]any{"reference": "Endpoint/" + b.endpoint}},
					}},
			},
			"telecom":    []any{map[string]any{"system": "url", "value": b.website}},
			"address":    []any{map[string]any{"city": b.city, "state": b.state}},
			"identifier": []any{map[string]any{"system": "http://hl7.org/fhir/sid/us-npi", "value": b.npi}},
		}
		if b.alias != "" {
			org["alias"] = []string{b.alias}
		}
		entries = append(entries, map[string]any{"fullUrl": "https://brands.example.org/Organization/" + b.id, "resource": org})
	}
	ids := make([]string, 0, len(endpoints))
	for id := range endpoints {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		entries = append(entries, map[string]any{"fullUrl": "https://brands.example.org/Endpoint/" + id,
			"resource": map[string]any{"resourceType": "Endpoint", "id": id, "address": endpoints[id]}})
	}
	b, err := json.Marshal(map[string]any{"resourceType": "Bundle", "type": "collection", "entry": entries})
	if err != nil {
		panic(err)
	}
	return b
}

// permuted returns the list with the rows of its top-level array field
// reordered by perm.
func permuted(t *testing.T, data []byte, field string, perm func(n int) []int) []byte {
	t.Helper()
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	var rows []json.RawMessage
	if err := json.Unmarshal(doc[field], &rows); err != nil {
		t.Fatal(err)
	}
	out := make([]json.RawMessage, 0, len(rows))
	for _, i := range perm(len(rows)) {
		out = append(out, rows[i])
	}
	b, err := json.Marshal(out)
	if err != nil {
		t.Fatal(err)
	}
	doc[field] = b
	data, err = json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// orders are the row orders every test tries: as written, reversed, and
// shuffled with fixed seeds.
func orders() map[string]func(n int) []int {
	out := map[string]func(n int) []int{
		"as written": func(n int) []int {
			p := make([]int, n)
			for i := range p {
				p[i] = i
			}
			return p
		},
		"reversed": func(n int) []int {
			p := make([]int, n)
			for i := range p {
				p[i] = n - 1 - i
			}
			return p
		},
	}
	for seed := uint64(1); seed <= 4; seed++ {
		out[fmt.Sprintf("shuffle %d", seed)] = func(n int) []int { return rand.New(rand.NewPCG(seed, 7)).Perm(n) }
	}
	return out
}

// snapshot is everything an import leaves in the catalog (sources and
// endpoints, every field but the clock's), as JSON by id.
func snapshot(t *testing.T, c *Catalog, drop func(*Source)) map[string]string {
	t.Helper()
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := map[string]string{}
	for id, s := range c.sources {
		x := *s
		x.CreatedAt, x.UpdatedAt = time.Time{}, time.Time{}
		if drop != nil {
			drop(&x)
		}
		b, err := json.Marshal(x)
		if err != nil {
			t.Fatal(err)
		}
		out[id] = string(b)
	}
	for id, e := range c.endpoints {
		b, err := json.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		out["endpoint "+id] = string(b)
	}
	return out
}

func diffSnapshots(t *testing.T, what string, want, got map[string]string) {
	t.Helper()
	var diffs []string
	for k, w := range want {
		if g, ok := got[k]; !ok {
			diffs = append(diffs, fmt.Sprintf("missing %s: %s", k, w))
		} else if g != w {
			diffs = append(diffs, fmt.Sprintf("%s:\n  want %s\n  got  %s", k, w, g))
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			diffs = append(diffs, fmt.Sprintf("extra %s: %s", k, g))
		}
	}
	sort.Strings(diffs)
	if len(diffs) > 0 {
		t.Errorf("%s: %d differences, first: %s", what, len(diffs), strings.Join(diffs[:min(5, len(diffs))], "\n"))
	}
}

func summaryCounts(s *Summary) string {
	return fmt.Sprintf("created=%d updated=%d unchanged=%d duplicates=%d endpoints=%d vendors=%v kinds=%v",
		s.Created, s.Updated, s.Unchanged, s.Duplicates, s.Endpoints, s.ByVendor, s.ByKind)
}

func sourceNamed(t *testing.T, c *Catalog, name string) []*Source {
	t.Helper()
	c.mu.RLock()
	defer c.mu.RUnlock()
	var out []*Source
	for _, s := range c.sources {
		if s.Name == name {
			out = append(out, s)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// athenaRows are athenahealth practices on the shared endpoint, written
// the way athenahealth's lists write them.
var athenaRows = []lanternRow{
	// Prefixed rows of two states share a bare name: three practices.
	{URL: athenaURL, Name: "TN - Associates In Womens Health"},
	{URL: athenaURL, Name: "OH - Associates in Women's Health"},
	{URL: athenaURL, Name: "Associates in Women's Health"},
	// One state's row and the bare name: one practice.
	{URL: athenaURL, Name: "TX - Adair Allergy and Asthma Clinic, PA"},
	{URL: athenaURL, Name: "Adair Allergy & Asthma Clinic, PA", ZIP: "75001"},
	// The spelling most rows give wins.
	{URL: athenaURL, Name: "WESTSIDE WOMEN'S CARE, PLLC"},
	{URL: athenaURL, Name: "WESTSIDE WOMEN'S CARE, PLLC", NPI: "1234567893"},
	{URL: athenaURL, Name: "Westside Women's Care"},
	// A tie: mixed case, no legal form, the longer spelling.
	{URL: athenaURL, Name: "MIDTOWN MEDICAL LLC", ZIP: "64108"},
	{URL: athenaURL, Name: "Midtown Medical, LLC", ZIP: "66604"},
	{URL: athenaURL, Name: "Midtown Medical", NPI: "1111111111", ZIP: "64111"},
	{URL: athenaURL, Name: "Midtown Medical.", NPI: "2222222222"},
	{URL: athenaURL, Name: "Sun Country Pediatrics PLLC"},
	{URL: athenaURL, Name: "Sun Country Pediatrics"},
}

// The example: rows that merge into one source give it the same
// name, and every other field, whatever order the list holds them in.
func TestMergeIgnoresRowOrder(t *testing.T) {
	ctx := context.Background()
	lists := []struct {
		file, field string
		data        []byte
	}{
		{"athenahealth_Inc_EndpointSources.json", "Endpoints", lanternList(athenaRows...)},
		{"brands.json", "entry", brandsBundle([]brand{
			{id: "a", name: "Lakeside Hospital", logo: "https://brands.example.org/a.svg", portal: "Lakeside MyChart", portalURL: "https://lakeside.example.org/mychart",
				website: "https://lakeside.example.org", city: "Kansas City", state: "MO", npi: "1000000001", endpoint: "r4"},
			{id: "b", name: "LAKESIDE HOSPITAL", alias: "Lakeside", logo: "https://brands.example.org/b.svg", portal: "Lakeside Portal", portalURL: "https://portal.lakeside.example.org",
				website: "https://www.lakeside.example.org", city: "Topeka", state: "KS", npi: "1000000002", endpoint: "r4"},
			{id: "c", name: "Lakeside Hospital, Inc.", logo: "https://brands.example.org/c.svg", portal: "Lakeside Patient Access", portalURL: "https://access.lakeside.example.org",
				website: "https://lakeside.example.com", city: "Kansas City", state: "MO", npi: "1000000003", endpoint: "r4"},
			{id: "d", name: "Hillcrest Clinic", logo: "https://brands.example.org/d.svg", portal: "Hillcrest Portal", portalURL: "https://hillcrest.example.org",
				website: "https://hillcrest.example.org", city: "Omaha", state: "NE", npi: "1000000004", endpoint: "r4"},
		}, map[string]string{"r4": "https://fhir.lakeside.example.org/r4"})},
	}
	var want map[string]string
	var wantSums []string
	var first string
	perms := orders()
	names := slices.Sorted(maps.Keys(perms))
	for _, name := range names {
		perm := perms[name]
		c := newCatalog(t, openStore(t))
		var sums []string
		for _, l := range lists {
			s, err := c.Import(ctx, permuted(t, l.data, l.field, perm), ImportOptions{FileName: l.file}, nil)
			if err != nil {
				t.Fatalf("%s: import %s: %v", name, l.file, err)
			}
			sums = append(sums, summaryCounts(s))
		}
		got := snapshot(t, c, nil)
		if want == nil {
			want, wantSums, first = got, sums, name
			checkMergedNames(t, c)
			continue
		}
		diffSnapshots(t, fmt.Sprintf("rows %s against rows %s", name, first), want, got)
		if !slices.Equal(sums, wantSums) {
			t.Errorf("rows %s: summaries %v, rows %s: %v", name, sums, first, wantSums)
		}
	}
}

// checkMergedNames pins what TestMergeIgnoresRowOrder's rows give.
func checkMergedNames(t *testing.T, c *Catalog) {
	t.Helper()
	if got := sourceNamed(t, c, "Associates in Women's Health"); len(got) != 2 {
		t.Errorf("the OH practice and the bare row are two sources named \"Associates in Women's Health\", got %d", len(got))
	}
	if got := sourceNamed(t, c, "Associates In Womens Health"); len(got) != 1 || !slices.Equal(got[0].Locations, []Location{{State: "TN"}}) {
		t.Errorf("the TN practice: %+v", got)
	}
	adair := sourceNamed(t, c, "Adair Allergy and Asthma Clinic, PA")
	if len(adair) != 1 || !slices.Equal(adair[0].Aliases, []string{"Adair Allergy & Asthma Clinic, PA", "TX - Adair Allergy and Asthma Clinic, PA"}) ||
		len(adair[0].Locations) != 1 || adair[0].Locations[0].State != "TX" {
		t.Errorf("one state's row and the bare name are one practice: %+v", adair)
	}
	if got := sourceNamed(t, c, "WESTSIDE WOMEN'S CARE, PLLC"); len(got) != 1 || !slices.Equal(got[0].Identifiers.NPI, []string{"1234567893"}) {
		t.Errorf("two rows of three spell it WESTSIDE WOMEN'S CARE, PLLC: %+v", got)
	}
	mid := sourceNamed(t, c, "Midtown Medical")
	if len(mid) != 1 || !slices.Equal(mid[0].Identifiers.NPI, []string{"1111111111", "2222222222"}) ||
		!slices.Equal(mid[0].Aliases, []string{"MIDTOWN MEDICAL LLC", "Midtown Medical, LLC", "Midtown Medical."}) {
		t.Errorf("Midtown: mixed case, no legal form, no stray period: %+v", mid)
	} else if l := mid[0].Locations; len(l) != 3 || l[0].PostalCode != "64111" {
		t.Errorf("Midtown: the leading row's address first: %+v", l)
	}
	if got := sourceNamed(t, c, "Sun Country Pediatrics"); len(got) != 1 {
		t.Errorf("Sun Country Pediatrics: no legal form wins: %+v", got)
	}
	lake := sourceNamed(t, c, "Lakeside Hospital")
	if len(lake) != 1 {
		t.Fatalf("Lakeside: %+v", lake)
	}
	s := lake[0]
	if s.Logo != "https://brands.example.org/a.svg" || s.Identifiers.Website != "https://lakeside.example.org" ||
		len(s.Portals) != 1 || s.Portals[0].Name != "Lakeside MyChart" || s.Locations[0].State != "MO" || len(s.Identifiers.NPI) != 3 {
		t.Errorf("Lakeside: the logo, portal, website and address of the row whose name won: %+v", s)
	}
}

// Lists give a source's display fields by priority, then by the better
// name, whichever was imported first. What still follows the order of
// imports: where a source first came from (Origin), the order of endpoints
// and addresses after the first (the display list's), and a field the
// display list leaves empty, which the first list that has it fills.
func TestMergeIgnoresListOrder(t *testing.T) {
	ctx := context.Background()
	// An Epic URL: a brands bundle's rows get their vendor from it.
	const u = "https://fhir.midtown.example.org/api/FHIR/R4"
	type list struct {
		file string
		data []byte
	}
	lists := []list{
		{"Alpha_EndpointSources.json", lanternList(lanternRow{URL: u, Name: "MIDTOWN MEDICAL LLC", NPI: "1111111111", ZIP: "64108"})},
		{"Beta_EndpointSources.json", lanternList(lanternRow{URL: u, Name: "Midtown Medical", NPI: "2222222222", ZIP: "66604"})},
		{"Gamma_EndpointSources.json", lanternList(lanternRow{URL: u, Name: "Midtown Medical", ZIP: "68102"})},
	}
	withBrands := append(slices.Clone(lists), list{"brands.json", brandsBundle([]brand{{id: "m", name: "Midtown Medical, Inc.", logo: "https://brands.example.org/m.svg",
		portal: "Midtown Portal", portalURL: "https://portal.midtown.example.org", website: "https://midtown.example.org", city: "Lawrence", state: "KS", npi: "3333333333", endpoint: "e"}},
		map[string]string{"e": u})})
	for _, tc := range []struct {
		name      string
		lists     []list
		wantName  string
		wantFrom  string
		wantFirst string // the first address's postal code or city
	}{
		// Equal priority: the better name; of two lists that spell it
		// alike, the smaller list id.
		{"lantern lists", lists, "Midtown Medical", "file:Beta_EndpointSources.json", "66604"},
		// A brands bundle outranks every vendor list.
		{"with a brands bundle", withBrands, "Midtown Medical, Inc.", "file:brands.json", "Lawrence"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var want map[string]string
			var wantOrder string
			for _, perm := range permutations(len(tc.lists)) {
				c := newCatalog(t, openStore(t))
				var order []string
				for _, i := range perm {
					l := tc.lists[i]
					if _, err := c.Import(ctx, l.data, ImportOptions{FileName: l.file}, nil); err != nil {
						t.Fatal(err)
					}
					order = append(order, l.file)
				}
				got := snapshot(t, c, func(s *Source) {
					s.Origin = ""
					if len(s.Locations) > 1 {
						s.Locations = slices.Clone(s.Locations)
						slices.SortFunc(s.Locations[1:], func(a, b Location) int { return strings.Compare(fmt.Sprint(a), fmt.Sprint(b)) })
					}
					if len(s.Endpoints) > 1 {
						s.Endpoints = slices.Clone(s.Endpoints)
						slices.Sort(s.Endpoints[1:])
					}
				})
				if want == nil {
					want, wantOrder = got, strings.Join(order, ", ")
					src := sourceNamed(t, c, tc.wantName)
					if len(src) != 1 {
						t.Fatalf("%s: no source named %q: %v", wantOrder, tc.wantName, got)
					}
					s := src[0]
					if s.DisplayFrom != tc.wantFrom || len(s.Lists) != len(tc.lists) || len(s.Identifiers.NPI) < 2 ||
						s.Locations[0].PostalCode != tc.wantFirst && s.Locations[0].City != tc.wantFirst {
						t.Errorf("%s: %+v", wantOrder, s)
					}
					continue
				}
				diffSnapshots(t, fmt.Sprintf("lists in order %s against %s", strings.Join(order, ", "), wantOrder), want, got)
			}
		})
	}
}

func permutations(n int) [][]int {
	if n == 0 {
		return [][]int{{}}
	}
	var out [][]int
	for _, p := range permutations(n - 1) {
		for i := 0; i <= len(p); i++ {
			q := append(append(append([]int(nil), p[:i]...), n-1), p[i:]...)
			out = append(out, q)
		}
	}
	return out
}

// A newer copy of the list that set a source's name may spell it anew, even
// a spelling another list's outranks: the old spelling is in no list any
// more.
func TestMergeNewerCopyRespells(t *testing.T) {
	ctx := context.Background()
	const u = "https://fhir.midtown.example.org/r4"
	c := newCatalog(t, openStore(t))
	imp := func(file, name string) {
		t.Helper()
		if _, err := c.Import(ctx, lanternList(lanternRow{URL: u, Name: name}), ImportOptions{FileName: file}, nil); err != nil {
			t.Fatal(err)
		}
	}
	imp("Alpha_EndpointSources.json", "Midtown Medical")
	imp("Beta_EndpointSources.json", "MIDTOWN MEDICAL")
	if got := sourceNamed(t, c, "Midtown Medical"); len(got) != 1 || got[0].DisplayFrom != "file:Alpha_EndpointSources.json" {
		t.Fatalf("after two lists: %+v", got)
	}
	imp("Alpha_EndpointSources.json", "Midtown Medical, LLC")
	if got := sourceNamed(t, c, "Midtown Medical, LLC"); len(got) != 1 || !slices.Contains(got[0].Aliases, "Midtown Medical") {
		t.Fatalf("after Alpha's newer copy: %+v", got)
	}
	// Beta's newer copy does not take the name back with a worse spelling.
	imp("Beta_EndpointSources.json", "MIDTOWN MEDICAL, LLC")
	if got := sourceNamed(t, c, "Midtown Medical, LLC"); len(got) != 1 {
		t.Fatalf("after Beta's newer copy: %+v", got)
	}
}

// When several sources have a name at one endpoint, a row with that name
// goes to the same one every time, and after a restart: the owner of an
// identity key is chosen by a rule, not by the order of a map.
func TestMergeSameSourceEveryRun(t *testing.T) {
	ctx := context.Background()
	practices := lanternList(
		lanternRow{URL: athenaURL, Name: "TN - Associates In Womens Health"},
		lanternRow{URL: athenaURL, Name: "OH - Associates in Women's Health"},
		lanternRow{URL: athenaURL, Name: "Associates in Women's Health"},
	)
	// Only a bare row, in another list: both state practices are named
	// "Associates ... Health" at the endpoint once their prefix is off.
	two := lanternList(lanternRow{URL: athenaURL, Name: "TN - Associates In Womens Health"}, lanternRow{URL: athenaURL, Name: "OH - Associates in Women's Health"})
	bare := lanternList(lanternRow{URL: athenaURL, Name: "Associates In Women's Health"})
	var wantBare string
	for run := range 4 {
		c := newCatalog(t, openStore(t))
		for _, l := range []string{"one", "two"} {
			if _, err := c.Import(ctx, practices, ImportOptions{FileName: "athenahealth_Inc_EndpointSources.json", ListID: "file:" + l}, nil); err != nil {
				t.Fatal(err)
			}
		}
		// A copy of the list under another id: each row finds the source
		// it made, the bare row included.
		c.mu.RLock()
		n := 0
		for _, s := range c.sources {
			if s.Vendor == "athenahealth" && !s.Builtin {
				n++
				if !slices.Equal(s.Lists, []string{"file:one", "file:two"}) {
					t.Errorf("run %d: %s (%s) is in lists %v, want both copies", run, s.ID, s.Name, s.Lists)
				}
			}
		}
		c.mu.RUnlock()
		if n != 3 {
			t.Errorf("run %d: %d sources, want 3", run, n)
		}

		c2 := newCatalog(t, openStore(t))
		if _, err := c2.Import(ctx, two, ImportOptions{FileName: "athenahealth_Inc_EndpointSources.json"}, nil); err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, s := range sourceNamed(t, c2, "Associates In Womens Health") {
			ids = append(ids, s.ID)
		}
		for _, s := range sourceNamed(t, c2, "Associates in Women's Health") {
			ids = append(ids, s.ID)
		}
		sort.Strings(ids)
		if len(ids) != 2 {
			t.Fatalf("run %d: the two state practices: %v", run, ids)
		}
		s, err := c2.Import(ctx, bare, ImportOptions{FileName: "Bare_EndpointSources.json"}, nil)
		if err != nil || s.Created != 0 || s.Updated != 1 {
			t.Fatalf("run %d: the bare row: %+v %v", run, s, err)
		}
		// Both claim the name as their name: the smaller id wins.
		e, err := c2.Get(ctx, ids[0])
		if err != nil || !slices.Contains(e.Source.Lists, "file:Bare_EndpointSources.json") {
			t.Errorf("run %d: the bare row went elsewhere than %s: %+v %v", run, ids[0], e.Source, err)
		}
		// A restarted catalog resolves the row the same way.
		c3 := newCatalog(t, c2.db)
		s, err = c3.Import(ctx, bare, ImportOptions{FileName: "Bare_EndpointSources.json", ListID: "file:bare-again"}, nil)
		if err != nil || s.Created != 0 || s.Updated != 1 {
			t.Fatalf("run %d: after restart: %+v %v", run, s, err)
		}
		if e, _ := c3.Get(ctx, ids[0]); !slices.Contains(e.Source.Lists, "file:bare-again") {
			t.Errorf("run %d: after restart the bare row went elsewhere than %s", run, ids[0])
		}
		if wantBare == "" {
			wantBare = e.Source.Name
		} else if e.Source.Name != wantBare {
			t.Errorf("run %d: %q, earlier runs %q", run, e.Source.Name, wantBare)
		}
	}
}

// betterName is a strict total order over distinct spellings, so that the
// name chosen from any set of rows is one.
func TestBetterNameIsAnOrder(t *testing.T) {
	names := []string{
		"Associates In Womens Health", "Associates in Women's Health", "ASSOCIATES IN WOMENS HEALTH", "associates in womens health",
		"Midtown Medical", "Midtown Medical, LLC", "MIDTOWN MEDICAL LLC", "Midtown Medical.", "St Vincent Physician Services Inc.",
		"St. Vincent Physician Services, Inc.", "Oak Brook Centre for Health", "Oak Brook Centre For Health, Ltd.", "", "123", "Ünïcode Clinic",
	}
	for _, a := range names {
		if betterName(a, a) {
			t.Errorf("betterName(%q, itself)", a)
		}
		for _, b := range names {
			if a != b && betterName(a, b) == betterName(b, a) {
				t.Errorf("betterName(%q, %q) == betterName(%q, %q)", a, b, b, a)
			}
			for _, c := range names {
				if betterName(a, b) && betterName(b, c) && !betterName(a, c) {
					t.Errorf("not transitive: %q > %q > %q", a, b, c)
				}
			}
		}
	}
	for _, p := range [][2]string{
		{"Womens Executive Healthcare", "WOMEN'S EXECUTIVE HEALTHCARE"},
		{"Platte River Medical Clinic", "Platte River Medical Clinic, LLC"},
		{"Associates in Women's Health", "Associates In Womens Health"},
		{"St. Vincent Physician Services, Inc.", "St Vincent Physician Services Inc."},
		{"Oak Brook Centre for Health", "Oak Brook Centre For Health, Ltd."},
	} {
		if !betterName(p[0], p[1]) {
			t.Errorf("%q should read better than %q", p[0], p[1])
		}
	}
}

// The real lists: athenahealth's 17,000 practices and 1upHealth's mixed
// list give the same directory whatever order their rows come in.
func TestImportCatalogDataIgnoresRowOrder(t *testing.T) {
	if raceDetector {
		t.Skip("17,000-row list: run without -race (make test does)")
	}
	root := catalogData(t)
	ctx := context.Background()
	files := []string{"lantern/AthenaClinicals_EndpointSources.json", "lantern/1UpEndpointSources.json"}
	var want map[string]string
	for _, perm := range []func(int) []int{orders()["as written"], orders()["shuffle 1"]} {
		c := newCatalog(t, openStore(t))
		for _, f := range files {
			b, err := os.ReadFile(filepath.Join(root, filepath.FromSlash(f)))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.Import(ctx, permuted(t, b, "Endpoints", perm), ImportOptions{FileName: filepath.Base(f)}, nil); err != nil {
				t.Fatal(err)
			}
		}
		got := snapshot(t, c, nil)
		if want == nil {
			want = got
			continue
		}
		diffSnapshots(t, "shuffled rows against rows as written", want, got)
	}
}
