package index

import (
	"strings"
	"unicode"
	"unicode/utf8"
)

// Text analysis shared by documents and queries, so both sides meet on the
// same tokens: lower-case, accents folded, apostrophes dropped ("Children's"
// → "childrens", which is how people type it), every other punctuation a
// separator, common abbreviations expanded ("St." → "saint", "Med Ctr" →
// "medical center"), and filler words removed.

// maxTokenLen bounds a token; longer ones are cut (nothing real is longer).
const maxTokenLen = 40

// abbreviations maps the short forms found in healthcare organisation names
// to the long form both documents and queries are indexed under.
var abbreviations = map[string]string{
	"st": "saint", "ste": "sainte", "mt": "mount", "ft": "fort",
	"hosp": "hospital", "hosps": "hospitals", "hsp": "hospital",
	"med": "medical", "medl": "medical", "mdcl": "medical",
	"ctr": "center", "cntr": "center", "ctrs": "centers", "centre": "center", "centres": "centers",
	"univ": "university", "uni": "university",
	"hlth": "health", "hlthcare": "healthcare", "hc": "healthcare",
	"reg": "regional", "regl": "regional", "rgnl": "regional",
	"mem": "memorial", "meml": "memorial", "mem'l": "memorial",
	"gen": "general", "genl": "general",
	"comm": "community", "cmty": "community", "commun": "community",
	"assoc": "associates", "assocs": "associates", "assn": "association",
	"dept": "department", "natl": "national", "intl": "international",
	"inst": "institute", "svcs": "services", "svc": "services", "srvs": "services",
	"sys": "system", "syst": "system", "phys": "physicians", "physn": "physicians",
	"grp": "group", "fam": "family", "ped": "pediatrics", "peds": "pediatrics",
	"pediatric": "pediatrics", "paediatrics": "pediatrics", "orthopaedic": "orthopedic",
	"mgmt": "management", "clin": "clinic", "cty": "county", "twp": "township",
	"hlthsys": "healthsystem", "ctys": "counties", "bros": "brothers",
}

// stopWords carry no meaning in an organisation's name.
var stopWords = map[string]bool{
	"and": true, "of": true, "the": true, "at": true, "for": true, "in": true, "a": true,
	"an": true, "inc": true, "llc": true, "pllc": true, "ltd": true, "corp": true,
	"dba": true, "by": true, "on": true, "to": true, "lp": true, "llp": true,
}

// fold maps a rune to its lower-case ASCII base letter when it has one.
func fold(r rune) rune {
	if r < utf8.RuneSelf {
		if 'A' <= r && r <= 'Z' {
			return r + ('a' - 'A')
		}
		return r
	}
	switch r {
	case 'à', 'á', 'â', 'ã', 'ä', 'å', 'À', 'Á', 'Â', 'Ã', 'Ä', 'Å', 'ā', 'Ā':
		return 'a'
	case 'ç', 'Ç', 'č', 'Č':
		return 'c'
	case 'è', 'é', 'ê', 'ë', 'È', 'É', 'Ê', 'Ë', 'ē', 'Ē':
		return 'e'
	case 'ì', 'í', 'î', 'ï', 'Ì', 'Í', 'Î', 'Ï':
		return 'i'
	case 'ñ', 'Ñ':
		return 'n'
	case 'ò', 'ó', 'ô', 'õ', 'ö', 'ø', 'Ò', 'Ó', 'Ô', 'Õ', 'Ö', 'Ø':
		return 'o'
	case 'ù', 'ú', 'û', 'ü', 'Ù', 'Ú', 'Û', 'Ü':
		return 'u'
	case 'ý', 'ÿ', 'Ý':
		return 'y'
	case 'ß':
		return 's'
	case '’', '‘', 'ʼ':
		return '\''
	}
	return unicode.ToLower(r)
}

// rawTokens splits s into lower-case folded words, apostrophes removed.
func rawTokens(s string, out []string) []string {
	var b strings.Builder
	flush := func() {
		if b.Len() > 0 {
			t := b.String()
			if len(t) > maxTokenLen {
				t = t[:maxTokenLen]
			}
			out = append(out, t)
			b.Reset()
		}
	}
	for _, r := range s {
		r = fold(r)
		switch {
		case r == '\'':
			// dropped: "children's" → "childrens"
		case r == '&':
			flush()
		case r < utf8.RuneSelf && (r >= 'a' && r <= 'z' || r >= '0' && r <= '9'):
			b.WriteRune(r)
		case r >= utf8.RuneSelf && unicode.IsLetter(r) || unicode.IsDigit(r):
			b.WriteRune(r)
		default:
			flush()
		}
	}
	flush()
	return out
}

// Tokens analyses s into index tokens: expanded, filler words removed.
func Tokens(s string) []string {
	raw := rawTokens(s, nil)
	out := raw[:0]
	for _, t := range raw {
		if x := abbreviations[t]; x != "" {
			t = x
		}
		if stopWords[t] {
			continue
		}
		out = append(out, t)
	}
	return out
}

// NormalizeName is the canonical form of a name: its tokens joined by
// spaces. Two names with the same canonical form are the same name
// ("St. Mary's Hosp" and "Saint Marys Hospital").
func NormalizeName(s string) string { return strings.Join(Tokens(s), " ") }

// queryToken is a token of a query with the raw form kept for prefixes: a
// user typing "med" may mean "medical" or "medina".
type queryToken struct {
	tok string // expanded form
	raw string // as typed (folded)
}

func queryTokens(s string) []queryToken {
	raw := rawTokens(s, nil)
	out := make([]queryToken, 0, len(raw))
	for _, r := range raw {
		t := r
		if x := abbreviations[r]; x != "" {
			t = x
		}
		if stopWords[t] && len(raw) > 1 {
			continue
		}
		out = append(out, queryToken{tok: t, raw: r})
	}
	return out
}
