package directory

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/medrelay/medrelay/internal/directory/importers"
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
