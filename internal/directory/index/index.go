// Package index is the directory's search index: typo-tolerant,
// prefix-aware, multi-word search over source names, aliases, portal names
// and cities, with filters and cursor paging. It is written for this corpus
// (tens of thousands of short names) rather than borrowed from a general
// engine: an immutable in-memory structure of a few MB, rebuilt and swapped
// whole when the catalog changes, answering in tens of microseconds.
//
// Structure: a term dictionary laid out as a byte trie (for prefixes and for
// Damerau-Levenshtein search bounded by the edit budget), compact postings
// (doc, field mask) per term, and per-document metadata for filters and
// ranking. Ranking per query token takes the best of its candidate terms
// (exact > prefix > one edit > two edits, name > alias > portal > city),
// weighted by how rare the intended word is; a document's score is the sum
// over tokens, nudged towards documents whose name the query covers, and
// suspended sources rank after active ones.
package index

import (
	"math"
	"sort"
	"strings"
	"sync"
)

// Doc is what the index knows of a source.
type Doc struct {
	// Key identifies the document (the source id); results are tie-broken
	// by it, so paging is stable.
	Key       string
	Name      string
	Aliases   []string
	Portals   []string
	Cities    []string
	Vendor    string
	Kind      string
	States    []string
	Postal    []string
	Suspended bool
}

// Fields a term can occur in.
const (
	fieldName uint8 = 1 << iota
	fieldAlias
	fieldPortal
	fieldCity
)

var fieldWeight = [16]float32{}

func init() {
	for m := 1; m < 16; m++ {
		var w float32
		switch {
		case m&int(fieldName) != 0:
			w = 1.0
		case m&int(fieldAlias) != 0:
			w = 0.9
		case m&int(fieldPortal) != 0:
			w = 0.75
		default:
			w = 0.55
		}
		fieldWeight[m] = w
	}
}

type docMeta struct {
	vendor    uint16
	kind      uint8
	nameLen   uint8
	suspended bool
	states    uint64
}

type node struct {
	first uint32 // first child
	n     uint16 // children
	label byte
	term  int32 // term id ending here, or -1
}

// Index is immutable once built and safe for concurrent searches.
type Index struct {
	keys    []string
	meta    []docMeta
	postal  map[uint32][]string
	byName  []uint32
	vendors []string
	kinds   []string

	terms     map[string]uint32
	postStart []uint32
	postDoc   []uint32
	postField []uint8
	idf       []float32
	tlen      []uint8
	// first is the term id of each document's first name word: a query
	// whose first word matches it reads the name from its start.
	first []int32
	trie  []node
	// top holds, for the trie nodes of one- and two-letter prefixes, their
	// most frequent completions: a user typing "c" gets "center", "clinic",
	// "care" without the search sorting thousands of terms.
	top map[int32][]int32

	pool sync.Pool
}

// Len is the number of documents.
func (ix *Index) Len() int { return len(ix.keys) }

// Terms is the number of distinct terms.
func (ix *Index) Terms() int { return len(ix.idf) }

// stateBit numbers the states for the filter bitmask (USPS codes; anything
// else shares the last bit).
var stateBits = func() map[string]uint {
	codes := strings.Fields("AL AK AZ AR CA CO CT DE DC FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH NJ NM NY NC ND OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY PR GU VI AS MP")
	m := map[string]uint{}
	for i, c := range codes {
		m[c] = uint(i)
	}
	return m
}()

func stateMask(states []string) uint64 {
	var m uint64
	for _, s := range states {
		if b, ok := stateBits[strings.ToUpper(strings.TrimSpace(s))]; ok {
			m |= 1 << b
		} else if s != "" {
			m |= 1 << 63
		}
	}
	return m
}

type posting struct {
	doc   uint32
	field uint8
}

// Build indexes docs. Documents are ordered by key.
func Build(docs []Doc) *Index {
	sorted := make([]int, len(docs))
	for i := range sorted {
		sorted[i] = i
	}
	sort.Slice(sorted, func(a, b int) bool { return docs[sorted[a]].Key < docs[sorted[b]].Key })

	ix := &Index{
		keys:   make([]string, len(docs)),
		meta:   make([]docMeta, len(docs)),
		postal: map[uint32][]string{},
	}
	vendorID := map[string]uint16{"": 0}
	ix.vendors = []string{""}
	kindID := map[string]uint8{"": 0}
	ix.kinds = []string{""}
	termPost := map[string][]posting{}
	names := make([]string, len(docs))
	type firstOf struct {
		doc uint32
		tok string
	}
	var firstTok []firstOf
	var toks []string
	for ord, di := range sorted {
		d := &docs[di]
		doc := uint32(ord)
		ix.keys[ord] = d.Key
		v, ok := vendorID[d.Vendor]
		if !ok {
			v = uint16(len(ix.vendors))
			vendorID[d.Vendor] = v
			ix.vendors = append(ix.vendors, d.Vendor)
		}
		k, ok := kindID[d.Kind]
		if !ok {
			k = uint8(len(ix.kinds))
			kindID[d.Kind] = k
			ix.kinds = append(ix.kinds, d.Kind)
		}
		m := docMeta{vendor: v, kind: k, suspended: d.Suspended, states: stateMask(d.States)}
		if len(d.Postal) > 0 {
			ix.postal[doc] = d.Postal
		}
		add := func(s string, f uint8) int {
			toks = append(toks[:0], Tokens(s)...)
			for _, t := range toks {
				ps := termPost[t]
				if n := len(ps); n > 0 && ps[n-1].doc == doc {
					ps[n-1].field |= f
					continue
				}
				termPost[t] = append(ps, posting{doc: doc, field: f})
			}
			return len(toks)
		}
		nl := add(d.Name, fieldName)
		names[ord] = strings.Join(toks, " ")
		if len(toks) > 0 {
			firstTok = append(firstTok, firstOf{doc, toks[0]})
		}
		// The coverage of a query is measured against the shortest name the
		// brand goes by ("Medicare", not "Medicare (CMS Blue Button 2.0)").
		for _, a := range d.Aliases {
			if n := add(a, fieldAlias); n > 0 && n < nl {
				nl = n
			}
		}
		m.nameLen = uint8(min(nl, 255))
		for _, p := range d.Portals {
			add(p, fieldPortal)
		}
		for _, c := range d.Cities {
			add(c, fieldCity)
		}
		ix.meta[ord] = m
	}
	terms := make([]string, 0, len(termPost))
	for t := range termPost {
		terms = append(terms, t)
	}
	sort.Strings(terms)
	ix.terms = make(map[string]uint32, len(terms))
	ix.postStart = make([]uint32, len(terms)+1)
	ix.idf = make([]float32, len(terms))
	ix.tlen = make([]uint8, len(terms))
	total := 0
	for _, t := range terms {
		total += len(termPost[t])
	}
	ix.postDoc = make([]uint32, 0, total)
	ix.postField = make([]uint8, 0, total)
	n := float64(max(len(docs), 1))
	for id, t := range terms {
		ix.terms[t] = uint32(id)
		ix.tlen[id] = uint8(min(len(t), 255))
		ps := termPost[t]
		ix.postStart[id] = uint32(len(ix.postDoc))
		for _, p := range ps {
			ix.postDoc = append(ix.postDoc, p.doc)
			ix.postField = append(ix.postField, p.field)
		}
		ix.idf[id] = float32(math.Log(1 + n/float64(len(ps))))
	}
	ix.postStart[len(terms)] = uint32(len(ix.postDoc))
	ix.first = make([]int32, len(docs))
	for i := range ix.first {
		ix.first[i] = -1
	}
	for _, f := range firstTok {
		ix.first[f.doc] = int32(ix.terms[f.tok])
	}
	ix.buildTrie(terms)
	ix.buildTop()

	ix.byName = make([]uint32, len(docs))
	for i := range ix.byName {
		ix.byName[i] = uint32(i)
	}
	sort.SliceStable(ix.byName, func(a, b int) bool { return names[ix.byName[a]] < names[ix.byName[b]] })
	return ix
}

func (ix *Index) buildTrie(terms []string) {
	ix.trie = make([]node, 1, len(terms)*2+1)
	ix.trie[0] = node{term: -1}
	var fill func(ni int, lo, hi, depth int)
	fill = func(ni int, lo, hi, depth int) {
		if lo < hi && len(terms[lo]) == depth {
			ix.trie[ni].term = int32(lo)
			lo++
		}
		if lo >= hi {
			return
		}
		// Children are contiguous: count the distinct next bytes first.
		type span struct{ lo, hi int }
		var spans []span
		for i := lo; i < hi; {
			c := terms[i][depth]
			j := i + 1
			for j < hi && terms[j][depth] == c {
				j++
			}
			spans = append(spans, span{i, j})
			i = j
		}
		first := len(ix.trie)
		ix.trie[ni].first = uint32(first)
		ix.trie[ni].n = uint16(len(spans))
		for _, s := range spans {
			ix.trie = append(ix.trie, node{label: terms[s.lo][depth], term: -1})
		}
		for k, s := range spans {
			fill(first+k, s.lo, s.hi, depth+1)
		}
	}
	fill(0, 0, len(terms), 0)
}

func (ix *Index) buildTop() {
	ix.top = map[int32][]int32{}
	var buf []int32
	root := ix.trie[0]
	for a := int(root.first); a < int(root.first)+int(root.n); a++ {
		nodes := []int{a}
		na := ix.trie[a]
		for b := int(na.first); b < int(na.first)+int(na.n); b++ {
			nodes = append(nodes, b)
		}
		for _, ni := range nodes {
			buf = ix.descendants(ni, buf[:0], 1<<30)
			sort.Slice(buf, func(i, j int) bool { return ix.df(buf[i]) > ix.df(buf[j]) })
			ix.top[int32(ni)] = append([]int32(nil), buf[:min(len(buf), maxCompletions)]...)
		}
	}
}

// find returns the trie node spelling prefix, or -1.
func (ix *Index) find(prefix string) int {
	ni := 0
	for i := 0; i < len(prefix); i++ {
		nd := ix.trie[ni]
		c := prefix[i]
		lo, hi := int(nd.first), int(nd.first)+int(nd.n)
		// Children are sorted by label: binary search.
		for lo < hi {
			mid := (lo + hi) / 2
			if ix.trie[mid].label < c {
				lo = mid + 1
			} else {
				hi = mid
			}
		}
		if lo >= int(nd.first)+int(nd.n) || ix.trie[lo].label != c {
			return -1
		}
		ni = lo
	}
	return ni
}

// descendants appends the terms under node ni (ni's own included).
func (ix *Index) descendants(ni int, out []int32, limit int) []int32 {
	stack := []int{ni}
	for len(stack) > 0 && len(out) < limit {
		n := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		nd := ix.trie[n]
		if nd.term >= 0 {
			out = append(out, nd.term)
		}
		for c := int(nd.first) + int(nd.n) - 1; c >= int(nd.first) && nd.n > 0; c-- {
			stack = append(stack, c)
		}
	}
	return out
}

func (ix *Index) df(t int32) int { return int(ix.postStart[t+1] - ix.postStart[t]) }
