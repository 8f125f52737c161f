package sdk

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// SMART is the default Source for a SMART-on-FHIR R4 server. A vendor plugin
// embeds *SMART, fills in Profile, and overrides a method only where the
// vendor differs; the hooks below cover the common cases without
// overriding.
type SMART struct {
	Name    string
	Vendor  string
	Version string
	Profile Profile

	// PrepareSearch, when set, adjusts every search this implementation
	// sends (Search, and Everything's per-type searches), e.g. to add a
	// parameter the vendor requires.
	PrepareSearch func(call *Call, req *SearchRequest) error

	// MaxReferences bounds how many referenced resources one call follows
	// (default 500).
	MaxReferences int
}

var (
	_ Source           = (*SMART)(nil)
	_ EverythingSource = (*SMART)(nil)
	_ BulkSource       = (*SMART)(nil)
	_ BulkCanceler     = (*SMART)(nil)
)

// patientCompartment are the types Everything fetches by default when the
// profile names none: US Core's patient-facing resources.
var patientCompartment = []string{"Patient", "AllergyIntolerance", "Condition", "Encounter", "Observation",
	"MedicationRequest", "Immunization", "Procedure", "DiagnosticReport", "DocumentReference", "Coverage",
	"ExplanationOfBenefit"}

// sharedTypes are outside any patient compartment: Everything reaches them
// by following references, not by searching on the patient.
var sharedTypes = []string{"Practitioner", "PractitionerRole", "Organization", "Location", "Medication", "Device", "Endpoint", "HealthcareService"}

// Describe returns the profile as data.
func (s *SMART) Describe(context.Context) (Description, error) {
	if s.Name == "" {
		return Description{}, fmt.Errorf("%w: SMART.Name is empty", ErrInvalid)
	}
	caps := []Capability{CapSearch, CapRead, CapEverything, CapReferenceFollowing}
	if s.Profile.Everything {
		caps = append(caps, CapEverythingOperation)
	}
	if s.Profile.Bulk {
		caps = append(caps, CapBulkExport, CapBulkCancel, CapDownloadSink)
	}
	return Description{Name: s.Name, Vendor: s.Vendor, Version: s.Version, Profile: s.Profile, Capabilities: caps}, nil
}

func (s *SMART) accept() string {
	if s.Profile.Accept != "" {
		return s.Profile.Accept
	}
	return "application/fhir+json"
}

func baseURL(call *Call) (*url.URL, error) {
	b := strings.TrimSpace(call.Conn.FHIRBase)
	if b == "" {
		return nil, fmt.Errorf("%w: connection has no FHIR base URL", ErrInvalid)
	}
	u, err := url.Parse(strings.TrimSuffix(b, "/"))
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("%w: FHIR base URL %q is not an absolute http(s) URL", ErrInvalid, b)
	}
	return u, nil
}

// sameOrigin guards the access token: it is only ever sent to the FHIR
// server's own scheme and host, whatever a next link or a Content-Location
// says.
func sameOrigin(base *url.URL, raw string) (*url.URL, error) {
	u, err := base.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: URL %q: %v", ErrBadResponse, clip(raw, 100), err)
	}
	if !strings.EqualFold(u.Scheme, base.Scheme) || !strings.EqualFold(u.Host, base.Host) {
		return nil, fmt.Errorf("%w: %s is not on the FHIR server's origin %s://%s; not sending the access token there", ErrBadResponse, redactURL(u), base.Scheme, base.Host)
	}
	return u, nil
}

func validType(t string) bool {
	if t == "" || t[0] < 'A' || t[0] > 'Z' || len(t) > 64 {
		return false
	}
	for _, r := range t {
		if !(r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z') {
			return false
		}
	}
	return true
}

func validID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, r := range id {
		if !(r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '.') {
			return false
		}
	}
	return true
}

// getJSON GETs u with the token and returns the body of a 2xx answer.
func (s *SMART) getJSON(ctx context.Context, call *Call, u *url.URL) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	req.Header.Set("Accept", s.accept())
	resp, err := call.Do(ctx, req)
	if err != nil {
		return nil, err
	}
	if err := Check(resp); err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", redactURL(u), err)
	}
	return b, nil
}

// Read reads Type/id.
func (s *SMART) Read(ctx context.Context, call *Call, req ReadRequest) (Resource, error) {
	if !validType(req.ResourceType) || !validID(req.ID) {
		return Resource{}, fmt.Errorf("%w: %q/%q is not a FHIR type and id", ErrInvalid, clip(req.ResourceType, 64), clip(req.ID, 64))
	}
	base, err := baseURL(call)
	if err != nil {
		return Resource{}, err
	}
	u := base.JoinPath(req.ResourceType, req.ID)
	b, err := s.getJSON(ctx, call, u)
	if err != nil {
		return Resource{}, err
	}
	r, err := ParseResource(b)
	if err != nil {
		return Resource{}, err
	}
	if r.Type != req.ResourceType {
		return Resource{}, fmt.Errorf("%w: asked for %s, got %s", ErrBadResponse, req.ResourceType, r.Type)
	}
	return r, nil
}

// Search runs req and follows next links.
func (s *SMART) Search(ctx context.Context, call *Call, req SearchRequest, emit func(Page) error) error {
	if s.PrepareSearch != nil {
		if err := s.PrepareSearch(call, &req); err != nil {
			return err
		}
	}
	if !validType(req.ResourceType) {
		return fmt.Errorf("%w: %q is not a FHIR resource type", ErrInvalid, clip(req.ResourceType, 64))
	}
	base, err := baseURL(call)
	if err != nil {
		return err
	}
	u := base.JoinPath(req.ResourceType)
	q := url.Values{}
	for _, p := range req.Params {
		q.Add(p.Name, p.Value)
	}
	if size := s.pageSize(req.PageSize); size > 0 && q.Get("_count") == "" {
		q.Set("_count", strconv.Itoa(size))
	}
	u.RawQuery = q.Encode()
	var refs *refFollower
	if req.IncludeReferences {
		refs = s.newRefFollower()
	}
	return s.pages(ctx, call, base, u, req.MaxPages, func(p Page) error {
		if refs != nil {
			refs.markAll(p.Resources)
			more, err := refs.follow(ctx, s, call, p.Resources)
			if err != nil {
				return err
			}
			p.Resources = append(p.Resources, more...)
		}
		return emit(p)
	})
}

func (s *SMART) pageSize(asked int) int {
	size := asked
	if size <= 0 {
		size = s.Profile.DefaultPageSize
	}
	if s.Profile.MaxPageSize > 0 && size > s.Profile.MaxPageSize {
		size = s.Profile.MaxPageSize
	}
	return size
}

// pages GETs u and every next page after it.
func (s *SMART) pages(ctx context.Context, call *Call, base, u *url.URL, maxPages int, emit func(Page) error) error {
	seen := map[string]bool{}
	total := int64(-1)
	for n := 1; ; n++ {
		key := u.String()
		if seen[key] {
			return fmt.Errorf("%w: next link loops back to an earlier page", ErrBadResponse)
		}
		seen[key] = true
		body, err := s.getJSON(ctx, call, u)
		if err != nil {
			return err
		}
		b, err := ParseBundle(body)
		if err != nil {
			return err
		}
		res, err := b.Resources()
		if err != nil {
			return err
		}
		if n == 1 && b.Total != nil {
			total = *b.Total
		}
		if err := emit(Page{Number: n, Total: total, Resources: res}); err != nil {
			return err
		}
		next := b.Next()
		if next == "" || (maxPages > 0 && n >= maxPages) {
			return nil
		}
		if u, err = sameOrigin(base, next); err != nil {
			return err
		}
	}
}

// Everything uses Patient/$everything when the profile says the source has
// it (falling back when the server turns out not to), else searches type by
// type.
func (s *SMART) Everything(ctx context.Context, call *Call, req EverythingRequest, emit func([]Resource) error) error {
	if req.PatientID == "" {
		req.PatientID = call.Conn.PatientID
	}
	if !validID(req.PatientID) {
		return fmt.Errorf("%w: Everything needs a patient id", ErrInvalid)
	}
	var refs *refFollower
	if req.IncludeReferences {
		refs = s.newRefFollower()
	}
	out := func(rs []Resource) error {
		if refs != nil {
			refs.markAll(rs)
			more, err := refs.follow(ctx, s, call, rs)
			if err != nil {
				return err
			}
			rs = append(rs, more...)
		}
		if len(rs) == 0 {
			return nil
		}
		return emit(rs)
	}
	if s.Profile.Everything {
		sent := false
		err := s.everythingOp(ctx, call, req, func(rs []Resource) error { sent = true; return out(rs) })
		var he *HTTPError
		if err == nil || sent || !errors.As(err, &he) || !operationMissing(he.StatusCode) {
			return err
		}
		call.Logger.Info("Patient/$everything not available; searching type by type", "status", he.StatusCode)
	}
	return s.everythingByType(ctx, call, req, out)
}

func operationMissing(status int) bool {
	switch status {
	case http.StatusBadRequest, http.StatusNotFound, http.StatusMethodNotAllowed, http.StatusNotImplemented:
		return true
	}
	return false
}

func (s *SMART) everythingOp(ctx context.Context, call *Call, req EverythingRequest, emit func([]Resource) error) error {
	base, err := baseURL(call)
	if err != nil {
		return err
	}
	u := base.JoinPath("Patient", req.PatientID, "$everything")
	q := url.Values{}
	if !req.Since.IsZero() {
		q.Set("_since", req.Since.UTC().Format(time.RFC3339))
	}
	if len(req.Types) > 0 {
		q.Set("_type", strings.Join(req.Types, ","))
	}
	if size := s.pageSize(0); size > 0 {
		q.Set("_count", strconv.Itoa(size))
	}
	u.RawQuery = q.Encode()
	return s.pages(ctx, call, base, u, 0, func(p Page) error { return emit(p.Resources) })
}

func (s *SMART) everythingByType(ctx context.Context, call *Call, req EverythingRequest, emit func([]Resource) error) error {
	types := req.Types
	if len(types) == 0 {
		types = s.Profile.ResourceTypes
	}
	if len(types) == 0 {
		types = patientCompartment
	}
	seen := map[string]bool{}
	for _, typ := range types {
		if slices.Contains(sharedTypes, typ) {
			continue
		}
		if typ == "Patient" {
			r, err := s.Read(ctx, call, ReadRequest{ResourceType: "Patient", ID: req.PatientID})
			if err != nil {
				return err
			}
			seen["Patient/"+r.ID] = true
			if !req.Since.IsZero() && !changedSince(r.JSON, req.Since) {
				continue
			}
			if err := emit([]Resource{r}); err != nil {
				return err
			}
			continue
		}
		param := "patient"
		if p, ok := s.Profile.PatientParams[typ]; ok {
			param = p
		}
		splits := s.Profile.TypeSearches[typ]
		if len(splits) == 0 {
			splits = []string{""}
		}
		for _, extra := range splits {
			params := []Param{{Name: param, Value: req.PatientID}}
			if extra != "" {
				xq, err := url.ParseQuery(extra)
				if err != nil {
					return fmt.Errorf("%w: profile TypeSearches[%s] %q: %v", ErrInvalid, typ, extra, err)
				}
				for k, vs := range xq {
					for _, v := range vs {
						params = append(params, Param{Name: k, Value: v})
					}
				}
			}
			if !req.Since.IsZero() {
				params = append(params, Param{Name: "_lastUpdated", Value: "ge" + req.Since.UTC().Format(time.RFC3339)})
			}
			err := s.Search(ctx, call, SearchRequest{ResourceType: typ, Params: params}, func(p Page) error {
				fresh := p.Resources[:0:0]
				for _, r := range p.Resources {
					k := r.Type + "/" + r.ID
					if r.SearchMode == "outcome" || seen[k] {
						continue
					}
					seen[k] = true
					fresh = append(fresh, r)
				}
				return emit(fresh)
			})
			if err != nil {
				return fmt.Errorf("%s: %w", typ, err)
			}
		}
	}
	return nil
}

func changedSince(resource []byte, since time.Time) bool {
	var m struct {
		Meta struct {
			LastUpdated string `json:"lastUpdated"`
		} `json:"meta"`
	}
	if json.Unmarshal(resource, &m) != nil || m.Meta.LastUpdated == "" {
		return true
	}
	t, err := time.Parse(time.RFC3339Nano, m.Meta.LastUpdated)
	return err != nil || !t.Before(since)
}

// refFollower reads the resources that results refer to, once each.
type refFollower struct {
	seen  map[string]bool
	left  int
	types map[string]bool
}

func (s *SMART) newRefFollower() *refFollower {
	n := s.MaxReferences
	if n <= 0 {
		n = 500
	}
	f := &refFollower{seen: map[string]bool{}, left: n}
	if len(s.Profile.ResourceTypes) > 0 {
		f.types = map[string]bool{}
		for _, t := range s.Profile.ResourceTypes {
			f.types[t] = true
		}
	}
	return f
}

func (f *refFollower) markAll(rs []Resource) {
	for _, r := range rs {
		f.seen[r.Type+"/"+r.ID] = true
	}
}

func (f *refFollower) follow(ctx context.Context, s *SMART, call *Call, rs []Resource) ([]Resource, error) {
	var out []Resource
	for _, r := range rs {
		for _, ref := range References(r.JSON) {
			if f.seen[ref] || f.left <= 0 {
				continue
			}
			typ, id, _ := strings.Cut(ref, "/")
			if f.types != nil && !f.types[typ] {
				continue
			}
			f.seen[ref] = true
			f.left--
			got, err := s.Read(ctx, call, ReadRequest{ResourceType: typ, ID: id})
			if errors.Is(err, ErrNotFound) {
				continue // a dangling reference is the source's business
			}
			var he *HTTPError
			if errors.As(err, &he) && he.StatusCode == http.StatusForbidden {
				continue // outside the granted scopes
			}
			if err != nil {
				return nil, fmt.Errorf("following %s: %w", ref, err)
			}
			got.SearchMode = "include"
			out = append(out, got)
		}
	}
	return out, nil
}

// BulkKickoff starts an export with Prefer: respond-async.
func (s *SMART) BulkKickoff(ctx context.Context, call *Call, req BulkKickoffRequest) (string, error) {
	if !s.Profile.Bulk {
		return "", fmt.Errorf("%w: %s does not serve Bulk Data", ErrUnsupported, s.Vendor)
	}
	base, err := baseURL(call)
	if err != nil {
		return "", err
	}
	var u *url.URL
	switch req.Level {
	case BulkSystem:
		u = base.JoinPath("$export")
	case BulkPatient:
		u = base.JoinPath("Patient", "$export")
	case BulkGroup:
		if !validID(req.GroupID) {
			return "", fmt.Errorf("%w: group export needs a group id", ErrInvalid)
		}
		u = base.JoinPath("Group", req.GroupID, "$export")
	default:
		return "", fmt.Errorf("%w: export level %d", ErrInvalid, req.Level)
	}
	q := url.Values{}
	if len(req.Types) > 0 {
		q.Set("_type", strings.Join(req.Types, ","))
	}
	if !req.Since.IsZero() {
		q.Set("_since", req.Since.UTC().Format(time.RFC3339))
	}
	for _, f := range req.TypeFilters {
		q.Add("_typeFilter", f)
	}
	if req.OutputFormat != "" {
		q.Set("_outputFormat", req.OutputFormat)
	}
	u.RawQuery = q.Encode()
	hreq, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	hreq.Header.Set("Accept", "application/fhir+json")
	hreq.Header.Set("Prefer", "respond-async")
	resp, err := call.Do(ctx, hreq)
	if err != nil {
		return "", err
	}
	if err := Check(resp); err != nil {
		return "", err
	}
	drain(resp)
	if resp.StatusCode != http.StatusAccepted {
		return "", fmt.Errorf("%w: kickoff answered %d, want 202 Accepted", ErrBadResponse, resp.StatusCode)
	}
	loc := resp.Header.Get("Content-Location")
	if loc == "" {
		return "", fmt.Errorf("%w: kickoff answered 202 without Content-Location", ErrBadResponse)
	}
	su, err := sameOrigin(base, loc)
	if err != nil {
		return "", err
	}
	return su.String(), nil
}

// BulkStatus polls the status URL once.
func (s *SMART) BulkStatus(ctx context.Context, call *Call, statusURL string) (BulkStatus, error) {
	base, err := baseURL(call)
	if err != nil {
		return BulkStatus{}, err
	}
	u, err := sameOrigin(base, statusURL)
	if err != nil {
		return BulkStatus{}, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return BulkStatus{}, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := call.Do(ctx, req)
	if err != nil {
		return BulkStatus{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return BulkStatus{}, fmt.Errorf("GET %s: %w", redactURL(u), err)
	}
	switch {
	case resp.StatusCode == http.StatusAccepted:
		st := BulkStatus{State: BulkInProgress, Progress: clip(resp.Header.Get("X-Progress"), 100)}
		st.RetryAfter, _ = ParseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
		return st, nil
	case resp.StatusCode == http.StatusOK:
		m, err := ParseManifest(body)
		if err != nil {
			return BulkStatus{}, err
		}
		return BulkStatus{State: BulkComplete, Manifest: m}, nil
	case resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusNotFound:
		// Transient or not ours to decide: the caller retries or gives up.
		e := &HTTPError{Method: http.MethodGet, URL: redactURL(u), StatusCode: resp.StatusCode, Diagnostics: Diagnostics(body)}
		e.RetryAfter, _ = ParseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
		return BulkStatus{}, e
	default:
		// 4xx with an OperationOutcome: the export failed for good.
		return BulkStatus{State: BulkFailed, Error: body}, nil
	}
}

// ParseManifest reads a Bulk Data complete-status body.
func ParseManifest(b []byte) (*BulkManifest, error) {
	type file struct {
		Type  string `json:"type"`
		URL   string `json:"url"`
		Count int64  `json:"count"`
	}
	var m struct {
		TransactionTime     string `json:"transactionTime"`
		Request             string `json:"request"`
		RequiresAccessToken bool   `json:"requiresAccessToken"`
		Output              []file `json:"output"`
		Deleted             []file `json:"deleted"`
		Error               []file `json:"error"`
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%w: bulk manifest: %v", ErrBadResponse, err)
	}
	out := &BulkManifest{Request: m.Request, RequiresAccessToken: m.RequiresAccessToken, JSON: b}
	if m.TransactionTime != "" {
		t, err := time.Parse(time.RFC3339Nano, m.TransactionTime)
		if err != nil {
			return nil, fmt.Errorf("%w: bulk manifest transactionTime %q", ErrBadResponse, clip(m.TransactionTime, 40))
		}
		out.TransactionTime = t
	}
	for _, f := range m.Output {
		if f.URL == "" {
			return nil, fmt.Errorf("%w: bulk manifest output without url", ErrBadResponse)
		}
		out.Output = append(out.Output, BulkFile(f))
	}
	for _, f := range m.Deleted {
		out.Deleted = append(out.Deleted, BulkFile(f))
	}
	for _, f := range m.Error {
		out.Error = append(out.Error, BulkFile(f))
	}
	return out, nil
}

// BulkCancel deletes the export.
func (s *SMART) BulkCancel(ctx context.Context, call *Call, statusURL string) error {
	base, err := baseURL(call)
	if err != nil {
		return err
	}
	u, err := sameOrigin(base, statusURL)
	if err != nil {
		return err
	}
	// A cancel ends work at the source: it does not wait out a pause
	// that a status poll's Retry-After set.
	ctx = WithoutPause(ctx)
	req, err := http.NewRequestWithContext(ctx, http.MethodDelete, u.String(), nil)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	resp, err := call.Do(ctx, req)
	if err != nil {
		return err
	}
	if err := Check(resp); err != nil {
		return err
	}
	drain(resp)
	return nil
}

// BulkDownload opens a file, asking for a byte range when resuming.
func (s *SMART) BulkDownload(ctx context.Context, call *Call, req BulkDownloadRequest) (io.ReadCloser, int64, error) {
	base, err := baseURL(call)
	if err != nil {
		return nil, 0, err
	}
	var u *url.URL
	if req.RequiresAccessToken {
		if u, err = sameOrigin(base, req.URL); err != nil {
			return nil, 0, err
		}
	} else if u, err = base.Parse(req.URL); err != nil || (u.Scheme != "https" && u.Scheme != "http") {
		return nil, 0, fmt.Errorf("%w: bulk file URL %q", ErrInvalid, clip(req.URL, 100))
	}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	hreq.Header.Set("Accept", "application/fhir+ndjson")
	if req.Offset > 0 {
		hreq.Header.Set("Range", "bytes="+strconv.FormatInt(req.Offset, 10)+"-")
	}
	resp, err := call.do(ctx, hreq, req.RequiresAccessToken)
	if err != nil {
		return nil, 0, err
	}
	if err := Check(resp); err != nil {
		return nil, 0, err
	}
	switch {
	case req.Offset == 0 || resp.StatusCode == http.StatusPartialContent:
		return resp.Body, req.Offset, nil
	default:
		// The server ignored Range: skip to the offset ourselves.
		if _, err := io.CopyN(io.Discard, resp.Body, req.Offset); err != nil {
			resp.Body.Close()
			return nil, 0, fmt.Errorf("skipping to offset %d of %s: %w", req.Offset, redactURL(u), err)
		}
		return resp.Body, req.Offset, nil
	}
}
