package sandbox

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/medrelay/medrelay/internal/sandbox/synth"
)

// Group ids every tenant serves for Group/[id]/$export.
var Groups = map[string]string{
	"all":      "every patient",
	"cohort-1": "every third patient (patient index divisible by 3)",
}

func (t *tenant) groupPatients(id string) ([]int, bool) {
	switch id {
	case "all":
		return nil, true
	case "cohort-1":
		var out []int
		for p := 0; p < t.data.Patients(); p += 3 {
			out = append(out, p)
		}
		return out, true
	}
	return nil, false
}

type exportJob struct {
	id, client   string
	t            *tenant
	request      string
	level, group string
	types        []synth.Type
	patients     []int // nil = all
	since        time.Time
	typeFilters  map[synth.Type][]*filter
	ov           *overlay
	txTime       time.Time
	created      time.Time
	requiresTok  bool
	warnings     []string

	ctx    context.Context
	cancel context.CancelFunc

	mu       sync.Mutex
	done     bool
	doneAt   time.Time
	progress string
	files    []*bulkFile
	deleted  []synth.Ref
	failed   error
	dropped  map[string]bool
	sizes    map[string]int64
}

// pos is a cursor in a type's resource universe: the i-th patient of the
// job's patient list, k-th resource.
type pos struct{ i, k int }

type bulkFile struct {
	name     string
	typ      synth.Type
	from, to pos
	count    int
}

func (j *exportJob) patientList() int {
	if j.patients == nil {
		return j.t.data.Patients()
	}
	return len(j.patients)
}

func (j *exportJob) patientAt(i int) int {
	if j.patients == nil {
		return i
	}
	return j.patients[i]
}

// include decides whether a resource is in the export.
func (j *exportJob) include(c *synth.Cursor, ref synth.Ref) (resourceState, bool) {
	st := j.ov.stateC(c, ref)
	if st.deleted {
		return st, false
	}
	if !j.since.IsZero() && !st.lastUpdated.After(j.since) {
		return st, false
	}
	if fs := j.typeFilters[ref.Type]; len(fs) > 0 {
		ok := false
		for _, f := range fs {
			if f.match(&st) {
				ok = true
				break
			}
		}
		if !ok {
			return st, false
		}
	}
	return st, true
}

func (j *exportJob) fast(ty synth.Type, p int) bool {
	if !j.since.IsZero() || len(j.typeFilters[ty]) > 0 {
		return false
	}
	if len(j.ov.m) == 0 {
		return true
	}
	if ty.Shared() {
		return j.ov.shared == 0
	}
	return j.ov.byPatient[p] == 0
}

// plan splits every type into files of at most max resources.
func (j *exportJob) plan(max int) error {
	cur := j.t.data.NewCursor()
	for ti, ty := range j.types {
		j.mu.Lock()
		j.progress = fmt.Sprintf("%d%% (%s)", ti*100/len(j.types), ty)
		j.mu.Unlock()
		n, start, seq := 0, pos{}, 0
		emit := func(end pos) {
			seq++
			f := &bulkFile{name: fmt.Sprintf("%s-%d.ndjson", ty, seq), typ: ty, from: start, to: end, count: n}
			j.mu.Lock()
			j.files = append(j.files, f)
			j.mu.Unlock()
			start, n = end, 0
		}
		np := j.patientList()
		if ty.Shared() {
			np = 1
		}
		for i := 0; i < np; i++ {
			if i%256 == 0 && j.ctx.Err() != nil {
				return j.ctx.Err()
			}
			p := -1
			if !ty.Shared() {
				p = j.patientAt(i)
			}
			cnt := j.t.data.Count(p, ty)
			if j.fast(ty, p) {
				for k := 0; k < cnt; {
					take := min(max-n, cnt-k)
					n += take
					k += take
					if n == max {
						emit(pos{i, k})
					}
				}
				continue
			}
			for k := 0; k < cnt; k++ {
				if _, ok := j.include(cur, synth.Ref{Type: ty, Patient: p, K: k}); ok {
					n++
					if n == max {
						emit(pos{i, k + 1})
					}
				}
			}
		}
		if n > 0 {
			emit(pos{np, 0})
		}
	}
	if !j.since.IsZero() {
		for ref, ov := range j.ov.m {
			if !ov.deleted || !j.wants(ref) {
				continue
			}
			if time.Unix(ov.meta.LastUpdated, int64(ov.meta.Nanos)).After(j.since) {
				j.deleted = append(j.deleted, ref)
			}
		}
		sortRefs(j.deleted)
	}
	return nil
}

// wants says whether ref's type and patient are within the export's scope.
func (j *exportJob) wants(ref synth.Ref) bool {
	if !slices.Contains(j.types, ref.Type) {
		return false
	}
	return j.patients == nil || ref.Type.Shared() || slices.Contains(j.patients, ref.Patient)
}

func sortRefs(refs []synth.Ref) {
	slices.SortFunc(refs, func(a, b synth.Ref) int {
		return cmp.Or(cmp.Compare(a.Type, b.Type), cmp.Compare(a.Patient, b.Patient), cmp.Compare(a.K, b.K))
	})
}

// writeFile streams one NDJSON file. It is the sandbox's hot path:
// resources are appended into large reused buffers by a producer goroutine
// while this goroutine writes the previous buffer to the socket, so
// generation overlaps with the kernel's copy.
func (j *exportJob) writeFile(w io.Writer, f *bulkFile) error {
	const chunk = 256 << 10
	full := make(chan []byte, 2)
	free := make(chan []byte, 3)
	for range 3 {
		free <- make([]byte, 0, chunk+64<<10)
	}
	stop := make(chan struct{})
	go func() {
		defer close(full)
		// hand passes a filled buffer on and returns an empty one (nil: stop).
		hand := func(b []byte) []byte {
			select {
			case full <- b:
			case <-stop:
				return nil
			}
			select {
			case b = <-free:
				return b[:0]
			case <-stop:
				return nil
			}
		}
		if tail := j.generate(f, chunk, <-free, hand); len(tail) > 0 {
			hand(tail)
		}
	}()
	var err error
	for b := range full {
		if err != nil {
			continue // drain until the producer sees stop
		}
		if _, err = w.Write(b); err != nil {
			close(stop)
			continue
		}
		free <- b
	}
	return err
}

// generate appends the file's lines to buf, handing it over whenever it
// holds at least chunk bytes; it returns the unhanded tail (nil if stopped).
func (j *exportJob) generate(f *bulkFile, chunk int, buf []byte, hand func([]byte) []byte) []byte {
	ty := f.typ
	cur := j.t.data.NewCursor()
	for i := f.from.i; i < f.to.i || i == f.to.i && f.to.k > 0; i++ {
		p := -1
		if !ty.Shared() {
			p = j.patientAt(i)
		}
		k0, k1 := 0, j.t.data.Count(p, ty)
		if i == f.from.i {
			k0 = f.from.k
		}
		if i == f.to.i {
			k1 = f.to.k
		}
		fast := j.fast(ty, p)
		for k := k0; k < k1; k++ {
			ref := synth.Ref{Type: ty, Patient: p, K: k}
			if fast {
				buf = cur.Append(buf, ref, synth.Meta{})
			} else {
				st, ok := j.include(cur, ref)
				if !ok {
					continue
				}
				buf = cur.Append(buf, ref, st.meta)
			}
			buf = append(buf, '\n')
			if len(buf) >= chunk {
				if buf = hand(buf); buf == nil {
					return nil
				}
			}
		}
		if i == f.to.i {
			break
		}
	}
	return buf
}

func (j *exportJob) writeDeleted(w io.Writer) error {
	buf := make([]byte, 0, 64<<10)
	for _, ref := range j.deleted {
		buf = append(buf, `{"resourceType":"Bundle","type":"transaction","entry":[{"request":{"method":"DELETE","url":"`...)
		buf = append(buf, ref.Type.String()...)
		buf = append(buf, '/')
		buf = ref.AppendID(buf)
		buf = append(buf, "\"}}]}\n"...)
	}
	_, err := w.Write(buf)
	return err
}

func (j *exportJob) writeErrors(w io.Writer) error {
	buf := make([]byte, 0, 4096)
	for _, msg := range j.warnings {
		buf = append(buf, `{"resourceType":"OperationOutcome","issue":[{"severity":"warning","code":"not-supported","diagnostics":`...)
		buf = synth.AppendString(buf, msg)
		buf = append(buf, "}]}\n"...)
	}
	_, err := w.Write(buf)
	return err
}

func (s *Sandbox) jobURL(j *exportJob) string { return s.base + "/" + j.t.name + "/bulk/" + j.id }

// handleKickoff starts an export at system, Patient or Group level.
func (s *Sandbox) handleKickoff(w http.ResponseWriter, r *http.Request, t *tenant, path, group string) {
	at, clientID, err := t.bearer(r)
	if !s.begin(w, r, t, EndpointExport, clientID) {
		return
	}
	if err != nil {
		unauthorized(w, err)
		return
	}
	if !t.prof.Bulk {
		writeOutcome(w, http.StatusNotFound, "not-supported", "this server does not offer Bulk Data export")
		return
	}
	if r.Method != http.MethodGet {
		writeOutcome(w, http.StatusMethodNotAllowed, "not-supported", "kick off exports with GET")
		return
	}
	if a := r.Header.Get("Accept"); a != "" {
		mt, _, _ := mime.ParseMediaType(strings.Split(a, ",")[0])
		if mt != "application/fhir+json" && mt != "application/json" && mt != "*/*" {
			writeOutcome(w, http.StatusBadRequest, "invalid", "Accept must be application/fhir+json")
			return
		}
	}
	if p := r.Header.Get("Prefer"); p != "" && !strings.Contains(p, "respond-async") {
		writeOutcome(w, http.StatusBadRequest, "invalid", "Prefer must be respond-async")
		return
	}
	strict := strings.Contains(r.Header.Get("Prefer"), "handling=strict")
	j, err := s.newJob(t, at, r.URL.Query(), path, group, strict)
	if err != nil {
		status := http.StatusBadRequest
		if errors.Is(err, errForbiddenExport) {
			status = http.StatusForbidden
		}
		if errors.Is(err, errNoGroup) {
			status = http.StatusNotFound
		}
		writeOutcome(w, status, "invalid", err.Error())
		return
	}
	j.request = t.fhirBase() + "/" + path
	if r.URL.RawQuery != "" {
		j.request += "?" + r.URL.RawQuery
	}
	s.mu.Lock()
	s.exports[j.id] = j
	s.mu.Unlock()
	go func() {
		err := j.plan(s.cfg.BulkFileResources)
		if min := time.Duration(s.cfg.BulkMinDuration); min > 0 {
			select {
			case <-time.After(min - time.Since(j.created)):
			case <-j.ctx.Done():
			}
		}
		j.mu.Lock()
		j.done, j.doneAt, j.failed = true, s.now(), err
		j.progress = "100%"
		j.mu.Unlock()
	}()
	w.Header().Set("Content-Location", s.jobURL(j))
	writeOutcome(w, http.StatusAccepted, "informational", "export started")
}

var (
	errForbiddenExport = errors.New("the access token does not allow exporting")
	errNoGroup         = errors.New("no such Group")
)

func (s *Sandbox) newJob(t *tenant, at *accessToken, q url.Values, path, group string, strict bool) (*exportJob, error) {
	j := &exportJob{id: randomToken(12), client: at.client, t: t, group: group, ov: t.ov.load(),
		txTime: s.now().UTC().Truncate(time.Microsecond), created: time.Now(), typeFilters: map[synth.Type][]*filter{},
		dropped: map[string]bool{}, sizes: map[string]int64{}}
	j.ctx, j.cancel = context.WithCancel(context.Background())
	switch {
	case path == "$export":
		j.level = "system"
	case path == "Patient/$export":
		j.level = "patient"
	default:
		j.level = "group"
		ps, ok := t.groupPatients(group)
		if !ok {
			return nil, fmt.Errorf("%w: %s", errNoGroup, group)
		}
		j.patients = ps
	}
	j.requiresTok = t.requiresTok
	if v := s.settings(t.name, at.client).requiresTok; v != nil {
		j.requiresTok = *v
	}
	for k, vs := range q {
		switch k {
		case "_outputFormat":
			for _, v := range vs {
				if v != "application/fhir+ndjson" && v != "application/ndjson" && v != "ndjson" {
					return nil, fmt.Errorf("%w: _outputFormat %q is not supported", errBadParam, v)
				}
			}
		case "_type", "_since", "_typeFilter":
		case "_elements", "patient", "includeAssociatedData":
			if strict {
				return nil, fmt.Errorf("%w: %s is not supported", errBadParam, k)
			}
			j.warnings = append(j.warnings, k+" is not supported and was ignored")
		default:
			return nil, fmt.Errorf("%w: %s is not a kick-off parameter", errBadParam, k)
		}
	}
	var types []synth.Type
	for _, v := range q["_type"] {
		for _, n := range strings.Split(v, ",") {
			n = strings.TrimSpace(n)
			if n == "" {
				continue
			}
			ty, ok := synth.ParseType(n)
			if !ok || !t.serves(ty) {
				return nil, fmt.Errorf("%w: _type %q is not supported", errBadParam, n)
			}
			types = append(types, ty)
		}
	}
	explicit := len(types) > 0
	if !explicit {
		for _, ty := range t.served {
			if j.level != "system" && ty.Shared() {
				continue
			}
			types = append(types, ty)
		}
	}
	for _, ty := range dedupTypes(types) {
		ok, _ := allows(at.scopes, ty.String(), true)
		if !ok {
			if explicit {
				return nil, fmt.Errorf("%w: %s", errForbiddenExport, ty)
			}
			continue
		}
		j.types = append(j.types, ty)
	}
	if len(j.types) == 0 {
		return nil, errForbiddenExport
	}
	if v := q.Get("_since"); v != "" {
		ts, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			return nil, fmt.Errorf("%w: _since must be a FHIR instant", errBadParam)
		}
		j.since = ts.UTC()
	}
	for _, v := range q["_typeFilter"] {
		for _, tf := range splitTypeFilters(v) {
			tyName, query, ok := strings.Cut(tf, "?")
			ty, known := synth.ParseType(tyName)
			var f *filter
			var err error
			if ok && known {
				var fq url.Values
				fq, err = url.ParseQuery(query)
				if err == nil {
					f, err = t.parseTypeFilter(fq)
				}
			} else {
				err = fmt.Errorf("%w: _typeFilter %q must be Type?params", errBadParam, tf)
			}
			if err != nil {
				if strict {
					return nil, err
				}
				j.warnings = append(j.warnings, "_typeFilter "+tf+" ignored: "+err.Error())
				continue
			}
			j.typeFilters[ty] = append(j.typeFilters[ty], f)
		}
	}
	return j, nil
}

func dedupTypes(in []synth.Type) []synth.Type {
	seen := map[synth.Type]bool{}
	var out []synth.Type
	for _, t := range in {
		if !seen[t] {
			seen[t] = true
			out = append(out, t)
		}
	}
	return out
}

// splitTypeFilters splits a comma-delimited _typeFilter value at commas that
// start another "Type?" (commas inside a query stay).
func splitTypeFilters(v string) []string {
	parts := strings.Split(v, ",")
	var out []string
	for _, p := range parts {
		name, _, hasQ := strings.Cut(p, "?")
		if len(out) > 0 && !(hasQ && validResourceType(name)) {
			out[len(out)-1] += "," + p
			continue
		}
		out = append(out, p)
	}
	return out
}

// parseTypeFilter supports the simple search forms the sandbox searches
// with: category, code, status, date and _lastUpdated.
func (t *tenant) parseTypeFilter(q url.Values) (*filter, error) {
	f := &filter{practice: -1}
	for k, vs := range q {
		if ok, err := f.addCommon(k, vs); err != nil {
			return nil, err
		} else if !ok {
			return nil, fmt.Errorf("%w: %s in _typeFilter", errBadParam, k)
		}
	}
	return f, nil
}

// serveBulk routes {tenant}/bulk/{job}[/{file}].
func (s *Sandbox) serveBulk(w http.ResponseWriter, r *http.Request, t *tenant, rest string) {
	jobID, file, _ := strings.Cut(rest, "/")
	s.mu.Lock()
	j, ok := s.exports[jobID]
	s.mu.Unlock()
	if file == "" {
		s.serveStatus(w, r, t, j, ok && j.t == t)
		return
	}
	s.serveFile(w, r, t, j, ok && j.t == t, file)
}

func (s *Sandbox) serveStatus(w http.ResponseWriter, r *http.Request, t *tenant, j *exportJob, ok bool) {
	endpoint := EndpointExportStat
	if r.Method == http.MethodDelete {
		endpoint = EndpointExportDel
	}
	at, clientID, err := t.bearer(r)
	if !s.begin(w, r, t, endpoint, clientID) {
		return
	}
	if err != nil {
		unauthorized(w, err)
		return
	}
	if !ok || j.client != at.client {
		writeOutcome(w, http.StatusNotFound, "not-found", "no such export (finished, cancelled or never started)")
		return
	}
	if r.Method == http.MethodDelete {
		j.cancel()
		s.mu.Lock()
		delete(s.exports, j.id)
		s.mu.Unlock()
		writeOutcome(w, http.StatusAccepted, "informational", "export cancelled")
		return
	}
	j.mu.Lock()
	done, failed, progress, files, doneAt := j.done, j.failed, j.progress, append([]*bulkFile(nil), j.files...), j.doneAt
	j.mu.Unlock()
	if !done {
		w.Header().Set("X-Progress", progress)
		w.Header().Set("Retry-After", strconv.Itoa(s.cfg.BulkRetryAfter))
		w.WriteHeader(http.StatusAccepted)
		return
	}
	if failed != nil {
		writeOutcome(w, http.StatusInternalServerError, "exception", "export failed: "+failed.Error())
		return
	}
	output := make([]map[string]any, 0, len(files))
	for _, f := range files {
		output = append(output, map[string]any{"type": f.typ.String(), "url": s.jobURL(j) + "/" + f.name, "count": f.count})
	}
	deleted := []map[string]any{}
	if len(j.deleted) > 0 {
		deleted = append(deleted, map[string]any{"type": "Bundle", "url": s.jobURL(j) + "/deleted-1.ndjson", "count": len(j.deleted)})
	}
	errs := []map[string]any{}
	if len(j.warnings) > 0 {
		errs = append(errs, map[string]any{"type": "OperationOutcome", "url": s.jobURL(j) + "/error-1.ndjson", "count": len(j.warnings)})
	}
	w.Header().Set("Expires", doneAt.Add(time.Duration(s.cfg.BulkFileTTL)).UTC().Format(http.TimeFormat))
	writeJSON(w, http.StatusOK, "application/json", map[string]any{
		"transactionTime":     j.txTime.Format(time.RFC3339Nano),
		"request":             j.request,
		"requiresAccessToken": j.requiresTok,
		"output":              output,
		"deleted":             deleted,
		"error":               errs,
	})
}

func (s *Sandbox) serveFile(w http.ResponseWriter, r *http.Request, t *tenant, j *exportJob, ok bool, name string) {
	clientID := ""
	var at *accessToken
	var authErr error
	if r.Header.Get("Authorization") != "" {
		at, clientID, authErr = t.bearer(r)
	}
	if clientID == "" && ok {
		clientID = j.client
	}
	if !s.begin(w, r, t, EndpointExportFile, clientID) {
		return
	}
	if !ok {
		writeOutcome(w, http.StatusNotFound, "not-found", "no such export")
		return
	}
	if j.requiresTok {
		if at == nil || authErr != nil {
			if authErr == nil {
				authErr = errNoToken
			}
			unauthorized(w, authErr)
			return
		}
		if at.client != j.client {
			forbidden(w, "this export belongs to another client")
			return
		}
	}
	j.mu.Lock()
	done, doneAt := j.done, j.doneAt
	var f *bulkFile
	for _, x := range j.files {
		if x.name == name {
			f = x
		}
	}
	j.mu.Unlock()
	fs := s.settings(t.name, j.client)
	if !done || fs.expireFiles || s.now().After(doneAt.Add(time.Duration(s.cfg.BulkFileTTL))) {
		writeOutcome(w, http.StatusNotFound, "not-found", "file expired or not ready; start a new export")
		return
	}
	var write func(io.Writer) error
	switch {
	case f != nil:
		write = func(w io.Writer) error { return j.writeFile(w, f) }
	case name == "deleted-1.ndjson" && len(j.deleted) > 0:
		write = j.writeDeleted
	case name == "error-1.ndjson" && len(j.warnings) > 0:
		write = j.writeErrors
	default:
		writeOutcome(w, http.StatusNotFound, "not-found", "no such file")
		return
	}
	w.Header().Set("Content-Type", "application/fhir+ndjson")
	w.Header().Set("Accept-Ranges", "bytes")
	if rh := r.Header.Get("Range"); rh != "" {
		size := j.size(name, write)
		start, end, ok := parseRange(rh, size)
		if !ok {
			w.Header().Set("Content-Range", "bytes */"+strconv.FormatInt(size, 10))
			writeOutcome(w, http.StatusRequestedRangeNotSatisfiable, "invalid", "unsatisfiable range")
			return
		}
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, end-1, size))
		w.Header().Set("Content-Length", strconv.FormatInt(end-start, 10))
		w.WriteHeader(http.StatusPartialContent)
		if r.Method == http.MethodHead {
			return
		}
		_ = write(&rangeWriter{w: w, skip: start, left: end - start})
		return
	}
	j.mu.Lock()
	size, known := j.sizes[name]
	drop := fs.dropAfter > 0 && !j.dropped[name]
	if drop {
		j.dropped[name] = true
	}
	j.mu.Unlock()
	if known {
		w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
	}
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return
	}
	if drop {
		s.countFault(EndpointExportFile, "drop")
		_ = write(&rangeWriter{w: w, left: fs.dropAfter})
		_ = http.NewResponseController(w).Flush()
		panic(http.ErrAbortHandler) // cut the connection mid-file
	}
	_ = write(w)
}

// size generates a file once to learn its length (for Range requests).
func (j *exportJob) size(name string, write func(io.Writer) error) int64 {
	j.mu.Lock()
	n, ok := j.sizes[name]
	j.mu.Unlock()
	if ok {
		return n
	}
	var c countWriter
	_ = write(&c)
	j.mu.Lock()
	j.sizes[name] = int64(c)
	j.mu.Unlock()
	return int64(c)
}

type countWriter int64

func (c *countWriter) Write(p []byte) (int, error) { *c += countWriter(len(p)); return len(p), nil }

// rangeWriter passes bytes [skip, skip+left) through and then stops the writer.
type rangeWriter struct {
	w          io.Writer
	skip, left int64
}

var errRangeDone = errors.New("range complete")

func (r *rangeWriter) Write(p []byte) (int, error) {
	n := len(p)
	if r.skip > 0 {
		if int64(len(p)) <= r.skip {
			r.skip -= int64(len(p))
			return n, nil
		}
		p = p[r.skip:]
		r.skip = 0
	}
	if int64(len(p)) > r.left {
		p = p[:r.left]
	}
	if len(p) > 0 {
		if _, err := r.w.Write(p); err != nil {
			return 0, err
		}
		r.left -= int64(len(p))
	}
	if r.left == 0 {
		return 0, errRangeDone
	}
	return n, nil
}

// parseRange reads a single "bytes=a-b", "bytes=a-" or "bytes=-n" range;
// it is a parser of outside input and is fuzzed.
func parseRange(h string, size int64) (start, end int64, ok bool) {
	spec, found := strings.CutPrefix(strings.TrimSpace(h), "bytes=")
	if !found || strings.Contains(spec, ",") {
		return 0, 0, false
	}
	a, b, found := strings.Cut(spec, "-")
	if !found {
		return 0, 0, false
	}
	a, b = strings.TrimSpace(a), strings.TrimSpace(b)
	switch {
	case a == "" && b == "":
		return 0, 0, false
	case a == "":
		n, err := strconv.ParseInt(b, 10, 64)
		if err != nil || n <= 0 {
			return 0, 0, false
		}
		if n > size {
			n = size
		}
		return size - n, size, size > 0
	}
	s, err := strconv.ParseInt(a, 10, 64)
	if err != nil || s < 0 || s >= size {
		return 0, 0, false
	}
	e := size - 1
	if b != "" {
		e, err = strconv.ParseInt(b, 10, 64)
		if err != nil || e < s {
			return 0, 0, false
		}
		if e >= size {
			e = size - 1
		}
	}
	return s, e + 1, true
}
