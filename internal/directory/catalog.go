package directory

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/medrelay/medrelay/internal/directory/importers"
	"github.com/medrelay/medrelay/internal/directory/index"
	"github.com/medrelay/medrelay/internal/store"
)

// SetupProvider gives a vendor's setup requirements. This is the seam where
// the vendor plugins' profiles (Describe's auth profile) will plug in: when
// one is given, its answer wins over what the catalog and imported platform
// files say.
type SetupProvider interface {
	VendorSetup(ctx context.Context, vendor string) (Setup, bool)
}

// Catalog is the directory: sources from the embedded catalog and the
// store, searchable in memory. Safe for concurrent use.
type Catalog struct {
	db       *store.DB
	log      *slog.Logger
	now      func() time.Time
	http     *http.Client
	setupsBy SetupProvider
	ttl      time.Duration

	sourcesT   *store.Table[Source]
	endpointsT *store.Table[Endpoint]
	listsT     *store.Table[ListInfo]
	discoveryT *store.Table[Discovery]
	setupsT    *store.Table[Setup]

	// sem serialises imports (and the writes of discovery results).
	sem chan struct{}

	mu           sync.RWMutex
	sources      map[string]*Source
	endpoints    map[string]*Endpoint
	lists        map[string]*ListInfo
	discovery    map[string]*Discovery
	setups       map[string]Setup // imported, by vendor
	builtinSetup map[string]Setup
	idx          atomic.Pointer[index.Index]
	loadStats    LoadStats
	// keys maps identity keys (endpoint tenant | normalized name or alias)
	// to source ids, so an imported entry finds the source it describes.
	// moreKeys holds the other sources that claim a key when several do
	// (two practices of one name on athenahealth's shared endpoint): the
	// owner is then chosen by ownerOf's rule, never by the order sources
	// were added in, so a restarted agent resolves rows as a running one
	// does. tenants caches each endpoint's tenant.
	keys     map[string]string
	moreKeys map[string][]string
	tenants  map[string]string
	// members maps a list id to the ids of the sources it contains.
	members map[string]map[string]bool

	// dirty is set when sources changed since the index was built; the next
	// search rebuilds it (imports of many lists in a row rebuild once).
	dirty   atomic.Bool
	buildMu sync.Mutex

	// discovering collapses concurrent discoveries of one endpoint.
	dmu         sync.Mutex
	discovering map[string]*discoveryCall
}

// ListInfo is what the catalog remembers of an imported list.
type ListInfo struct {
	ID         string    `json:"id"`
	Title      string    `json:"title,omitempty"`
	Format     string    `json:"format"`
	Origin     string    `json:"origin,omitempty"`
	ETag       string    `json:"etag,omitempty"`
	ImportedAt time.Time `json:"imported_at"`
	Rows       int       `json:"rows"`
	Sources    int       `json:"sources"`
	Rejected   int       `json:"rejected"`
}

// LoadStats describe the last Load: what startup cost.
type LoadStats struct {
	Builtin    int
	Stored     int
	Sources    int
	Endpoints  int
	ReadStore  time.Duration
	BuildIndex time.Duration
	Total      time.Duration
	IndexTerms int
}

// Option configures a Catalog.
type Option func(*Catalog)

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option { return func(c *Catalog) { c.log = l } }

// WithClock replaces time.Now (tests).
func WithClock(now func() time.Time) Option { return func(c *Catalog) { c.now = now } }

// WithHTTPClient sets the client used to fetch lists and discover
// endpoints (tests pass an httptest server's client).
func WithHTTPClient(h *http.Client) Option { return func(c *Catalog) { c.http = h } }

// WithSetupProvider plugs in vendor setup requirements from plugins.
func WithSetupProvider(p SetupProvider) Option { return func(c *Catalog) { c.setupsBy = p } }

// WithDiscoveryTTL sets how long discovery results are kept when the server
// gives no Cache-Control (default 24h).
func WithDiscoveryTTL(d time.Duration) Option { return func(c *Catalog) { c.ttl = d } }

// New returns the catalog kept in db. Call Load before use.
func New(db *store.DB, opts ...Option) *Catalog {
	c := &Catalog{
		db:          db,
		log:         slog.Default(),
		now:         time.Now,
		ttl:         24 * time.Hour,
		sourcesT:    store.NewTable[Source](db, store.DirSources),
		endpointsT:  store.NewTable[Endpoint](db, store.DirEndpoints),
		listsT:      store.NewTable[ListInfo](db, store.DirLists),
		discoveryT:  store.NewTable[Discovery](db, store.DirDiscovery),
		setupsT:     store.NewTable[Setup](db, store.DirVendorSetups),
		sem:         make(chan struct{}, 1),
		discovering: map[string]*discoveryCall{},
	}
	for _, o := range opts {
		o(c)
	}
	if c.http == nil {
		c.http = defaultHTTPClient()
	}
	c.log = c.log.With("component", "directory")
	return c
}

// Load reads the embedded catalog and the store and builds the index.
func (c *Catalog) Load(ctx context.Context) error {
	start := time.Now()
	emb, err := loadEmbedded()
	if err != nil {
		return err
	}
	sources := map[string]*Source{}
	endpoints := map[string]*Endpoint{}
	lists := map[string]*ListInfo{}
	disc := map[string]*Discovery{}
	setups := map[string]Setup{}
	// Sources and endpoints are most of the start-up cost (tens of
	// thousands of JSON records): read the bytes, decode on every core.
	if err := loadParallel(ctx, c.db, store.DirSources, sources); err != nil {
		return fmt.Errorf("directory: read sources: %w", err)
	}
	stored := len(sources)
	if err := loadParallel(ctx, c.db, store.DirEndpoints, endpoints); err != nil {
		return fmt.Errorf("directory: read endpoints: %w", err)
	}
	if err := c.listsT.Scan(ctx, store.ScanOptions{}, func(k string, l ListInfo) error {
		lists[k] = &l
		return nil
	}); err != nil {
		return fmt.Errorf("directory: read lists: %w", err)
	}
	if err := c.discoveryT.Scan(ctx, store.ScanOptions{}, func(k string, d Discovery) error {
		disc[k] = &d
		return nil
	}); err != nil {
		return fmt.Errorf("directory: read discovery: %w", err)
	}
	if err := c.setupsT.Scan(ctx, store.ScanOptions{}, func(k string, s Setup) error {
		setups[k] = s
		return nil
	}); err != nil {
		return fmt.Errorf("directory: read vendor setups: %w", err)
	}
	internStrings(sources, endpoints)
	readDur := time.Since(start)
	// The embedded catalog's facts win over a stored copy of a builtin
	// source (an upgraded agent ships corrected facts); what imports and
	// discovery added is kept.
	for _, e := range emb.endpoints {
		if _, ok := endpoints[e.ID]; !ok {
			endpoints[e.ID] = e
		}
	}
	for _, b := range emb.sources {
		if s, ok := sources[b.ID]; ok {
			m := *b
			m.Lists = s.Lists
			m.Endpoints = unionStrings(b.Endpoints, s.Endpoints)
			m.Aliases = unionFold(b.Aliases, s.Aliases)
			m.CreatedAt = s.CreatedAt
			m.UpdatedAt = s.UpdatedAt
			sources[b.ID] = &m
			continue
		}
		sources[b.ID] = b
	}
	c.mu.Lock()
	c.sources, c.endpoints, c.lists, c.discovery, c.setups = sources, endpoints, lists, disc, setups
	c.builtinSetup = emb.setups
	c.keys = make(map[string]string, len(sources)*2)
	c.moreKeys = map[string][]string{}
	c.tenants = make(map[string]string, len(endpoints))
	c.members = map[string]map[string]bool{}
	for _, s := range sources {
		c.addKeys(s)
		c.setMembership(nil, s)
	}
	c.mu.Unlock()
	ib := time.Now()
	ix := c.rebuild()
	c.mu.Lock()
	c.loadStats = LoadStats{
		Builtin: len(emb.sources), Stored: stored, Sources: len(sources), Endpoints: len(endpoints),
		ReadStore: readDur, BuildIndex: time.Since(ib), Total: time.Since(start), IndexTerms: ix.Terms(),
	}
	st := c.loadStats
	c.mu.Unlock()
	c.log.Info("directory loaded", "sources", st.Sources, "builtin", st.Builtin, "stored", st.Stored,
		"endpoints", st.Endpoints, "read_store", st.ReadStore.Round(time.Millisecond),
		"build_index", st.BuildIndex.Round(time.Millisecond), "total", st.Total.Round(time.Millisecond))
	return nil
}

// loadParallel reads every record of table name into out, decoding JSON on
// all cores.
func loadParallel[T any](ctx context.Context, db *store.DB, name store.Name, out map[string]*T) error {
	type rec struct {
		key string
		raw []byte
	}
	var recs []rec
	if err := store.NewTable[[]byte](db, name).Scan(ctx, store.ScanOptions{}, func(k string, b []byte) error {
		recs = append(recs, rec{k, b})
		return nil
	}); err != nil {
		return err
	}
	vals := make([]T, len(recs))
	workers := min(runtime.GOMAXPROCS(0), 8)
	var wg sync.WaitGroup
	errs := make([]error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < len(recs); i += workers {
				if err := json.Unmarshal(recs[i].raw, &vals[i]); err != nil {
					errs[w] = fmt.Errorf("%s %q: %w", name, recs[i].key, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	for i, r := range recs {
		out[r.key] = &vals[i]
	}
	return nil
}

// internStrings makes the decoded records share one copy of the strings
// that repeat across them (list ids, endpoint ids, vendors, kinds,
// versions): decoding gives each record its own, and list ids alone (a
// source is in one to three lists, each id some 45 bytes) cost megabytes
// over the corpus.
func internStrings(sources map[string]*Source, endpoints map[string]*Endpoint) {
	seen := map[string]string{}
	in := func(s string) string {
		if x, ok := seen[s]; ok {
			return x
		}
		seen[s] = s
		return s
	}
	for _, s := range sources {
		s.Origin, s.DisplayFrom, s.Vendor = in(s.Origin), in(s.DisplayFrom), in(s.Vendor)
		s.Kind, s.Status = Kind(in(string(s.Kind))), Status(in(string(s.Status)))
		for i, l := range s.Lists {
			s.Lists[i] = in(l)
		}
		// Endpoint ids: 17,000 athenahealth practices reach one endpoint.
		for i, e := range s.Endpoints {
			s.Endpoints[i] = in(e)
		}
		for _, p := range s.Portals {
			for i, e := range p.Endpoints {
				p.Endpoints[i] = in(e)
			}
		}
	}
	for _, e := range endpoints {
		e.Vendor, e.FHIRVersion, e.Audience = in(e.Vendor), in(e.FHIRVersion), in(e.Audience)
	}
}

// Stats reports the cost of the last Load.
func (c *Catalog) Stats() LoadStats {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.loadStats
}

// addKeys records the identity keys of s. Callers hold c.mu.
func (c *Catalog) addKeys(s *Source) {
	for _, epID := range s.Endpoints {
		t, ok := c.tenants[epID]
		if !ok {
			ep, found := c.endpoints[epID]
			if !found {
				continue
			}
			t = factsOf(ep.URL).tenant
			c.tenants[epID] = t
		}
		c.claim(t+"|"+index.NormalizeName(s.Name), s.ID)
		for _, a := range s.Aliases {
			c.claim(t+"|"+index.NormalizeName(a), s.ID)
		}
	}
}

// claim records that source id has identity key k. A source keeps every
// name it had (a replaced name becomes an alias) and every endpoint, so
// claims are only ever added. Callers hold c.mu.
func (c *Catalog) claim(k, id string) {
	switch cur := c.keys[k]; {
	case cur == "":
		c.keys[k] = id
	case cur != id && !slices.Contains(c.moreKeys[k], id):
		c.moreKeys[k] = append(c.moreKeys[k], id)
	}
}

// ownerOf is the source an identity key leads to. When several sources
// claim it, a source whose name it is wins over one whose alias it is, then
// the smallest id: the answer depends on the sources, not on the order
// their claims were recorded in.
func ownerOf(keys map[string]string, more map[string][]string, sources map[string]*Source, k string) string {
	id := keys[k]
	others := more[k]
	if len(others) == 0 {
		return id
	}
	name := k[strings.LastIndexByte(k, '|')+1:]
	rank := func(id string) int {
		s := sources[id]
		switch {
		case s == nil:
			return 2
		case index.NormalizeName(s.Name) == name:
			return 0
		}
		return 1
	}
	best, br := id, rank(id)
	for _, x := range others {
		if r := rank(x); r < br || r == br && x < best {
			best, br = x, r
		}
	}
	return best
}

// setMembership moves a source from the lists of its old version to those
// of its new one. Callers hold c.mu.
func (c *Catalog) setMembership(old, s *Source) {
	if old != nil {
		for _, l := range old.Lists {
			delete(c.members[l], old.ID)
		}
	}
	for _, l := range s.Lists {
		m := c.members[l]
		if m == nil {
			m = map[string]bool{}
			c.members[l] = m
		}
		m[s.ID] = true
	}
}

// invalidate marks the index out of date.
func (c *Catalog) invalidate() { c.dirty.Store(true) }

// index returns an up-to-date index, rebuilding it if sources changed.
func (c *Catalog) index() *index.Index {
	if !c.dirty.Load() {
		if ix := c.idx.Load(); ix != nil {
			return ix
		}
	}
	c.buildMu.Lock()
	defer c.buildMu.Unlock()
	if c.dirty.Load() || c.idx.Load() == nil {
		c.dirty.Store(false)
		start := time.Now()
		ix := c.rebuild()
		c.log.Debug("search index rebuilt", "sources", ix.Len(), "took", time.Since(start))
	}
	return c.idx.Load()
}

// rebuild builds the search index from the sources and swaps it in.
func (c *Catalog) rebuild() *index.Index {
	c.mu.RLock()
	docs := make([]index.Doc, 0, len(c.sources))
	for _, s := range c.sources {
		docs = append(docs, docOf(s))
	}
	c.mu.RUnlock()
	ix := index.Build(docs)
	c.idx.Store(ix)
	return ix
}

func docOf(s *Source) index.Doc {
	d := index.Doc{Key: s.ID, Name: s.Name, Aliases: s.Aliases, Vendor: s.Vendor, Kind: string(s.Kind), Suspended: s.Status == StatusSuspended}
	for _, p := range s.Portals {
		if p.Name != "" {
			d.Portals = append(d.Portals, p.Name)
		}
	}
	for _, l := range s.Locations {
		if l.City != "" {
			d.Cities = appendUniqueFold(d.Cities, l.City)
		}
		if l.State != "" {
			d.States = append(d.States, l.State)
		}
		if l.PostalCode != "" {
			d.Postal = append(d.Postal, l.PostalCode)
		}
	}
	return d
}

// Entry is a source with its endpoints, their discovery results, and the
// setup an app must do, resolved for reading.
type Entry struct {
	Source    *Source
	Endpoints []EndpointEntry
	// Setup is the vendor's requirements merged with the source's own facts.
	Setup *Setup
}

// EndpointEntry is an endpoint and what discovery found.
type EndpointEntry struct {
	*Endpoint
	Discovery *Discovery
}

// Get returns the source with id.
func (c *Catalog) Get(ctx context.Context, id string) (Entry, error) {
	c.mu.RLock()
	s, ok := c.sources[id]
	c.mu.RUnlock()
	if !ok {
		return Entry{}, fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	return c.entry(ctx, s), nil
}

func (c *Catalog) entry(ctx context.Context, s *Source) Entry {
	c.mu.RLock()
	e := Entry{Source: s}
	for _, id := range s.Endpoints {
		if ep, ok := c.endpoints[id]; ok {
			e.Endpoints = append(e.Endpoints, EndpointEntry{Endpoint: ep, Discovery: c.discovery[id]})
		}
	}
	c.mu.RUnlock()
	e.Setup = c.setupFor(ctx, s)
	return e
}

// Setup returns a vendor's setup requirements: a plugin's profile first,
// then an imported platform file, then the embedded catalog.
func (c *Catalog) Setup(ctx context.Context, vendor string) (Setup, bool) {
	if vendor == "" {
		return Setup{}, false
	}
	if c.setupsBy != nil {
		if s, ok := c.setupsBy.VendorSetup(ctx, vendor); ok {
			return s, true
		}
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	if s, ok := c.setups[vendor]; ok {
		return s, true
	}
	s, ok := c.builtinSetup[vendor]
	return s, ok
}

func (c *Catalog) setupFor(ctx context.Context, s *Source) *Setup {
	v, ok := c.Setup(ctx, s.Vendor)
	if !ok && s.Setup == nil {
		return nil
	}
	out := v
	if s.Setup != nil {
		if s.Setup.RegistrationURL != "" {
			out.RegistrationURL = s.Setup.RegistrationURL
		}
		if s.Setup.Notes != "" {
			out.Notes = strings.TrimSpace(out.Notes + "\n" + s.Setup.Notes)
		}
		if s.Setup.Documentation != "" && out.Documentation == "" {
			out.Documentation = s.Setup.Documentation
		}
		if out.From == "" {
			out.From = s.Setup.From
		}
	}
	return &out
}

// SearchParams is a search of the directory.
type SearchParams struct {
	Query            string
	Vendor           string
	Kind             string
	State            string
	PostalPrefix     string
	ExcludeSuspended bool
	// Limit is the page size: default 20, at most 200.
	Limit int
	// Cursor continues a previous search (SearchResult.Next).
	Cursor string
}

// SearchHit is one result.
type SearchHit struct {
	Entry
	Score   float32
	Matched int
}

// SearchResult is a page of results.
type SearchResult struct {
	Hits []SearchHit
	// Next is the cursor of the next page, "" on the last.
	Next string
}

// MaxLimit bounds a page.
const MaxLimit = 200

// Search searches the directory.
func (c *Catalog) Search(ctx context.Context, p SearchParams) (SearchResult, error) {
	if len(p.Query) > 512 {
		return SearchResult{}, fmt.Errorf("%w: query longer than 512 characters", ErrBadQuery)
	}
	if p.Limit < 0 {
		return SearchResult{}, fmt.Errorf("%w: negative limit", ErrBadQuery)
	}
	limit := p.Limit
	if limit == 0 {
		limit = 20
	}
	limit = min(limit, MaxLimit)
	if p.Kind != "" && !validKind(Kind(strings.ToLower(p.Kind))) {
		return SearchResult{}, fmt.Errorf("%w: unknown kind %q (ehr, payer, network, lab, pharmacy, imaging)", ErrBadQuery, p.Kind)
	}
	var after *index.Cursor
	if p.Cursor != "" {
		cur, err := decodeCursor(p.Cursor)
		if err != nil {
			return SearchResult{}, err
		}
		after = &cur
	}
	ix := c.index()
	if ix == nil {
		return SearchResult{}, fmt.Errorf("directory: not loaded")
	}
	hits, next := ix.Search(index.Query{
		Text: p.Query, Vendor: p.Vendor, Kind: strings.ToLower(p.Kind), State: p.State, PostalPrefix: p.PostalPrefix,
		ExcludeSuspended: p.ExcludeSuspended, Limit: limit, After: after,
	})
	res := SearchResult{}
	if next != nil {
		res.Next = encodeCursor(*next)
	}
	for _, h := range hits {
		c.mu.RLock()
		s, ok := c.sources[h.Key]
		c.mu.RUnlock()
		if !ok {
			continue
		}
		res.Hits = append(res.Hits, SearchHit{Entry: c.entry(ctx, s), Score: h.Score, Matched: h.Matched})
	}
	return res, nil
}

func validKind(k Kind) bool {
	switch k {
	case KindEHR, KindPayer, KindNetwork, KindLab, KindPharmacy, KindImaging:
		return true
	}
	return false
}

func encodeCursor(c index.Cursor) string {
	return strconv.FormatFloat(float64(c.Score), 'g', -1, 32) + "|" + c.Key
}

func decodeCursor(s string) (index.Cursor, error) {
	sc, key, ok := strings.Cut(s, "|")
	if !ok || key == "" {
		return index.Cursor{}, fmt.Errorf("%w", ErrBadCursor)
	}
	f, err := strconv.ParseFloat(sc, 32)
	if err != nil {
		return index.Cursor{}, fmt.Errorf("%w", ErrBadCursor)
	}
	return index.Cursor{Score: float32(f), Key: key}, nil
}

// Len is the number of sources.
func (c *Catalog) Len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.sources)
}

// sourceID makes a readable, stable id: the name's slug and a hash of the
// source's identity.
func sourceID(name, identity string) string {
	sl := slugify(name)
	if len(sl) > 40 {
		sl = strings.TrimRight(sl[:40], "-")
	}
	h := sha256.Sum256([]byte(identity))
	if sl == "" {
		sl = "source"
	}
	return sl + "-" + hex.EncodeToString(h[:])[:10]
}

func endpointID(url string) string {
	h := sha256.Sum256([]byte(strings.ToLower(url)))
	return "ep-" + hex.EncodeToString(h[:])[:16]
}

func slugify(s string) string {
	var b strings.Builder
	dash := false
	for _, t := range index.Tokens(s) {
		for _, r := range t {
			if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
				if dash && b.Len() > 0 {
					b.WriteByte('-')
				}
				dash = false
				b.WriteRune(r)
			}
		}
		dash = true
	}
	return b.String()
}

func unionStrings(a, b []string) []string {
	out := append([]string(nil), a...)
	for _, x := range b {
		if !slices.Contains(out, x) {
			out = append(out, x)
		}
	}
	return out
}

func unionFold(a, b []string) []string {
	out := append([]string(nil), a...)
	for _, x := range b {
		out = appendUniqueFold(out, x)
	}
	return out
}

func appendUniqueFold(list []string, v string) []string {
	v = strings.TrimSpace(v)
	if v == "" {
		return list
	}
	for _, x := range list {
		if strings.EqualFold(x, v) {
			return list
		}
	}
	return append(list, v)
}

// stateOf normalises a location's state, deriving it from the ZIP code
// when the list gave none.
func stateOf(l importers.Location) string {
	if st := importers.StateCode(l.State); st != "" {
		return st
	}
	if l.State != "" {
		return strings.TrimSpace(l.State)
	}
	if l.Country == "" || strings.Contains(strings.ToLower(l.Country), "united states") || strings.EqualFold(l.Country, "US") || strings.EqualFold(l.Country, "USA") {
		return importers.StateFromZIP(l.PostalCode)
	}
	return ""
}
