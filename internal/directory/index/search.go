package index

import (
	"math"
	"math/bits"
	"sort"
	"strings"
)

// Query is a search.
type Query struct {
	Text string
	// Filters; empty means any.
	Vendor string
	Kind   string
	State  string
	// PostalPrefix keeps documents with a postal code starting with it.
	PostalPrefix string
	// ExcludeSuspended drops suspended sources (by default they are listed
	// after active ones).
	ExcludeSuspended bool
	Limit            int
	// After continues a previous search after this cursor.
	After *Cursor
}

// Cursor is where a page ended.
type Cursor struct {
	Score float32
	Key   string
}

// Hit is a result.
type Hit struct {
	Key   string
	Score float32
	// Matched is the number of query words the document matched.
	Matched int
}

// Match qualities of a candidate term for a query word.
const (
	qExact       = 1.0
	qPrefixMin   = 0.72
	qPrefixRange = 0.2
	qEdit1       = 0.6
	qEdit2       = 0.4
	qPrefixEdit  = 0.42
	// Prefix completions considered per word: the most frequent ones.
	maxCompletions = 96
	maxQueryTokens = 16
	maxFuzzyLen    = 32
)

type candidate struct {
	term int32
	q    float32
}

type scratch struct {
	acc      []float32
	best     []float32
	bestF    []uint8
	mask     []uint16
	nameHits []uint8
	touched  []uint32
	tokTouch []uint32
	cands    []candidate
	// lead marks the candidate terms of the query's first word.
	lead    []bool
	leadSet []int32
	terms   []int32
	rows    [][]int8
}

func (ix *Index) getScratch() *scratch {
	if s, ok := ix.pool.Get().(*scratch); ok {
		return s
	}
	n := len(ix.keys)
	s := &scratch{
		acc: make([]float32, n), best: make([]float32, n), bestF: make([]uint8, n),
		mask: make([]uint16, n), nameHits: make([]uint8, n), lead: make([]bool, len(ix.idf)),
	}
	s.rows = make([][]int8, maxTokenLen+2)
	for i := range s.rows {
		s.rows[i] = make([]int8, maxFuzzyLen+1)
	}
	return s
}

// Search runs q and returns at most q.Limit hits, best first, and the cursor
// of the next page (nil when there is none).
func (ix *Index) Search(q Query) ([]Hit, *Cursor) {
	limit := q.Limit
	if limit <= 0 {
		limit = 20
	}
	toks := queryTokens(q.Text)
	if len(toks) > maxQueryTokens {
		toks = toks[:maxQueryTokens]
	}
	f := ix.compileFilter(q)
	if f.none {
		return nil, nil
	}
	if len(toks) == 0 {
		return ix.browse(f, q.After, limit)
	}
	s := ix.getScratch()
	defer ix.release(s)

	for i, qt := range toks {
		last := i == len(toks)-1
		s.cands = ix.candidates(s, qt, last, s.cands[:0])
		if len(s.cands) == 0 {
			continue
		}
		// Weight by how rare the intended word is: the exact term's rarity
		// when it exists, else the most common candidate's. Using each
		// candidate's own rarity would let a rare misspelling outrank the
		// common word the user meant.
		idf := float32(0)
		if id, ok := ix.terms[qt.tok]; ok {
			idf = ix.idf[id]
		} else {
			idf = float32(math.MaxFloat32)
			for _, c := range s.cands {
				idf = min(idf, ix.idf[c.term])
			}
		}
		if i == 0 {
			for _, c := range s.cands {
				s.lead[c.term] = true
				s.leadSet = append(s.leadSet, c.term)
			}
		}
		bit := uint16(1) << uint(i)
		// A word of one or two letters after others ("… health c") is the
		// start of something: it ranks the documents the other words found,
		// it does not bring thousands of new ones.
		boostOnly := i > 0 && len(qt.raw) <= 2 && qt.tok == qt.raw
		for _, c := range s.cands {
			w := c.q * idf
			lo, hi := ix.postStart[c.term], ix.postStart[c.term+1]
			docs := ix.postDoc[lo:hi]
			fields := ix.postField[lo:hi]
			for k, d := range docs {
				if boostOnly && s.mask[d] == 0 {
					continue
				}
				fw := w * fieldWeight[fields[k]]
				if s.best[d] == 0 {
					s.tokTouch = append(s.tokTouch, d)
				}
				if fw > s.best[d] {
					s.best[d] = fw
					s.bestF[d] = fields[k]
				}
			}
		}
		for _, d := range s.tokTouch {
			if s.mask[d] == 0 {
				s.touched = append(s.touched, d)
			}
			s.acc[d] += s.best[d]
			s.mask[d] |= bit
			if s.bestF[d]&(fieldName|fieldAlias) != 0 {
				s.nameHits[d]++
			}
			s.best[d] = 0
			s.bestF[d] = 0
		}
		s.tokTouch = s.tokTouch[:0]
	}

	h := topK{limit: limit + 1}
	for _, d := range s.touched {
		m := ix.meta[d]
		if !f.keep(ix, d, m) {
			continue
		}
		cov := float32(1)
		if m.nameLen > 0 {
			cov = min(1, float32(s.nameHits[d])/float32(m.nameLen))
		}
		score := s.acc[d] * (0.8 + 0.2*cov)
		if f := ix.first[d]; f >= 0 && s.lead[f] {
			score *= 1.04
		}
		if m.suspended {
			score *= 0.9
		}
		if q.After != nil && !after(score, ix.keys[d], q.After) {
			continue
		}
		h.push(Hit{Key: ix.keys[d], Score: score, Matched: bits.OnesCount16(s.mask[d])})
	}
	return h.result(limit)
}

func (ix *Index) release(s *scratch) {
	for _, d := range s.touched {
		s.acc[d] = 0
		s.mask[d] = 0
		s.nameHits[d] = 0
	}
	s.touched = s.touched[:0]
	for _, t := range s.leadSet {
		s.lead[t] = false
	}
	s.leadSet = s.leadSet[:0]
	ix.pool.Put(s)
}

// after reports whether (score, key) sorts after the cursor.
func after(score float32, key string, c *Cursor) bool {
	if score != c.Score {
		return score < c.Score
	}
	return key > c.Key
}

// candidates lists the terms a query word may mean, with their quality.
func (ix *Index) candidates(s *scratch, qt queryToken, last bool, out []candidate) []candidate {
	seen := func(t int32) int {
		for i := range out {
			if out[i].term == t {
				return i
			}
		}
		return -1
	}
	add := func(t int32, q float32) {
		if i := seen(t); i >= 0 {
			out[i].q = max(out[i].q, q)
			return
		}
		out = append(out, candidate{term: t, q: q})
	}
	if id, ok := ix.terms[qt.tok]; ok {
		add(int32(id), qExact)
	}
	// Prefixes: every word of three letters or more, and the last word from
	// its first letter (the user is still typing it). An expanded
	// abbreviation is also tried as typed ("med" may be "medina").
	for _, p := range []string{qt.tok, qt.raw} {
		if len(p) < 3 && !(last && len(p) >= 1) {
			continue
		}
		ni := ix.find(p)
		if ni < 0 {
			continue
		}
		if top, ok := ix.top[int32(ni)]; ok {
			s.terms = append(s.terms[:0], top...)
		} else {
			s.terms = ix.descendants(ni, s.terms[:0], 1<<14)
		}
		// One or two letters say little: fewer completions.
		limit := maxCompletions
		if len(p) <= 2 {
			limit = 8 + 16*(len(p)-1)
		}
		if len(s.terms) > limit {
			sort.Slice(s.terms, func(a, b int) bool { return ix.df(s.terms[a]) > ix.df(s.terms[b]) })
			s.terms = s.terms[:limit]
		}
		for _, t := range s.terms {
			tl := ix.termLen(t)
			if tl == len(p) {
				continue
			}
			add(t, prefixQuality(len(p), tl))
		}
		if p == qt.raw {
			break
		}
	}
	// Typos: one edit from four letters, two from nine; two only when one
	// finds nothing (the second walk is the expensive one). A word that is
	// in the dictionary as typed is taken as meant.
	if _, exact := ix.terms[qt.tok]; !exact && len(qt.tok) >= 4 && len(qt.tok) <= maxFuzzyLen {
		n := len(qt.tok)
		found := 0
		emit := func(t int32, d int, prefix bool) {
			found++
			switch {
			case d == 0 && !prefix:
				add(t, qExact)
			case d == 0:
				// The word as typed starts t: a completion the prefix step
				// left out of its most frequent ones.
				add(t, prefixQuality(n, ix.termLen(t)))
			case prefix:
				add(t, qPrefixEdit)
			case d == 1:
				add(t, qEdit1)
			default:
				add(t, qEdit2)
			}
		}
		ix.fuzzy(s, qt.tok, 1, last && n >= 5, emit)
		if found == 0 && n >= 9 {
			ix.fuzzy(s, qt.tok, 2, false, emit)
		}
	}
	return out
}

func (ix *Index) termLen(t int32) int { return int(ix.tlen[t]) }

// prefixQuality is the quality of a term of tl letters that starts with the
// n letters typed: the more of it typed, the better.
func prefixQuality(n, tl int) float32 {
	return qPrefixMin + qPrefixRange*float32(n)/float32(tl)
}

// fuzzy walks the trie with a Damerau-Levenshtein (optimal string
// alignment) row per level, computing only the diagonal band a path within
// maxD edits can use, and pruning branches whose best cell exceeds maxD.
//
// With prefixOK (the last word, still being typed), a node whose path is
// within maxD of the whole word also makes the terms below it completions
// at that distance. Each term is emitted once, with its best match: the
// lower distance, and at equal distance the whole word over a completion
// (a term's prefixes are the nodes above it, walked before it, so both
// distances are known when its node is reached). The walk goes on below
// the first such node as far as the band allows, so that "clinic" is found
// as one edit from "clinc" although "clin" is already a prefix one edit
// away; past the band, the subtree is listed as completions. The
// completions of one such subtree are its first maxCompletions terms in
// trie order; a whole-word match past them is still emitted (the band
// bounds those).
func (ix *Index) fuzzy(s *scratch, word string, maxD int, prefixOK bool, emit func(t int32, d int, prefix bool)) {
	m := len(word)
	inf := int8(maxD + 1)
	row0 := s.rows[0][:m+1]
	for j := range row0 {
		row0[j] = min(int8(j), inf)
	}
	// left is what remains of the current subtree's completions; subtrees
	// of completions never nest, so one counter serves the walk.
	left := 0
	// complete lists the terms under ni as completions at distance pd.
	var complete func(ni int, pd int8)
	complete = func(ni int, pd int8) {
		nd := ix.trie[ni]
		if nd.term >= 0 {
			if left == 0 {
				return
			}
			left--
			emit(nd.term, int(pd), true)
		}
		for k := 0; k < int(nd.n) && left > 0; k++ {
			complete(int(nd.first)+k, pd)
		}
	}
	// pd is the lowest distance of an ancestor's path to the word when
	// that ancestor counts as a prefix, inf when none does.
	var walk func(ni, depth int, prevLabel byte, pd int8)
	walk = func(ni, depth int, prevLabel byte, pd int8) {
		if depth+1 >= len(s.rows) {
			return
		}
		nd := ix.trie[ni]
		c := nd.label
		i := depth + 1 // row number: characters of the path so far
		prev := s.rows[depth][:m+1]
		cur := s.rows[depth+1][:m+1]
		cur[0] = min(int8(min(i, 127)), inf)
		rowMin := cur[0]
		lo, hi := max(1, i-maxD), min(m, i+maxD)
		if lo > 1 {
			cur[lo-1] = inf
		}
		for j := lo; j <= hi; j++ {
			cost := int8(1)
			if word[j-1] == c {
				cost = 0
			}
			v := min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost, inf)
			if depth >= 1 && j > 1 && word[j-1] == prevLabel && word[j-2] == c {
				v = min(v, s.rows[depth-1][j-2]+1)
			}
			cur[j] = v
			rowMin = min(rowMin, v)
		}
		if hi < m {
			cur[hi+1] = inf
		}
		if rowMin > inf-1 {
			// Nothing below is within maxD of the word, as a whole or as a
			// prefix: what is left are completions of an ancestor, if any.
			if pd < inf {
				complete(ni, pd)
			}
			return
		}
		d := inf
		if hi == m {
			d = cur[m]
		}
		below := pd
		if prefixOK && i >= m-1 && d < pd {
			if pd == inf {
				left = maxCompletions
			}
			below = d
		}
		if nd.term >= 0 {
			// Every term of a subtree of completions uses up one of its
			// maxCompletions, however it matches: the completions are the
			// subtree's first terms in trie order, whatever the typos.
			inList := below < inf && left > 0
			if inList {
				left--
			}
			switch {
			case d < inf && d <= pd:
				emit(nd.term, int(d), false)
			case inList:
				emit(nd.term, int(pd), true)
			case d < inf:
				// Past the bound of completions, still a typo of the word.
				emit(nd.term, int(d), false)
			}
		}
		for k := 0; k < int(nd.n); k++ {
			walk(int(nd.first)+k, depth+1, c, below)
		}
	}
	root := ix.trie[0]
	for k := 0; k < int(root.n); k++ {
		walk(int(root.first)+k, 0, 0, inf)
	}
}

type filter struct {
	none     bool
	vendor   int // -1 any
	kind     int
	state    uint64
	postal   string
	noSusp   bool
	anyCheck bool
}

func (ix *Index) compileFilter(q Query) filter {
	f := filter{vendor: -1, kind: -1, postal: strings.TrimSpace(q.PostalPrefix), noSusp: q.ExcludeSuspended}
	if v := strings.TrimSpace(q.Vendor); v != "" {
		f.vendor = -2
		for i, x := range ix.vendors {
			if strings.EqualFold(x, v) {
				f.vendor = i
			}
		}
		if f.vendor == -2 {
			f.none = true
		}
	}
	if k := strings.TrimSpace(q.Kind); k != "" {
		f.kind = -2
		for i, x := range ix.kinds {
			if strings.EqualFold(x, k) {
				f.kind = i
			}
		}
		if f.kind == -2 {
			f.none = true
		}
	}
	if st := strings.TrimSpace(q.State); st != "" {
		f.state = stateMask([]string{st})
	}
	f.anyCheck = f.vendor >= 0 || f.kind >= 0 || f.state != 0 || f.postal != "" || f.noSusp
	return f
}

func (f *filter) keep(ix *Index, d uint32, m docMeta) bool {
	if !f.anyCheck {
		return true
	}
	switch {
	case f.vendor >= 0 && int(m.vendor) != f.vendor,
		f.kind >= 0 && int(m.kind) != f.kind,
		f.state != 0 && m.states&f.state == 0,
		f.noSusp && m.suspended:
		return false
	}
	if f.postal != "" {
		ok := false
		for _, p := range ix.postal[d] {
			if strings.HasPrefix(p, f.postal) {
				ok = true
				break
			}
		}
		return ok
	}
	return true
}

// browse lists documents passing the filter in name order (an empty query:
// "every Epic source in Kansas"). Every hit scores 0, so the cursor's key
// carries the position.
func (ix *Index) browse(f filter, cur *Cursor, limit int) ([]Hit, *Cursor) {
	start := 0
	if cur != nil {
		// The cursor key is the last document's key; find its position.
		for i, d := range ix.byName {
			if ix.keys[d] == cur.Key {
				start = i + 1
				break
			}
		}
	}
	var out []Hit
	for i := start; i < len(ix.byName); i++ {
		d := ix.byName[i]
		if !f.keep(ix, d, ix.meta[d]) {
			continue
		}
		if len(out) == limit {
			last := out[len(out)-1]
			return out, &Cursor{Key: last.Key}
		}
		out = append(out, Hit{Key: ix.keys[d]})
	}
	return out, nil
}

// topK keeps the best hits: score descending, key ascending.
type topK struct {
	limit int
	h     []Hit // min-heap by rank (worst at 0)
}

func worse(a, b Hit) bool {
	if a.Score != b.Score {
		return a.Score < b.Score
	}
	return a.Key > b.Key
}

func (t *topK) push(x Hit) {
	if len(t.h) < t.limit {
		t.h = append(t.h, x)
		for i := len(t.h) - 1; i > 0; {
			p := (i - 1) / 2
			if !worse(t.h[i], t.h[p]) {
				break
			}
			t.h[i], t.h[p] = t.h[p], t.h[i]
			i = p
		}
		return
	}
	if !worse(t.h[0], x) {
		return
	}
	t.h[0] = x
	for i := 0; ; {
		l, r, m := 2*i+1, 2*i+2, i
		if l < len(t.h) && worse(t.h[l], t.h[m]) {
			m = l
		}
		if r < len(t.h) && worse(t.h[r], t.h[m]) {
			m = r
		}
		if m == i {
			break
		}
		t.h[i], t.h[m] = t.h[m], t.h[i]
		i = m
	}
}

func (t *topK) result(limit int) ([]Hit, *Cursor) {
	sort.Slice(t.h, func(a, b int) bool { return worse(t.h[b], t.h[a]) })
	if len(t.h) > limit {
		last := t.h[limit-1]
		return t.h[:limit], &Cursor{Score: last.Score, Key: last.Key}
	}
	return t.h, nil
}
