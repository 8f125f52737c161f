package directory

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/medrelay/medrelay/internal/directory/importers"
	"github.com/medrelay/medrelay/internal/directory/index"
)

// How a list merges into the directory. The outcome depends on the rows a
// list holds, never on the order it holds them in, so two agents importing
// the same files show the same sources under the same names:
//
//  1. Rows are read in a fixed order (by their content, not their position)
//     wherever a first value is kept: an endpoint's name, a source's logo.
//  2. Rows of the list that reach the same customer (endpoint tenant) under
//     the same name are one source. So are an athenahealth row named with
//     its state ("TX - Adair Allergy and Asthma Clinic, PA") and a row of
//     the bare name on the same endpoint, unless rows of two states share
//     that bare name ("TN - Associates In Womens Health", "OH - Associates
//     in Women's Health"): the bare row could be either practice, and all
//     stay apart.
//  3. Each such group finds the source it describes: the source an earlier
//     copy of the same row created, else a source that has the row's name
//     (or, for athenahealth, its name without the state) at the same
//     customer; when several do, a source whose name it is before one whose
//     alias it is, then the smallest id. Otherwise it is a new source.
//  4. The rows that describe one source give it one display name: the
//     spelling most of them give, ties broken by betterName. The first row
//     with that spelling leads: its logo, portals, endpoints and addresses
//     come first.
//  5. Between lists, the display fields (name, vendor, logo, portals, kind,
//     setup) come from the list with the higher priority; between lists of
//     equal priority, from the one whose name reads better (betterName),
//     except that a newer copy of the list that set them may change them (a
//     renamed hospital). That list's primary endpoint and first address
//     come first. Every list adds names (as aliases), endpoints, locations
//     and identifiers.

// merge applies one parsed list to (copies of) the catalog's sources.
type merge struct {
	list   *importers.List
	listID string
	origin string
	prio   int
	now    time.Time
	sum    Summary
	// baseKeys and moreKeys are the catalog's identity keys (see
	// Catalog.keys), read only during the merge.
	baseKeys map[string]string
	moreKeys map[string][]string
	changed  map[string]*Source
	old      map[string]*Source
	seen     map[string]bool
	// eps are the catalog's endpoints (read only during the merge); epsNew
	// those this import adds or changes.
	eps    map[string]*Endpoint
	epsNew map[string]*Endpoint
	setups map[string]Setup
	// members are the sources the list contained before this import.
	members []string
}

func (c *Catalog) newMerge(list *importers.List, opts ImportOptions) *merge {
	prio := priorityOf(list.Format)
	if opts.linked && list.Format == importers.FormatBrands {
		prio = linkedPriority
	}
	m := &merge{
		list: list, listID: opts.ListID, origin: opts.Origin, prio: prio, now: c.now().UTC(),
		changed: map[string]*Source{}, old: map[string]*Source{}, seen: map[string]bool{},
		eps: map[string]*Endpoint{}, epsNew: map[string]*Endpoint{}, setups: map[string]Setup{},
	}
	m.sum = Summary{ListID: opts.ListID, Format: list.Format, Title: list.Title, Rows: list.Rows, Entries: len(list.Entries),
		Skipped: list.Skipped, Notes: list.Notes, ByVendor: map[string]int{}, ByKind: map[string]int{}}
	m.sum.RejectedCount = len(list.Rejected)
	for i, r := range list.Rejected {
		if i == MaxRejectionsListed {
			m.sum.Notes = append(m.sum.Notes, fmt.Sprintf("only the first %d rejected rows are listed", MaxRejectionsListed))
			break
		}
		m.sum.Rejected = append(m.sum.Rejected, Rejection(r))
	}
	// The maps are only replaced by Load and only changed by commit, which
	// runs under the import lock this merge holds.
	c.mu.RLock()
	for id := range c.members[opts.ListID] {
		m.members = append(m.members, id)
	}
	m.old = c.sources
	m.eps = c.endpoints
	m.baseKeys = c.keys
	m.moreKeys = c.moreKeys
	c.mu.RUnlock()
	return m
}

// athenaPrefix matches athenahealth's "NC - Practice Name".
var athenaPrefix = regexp.MustCompile(`^([A-Z]{2}) ?- ?(.+)$`)

// row is one entry of the list, read for merging.
type row struct {
	e *importers.Entry
	// order is the entry's content, which fixes the order rows are merged
	// in.
	order string
	// raw is the name as the list gives it; name the display name
	// (athenahealth's state prefix taken off).
	raw, name string
	vendor    string
	// state is the state athenahealth's prefix named.
	state   string
	eps     []string // endpoint ids, primary first
	tenants []string
	locs    []Location
	// own are the row's identity keys (tenant | normalized raw name);
	// derived is the id a source created from this row gets.
	own     []string
	derived string
}

func (m *merge) run(ctx context.Context, progress func(ImportProgress)) {
	total := int64(len(m.list.Entries))
	rows := make([]*row, len(m.list.Entries))
	for i := range m.list.Entries {
		rows[i] = &row{e: &m.list.Entries[i], order: entryOrder(m.list.Entries[i])}
	}
	sort.SliceStable(rows, func(i, j int) bool { return rows[i].order < rows[j].order })
	for i, r := range rows {
		if i%512 == 0 {
			if ctx.Err() != nil {
				return
			}
			progress(ImportProgress{Phase: PhaseMerge, Done: int64(i) / 2, Total: total})
		}
		m.read(r)
	}
	// Rows reaching one customer under one name are one source.
	groups := groupRows(rows)
	targets := map[string][]*row{}
	var ids []string
	for _, g := range groups {
		id := m.target(g)
		if targets[id] == nil {
			ids = append(ids, id)
		}
		targets[id] = append(targets[id], g...)
	}
	sort.Strings(ids)
	for i, id := range ids {
		if i%512 == 0 {
			if ctx.Err() != nil {
				return
			}
			progress(ImportProgress{Phase: PhaseMerge, Done: total/2 + int64(i)*(total-total/2)/int64(len(ids)), Total: total})
		}
		g := targets[id]
		// Rows of several groups may reach one source: merge them in the
		// fixed order again.
		sort.SliceStable(g, func(i, j int) bool { return g[i].order < g[j].order })
		m.put(id, m.contribution(g))
		m.seen[id] = true
	}
	m.sum.Duplicates = len(rows) - len(ids)
	progress(ImportProgress{Phase: PhaseMerge, Done: total, Total: total})
	for _, vs := range m.list.Setups {
		s := setupOf(vs.Setup)
		s.From = "import:" + m.listID
		m.setups[vs.Vendor] = s
		m.sum.Setups = append(m.sum.Setups, vs.Vendor)
	}
	// Sources this list named before and does not name now.
	for _, id := range m.members {
		s := m.old[id]
		if m.seen[id] || s == nil || !slices.Contains(s.Lists, m.listID) {
			continue
		}
		n := *s
		n.Lists = remove(s.Lists, m.listID)
		if len(n.Lists) == 0 && !n.Builtin && n.Status != StatusSuspended {
			n.Status = StatusSuspended
			m.sum.Suspended++
		}
		n.UpdatedAt = m.now
		m.changed[id] = &n
	}
	for id := range m.seen {
		s := m.changed[id]
		v := s.Vendor
		if v == "" {
			v = "(unknown)"
		}
		m.sum.ByVendor[v]++
		m.sum.ByKind[string(s.Kind)]++
		old := m.old[id]
		switch {
		case old == nil:
			m.sum.Created++
		case sameContent(old, s):
			m.sum.Unchanged++
			delete(m.changed, id)
		default:
			m.sum.Updated++
			if old.Status == StatusSuspended && s.Status == StatusActive {
				m.sum.Reactivated++
			}
		}
	}
	eps := map[string]bool{}
	for id := range m.seen {
		if s := m.changed[id]; s != nil {
			for _, e := range s.Endpoints {
				eps[e] = true
			}
		} else {
			for _, e := range m.old[id].Endpoints {
				eps[e] = true
			}
		}
	}
	m.sum.Endpoints = len(eps)
}

// entryOrder is an entry's content without its position in the list: every
// field, each string prefixed with its length, so that two entries have the
// same key only when they say the same thing (and then their order does not
// matter). The name comes first, which makes the order readable.
func entryOrder(e importers.Entry) string {
	b := make([]byte, 0, 128)
	str := func(s string) {
		b = strconv.AppendInt(b, int64(len(s)), 10)
		b = append(b, ':')
		b = append(b, s...)
	}
	strs := func(l []string) {
		b = strconv.AppendInt(b, int64(len(l)), 10)
		b = append(b, '[')
		for _, s := range l {
			str(s)
		}
	}
	str(e.Name)
	str(e.Ref)
	strs(e.Aliases)
	str(e.Kind)
	strs(e.Categories)
	str(e.Vendor)
	str(e.Logo)
	b = strconv.AppendInt(b, int64(len(e.Portals)), 10)
	for _, p := range e.Portals {
		str(p.Name)
		str(p.URL)
		str(p.Description)
		str(p.Logo)
		strs(p.Endpoints)
	}
	b = strconv.AppendInt(b, int64(len(e.Endpoints)), 10)
	for _, x := range e.Endpoints {
		str(x.URL)
		str(x.FHIRVersion)
		str(x.Name)
	}
	b = strconv.AppendInt(b, int64(len(e.Locations)), 10)
	for _, l := range e.Locations {
		str(l.Line)
		str(l.City)
		str(l.State)
		str(l.PostalCode)
		str(l.Country)
	}
	strs(e.NPI)
	strs(e.OIDs)
	str(e.Website)
	b = strconv.AppendBool(b, e.Sandbox)
	if st := e.Setup; st != nil {
		opt := func(v *bool) {
			switch {
			case v == nil:
				b = append(b, '-')
			case *v:
				b = append(b, 't')
			default:
				b = append(b, 'f')
			}
		}
		b = append(b, 'S')
		strs(st.ClientAuthMethods)
		strs(st.PKCEMethods)
		opt(st.Confidential)
		opt(st.DynamicRegistration)
		strs(st.Scopes)
		strs(st.GrantTypes)
		str(st.RegistrationInfo)
		str(st.Documentation)
		str(st.AuthProtocol)
	}
	return string(b)
}

// read works out what a row says (vendor, endpoints, display name, places)
// and records its endpoints. Rows are read in their fixed order, so that
// the first facts kept for an endpoint do not depend on the list's order.
func (m *merge) read(r *row) {
	e := r.e
	r.raw, r.name = e.Name, e.Name
	vendor := e.Vendor
	if vendor == "" {
		vendor = m.list.Vendor
	}
	// Endpoints first: they give the vendor when the list does not.
	for _, x := range e.Endpoints {
		f := factsOf(x.URL)
		if vendor == "" {
			vendor = f.vendor
		}
		id := endpointID(x.URL)
		ep := m.epsNew[id]
		if ep == nil {
			ep = m.eps[id]
		}
		n := &Endpoint{ID: id, URL: x.URL, FHIRVersion: x.FHIRVersion, Audience: f.audience, Vendor: f.vendor, Name: x.Name}
		if n.FHIRVersion == "" {
			n.FHIRVersion = f.version
		}
		if n.Vendor == "" {
			n.Vendor = vendor
		}
		if ep != nil {
			merged := *ep
			if merged.FHIRVersion == "" {
				merged.FHIRVersion = n.FHIRVersion
			}
			if merged.Vendor == "" {
				merged.Vendor = n.Vendor
			}
			if merged.Name == "" {
				merged.Name = n.Name
			}
			if merged != *ep {
				m.epsNew[id] = &merged
			}
		} else {
			m.epsNew[id] = n
		}
		r.eps = appendUniqueFold(r.eps, id)
		r.tenants = append(r.tenants, f.tenant)
	}
	r.vendor = vendor
	if vendor == "athenahealth" {
		if mm := athenaPrefix.FindStringSubmatch(r.name); mm != nil && importers.StateCode(mm[1]) != "" {
			r.name = strings.TrimSpace(mm[2])
			r.state = mm[1]
			r.locs = append(r.locs, Location{State: mm[1]})
		}
	}
	for _, l := range e.Locations {
		loc := Location{Line: l.Line, City: l.City, State: stateOf(l), PostalCode: l.PostalCode, Country: l.Country}
		r.locs = appendLocation(r.locs, loc)
	}
	// Only the row's own name identifies it: its aliases may be a parent
	// organisation's name that several brands on one endpoint share.
	raw := index.NormalizeName(r.raw)
	for _, t := range r.tenants {
		r.own = append(r.own, t+"|"+raw)
	}
	first := ""
	if len(r.tenants) > 0 {
		first = r.tenants[0]
	}
	if len(r.own) == 0 {
		// No endpoint: the name alone keeps duplicates together.
		r.own = []string{"|" + raw}
	}
	r.derived = sourceID(r.name, first+"|"+raw)
}

// groupRows puts the rows that describe one source in one group: rows that
// share an identity key, and a row named with athenahealth's state prefix
// ("TX - Adair Allergy and Asthma Clinic") with the row of the bare name at
// the same endpoint, unless prefixed rows of two states share that bare
// name (the bare row could be either practice, so all stay apart). Groups
// are found by union-find over the whole list, so they are the same
// whatever order the rows come in; they keep the rows' order and come in
// the order of their first row.
func groupRows(rows []*row) [][]*row {
	parent := make([]int, len(rows))
	for i := range parent {
		parent[i] = i
	}
	var find func(int) int
	find = func(i int) int {
		for parent[i] != i {
			parent[i] = parent[parent[i]]
			i = parent[i]
		}
		return i
	}
	union := func(i, j int) {
		a, b := find(i), find(j)
		if a != b {
			// The root is the earliest row, so a group is ordered by it.
			parent[max(a, b)] = min(a, b)
		}
	}
	byKey := make(map[string]int, len(rows))
	for i, r := range rows {
		for _, k := range r.own {
			if j, ok := byKey[k]; ok {
				union(i, j)
			} else {
				byKey[k] = i
			}
		}
	}
	// The states whose prefixed rows share a bare name ("" when several).
	const several = ""
	states := map[string]string{}
	bare := func(r *row, t string) string { return t + "|" + index.NormalizeName(r.name) }
	for _, r := range rows {
		if r.state == "" {
			continue
		}
		for _, t := range r.tenants {
			k := bare(r, t)
			if st, ok := states[k]; !ok {
				states[k] = r.state
			} else if st != r.state {
				states[k] = several
			}
		}
	}
	for i, r := range rows {
		if r.state == "" {
			continue
		}
		for _, t := range r.tenants {
			k := bare(r, t)
			if j, ok := byKey[k]; ok && states[k] != several {
				union(i, j)
			}
		}
	}
	at := map[int]int{}
	var out [][]*row
	for i, r := range rows {
		root := find(i)
		g, ok := at[root]
		if !ok {
			g = len(out)
			at[root] = g
			out = append(out, nil)
		}
		out[g] = append(out[g], r)
	}
	return out
}

// target is the id of the source a group of rows describes.
func (m *merge) target(g []*row) string {
	pick := func(best, id string) string {
		if id != "" && (best == "" || id < best) {
			return id
		}
		return best
	}
	// The source an earlier copy of these rows created.
	best := ""
	for _, r := range g {
		if m.old[r.derived] != nil {
			best = pick(best, r.derived)
		}
	}
	if best != "" {
		return best
	}
	// A source with the rows' name at the same customer.
	for _, r := range g {
		for _, k := range r.own {
			best = pick(best, ownerOf(m.baseKeys, m.moreKeys, m.old, k))
		}
	}
	if best != "" {
		return best
	}
	// A source with the name without athenahealth's state prefix.
	for _, r := range g {
		if r.name == r.raw {
			continue
		}
		n := index.NormalizeName(r.name)
		for _, t := range r.tenants {
			best = pick(best, ownerOf(m.baseKeys, m.moreKeys, m.old, t+"|"+n))
		}
	}
	if best != "" {
		return best
	}
	for _, r := range g {
		best = pick(best, r.derived)
	}
	return best
}

// contribution is what one list says about one source, from all its rows.
type contribution struct {
	name       string
	names      []string // every name and alias the rows give
	vendor     string
	kind       Kind
	kindGiven  bool
	categories []string
	sandbox    bool
	logo       string
	portals    []Portal
	endpoints  []string
	locations  []Location
	npi, oid   []string
	website    string
	setup      *Setup
}

// contribution merges the rows that describe one source, given in their
// fixed order. The display name is the spelling most rows give (ties:
// betterName); the first row with that spelling leads, so its logo, portals
// and endpoints come first.
func (m *merge) contribution(rows []*row) contribution {
	count := map[string]int{}
	name := ""
	for _, r := range rows {
		count[r.name]++
	}
	for n, k := range count {
		if name == "" || k > count[name] || k == count[name] && betterName(n, name) {
			name = n
		}
	}
	lead := slices.IndexFunc(rows, func(r *row) bool { return r.name == name })
	ordered := append([]*row{rows[lead]}, rows[:lead]...)
	ordered = append(ordered, rows[lead+1:]...)

	c := contribution{name: name}
	for _, r := range ordered {
		e := r.e
		if c.vendor == "" {
			c.vendor = r.vendor
		}
		if c.kind == "" && e.Kind != "" {
			c.kind = Kind(e.Kind)
		}
		for _, n := range append([]string{r.raw, r.name}, e.Aliases...) {
			c.names = appendUniqueFold(c.names, n)
		}
		c.categories = unionFold(c.categories, e.Categories)
		c.sandbox = c.sandbox || e.Sandbox
		if c.logo == "" {
			c.logo = e.Logo
		}
		if len(c.portals) == 0 && len(e.Portals) > 0 {
			for _, p := range e.Portals {
				pp := Portal{Name: p.Name, URL: p.URL, Description: p.Description, Logo: p.Logo}
				for _, u := range p.Endpoints {
					pp.Endpoints = append(pp.Endpoints, endpointID(u))
				}
				c.portals = append(c.portals, pp)
			}
		}
		c.endpoints = unionStrings(c.endpoints, r.eps)
		for _, l := range r.locs {
			c.locations = appendLocation(c.locations, l)
		}
		c.npi = unionStrings(c.npi, e.NPI)
		c.oid = unionStrings(c.oid, e.OIDs)
		if c.website == "" {
			c.website = e.Website
		}
		if c.setup == nil && e.Setup != nil {
			s := setupOf(*e.Setup)
			s.From = "import:" + m.listID
			c.setup = &s
		}
	}
	c.kindGiven = c.kind != ""
	if !c.kindGiven {
		c.kind = defaultKind(c.vendor)
	}
	return c
}

// put applies a list's contribution to the source id (created if new).
func (m *merge) put(id string, c contribution) {
	var s *Source
	if o := m.old[id]; o != nil {
		cp := *o
		s = &cp
	}
	if s == nil {
		s = &Source{
			ID: id, Name: c.name, Aliases: c.names, Vendor: c.vendor, Kind: c.kind, Categories: c.categories,
			Status: StatusActive, Sandbox: c.sandbox, Logo: c.logo, Portals: c.portals, Endpoints: c.endpoints,
			Locations: c.locations, Identifiers: Identifiers{NPI: c.npi, OID: c.oid, Website: c.website}, Setup: c.setup,
			Lists: []string{m.listID}, Origin: m.listID, Priority: m.prio, DisplayFrom: m.listID,
			CreatedAt: m.now, UpdatedAt: m.now,
		}
		canonical(s)
		m.changed[id] = s
		return
	}
	// An existing source: the list with the higher priority sets the
	// display fields; any list adds names, endpoints, places and ids.
	s.Aliases = append([]string(nil), s.Aliases...)
	display := m.setsDisplay(s, c.name)
	if display {
		if s.Name != c.name {
			s.Aliases = append(s.Aliases, s.Name)
			s.Name = c.name
		}
		s.Priority = m.prio
		s.DisplayFrom = m.listID
		if c.vendor != "" {
			s.Vendor = c.vendor
		}
		if c.logo != "" {
			s.Logo = c.logo
		}
		if len(c.portals) > 0 {
			s.Portals = c.portals
		}
		if c.kindGiven {
			s.Kind = c.kind
		}
		if c.setup != nil {
			s.Setup = c.setup
		}
	} else {
		if s.Logo == "" {
			s.Logo = c.logo
		}
		if len(s.Portals) == 0 {
			s.Portals = c.portals
		}
		if s.Setup == nil {
			s.Setup = c.setup
		}
	}
	s.Aliases = append(s.Aliases, c.names...)
	if s.Vendor == "" {
		s.Vendor = c.vendor
	}
	if s.Kind == "" {
		s.Kind = c.kind
	}
	s.Categories = unionFold(s.Categories, c.categories)
	// The list that sets the display fields also gives the primary endpoint
	// and the first address; other lists add theirs after.
	if display {
		s.Endpoints = unionStrings(c.endpoints, s.Endpoints)
		s.Locations = mergeLocations(c.locations, s.Locations)
	} else {
		s.Endpoints = unionStrings(s.Endpoints, c.endpoints)
		s.Locations = mergeLocations(s.Locations, c.locations)
	}
	s.Identifiers = Identifiers{
		NPI: unionStrings(s.Identifiers.NPI, c.npi), OID: unionStrings(s.Identifiers.OID, c.oid), Website: s.Identifiers.Website,
	}
	if s.Identifiers.Website == "" {
		s.Identifiers.Website = c.website
	}
	s.Sandbox = s.Sandbox || c.sandbox
	if !slices.Contains(s.Lists, m.listID) {
		s.Lists = append(append([]string(nil), s.Lists...), m.listID)
		sort.Strings(s.Lists)
	}
	s.Status = StatusActive
	s.UpdatedAt = m.now
	canonical(s)
	m.changed[id] = s
}

// setsDisplay says whether this list's facts replace the source's display
// fields (name, vendor, logo, portals, kind, setup): never a builtin source's; a list of higher priority always; one of
// equal priority when it is the list that set them (a newer copy may rename
// the brand) or when its name reads better (so that the outcome does not
// depend on which list was imported first).
func (m *merge) setsDisplay(s *Source, name string) bool {
	switch {
	case s.Builtin || m.prio < s.Priority:
		return false
	case m.prio > s.Priority || s.DisplayFrom == m.listID:
		return true
	case name != s.Name:
		return betterName(name, s.Name)
	}
	// The same name from two lists: the smaller list id sets the other
	// display fields, whichever came first.
	return s.DisplayFrom != "" && m.listID < s.DisplayFrom
}

// legalForms are words of a company's legal form: they make a name longer,
// not clearer.
var legalForms = map[string]bool{
	"inc": true, "incorporated": true, "llc": true, "pllc": true, "ltd": true, "limited": true,
	"corp": true, "corporation": true, "co": true, "lp": true, "llp": true, "pc": true, "pa": true,
	"psc": true, "sc": true, "plc": true, "dba": true,
}

// betterName reports whether spelling a makes a better display name than
// b, two spellings of one brand's name. In order: a name in mixed case over
// one in capitals only or lower case only ("Womens Executive Healthcare"
// over "WOMEN'S EXECUTIVE HEALTHCARE"); fewer legal-form words ("Platte
// River Medical Clinic" over "..., LLC"); the longer without punctuation at
// its end, which keeps apostrophes, periods and full words ("Associates in
// Women's Health" over "Associates In Womens Health", "St. Vincent" over
// "St Vincent"); the shorter with it (no stray "." or " -"); then byte
// order, so that every pair has one answer.
func betterName(a, b string) bool {
	if ma, mb := mixedCase(a), mixedCase(b); ma != mb {
		return ma
	}
	if la, lb := legalWords(a), legalWords(b); la != lb {
		return la < lb
	}
	trim := func(s string) int {
		return len(strings.TrimRightFunc(s, func(r rune) bool { return unicode.IsPunct(r) || unicode.IsSpace(r) }))
	}
	if ta, tb := trim(a), trim(b); ta != tb {
		return ta > tb
	}
	if len(a) != len(b) {
		return len(a) < len(b)
	}
	return a < b
}

func mixedCase(s string) bool {
	upper, lower := false, false
	for _, r := range s {
		upper = upper || unicode.IsUpper(r)
		lower = lower || unicode.IsLower(r)
	}
	return upper && lower
}

func legalWords(s string) int {
	n := 0
	for _, w := range strings.FieldsFunc(strings.ToLower(s), func(r rune) bool {
		return !unicode.IsLetter(r) && !unicode.IsDigit(r) && r != '\''
	}) {
		if legalForms[w] {
			n++
		}
	}
	return n
}

func remove(list []string, v string) []string {
	var out []string
	for _, x := range list {
		if x != v {
			out = append(out, x)
		}
	}
	return out
}

// sameContent compares two versions of a source, ignoring when they were
// written. Every list field is omitempty, so nil and empty compare equal.
func sameContent(a, b *Source) bool {
	x, y := *a, *b
	x.UpdatedAt, y.UpdatedAt = time.Time{}, time.Time{}
	bx, err1 := json.Marshal(x)
	by, err2 := json.Marshal(y)
	return err1 == nil && err2 == nil && bytes.Equal(bx, by)
}

// canonical orders a source's sets, so that the same facts merged in a
// different order give the same record (re-importing is idempotent). Of
// aliases that differ only in case, the one betterName prefers is kept.
func canonical(s *Source) {
	best := map[string]string{}
	for _, a := range s.Aliases {
		a = strings.TrimSpace(a)
		k := strings.ToLower(a)
		if a == "" || strings.EqualFold(a, s.Name) {
			continue
		}
		if x, ok := best[k]; !ok || betterName(a, x) {
			best[k] = a
		}
	}
	aliases := make([]string, 0, len(best))
	for _, a := range best {
		aliases = append(aliases, a)
	}
	sort.Slice(aliases, func(i, j int) bool {
		if li, lj := strings.ToLower(aliases[i]), strings.ToLower(aliases[j]); li != lj {
			return li < lj
		}
		return aliases[i] < aliases[j]
	})
	if len(aliases) == 0 {
		aliases = nil
	}
	s.Aliases = aliases
	sort.Strings(s.Categories)
	sort.Strings(s.Identifiers.NPI)
	sort.Strings(s.Identifiers.OID)
}

// mergeLocations is first's locations, then second's that add to them.
func mergeLocations(first, second []Location) []Location {
	out := append([]Location(nil), first...)
	for _, l := range second {
		out = appendLocation(out, l)
	}
	return out
}

// appendLocation adds l unless an equal or more complete one is there.
func appendLocation(list []Location, l Location) []Location {
	if l == (Location{}) {
		return list
	}
	for i, x := range list {
		if sameLocation(x, l) {
			return list
		}
		// A state-only location is subsumed by a fuller one in that state.
		if l.Line == "" && l.City == "" && l.PostalCode == "" && x.State == l.State {
			return list
		}
		if x.Line == "" && x.City == "" && x.PostalCode == "" && x.State == l.State {
			list[i] = l
			return list
		}
	}
	if len(list) >= 64 {
		return list
	}
	return append(list, l)
}

// sameLocation: the same address written twice ("64108" and "64108-4619").
func sameLocation(a, b Location) bool {
	zip := func(z string) string { return z[:min(5, len(z))] }
	return strings.EqualFold(a.Line, b.Line) && strings.EqualFold(a.City, b.City) &&
		strings.EqualFold(a.State, b.State) && zip(a.PostalCode) == zip(b.PostalCode)
}
