package index

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

var corpus = []Doc{
	{Key: "cmkc", Name: "Children's Mercy Kansas City", Aliases: []string{"The Children's Mercy Hospital"}, Cities: []string{"Kansas City"}, Vendor: "oraclehealth", Kind: "ehr", States: []string{"MO"}, Postal: []string{"64108"}},
	{Key: "cmh2", Name: "Childrens Mercy Preferred Pediatrics", Vendor: "veradigm", Kind: "ehr"},
	{Key: "mercy", Name: "Mercy Hospital", Cities: []string{"St. Louis"}, Vendor: "epic", Kind: "ehr", States: []string{"MO"}, Postal: []string{"63141"}},
	{Key: "ksu", Name: "Kansas Medical Center", Vendor: "epic", Kind: "ehr", States: []string{"KS"}},
	{Key: "smmc", Name: "St. Mary's Medical Center", Cities: []string{"Huntington"}, Vendor: "oraclehealth", Kind: "ehr", States: []string{"WV"}, Postal: []string{"25702"}},
	{Key: "smmg", Name: "Saint Mary Medical Group", Vendor: "athenahealth", Kind: "ehr", States: []string{"CA"}},
	{Key: "upmc", Name: "UPMC", Aliases: []string{"University of Pittsburgh Medical Center"}, Cities: []string{"Pittsburgh"}, Vendor: "epic", Kind: "ehr", States: []string{"PA"}},
	{Key: "cle", Name: "Cleveland Clinic", Cities: []string{"Cleveland"}, Vendor: "epic", Kind: "ehr", States: []string{"OH"}},
	{Key: "clecare", Name: "Cleveland Care Clinic", Vendor: "athenahealth", Kind: "ehr", States: []string{"OH"}},
	{Key: "mgh", Name: "Mass General Brigham", Portals: []string{"Patient Gateway"}, Vendor: "epic", Kind: "ehr", States: []string{"MA"}},
	{Key: "aetna", Name: "Aetna", Vendor: "aetna", Kind: "payer"},
	{Key: "akmed", Name: "Alaska Medicaid", Vendor: "1uphealth", Kind: "payer", States: []string{"AK"}},
	{Key: "old", Name: "Mercy Clinic East", Vendor: "epic", Kind: "ehr", Suspended: true},
	{Key: "new", Name: "Mercy Clinic West", Vendor: "epic", Kind: "ehr"},
	{Key: "mtsinai", Name: "Mount Sinai Hospital", Vendor: "epic", Kind: "ehr", States: []string{"NY"}},
	{Key: "hosp", Name: "Général Hôpital Clínica", Vendor: "epic", Kind: "ehr"},
}

func keys(hits []Hit) []string {
	var out []string
	for _, h := range hits {
		out = append(out, h.Key)
	}
	return out
}

func first(t *testing.T, ix *Index, q Query, want string) {
	t.Helper()
	hits, _ := ix.Search(q)
	if len(hits) == 0 || hits[0].Key != want {
		t.Errorf("%+v: got %v, want %s first", q, keys(hits), want)
	}
}

func TestSearchFindsWhatPeopleType(t *testing.T) {
	ix := Build(corpus)
	for _, c := range []struct{ q, want string }{
		{"childrens mercy kansas", "cmkc"},       // the example, dropped word
		{"children's mercy kansas city", "cmkc"}, // exact
		{"chidlrens mercy kansas", "cmkc"},       // transposition
		{"childrns mercy kansas", "cmkc"},        // deletion
		{"the childrens mercy hospital", "cmkc"}, // alias
		{"st marys med ctr", "smmc"},             // abbreviations
		{"saint marys medical center", "smmc"},   // long forms
		{"univ of pittsburgh", "upmc"},           // alias with abbreviation
		{"pittsburgh", "upmc"},                   // city
		{"cleavland clinic", "cle"},              // typo; the shorter name first
		{"clevel", "cle"},                        // prefix while typing
		{"mass gen brigham", "mgh"},              // abbreviation of General
		{"patient gateway", "mgh"},               // portal name
		{"mt sinai", "mtsinai"},                  // Mt → Mount
		{"general hopital clinica", "hosp"},      // accents folded
		{"alaska medicaid", "akmed"},
		{"aetan", "aetna"}, // transposition in a short word
	} {
		first(t, ix, Query{Text: c.q}, c.want)
	}
}

func TestSearchRanking(t *testing.T) {
	ix := Build(corpus)
	// Active before suspended when the match is as good.
	hits, _ := ix.Search(Query{Text: "mercy clinic"})
	if got := keys(hits); len(got) < 2 || got[0] != "new" || got[1] != "old" {
		t.Errorf("mercy clinic: %v, want new (active) before old (suspended)", got)
	}
	// Exact before prefix: "care" is the whole word in one name and the
	// start of another; both are found, the exact one first.
	small := Build([]Doc{{Key: "prefix", Name: "Careful Clinic"}, {Key: "exact", Name: "Care Clinic"}})
	if hits, _ := small.Search(Query{Text: "care"}); !slices.Equal(keys(hits), []string{"exact", "prefix"}) {
		t.Errorf("care: %v, want exact then prefix", keys(hits))
	}
	if hits, _ = ix.Search(Query{Text: "mercy", ExcludeSuspended: true}); slices.Contains(keys(hits), "old") {
		t.Errorf("ExcludeSuspended kept a suspended source: %v", keys(hits))
	}
}

func TestSearchFilters(t *testing.T) {
	ix := Build(corpus)
	hits, _ := ix.Search(Query{Text: "mercy", Vendor: "oraclehealth"})
	if got := keys(hits); !slices.Equal(got, []string{"cmkc"}) {
		t.Errorf("vendor filter: %v", got)
	}
	hits, _ = ix.Search(Query{Text: "mercy", State: "mo"})
	if got := keys(hits); len(got) != 2 || !slices.Contains(got, "mercy") || !slices.Contains(got, "cmkc") {
		t.Errorf("state filter: %v", got)
	}
	hits, _ = ix.Search(Query{Text: "mercy", PostalPrefix: "631"})
	if got := keys(hits); !slices.Equal(got, []string{"mercy"}) {
		t.Errorf("postal prefix filter: %v", got)
	}
	hits, _ = ix.Search(Query{Kind: "payer"})
	if got := keys(hits); !slices.Equal(got, []string{"aetna", "akmed"}) {
		t.Errorf("browse payers: %v, want name order", got)
	}
	if hits, _ := ix.Search(Query{Text: "mercy", Vendor: "nobody"}); len(hits) != 0 {
		t.Errorf("unknown vendor: %v", keys(hits))
	}
}

func TestSearchPagesWithCursor(t *testing.T) {
	var docs []Doc
	for i := range 57 {
		docs = append(docs, Doc{Key: fmt.Sprintf("k%02d", i), Name: fmt.Sprintf("Family Clinic %d", i), Vendor: "v"})
	}
	ix := Build(docs)
	for _, q := range []Query{{Text: "family clinic"}, {Vendor: "v"}} {
		all, next := ix.Search(Query{Text: q.Text, Vendor: q.Vendor, Limit: 100})
		if next != nil || len(all) != 57 {
			t.Fatalf("%+v: %d hits in one page, next %v", q, len(all), next)
		}
		var paged []Hit
		q.Limit = 10
		for pages := 0; ; pages++ {
			if pages > 10 {
				t.Fatal("paging does not end")
			}
			hits, nxt := ix.Search(q)
			paged = append(paged, hits...)
			if nxt == nil {
				break
			}
			q.After = nxt
		}
		if !slices.Equal(keys(paged), keys(all)) {
			t.Errorf("%+v: pages %v != one page %v", q, keys(paged), keys(all))
		}
	}
}

func TestTokens(t *testing.T) {
	for in, want := range map[string]string{
		"St. Mary's Hosp & Med Ctr, Inc.": "saint marys hospital medical center",
		"Children’s Mercy":                "childrens mercy",
		"NC - Sollus Pediatrics":          "nc sollus pediatrics",
		"Clínica Général":                 "clinica general",
	} {
		if got := NormalizeName(in); got != want {
			t.Errorf("NormalizeName(%q) = %q, want %q", in, got, want)
		}
	}
}

func FuzzSearch(f *testing.F) {
	ix := Build(corpus)
	for _, s := range []string{"childrens mercy kansas", "st marys med ctr", "", "a", "ñ", "\xff\xfe", "mercy mercy mercy mercy mercy mercy mercy mercy mercy mercy mercy mercy mercy mercy mercy mercy mercy mercy"} {
		f.Add(s, "MO", "6")
	}
	f.Fuzz(func(t *testing.T, q, state, zip string) {
		hits, next := ix.Search(Query{Text: q, State: state, PostalPrefix: zip, Limit: 3})
		if len(hits) > 3 {
			t.Fatalf("%d hits for limit 3", len(hits))
		}
		if next != nil {
			more, _ := ix.Search(Query{Text: q, State: state, PostalPrefix: zip, Limit: 3, After: next})
			for _, h := range more {
				if slices.Contains(keys(hits), h.Key) {
					t.Fatalf("page 2 repeats %s", h.Key)
				}
			}
		}
	})
}

// score returns the score of key's hit for q, or 0 when it is not found.
func score(ix *Index, q, key string) float32 {
	hits, _ := ix.Search(Query{Text: q, Limit: 100})
	for _, h := range hits {
		if h.Key == key {
			return h.Score
		}
	}
	return 0
}

// While the last word is being typed, a term one edit from it as a whole
// word is a better match than a completion of a prefix one edit from it:
// "clinc" is "clinic" misspelled, and only the start of "clinicians"
// misspelled (issue 5: fewer edits first, whole words before prefixes).
func TestSearchWholeWordTypoBeforePrefixWithTypo(t *testing.T) {
	// The keys put the wrong answer first on a tie.
	ix := Build([]Doc{{Key: "a", Name: "Clinicians Group"}, {Key: "b", Name: "Clinic Group"}})
	for _, q := range []string{"clinc", "group clinc", "clinc group"} {
		whole, prefix := score(ix, q, "b"), score(ix, q, "a")
		if whole == 0 || prefix == 0 {
			t.Errorf("%q: both must be found (clinic %v, clinicians %v)", q, whole, prefix)
			continue
		}
		if whole <= prefix {
			t.Errorf("%q: Clinic Group scores %v, Clinicians Group %v; the whole-word typo must rank first", q, whole, prefix)
		}
	}
}

// A term the query word is an exact prefix of is a prefix match without an
// edit even when the prefix step's most-frequent completions leave it out
// and the typo walk reaches it through a shorter prefix one edit away.
func TestSearchZeroEditPrefixBeyondTopCompletions(t *testing.T) {
	// 96 frequent completions of "clinici" push the rare "clinicia" out of
	// the prefix step's list.
	var words []string
	for i := range maxCompletions {
		words = append(words, fmt.Sprintf("clinicianx%c%c", 'a'+i/26, 'a'+i%26))
	}
	all := strings.Join(words, " ")
	ix := Build([]Doc{
		{Key: "f1", Name: all}, {Key: "f2", Name: all},
		{Key: "a", Name: "Clinixia"}, // "clinixi": one substitution from "clinici"
		{Key: "b", Name: "Clinicia"}, // starts with "clinici"
	})
	exact, edit := score(ix, "clinici", "b"), score(ix, "clinici", "a")
	if exact == 0 || edit == 0 {
		t.Fatalf("both must be found (clinicia %v, clinixia %v)", exact, edit)
	}
	if exact <= edit {
		t.Errorf("clinici: Clinicia scores %v, Clinixia %v; the prefix without an edit must rank first", exact, edit)
	}
}
