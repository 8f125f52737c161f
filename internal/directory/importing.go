package directory

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/medrelay/medrelay/internal/directory/importers"
	"github.com/medrelay/medrelay/internal/directory/index"
	"github.com/medrelay/medrelay/internal/store"
)

// ImportOptions describe a list being imported.
type ImportOptions struct {
	// ListID names the list so that a newer copy replaces the older one
	// (and sources missing from it are suspended). Default: the URL for a
	// fetched list, "file:<base name>" for uploaded bytes.
	ListID string
	// FileName is the uploaded file's name (Lantern files are named after
	// their developer, which gives rows their vendor).
	FileName string
	// Format forces a format; "" detects it.
	Format string
	// Origin is recorded with the list (the URL, or "upload").
	Origin string
	// DryRun parses and reports without changing anything.
	DryRun bool

	// linked marks a brands bundle an endpoint names in its SMART
	// configuration: it describes that endpoint's brands more precisely than
	// a vendor-consolidated bundle, so its facts win (smart-2.2-client #415).
	linked bool
}

// Phases of an import, in order.
const (
	PhaseFetch = "fetch"
	PhaseParse = "parse"
	PhaseMerge = "merge"
	PhaseWrite = "write"
	PhaseIndex = "index"
)

// ImportProgress is reported while importing.
type ImportProgress struct {
	Phase string
	Done  int64
	Total int64
}

// Rejection is a row that was not imported.
type Rejection struct {
	Row    int
	Ref    string
	Name   string
	Reason string
}

// Summary is the outcome of an import.
type Summary struct {
	ListID string
	Format string
	Title  string
	// Rows read from the list; Entries the sources they described.
	Rows    int
	Entries int
	// Per source: created, changed, unchanged, back from suspension, and
	// suspended because they are no longer in the list. Duplicates are
	// entries that described a source already seen in this list.
	Created     int
	Updated     int
	Unchanged   int
	Reactivated int
	Suspended   int
	Duplicates  int
	Skipped     int
	// Rejected rows, with why; RejectedCount counts them all when the list
	// is cut (MaxRejectionsListed).
	Rejected      []Rejection
	RejectedCount int
	// ByVendor and ByKind count the list's sources.
	ByVendor  map[string]int
	ByKind    map[string]int
	Endpoints int
	Notes     []string
	// Setups are vendors whose setup requirements the list gave.
	Setups      []string
	NotModified bool
	DryRun      bool
	Duration    time.Duration
}

// MaxRejectionsListed bounds the rejected rows a summary lists.
const MaxRejectionsListed = 1000

// priorities of lists: whose facts win for a source's display fields.
func priorityOf(format string) int {
	switch format {
	case importers.FormatBrands:
		return 80
	case importers.FormatFHIRBundle, importers.FormatCernerLegacy:
		return 60
	case importers.FormatSMA:
		return 55
	}
	return 40
}

const (
	builtinPriority = 100
	// linkedPriority is a brands bundle linked from an endpoint's
	// .well-known/smart-configuration.
	linkedPriority = 90
)

// acquire takes the import lock, or fails when ctx ends first.
func (c *Catalog) acquire(ctx context.Context) error {
	select {
	case c.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%w: %v", ErrImportBusy, ctx.Err())
	}
}

func (c *Catalog) release() { <-c.sem }

// MaxFetchBytes bounds a list fetched from a URL.
const MaxFetchBytes = importers.MaxBytes

// ImportURL fetches a list over https (plain http only from this machine)
// and imports it. A list fetched before is asked for with If-None-Match, so
// an unchanged list costs a 304 and nothing else (smart-2.2-client #413,
// #426).
func (c *Catalog) ImportURL(ctx context.Context, raw string, opts ImportOptions, progress func(ImportProgress)) (*Summary, error) {
	if progress == nil {
		progress = func(ImportProgress) {}
	}
	u, err := url.Parse(strings.TrimSpace(raw))
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("%w: %q is not a URL", ErrImportURL, raw)
	}
	if !tlsOrLocal(u) {
		return nil, fmt.Errorf("%w: %q", ErrImportURL, raw)
	}
	if opts.ListID == "" {
		v := *u
		v.RawQuery, v.Fragment = "", ""
		opts.ListID = v.String()
	}
	if opts.FileName == "" {
		opts.FileName = pathBase(u.Path)
	}
	opts.Origin = u.String()
	start := c.now()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrImportURL, err)
	}
	req.Header.Set("Accept", "application/fhir+json, application/json, text/csv, */*")
	c.mu.RLock()
	if l, ok := c.lists[opts.ListID]; ok && l.ETag != "" && !opts.DryRun {
		req.Header.Set("If-None-Match", l.ETag)
	}
	c.mu.RUnlock()
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrImportFetch, u.Redacted(), err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotModified:
		return &Summary{ListID: opts.ListID, NotModified: true, Duration: c.now().Sub(start),
			Notes: []string{"the list has not changed since it was last imported (ETag)"}}, nil
	case resp.StatusCode != http.StatusOK:
		return nil, fmt.Errorf("%w: %s answered %s", ErrImportFetch, u.Redacted(), resp.Status)
	}
	total := resp.ContentLength
	if total > MaxFetchBytes {
		return nil, fmt.Errorf("%w: %d bytes (at most %d)", ErrImportTooLarge, total, MaxFetchBytes)
	}
	pr := &progressReader{r: io.LimitReader(resp.Body, MaxFetchBytes+1), total: total, report: progress}
	data, err := io.ReadAll(pr)
	if err != nil {
		return nil, fmt.Errorf("%w: reading %s: %v", ErrImportFetch, u.Redacted(), err)
	}
	if len(data) > MaxFetchBytes {
		return nil, fmt.Errorf("%w: more than %d bytes", ErrImportTooLarge, MaxFetchBytes)
	}
	sum, err := c.importData(ctx, data, opts, resp.Header.Get("ETag"), progress)
	if sum != nil {
		sum.Duration = c.now().Sub(start)
	}
	return sum, err
}

type progressReader struct {
	r      io.Reader
	n      int64
	total  int64
	last   time.Time
	report func(ImportProgress)
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	p.n += int64(n)
	if time.Since(p.last) > 100*time.Millisecond || err != nil {
		p.last = time.Now()
		p.report(ImportProgress{Phase: PhaseFetch, Done: p.n, Total: p.total})
	}
	return n, err
}

func pathBase(p string) string {
	p = strings.TrimRight(p, "/")
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[i+1:]
	}
	return p
}

// Import imports a list given as bytes (uploaded by the CLI or an app).
// Like ImportURL, it calls progress on the caller's goroutine.
func (c *Catalog) Import(ctx context.Context, data []byte, opts ImportOptions, progress func(ImportProgress)) (*Summary, error) {
	if progress == nil {
		progress = func(ImportProgress) {}
	}
	if opts.ListID == "" {
		if opts.FileName == "" {
			return nil, fmt.Errorf("%w: name the list (a file name or a list id)", ErrImportInvalid)
		}
		opts.ListID = "file:" + pathBase(strings.ReplaceAll(opts.FileName, "\\", "/"))
	}
	if opts.Origin == "" {
		opts.Origin = "upload"
	}
	start := c.now()
	sum, err := c.importData(ctx, data, opts, "", progress)
	if sum != nil {
		sum.Duration = c.now().Sub(start)
	}
	return sum, err
}

var listIDPattern = regexp.MustCompile(`^[\x21-\x7e]{1,512}$`)

func (c *Catalog) importData(ctx context.Context, data []byte, opts ImportOptions, etag string, progress func(ImportProgress)) (*Summary, error) {
	if !listIDPattern.MatchString(opts.ListID) {
		return nil, fmt.Errorf("%w: list id must be 1-512 printable characters without spaces", ErrImportInvalid)
	}
	if len(data) > importers.MaxBytes {
		return nil, fmt.Errorf("%w: %d bytes (at most %d)", ErrImportTooLarge, len(data), importers.MaxBytes)
	}
	if err := c.acquire(ctx); err != nil {
		return nil, err
	}
	defer c.release()

	list, err := importers.Parse(ctx, data, importers.Hint{FileName: pathBase(opts.FileName), Format: opts.Format},
		func(done, total int) {
			if done%256 == 0 || done == total {
				progress(ImportProgress{Phase: PhaseParse, Done: int64(done), Total: int64(total)})
			}
		})
	switch {
	case errors.Is(err, importers.ErrUnknownFormat):
		return nil, fmt.Errorf("%w: %v", ErrImportFormat, err)
	case errors.Is(err, importers.ErrMalformed):
		return nil, fmt.Errorf("%w: %v", ErrImportInvalid, err)
	case err != nil:
		return nil, err
	}
	m := c.newMerge(list, opts)
	m.run(ctx, progress)
	if err := ctx.Err(); err != nil {
		// A merge cut short is not written: the list stays as it was.
		return nil, err
	}
	if opts.DryRun {
		m.sum.DryRun = true
		return &m.sum, nil
	}
	if err := c.commit(ctx, m, etag, progress); err != nil {
		return nil, err
	}
	return &m.sum, nil
}

// merge applies one parsed list to (copies of) the catalog's sources.
type merge struct {
	c      *Catalog
	list   *importers.List
	listID string
	origin string
	prio   int
	now    time.Time
	sum    Summary
	// baseKeys are the catalog's identity keys (tenant|name → source id);
	// keys those this import adds.
	baseKeys map[string]string
	keys     map[string]string
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
		c: c, list: list, listID: opts.ListID, origin: opts.Origin, prio: prio, now: c.now().UTC(),
		keys: map[string]string{}, changed: map[string]*Source{}, old: map[string]*Source{}, seen: map[string]bool{},
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
	c.mu.RLock()
	for id := range c.members[opts.ListID] {
		m.members = append(m.members, id)
	}
	m.old = c.sources
	m.eps = c.endpoints
	m.baseKeys = c.keys
	c.mu.RUnlock()
	return m
}

// athenaPrefix matches athenahealth's "NC - Practice Name".
var athenaPrefix = regexp.MustCompile(`^([A-Z]{2}) ?- ?(.+)$`)

func (m *merge) run(ctx context.Context, progress func(ImportProgress)) {
	total := int64(len(m.list.Entries))
	for i := range m.list.Entries {
		if i%512 == 0 {
			if ctx.Err() != nil {
				return
			}
			progress(ImportProgress{Phase: PhaseMerge, Done: int64(i), Total: total})
		}
		m.apply(&m.list.Entries[i])
	}
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

func setupOf(s importers.Setup) Setup {
	out := Setup{
		ClientAuthMethods: s.ClientAuthMethods,
		PKCEMethods:       s.PKCEMethods,
		Scopes:            s.Scopes,
		Documentation:     s.Documentation,
	}
	if s.Confidential != nil {
		out.ConfidentialRequired = *s.Confidential
	}
	if s.DynamicRegistration != nil {
		out.DynamicRegistration = *s.DynamicRegistration
	}
	var notes []string
	if s.AuthProtocol != "" {
		notes = append(notes, "authentication: "+s.AuthProtocol)
	}
	if s.RegistrationInfo != "" {
		if u := firstURL(s.RegistrationInfo); u != "" {
			out.RegistrationURL = u
		}
		notes = append(notes, "registration: "+s.RegistrationInfo)
	}
	out.Notes = strings.Join(notes, "\n")
	return out
}

var urlPattern = regexp.MustCompile(`https://[^\s,;)]+`)

func firstURL(s string) string { return urlPattern.FindString(s) }

// apply merges one entry.
func (m *merge) apply(e *importers.Entry) {
	rawName := e.Name
	name := e.Name
	var locs []Location
	vendor := e.Vendor
	if vendor == "" {
		vendor = m.list.Vendor
	}
	// Endpoints first: they give the vendor when the list does not.
	var epIDs []string
	var tenants []string
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
		epIDs = appendUniqueFold(epIDs, id)
		tenants = append(tenants, f.tenant)
	}
	if vendor == "athenahealth" {
		if mm := athenaPrefix.FindStringSubmatch(name); mm != nil && importers.StateCode(mm[1]) != "" {
			name = strings.TrimSpace(mm[2])
			locs = append(locs, Location{State: mm[1]})
		}
	}
	for _, l := range e.Locations {
		loc := Location{Line: l.Line, City: l.City, State: stateOf(l), PostalCode: l.PostalCode, Country: l.Country}
		locs = appendLocation(locs, loc)
	}
	// Which source is this?
	id := ""
	// Only the entry's own names identify it: its aliases may be a parent
	// organisation's name that several brands on one endpoint share.
	for _, t := range tenants {
		for _, n := range []string{rawName, name} {
			k := t + "|" + index.NormalizeName(n)
			if x := m.keys[k]; x != "" {
				id = x
				break
			}
			if x := m.baseKeys[k]; x != "" {
				id = x
				break
			}
		}
		if id != "" {
			break
		}
	}
	identity := strings.Join(tenants[:min(1, len(tenants))], "") + "|" + index.NormalizeName(rawName)
	if id == "" {
		// A new source, or one whose identity the key map does not hold any
		// more (it lost its endpoints): the id derived from the identity is
		// the same either way.
		id = sourceID(name, identity)
	}
	for _, t := range tenants {
		m.keys[t+"|"+index.NormalizeName(rawName)] = id
	}
	if m.seen[id] {
		m.sum.Duplicates++
	}
	m.seen[id] = true

	cur := m.changed[id]
	if cur == nil {
		if o := m.old[id]; o != nil {
			cp := *o
			cur = &cp
		}
	}
	kind := Kind(e.Kind)
	if kind == "" {
		kind = defaultKind(vendor)
	}
	portals := make([]Portal, 0, len(e.Portals))
	for _, p := range e.Portals {
		pp := Portal{Name: p.Name, URL: p.URL, Description: p.Description, Logo: p.Logo}
		for _, u := range p.Endpoints {
			pp.Endpoints = append(pp.Endpoints, endpointID(u))
		}
		portals = append(portals, pp)
	}
	var setup *Setup
	if e.Setup != nil {
		s := setupOf(*e.Setup)
		s.From = "import:" + m.listID
		setup = &s
	}
	if cur == nil {
		s := &Source{
			ID: id, Name: name, Vendor: vendor, Kind: kind, Categories: e.Categories, Status: StatusActive,
			Sandbox: e.Sandbox, Logo: e.Logo, Portals: portals, Endpoints: epIDs, Locations: locs,
			Identifiers: Identifiers{NPI: e.NPI, OID: e.OIDs, Website: e.Website}, Setup: setup,
			Lists: []string{m.listID}, Origin: m.listID, Priority: m.prio, CreatedAt: m.now, UpdatedAt: m.now,
		}
		for _, a := range e.Aliases {
			if !strings.EqualFold(a, name) {
				s.Aliases = appendUniqueFold(s.Aliases, a)
			}
		}
		if rawName != name {
			s.Aliases = appendUniqueFold(s.Aliases, rawName)
		}
		canonical(s)
		m.changed[id] = s
		return
	}
	// An existing source: the list with the higher priority sets the
	// display fields; any list adds names, endpoints, places and ids.
	s := cur
	s.Aliases = append([]string(nil), s.Aliases...)
	if m.prio >= s.Priority && !s.Builtin {
		if !strings.EqualFold(s.Name, name) {
			s.Aliases = appendUniqueFold(s.Aliases, s.Name)
			s.Name = name
		}
		s.Priority = m.prio
		if e.Logo != "" {
			s.Logo = e.Logo
		}
		if len(portals) > 0 {
			s.Portals = portals
		}
		if e.Kind != "" {
			s.Kind = kind
		}
		if setup != nil {
			s.Setup = setup
		}
	} else {
		if s.Logo == "" {
			s.Logo = e.Logo
		}
		if len(s.Portals) == 0 {
			s.Portals = portals
		}
		if s.Setup == nil {
			s.Setup = setup
		}
	}
	for _, a := range append([]string{rawName, name}, e.Aliases...) {
		if !strings.EqualFold(a, s.Name) {
			s.Aliases = appendUniqueFold(s.Aliases, a)
		}
	}
	if s.Vendor == "" {
		s.Vendor = vendor
	}
	if s.Kind == "" {
		s.Kind = kind
	}
	s.Categories = unionFold(s.Categories, e.Categories)
	s.Endpoints = unionStrings(s.Endpoints, epIDs)
	for _, l := range locs {
		s.Locations = appendLocation(s.Locations, l)
	}
	s.Identifiers = Identifiers{
		NPI: unionStrings(s.Identifiers.NPI, e.NPI), OID: unionStrings(s.Identifiers.OID, e.OIDs), Website: s.Identifiers.Website,
	}
	if s.Identifiers.Website == "" {
		s.Identifiers.Website = e.Website
	}
	s.Sandbox = s.Sandbox || e.Sandbox
	if !slices.Contains(s.Lists, m.listID) {
		s.Lists = append(append([]string(nil), s.Lists...), m.listID)
		sort.Strings(s.Lists)
	}
	s.Status = StatusActive
	s.UpdatedAt = m.now
	canonical(s)
	m.changed[id] = s
}

// canonical orders a source's sets, so that the same facts merged in a
// different order give the same record (re-importing is idempotent).
func canonical(s *Source) {
	var aliases []string
	for _, a := range s.Aliases {
		if !strings.EqualFold(a, s.Name) {
			aliases = appendUniqueFold(aliases, a)
		}
	}
	sort.Slice(aliases, func(i, j int) bool { return strings.ToLower(aliases[i]) < strings.ToLower(aliases[j]) })
	s.Aliases = aliases
	sort.Strings(s.Categories)
	sort.Strings(s.Identifiers.NPI)
	sort.Strings(s.Identifiers.OID)
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

// commit writes the merge's changes in one batch, then swaps them into
// memory and rebuilds the index.
func (c *Catalog) commit(ctx context.Context, m *merge, etag string, progress func(ImportProgress)) error {
	total := int64(len(m.changed) + len(m.epsNew) + len(m.setups) + 1)
	b := c.db.NewBatch()
	n := int64(0)
	tick := func() {
		n++
		if n%512 == 0 || n == total {
			progress(ImportProgress{Phase: PhaseWrite, Done: n, Total: total})
		}
	}
	for id, ep := range m.epsNew {
		if err := store.BatchPut(b, c.endpointsT, id, *ep); err != nil {
			b.Cancel()
			return err
		}
		tick()
	}
	for id, s := range m.changed {
		if err := store.BatchPut(b, c.sourcesT, id, *s); err != nil {
			b.Cancel()
			return err
		}
		tick()
	}
	for v, s := range m.setups {
		if err := store.BatchPut(b, c.setupsT, v, s); err != nil {
			b.Cancel()
			return err
		}
		tick()
	}
	li := ListInfo{ID: m.listID, Title: m.list.Title, Format: m.list.Format, Origin: m.origin, ETag: etag,
		ImportedAt: m.now, Rows: m.list.Rows, Sources: len(m.seen), Rejected: len(m.list.Rejected)}
	if err := store.BatchPut(b, c.listsT, m.listID, li); err != nil {
		b.Cancel()
		return err
	}
	tick()
	if err := ctx.Err(); err != nil {
		b.Cancel()
		return err
	}
	if err := b.Flush(true); err != nil {
		return fmt.Errorf("directory: write import: %w", err)
	}
	c.mu.Lock()
	for id, ep := range m.epsNew {
		c.endpoints[id] = ep
		c.tenants[id] = factsOf(ep.URL).tenant
	}
	for id, s := range m.changed {
		c.setMembership(c.sources[id], s)
		c.sources[id] = s
		c.addKeys(s)
	}
	for v, s := range m.setups {
		c.setups[v] = s
	}
	c.lists[m.listID] = &li
	c.mu.Unlock()
	progress(ImportProgress{Phase: PhaseIndex, Done: 0, Total: 1})
	c.invalidate()
	progress(ImportProgress{Phase: PhaseIndex, Done: 1, Total: 1})
	c.log.Info("list imported", "list", m.listID, "format", m.list.Format, "rows", m.sum.Rows,
		"created", m.sum.Created, "updated", m.sum.Updated, "unchanged", m.sum.Unchanged,
		"suspended", m.sum.Suspended, "rejected", m.sum.RejectedCount)
	return nil
}
