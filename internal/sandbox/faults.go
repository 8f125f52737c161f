package sandbox

import (
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"
)

// Endpoint names used by faults and stats.
const (
	EndpointSMARTConfig  = "smart-configuration"
	EndpointOpenIDConfig = "openid-configuration"
	EndpointJWKS         = "jwks"
	EndpointAuthorize    = "authorize"
	EndpointToken        = "token"
	EndpointIntrospect   = "introspect"
	EndpointRevoke       = "revoke"
	EndpointLaunch       = "launch"
	EndpointMetadata     = "metadata"
	EndpointRead         = "read"
	EndpointSearch       = "search"
	EndpointEverything   = "everything"
	EndpointExport       = "export"
	EndpointExportStat   = "export-status"
	EndpointExportDel    = "export-delete"
	EndpointExportFile   = "export-file"
	EndpointBrands       = "brands"
)

// Faults switches injected misbehaviour on for a tenant and/or client.
// SetFaults replaces the whole set; an empty Tenant or Client matches all.
type Faults struct {
	Tenant string `json:"tenant,omitempty" toml:"tenant"`
	Client string `json:"client,omitempty" toml:"client"`

	// Status answers matching requests with this HTTP status (429, 500, 503, ...)
	// and an OperationOutcome (OAuth error JSON on OAuth endpoints).
	Status int `json:"status,omitempty" toml:"status"`
	// Endpoints the Status and SlowMillis faults apply to (Endpoint* names);
	// empty = every tenant endpoint.
	Endpoints []string `json:"endpoints,omitempty" toml:"endpoints"`
	// After lets this many matching requests through before Status fires.
	After int `json:"after,omitempty" toml:"after"`
	// Count is how many requests Status answers (a burst); 0 = all of them.
	Count int `json:"count,omitempty" toml:"count"`
	// RetryAfter in seconds, sent with Status; RetryAfterHTTPDate sends it as an HTTP-date.
	RetryAfter         int  `json:"retry_after,omitempty" toml:"retry_after"`
	RetryAfterHTTPDate bool `json:"retry_after_http_date,omitempty" toml:"retry_after_http_date"`
	// SlowMillis delays every matching response.
	SlowMillis int `json:"slow_ms,omitempty" toml:"slow_ms"`

	// DropNDJSONAfterBytes closes the connection after this many bytes of an
	// NDJSON bulk file (once per file and job).
	DropNDJSONAfterBytes int64 `json:"drop_ndjson_after_bytes,omitempty" toml:"drop_ndjson_after_bytes"`
	// ExpireBulkFiles makes every bulk file answer 404 as if expired.
	ExpireBulkFiles bool `json:"expire_bulk_files,omitempty" toml:"expire_bulk_files"`
	// AccessTokenLifetime in seconds for tokens issued from now on.
	AccessTokenLifetime int `json:"access_token_lifetime,omitempty" toml:"access_token_lifetime"`
	// RefuseRefresh answers every refresh_token grant with invalid_grant.
	RefuseRefresh bool `json:"refuse_refresh,omitempty" toml:"refuse_refresh"`
	// DenyAuthorize makes the authorize endpoint redirect with error=access_denied
	// (the patient declines).
	DenyAuthorize bool `json:"deny_authorize,omitempty" toml:"deny_authorize"`
	// RequiresAccessToken overrides the tenant's bulk requiresAccessToken.
	RequiresAccessToken *bool `json:"requires_access_token,omitempty" toml:"requires_access_token"`
	// RevokePatient revokes every grant of this patient id when the faults are set.
	RevokePatient string `json:"revoke_patient,omitempty" toml:"revoke_patient"`
}

type faultState struct {
	f    Faults
	mu   sync.Mutex
	seen int // matching requests so far
	hits int // times Status fired
}

func (f *Faults) validate() error {
	if f.Status != 0 && (f.Status < 400 || f.Status > 599) {
		return fmt.Errorf("%w: status %d is not 4xx/5xx", ErrBadFaults, f.Status)
	}
	if f.After < 0 || f.Count < 0 || f.RetryAfter < 0 || f.SlowMillis < 0 || f.DropNDJSONAfterBytes < 0 || f.AccessTokenLifetime < 0 {
		return fmt.Errorf("%w: negative value", ErrBadFaults)
	}
	if f.SlowMillis > 600_000 {
		return fmt.Errorf("%w: slow_ms above 10 minutes", ErrBadFaults)
	}
	known := map[string]bool{EndpointSMARTConfig: true, EndpointOpenIDConfig: true, EndpointJWKS: true, EndpointAuthorize: true,
		EndpointToken: true, EndpointIntrospect: true, EndpointRevoke: true, EndpointLaunch: true, EndpointMetadata: true,
		EndpointRead: true, EndpointSearch: true, EndpointEverything: true, EndpointExport: true, EndpointExportStat: true,
		EndpointExportDel: true, EndpointExportFile: true, EndpointBrands: true}
	for _, e := range f.Endpoints {
		if !known[e] {
			return fmt.Errorf("%w: unknown endpoint %q", ErrBadFaults, e)
		}
	}
	return nil
}

// SetFaults replaces every active fault; with no arguments it clears them.
// It is what POST {base}/admin/faults does.
func (s *Sandbox) SetFaults(faults ...Faults) error {
	states := make([]*faultState, 0, len(faults))
	for i := range faults {
		f := faults[i]
		if err := f.validate(); err != nil {
			return err
		}
		if f.Tenant != "" {
			if _, err := s.tenant(f.Tenant); err != nil {
				return fmt.Errorf("%w: %w", ErrBadFaults, err)
			}
		}
		states = append(states, &faultState{f: f})
	}
	s.mu.Lock()
	s.faults = states
	s.mu.Unlock()
	for _, st := range states {
		if st.f.RevokePatient == "" {
			continue
		}
		for _, n := range s.order {
			if st.f.Tenant == "" || st.f.Tenant == n {
				s.tenants[n].revokePatient(st.f.RevokePatient)
			}
		}
	}
	return nil
}

// Faults returns the active faults.
func (s *Sandbox) Faults() []Faults {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Faults, len(s.faults))
	for i, st := range s.faults {
		out[i] = st.f
	}
	return out
}

func (f *Faults) matches(tenant, clientID string) bool {
	return (f.Tenant == "" || f.Tenant == tenant) && (f.Client == "" || f.Client == clientID)
}

func (f *Faults) matchesEndpoint(ep string) bool {
	return len(f.Endpoints) == 0 || slices.Contains(f.Endpoints, ep)
}

// activeFaults returns the faults matching tenant and client.
func (s *Sandbox) activeFaults(tenant, clientID string) []*faultState {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*faultState
	for _, st := range s.faults {
		if st.f.matches(tenant, clientID) {
			out = append(out, st)
		}
	}
	return out
}

// faultSetting folds the non-HTTP settings of matching faults.
type faultSetting struct {
	dropAfter     int64
	expireFiles   bool
	atLifetime    time.Duration
	refuseRefresh bool
	denyAuthorize bool
	requiresTok   *bool
}

func (s *Sandbox) settings(tenant, clientID string) faultSetting {
	var fs faultSetting
	for _, st := range s.activeFaults(tenant, clientID) {
		f := st.f
		if f.DropNDJSONAfterBytes > 0 {
			fs.dropAfter = f.DropNDJSONAfterBytes
		}
		fs.expireFiles = fs.expireFiles || f.ExpireBulkFiles
		if f.AccessTokenLifetime > 0 {
			fs.atLifetime = time.Duration(f.AccessTokenLifetime) * time.Second
		}
		fs.refuseRefresh = fs.refuseRefresh || f.RefuseRefresh
		fs.denyAuthorize = fs.denyAuthorize || f.DenyAuthorize
		if f.RequiresAccessToken != nil {
			v := *f.RequiresAccessToken
			fs.requiresTok = &v
		}
	}
	return fs
}

// begin counts the request and applies HTTP faults (status, slowness). It
// returns false when a fault has already answered.
func (s *Sandbox) begin(w http.ResponseWriter, r *http.Request, t *tenant, endpoint, clientID string) bool {
	tn := ""
	if t != nil {
		tn = t.name
	}
	s.count(t, endpoint, clientID)
	for _, st := range s.activeFaults(tn, clientID) {
		f := &st.f
		if !f.matchesEndpoint(endpoint) {
			continue
		}
		if f.SlowMillis > 0 {
			select {
			case <-time.After(time.Duration(f.SlowMillis) * time.Millisecond):
			case <-r.Context().Done():
				return false
			}
		}
		if f.Status == 0 {
			continue
		}
		st.mu.Lock()
		st.seen++
		fire := st.seen > f.After && (f.Count == 0 || st.hits < f.Count)
		if fire {
			st.hits++
		}
		st.mu.Unlock()
		if !fire {
			continue
		}
		s.countFault(endpoint, strconv.Itoa(f.Status))
		if f.RetryAfter > 0 {
			if f.RetryAfterHTTPDate {
				w.Header().Set("Retry-After", s.now().Add(time.Duration(f.RetryAfter)*time.Second).UTC().Format(http.TimeFormat))
			} else {
				w.Header().Set("Retry-After", strconv.Itoa(f.RetryAfter))
			}
		}
		switch endpoint {
		case EndpointToken, EndpointIntrospect, EndpointRevoke:
			code := "temporarily_unavailable"
			if f.Status < 500 && f.Status != 429 {
				code = "invalid_request"
			}
			oauthError(w, f.Status, code, "injected fault")
		default:
			issue := "transient"
			if f.Status == 429 {
				issue = "throttled"
			}
			writeOutcome(w, f.Status, issue, "injected fault: HTTP "+strconv.Itoa(f.Status))
		}
		return false
	}
	return true
}
