package index

import (
	"fmt"
	"strings"
	"testing"
)

// osa is the optimal string alignment distance of a and b, written the
// plain way (whole matrix) to check the trie walk's banded rows against.
func osa(a, b string) int {
	d := make([][]int, len(a)+1)
	for i := range d {
		d[i] = make([]int, len(b)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(a); i++ {
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(a)][len(b)]
}

type fuzzyMatch struct {
	d      int
	prefix bool
}

// bestMatch is what the walk must say of term t for word: its whole-word
// distance, or, when lower, the distance of one of its proper prefixes of
// at least len(word)-1 letters (a completion); whole word first at equal
// distance. ok is false when neither is within maxD.
func bestMatch(t, word string, maxD int, prefixOK bool) (fuzzyMatch, bool) {
	best, ok := fuzzyMatch{d: osa(t, word)}, false
	ok = best.d <= maxD
	if !prefixOK {
		return best, ok
	}
	for k := max(1, len(word)-1); k < len(t); k++ {
		if d := osa(t[:k], word); d <= maxD && (!ok || d < best.d) {
			best, ok = fuzzyMatch{d: d, prefix: true}, true
		}
	}
	return best, ok
}

// checkFuzzy runs the walk for word and compares every term's emission
// with bestMatch. The dictionary must be small enough that no completion
// list reaches maxCompletions.
func checkFuzzy(t *testing.T, ix *Index, word string, maxD int, prefixOK bool) {
	t.Helper()
	names := make([]string, len(ix.idf))
	for term, id := range ix.terms {
		names[id] = term
	}
	got := map[int32]fuzzyMatch{}
	s := ix.getScratch()
	defer ix.release(s)
	ix.fuzzy(s, word, maxD, prefixOK, func(term int32, d int, prefix bool) {
		if prev, dup := got[term]; dup {
			t.Errorf("%q maxD=%d prefix=%v: %q emitted twice (%+v, then d=%d prefix=%v)", word, maxD, prefixOK, names[term], prev, d, prefix)
		}
		got[term] = fuzzyMatch{d: d, prefix: prefix}
	})
	for id, term := range names {
		want, ok := bestMatch(term, word, maxD, prefixOK)
		g, found := got[int32(id)]
		switch {
		case ok && !found:
			t.Errorf("%q maxD=%d prefix=%v: %q not emitted, want %+v", word, maxD, prefixOK, term, want)
		case !ok && found:
			t.Errorf("%q maxD=%d prefix=%v: %q emitted as %+v, it is not within %d", word, maxD, prefixOK, term, g, maxD)
		case ok && g != want:
			t.Errorf("%q maxD=%d prefix=%v: %q emitted as %+v, want %+v", word, maxD, prefixOK, term, g, want)
		}
	}
}

// fuzzyCorpus adds, to the search tests' corpus, terms on both sides of
// the whole-word/completion line for the words below.
var fuzzyCorpus = append([]Doc{
	{Key: "z1", Name: "Clinic Clinicians Clinical Clinica Cline Clines Clint"},
	{Key: "z2", Name: "Mercyhealth Merci Mercer Kansai Kanas Kansasville"},
	{Key: "z3", Name: "Peds Pediatric Pediatrician Pediatricians Pediatrix"},
}, corpus...)

var fuzzyWords = []string{
	"clinc", "clini", "clinci", "clinici", "clinicain", "clnic", "cliinc",
	"merc", "mercyy", "mecry", "kansa", "kanss", "knasas", "kansasvile",
	"pediatricain", "pediatrican", "peditric", "chidlrens", "childrns",
	"hopsital", "hospitl", "cleavland", "pittsburg", "gatewy", "brigahm", "sinia",
}

// The walk gives each term its best match, as bestMatch computes it from
// the definition; in particular a whole-word typo is not reported as a
// completion of a shorter prefix ("clinc" → "clinic").
func TestFuzzyGivesEachTermItsBestMatch(t *testing.T) {
	ix := Build(fuzzyCorpus)
	for _, w := range fuzzyWords {
		checkFuzzy(t, ix, w, 1, true)
		checkFuzzy(t, ix, w, 1, false)
		checkFuzzy(t, ix, w, 2, false)
	}
}

// The completions of one prefix stay bounded by maxCompletions however
// many terms lie under it, and whole-word typos are found past the bound.
func TestFuzzyCompletionsStayBounded(t *testing.T) {
	var words []string
	for i := range 500 {
		words = append(words, fmt.Sprintf("clinicx%03d", i))
	}
	words = append(words, "clinzc") // one edit from "clinc", listed last
	ix := Build([]Doc{{Key: "k", Name: strings.Join(words, " ")}})
	s := ix.getScratch()
	defer ix.release(s)
	completions, whole := 0, false
	ix.fuzzy(s, "clinc", 1, true, func(term int32, d int, prefix bool) {
		if prefix {
			completions++
		} else if term == int32(ix.terms["clinzc"]) {
			whole = d == 1
		}
	})
	if completions == 0 || completions > maxCompletions {
		t.Errorf("%d completions, want 1 to %d", completions, maxCompletions)
	}
	if !whole {
		t.Error("clinzc, one edit from clinc, not found past the completions' bound")
	}
}

func FuzzFuzzy(f *testing.F) {
	ix := Build(fuzzyCorpus)
	for _, w := range fuzzyWords {
		f.Add(w, uint8(1), true)
	}
	f.Add("cleavland", uint8(2), false)
	f.Add("\xff\xfeclinic", uint8(1), true)
	f.Fuzz(func(t *testing.T, word string, maxD uint8, prefixOK bool) {
		if len(word) == 0 || len(word) > maxFuzzyLen {
			return
		}
		d := 1 + int(maxD%2)
		checkFuzzy(t, ix, word, d, prefixOK && d == 1)
	})
}
