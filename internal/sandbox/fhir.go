package sandbox

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/medrelay/medrelay/internal/sandbox/synth"
)

const fhirJSON = "application/fhir+json"

// serveFHIR routes {tenant}/fhir/...
func (s *Sandbox) serveFHIR(w http.ResponseWriter, r *http.Request, t *tenant, rest string) {
	switch rest {
	case ".well-known/smart-configuration":
		if s.begin(w, r, t, EndpointSMARTConfig, "") {
			writeJSON(w, http.StatusOK, "application/json", s.smartConfiguration(t))
		}
		return
	case ".well-known/openid-configuration":
		if s.begin(w, r, t, EndpointOpenIDConfig, "") {
			writeJSON(w, http.StatusOK, "application/json", s.openIDConfiguration(t))
		}
		return
	case "metadata":
		if s.begin(w, r, t, EndpointMetadata, "") {
			writeJSON(w, http.StatusOK, fhirJSON, s.capabilityStatement(t))
		}
		return
	case "$export", "Patient/$export":
		s.handleKickoff(w, r, t, rest, "")
		return
	}
	parts := strings.Split(rest, "/")
	if len(parts) == 3 && parts[0] == "Group" && parts[2] == "$export" {
		s.handleKickoff(w, r, t, rest, parts[1])
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		s.count(t, "other", "")
		writeOutcome(w, http.StatusMethodNotAllowed, "not-supported", "the sandbox is read-only")
		return
	}
	endpoint := EndpointSearch
	switch {
	case len(parts) == 1 && parts[0] != "":
	case len(parts) == 2 && parts[1] == "_search":
	case len(parts) == 3 && parts[0] == "Patient" && parts[2] == "$everything":
		endpoint = EndpointEverything
	case len(parts) == 2:
		endpoint = EndpointRead
	case len(parts) == 1 && parts[0] == "":
		s.count(t, "other", "")
		writeOutcome(w, http.StatusBadRequest, "not-supported", "system-level search is not supported; name a resource type")
		return
	default:
		s.count(t, "other", "")
		writeOutcome(w, http.StatusNotFound, "not-found", "unknown FHIR path")
		return
	}
	at, clientID, err := t.bearer(r)
	if !s.begin(w, r, t, endpoint, clientID) {
		return
	}
	if err != nil {
		unauthorized(w, err)
		return
	}
	switch endpoint {
	case EndpointRead:
		s.handleRead(w, r, t, at, parts[0], parts[1])
	case EndpointEverything:
		s.handleEverything(w, r, t, at, parts[1])
	default:
		s.handleSearch(w, r, t, at, parts[0])
	}
}

func unauthorized(w http.ResponseWriter, err error) {
	desc := err.Error()
	if errors.Is(err, errNoToken) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="sandbox"`)
	} else {
		w.Header().Set("WWW-Authenticate", `Bearer realm="sandbox", error="invalid_token", error_description="`+desc+`"`)
	}
	writeOutcome(w, http.StatusUnauthorized, "login", desc)
}

func forbidden(w http.ResponseWriter, desc string) {
	w.Header().Set("WWW-Authenticate", `Bearer realm="sandbox", error="insufficient_scope"`)
	writeOutcome(w, http.StatusForbidden, "forbidden", desc)
}

// resolveType checks the type exists here and the token may touch it.
func (t *tenant) resolveType(w http.ResponseWriter, at *accessToken, typ string, search bool) (synth.Type, []url.Values, bool) {
	ty, ok := synth.ParseType(typ)
	if !ok || !t.serves(ty) {
		writeOutcome(w, http.StatusNotFound, "not-supported", "resource type "+typ+" is not supported by this server")
		return 0, nil, false
	}
	allowed, restrictions := allows(at.scopes, typ, search)
	if !allowed {
		forbidden(w, "the access token's scopes do not allow this interaction on "+typ)
		return 0, nil, false
	}
	return ty, restrictions, true
}

// inCompartment says whether a patient-context token may see ref.
func inCompartment(at *accessToken, ref synth.Ref) bool {
	if at.patient == "" || !onlyPatientScopes(at.scopes) {
		return true
	}
	if ref.Type.Shared() {
		return true
	}
	return synth.PatientID(ref.Patient) == at.patient
}

func onlyPatientScopes(scopes []scope) bool {
	for _, s := range scopes {
		if s.context != "patient" {
			return false
		}
	}
	return true
}

func (s *Sandbox) handleRead(w http.ResponseWriter, r *http.Request, t *tenant, at *accessToken, typ, id string) {
	ty, restrictions, ok := t.resolveType(w, at, typ, false)
	if !ok {
		return
	}
	ref, ok := t.data.ParseID(ty, id)
	if !ok || !inCompartment(at, ref) {
		writeOutcome(w, http.StatusNotFound, "not-found", typ+"/"+id+" is not known")
		return
	}
	ov := t.ov.load()
	st := ov.state(t.data, ref)
	if st.deleted {
		writeOutcome(w, http.StatusGone, "deleted", typ+"/"+id+" has been deleted")
		return
	}
	if !matchesRestrictions(st.header, restrictions) {
		forbidden(w, "the access token's scopes do not cover this resource")
		return
	}
	etag := `W/"` + strconv.Itoa(st.meta.Version) + `"`
	w.Header().Set("ETag", etag)
	w.Header().Set("Last-Modified", st.lastUpdated.Format(http.TimeFormat))
	if inm := r.Header.Get("If-None-Match"); inm != "" && inm == etag {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	if ims, err := http.ParseTime(r.Header.Get("If-Modified-Since")); err == nil && !st.lastUpdated.Truncate(time.Second).After(ims) {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	b := t.data.Append(make([]byte, 0, 2048), ref, st.meta)
	w.Header().Set("Content-Type", fhirJSON)
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	if r.Method == http.MethodHead {
		return
	}
	_, _ = w.Write(b)
}

// filter is a parsed search: the resource headers it matches.
type filter struct {
	patients     []int // nil = every patient
	ids          map[string]bool
	lastUpdated  []dateBound
	date         []dateBound
	category     []string
	code         []string
	status       []string
	restrictions []url.Values
	practice     int // athenahealth practice, -1 = any
}

type dateBound struct {
	prefix string
	lo, hi time.Time // [lo, hi) at the value's precision
}

var errBadParam = errors.New("bad search parameter")

func parseDateParam(v string) (dateBound, error) {
	b := dateBound{prefix: "eq"}
	if len(v) > 2 && v[0] >= 'a' && v[0] <= 'z' {
		b.prefix, v = v[:2], v[2:]
		switch b.prefix {
		case "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb":
		default:
			return b, fmt.Errorf("%w: date prefix %q", errBadParam, b.prefix)
		}
	}
	layouts := []struct {
		layout string
		step   func(time.Time) time.Time
	}{
		{"2006", func(t time.Time) time.Time { return t.AddDate(1, 0, 0) }},
		{"2006-01", func(t time.Time) time.Time { return t.AddDate(0, 1, 0) }},
		{"2006-01-02", func(t time.Time) time.Time { return t.AddDate(0, 0, 1) }},
		{"2006-01-02T15:04Z07:00", func(t time.Time) time.Time { return t.Add(time.Minute) }},
		{"2006-01-02T15:04:05Z07:00", func(t time.Time) time.Time { return t.Add(time.Second) }},
		{time.RFC3339Nano, func(t time.Time) time.Time { return t.Add(time.Microsecond) }},
	}
	for _, l := range layouts {
		if t, err := time.Parse(l.layout, v); err == nil {
			b.lo, b.hi = t.UTC(), l.step(t).UTC()
			if l.layout == time.RFC3339Nano {
				b.hi = b.lo.Add(time.Nanosecond)
			}
			return b, nil
		}
	}
	return b, fmt.Errorf("%w: date %q", errBadParam, v)
}

func (b dateBound) match(t time.Time) bool {
	switch b.prefix {
	case "eq":
		return !t.Before(b.lo) && t.Before(b.hi)
	case "ne":
		return t.Before(b.lo) || !t.Before(b.hi)
	case "gt", "sa":
		return !t.Before(b.hi)
	case "ge":
		return !t.Before(b.lo)
	case "lt", "eb":
		return t.Before(b.lo)
	case "le":
		return t.Before(b.hi)
	}
	return false
}

func tokenMatch(values []string, have string) bool {
	if have == "" {
		return false
	}
	for _, v := range values {
		for _, alt := range strings.Split(v, ",") {
			if alt == have {
				return true
			}
			if !strings.Contains(alt, "|") {
				if _, c, ok := strings.Cut(have, "|"); ok && c == alt || have == alt {
					return true
				}
			} else if _, c, _ := strings.Cut(alt, "|"); !strings.Contains(have, "|") && c == have {
				// Categories are kept as bare codes; their systems are fixed per type.
				return true
			}
		}
	}
	return false
}

func matchesRestrictions(h synth.Header, restrictions []url.Values) bool {
	if len(restrictions) == 0 {
		return true
	}
	for _, q := range restrictions {
		ok := true
		for k, v := range q {
			switch k {
			case "category":
				ok = ok && tokenMatch(v, h.Category)
			case "code":
				ok = ok && tokenMatch(v, h.Code)
			case "status":
				ok = ok && tokenMatch(v, h.Status)
			default:
				ok = false // unknown restriction: deny rather than leak
			}
		}
		if ok {
			return true
		}
	}
	return false
}

func (f *filter) match(st *resourceState) bool {
	h := &st.header
	if st.deleted {
		return false
	}
	if f.ids != nil && !f.ids[h.Ref.ID()] {
		return false
	}
	for _, b := range f.lastUpdated {
		if !b.match(st.lastUpdated) {
			return false
		}
	}
	if len(f.date) > 0 {
		if h.Date == 0 {
			return false
		}
		d := time.Unix(h.Date, 0).UTC()
		for _, b := range f.date {
			if !b.match(d) {
				return false
			}
		}
	}
	if len(f.category) > 0 && !tokenMatch(f.category, h.Category) {
		return false
	}
	if len(f.code) > 0 && !tokenMatch(f.code, h.Code) {
		return false
	}
	if len(f.status) > 0 && !tokenMatch(f.status, h.Status) {
		return false
	}
	return matchesRestrictions(*h, f.restrictions)
}

// addCommon reads the parameters a search and a _typeFilter share:
// category, code, status, date and _lastUpdated. ok is false for any other.
func (f *filter) addCommon(k string, vs []string) (ok bool, err error) {
	switch k {
	case "category":
		f.category = vs
	case "code":
		f.code = vs
	case "status", "clinical-status":
		f.status = vs
	case "date", "_lastUpdated":
		for _, v := range vs {
			b, err := parseDateParam(v)
			if err != nil {
				return true, err
			}
			if k == "date" {
				f.date = append(f.date, b)
			} else {
				f.lastUpdated = append(f.lastUpdated, b)
			}
		}
	default:
		return false, nil
	}
	return true, nil
}

// parseSearch reads the supported search parameters; unknown ones are
// refused with 400 (strict, so clients find out) except _format and paging.
func (t *tenant) parseSearch(q url.Values, ty synth.Type, at *accessToken) (*filter, error) {
	f := &filter{practice: -1}
	for k, vs := range q {
		switch k {
		case "patient", "subject", "beneficiary", "_id":
			for _, v := range vs {
				for _, one := range strings.Split(v, ",") {
					if k == "_id" && ty != synth.Patient {
						if f.ids == nil {
							f.ids = map[string]bool{}
						}
						f.ids[one] = true
						continue
					}
					id := strings.TrimPrefix(one, "Patient/")
					ref, ok := t.data.ParseID(synth.Patient, id)
					if !ok {
						f.patients = append(f.patients, -1) // matches nothing
						continue
					}
					f.patients = append(f.patients, ref.Patient)
				}
			}
		case "ah-practice":
			if t.prof.Practices == 0 {
				return nil, fmt.Errorf("%w: ah-practice", errBadParam)
			}
			n, ok := parsePractice(q.Get(k))
			if !ok || n >= t.prof.Practices {
				return nil, fmt.Errorf("%w: unknown practice %q", errBadParam, q.Get(k))
			}
			f.practice = n
		case "_count", "_offset", "_format", "_type", "_since", "_total", "_sort":
		default:
			if ok, err := f.addCommon(k, vs); err != nil {
				return nil, err
			} else if !ok {
				return nil, fmt.Errorf("%w: %s is not supported", errBadParam, k)
			}
		}
	}
	if at.patient != "" && onlyPatientScopes(at.scopes) && !ty.Shared() {
		self, _ := t.data.ParseID(synth.Patient, at.patient)
		if f.patients == nil {
			f.patients = []int{self.Patient}
		}
		for i, p := range f.patients {
			if p != self.Patient {
				f.patients[i] = -1
			}
		}
	}
	if t.prof.Practices > 0 && f.patients == nil && !ty.Shared() && f.practice < 0 {
		return nil, fmt.Errorf("%w: athenahealth needs ah-practice=Organization/a-1.Practice-N or a patient", errBadParam)
	}
	return f, nil
}

func (t *tenant) pageSize(q url.Values) int {
	n := t.s.cfg.PageSize
	if v := q.Get("_count"); v != "" {
		if c, err := strconv.Atoi(v); err == nil && c >= 0 {
			n = c
		}
	}
	if n > t.prof.MaxCount {
		n = t.prof.MaxCount
	}
	if n <= 0 {
		n = 1
	}
	return n
}

// walk visits every resource of the given types matching f, in id order,
// until visit returns false.
func (t *tenant) walk(ov *overlay, types []synth.Type, f *filter, visit func(st *resourceState) bool) {
	cur := t.data.NewCursor()
	for _, ty := range types {
		if ty.Shared() {
			for k := 0; k < t.data.Count(-1, ty); k++ {
				st := ov.state(t.data, synth.Ref{Type: ty, Patient: -1, K: k})
				if f.match(&st) && !visit(&st) {
					return
				}
			}
			continue
		}
		patients := f.patients
		for i := 0; patients == nil && i < t.data.Patients() || i < len(patients); i++ {
			p := i
			if patients != nil {
				p = patients[i]
			}
			if p < 0 || f.practice >= 0 && t.practice(p) != f.practice {
				continue
			}
			for k := 0; k < t.data.Count(p, ty); k++ {
				st := ov.stateC(cur, synth.Ref{Type: ty, Patient: p, K: k})
				if f.match(&st) && !visit(&st) {
					return
				}
			}
		}
	}
}

func (s *Sandbox) handleSearch(w http.ResponseWriter, r *http.Request, t *tenant, at *accessToken, typ string) {
	ty, restrictions, ok := t.resolveType(w, at, typ, true)
	if !ok {
		return
	}
	q := r.URL.Query()
	f, err := t.parseSearch(q, ty, at)
	if err != nil {
		writeOutcome(w, http.StatusBadRequest, "not-supported", err.Error())
		return
	}
	f.restrictions = restrictions
	s.writeBundle(w, r, t, []synth.Type{ty}, f, q)
}

func (s *Sandbox) handleEverything(w http.ResponseWriter, r *http.Request, t *tenant, at *accessToken, id string) {
	if !t.prof.Everything {
		writeOutcome(w, http.StatusNotFound, "not-supported", "Patient/$everything is not supported by this server")
		return
	}
	ref, ok := t.data.ParseID(synth.Patient, id)
	if !ok || !inCompartment(at, ref) {
		writeOutcome(w, http.StatusNotFound, "not-found", "Patient/"+id+" is not known")
		return
	}
	q := r.URL.Query()
	types := t.served
	if tv := q.Get("_type"); tv != "" {
		types = nil
		for _, n := range strings.Split(tv, ",") {
			ty, ok := synth.ParseType(n)
			if !ok || !t.serves(ty) {
				writeOutcome(w, http.StatusBadRequest, "not-supported", "unknown _type "+n)
				return
			}
			types = append(types, ty)
		}
	}
	var allowed []synth.Type
	for _, ty := range types {
		if ok, _ := allows(at.scopes, ty.String(), true); ok {
			allowed = append(allowed, ty)
		}
	}
	if len(allowed) == 0 {
		forbidden(w, "the access token's scopes allow none of the requested types")
		return
	}
	f := &filter{patients: []int{ref.Patient}, practice: -1}
	if since := q.Get("_since"); since != "" {
		b, err := parseDateParam("ge" + since)
		if err != nil {
			writeOutcome(w, http.StatusBadRequest, "invalid", err.Error())
			return
		}
		f.lastUpdated = []dateBound{b}
	}
	s.writeBundle(w, r, t, allowed, f, q)
}

// writeBundle pages through matches with _offset and a next link.
func (s *Sandbox) writeBundle(w http.ResponseWriter, r *http.Request, t *tenant, types []synth.Type, f *filter, q url.Values) {
	size := t.pageSize(q)
	offset := 0
	if v := q.Get("_offset"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			writeOutcome(w, http.StatusBadRequest, "invalid", "bad _offset")
			return
		}
		offset = n
	}
	ov := t.ov.load()
	base := t.fhirBase()
	self := base + strings.TrimPrefix(r.URL.Path, "/"+t.name+"/fhir")
	buf := make([]byte, 0, 64<<10)
	buf = append(buf, `{"resourceType":"Bundle","type":"searchset","link":[{"relation":"self","url":`...)
	buf = synth.AppendString(buf, self+"?"+q.Encode())
	entries := make([]byte, 0, 64<<10)
	seen, n, more := 0, 0, false
	t.walk(ov, types, f, func(st *resourceState) bool {
		seen++
		if seen <= offset {
			return true
		}
		if n == size {
			more = true
			return false
		}
		if n > 0 {
			entries = append(entries, ',')
		}
		entries = append(entries, `{"fullUrl":"`...)
		entries = append(entries, base...)
		entries = append(entries, '/')
		entries = append(entries, st.header.Ref.Type.String()...)
		entries = append(entries, '/')
		entries = st.header.Ref.AppendID(entries)
		entries = append(entries, `","resource":`...)
		entries = t.data.Append(entries, st.header.Ref, st.meta)
		entries = append(entries, `,"search":{"mode":"match"}}`...)
		n++
		return true
	})
	buf = append(buf, '}')
	if more {
		nq := url.Values{}
		for k, v := range q {
			nq[k] = v
		}
		nq.Set("_offset", strconv.Itoa(offset+size))
		nq.Set("_count", strconv.Itoa(size))
		buf = append(buf, `,{"relation":"next","url":`...)
		buf = synth.AppendString(buf, self+"?"+nq.Encode())
		buf = append(buf, '}')
	}
	buf = append(buf, `],"entry":[`...)
	buf = append(buf, entries...)
	buf = append(buf, "]}"...)
	w.Header().Set("Content-Type", fhirJSON)
	w.Header().Set("Content-Length", strconv.Itoa(len(buf)))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(buf)
	}
}

func (s *Sandbox) capabilityStatement(t *tenant) map[string]any {
	var resources []map[string]any
	for _, ty := range t.served {
		params := []map[string]string{{"name": "_id", "type": "token"}, {"name": "_lastUpdated", "type": "date"}}
		if !ty.Shared() && ty != synth.Patient {
			params = append(params, map[string]string{"name": "patient", "type": "reference"},
				map[string]string{"name": "date", "type": "date"}, map[string]string{"name": "category", "type": "token"},
				map[string]string{"name": "code", "type": "token"}, map[string]string{"name": "status", "type": "token"})
		}
		res := map[string]any{
			"type":        ty.String(),
			"interaction": []map[string]string{{"code": "read"}, {"code": "search-type"}},
			"searchParam": params,
			"versioning":  "versioned",
		}
		if ty == synth.Patient && t.prof.Everything {
			res["operation"] = []map[string]string{{"name": "everything", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"}}
		}
		resources = append(resources, res)
	}
	rest := map[string]any{
		"mode": "server",
		"security": map[string]any{
			"service": []map[string]any{{"coding": []map[string]string{{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "SMART-on-FHIR"}}}},
			"extension": []map[string]any{{
				"url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
				"extension": []map[string]string{
					{"url": "authorize", "valueUri": t.authURL("authorize")},
					{"url": "token", "valueUri": t.authURL("token")},
					{"url": "introspect", "valueUri": t.authURL("introspect")},
					{"url": "revoke", "valueUri": t.authURL("revoke")},
				},
			}},
		},
		"resource": resources,
	}
	if t.prof.Bulk {
		rest["operation"] = []map[string]string{
			{"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"},
			{"name": "patient-export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export"},
			{"name": "group-export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export"},
		}
	}
	return map[string]any{
		"resourceType": "CapabilityStatement",
		"status":       "active",
		"date":         "2025-06-30",
		"kind":         "instance",
		"software":     map[string]string{"name": "medrelay-sandbox (" + t.prof.Vendor + " profile)"},
		"implementation": map[string]string{
			"description": "medrelay sandbox tenant " + t.name, "url": t.fhirBase(),
		},
		"fhirVersion":  "4.0.1",
		"format":       []string{"application/fhir+json", "json"},
		"instantiates": []string{"http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"},
		"rest":         []any{rest},
	}
}
