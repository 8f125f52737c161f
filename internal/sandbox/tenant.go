package sandbox

import (
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/medrelay/medrelay/internal/sandbox/synth"
)

// tenant is one EHR: its data, clients and issued tokens.
type tenant struct {
	s      *Sandbox
	name   string
	prof   *profile
	data   *synth.Dataset
	served []synth.Type // the types it serves, read-only; looked up on every request, so parsed once

	rotate      bool
	reuseGrace  time.Duration
	atLifetime  time.Duration
	requiresTok bool

	mu        sync.Mutex
	clients   map[string]*client
	codes     map[string]*authCode
	access    map[string]*accessToken
	refresh   map[string]*refreshToken
	launches  map[string]*launchCtx
	pending   map[string]*pendingAuth
	families  map[string]*family
	ov        overlayHolder
	mutations uint64
}

type client struct {
	cfg  ClientConfig
	jwks *jose.JSONWebKeySet // inline keys, parsed
	open bool                // accepted by open registration
}

// family is one authorization grant: every refresh token and access token
// issued from one authorization code.
type family struct {
	id        string
	client    string
	patient   string // patient id in context, if any
	encounter string
	fhirUser  string
	scope     string // granted scope string (as issued)
	scopes    []scope
	revoked   bool
	grantExp  time.Time // Blue Button access_grant_expiration; zero = none
	issuedAt  time.Time
	offline   bool
	nonce     string
}

type authCode struct {
	fam       *family
	redirect  string
	challenge string
	exp       time.Time
	used      bool
	nonce     string
	launch    bool
}

type accessToken struct {
	fam     *family // nil for client_credentials
	client  string
	scope   string
	scopes  []scope
	patient string
	exp     time.Time
	system  bool
}

type refreshToken struct {
	fam        *family
	used       bool // rotated away; presenting it again is reuse
	exp        time.Time
	rotatedAt  time.Time
	successor  *refreshToken // the token it was rotated to
	superseded bool          // replaced after a retry within the reuse grace
}

type launchCtx struct {
	client    string
	patient   string
	encounter string
	exp       time.Time
}

type override struct {
	meta    synth.Meta
	deleted bool
}

func newTenant(s *Sandbox, tc TenantConfig) *tenant {
	p := profiles[tc.Profile]
	n := tc.Patients
	if n <= 0 {
		n = s.cfg.Patients
	}
	t := &tenant{
		s: s, name: tc.Name, prof: p,
		data:        synth.New(s.cfg.Seed, n),
		served:      servedTypes(p),
		rotate:      p.RotateRefresh,
		atLifetime:  p.AccessTokenLifetime,
		requiresTok: true,
		clients:     map[string]*client{},
		codes:       map[string]*authCode{},
		access:      map[string]*accessToken{},
		refresh:     map[string]*refreshToken{},
		launches:    map[string]*launchCtx{},
		families:    map[string]*family{},
	}
	if tc.RotateRefreshTokens != nil {
		t.rotate = *tc.RotateRefreshTokens
	}
	t.reuseGrace = time.Duration(tc.RefreshReuseGrace)
	if tc.AccessTokenLifetime > 0 {
		t.atLifetime = time.Duration(tc.AccessTokenLifetime)
	}
	if tc.RequiresAccessToken != nil {
		t.requiresTok = *tc.RequiresAccessToken
	}
	return t
}

func (t *tenant) fhirBase() string { return t.s.FHIRBase(t.name) }

func (t *tenant) authURL(name string) string {
	u := t.s.base + "/" + t.name + "/auth/" + name
	if t.prof.TrailingSlash && (name == "authorize" || name == "token") {
		u += "/"
	}
	return u
}

// RegisterClient registers (or replaces) a client with a tenant; tenant "" or
// "*" registers it with every tenant.
func (s *Sandbox) RegisterClient(tenantName string, c ClientConfig) error {
	if tenantName == "" {
		tenantName = c.Tenant
	}
	if tenantName == "" || tenantName == "*" {
		for _, n := range s.order {
			if err := s.RegisterClient(n, c); err != nil {
				return err
			}
		}
		return nil
	}
	t, err := s.tenant(tenantName)
	if err != nil {
		return err
	}
	if c.ClientID == "" || len(c.ClientID) > 256 {
		return fmt.Errorf("%w: client_id required", ErrBadClient)
	}
	for _, u := range append(append([]string(nil), c.RedirectURIs...), c.LaunchURLs...) {
		pu, err := url.Parse(u)
		if err != nil || !pu.IsAbs() || pu.Fragment != "" {
			return fmt.Errorf("%w: uri %q must be absolute without fragment", ErrBadClient, u)
		}
	}
	if c.JWKSURL != "" {
		pu, err := url.Parse(c.JWKSURL)
		if err != nil || (pu.Scheme != "https" && pu.Scheme != "http") || pu.Host == "" {
			return fmt.Errorf("%w: jwks_url %q", ErrBadClient, c.JWKSURL)
		}
	}
	cl := &client{cfg: c}
	cl.cfg.Tenant = tenantName
	if len(c.JWKS) > 0 {
		var set jose.JSONWebKeySet
		if err := json.Unmarshal(c.JWKS, &set); err != nil {
			return fmt.Errorf("%w: jwks: %w", ErrBadClient, err)
		}
		for _, k := range set.Keys {
			if !k.IsPublic() || k.KeyID == "" {
				return fmt.Errorf("%w: jwks keys must be public and carry a kid", ErrBadClient)
			}
		}
		cl.jwks = &set
	}
	t.mu.Lock()
	t.clients[c.ClientID] = cl
	t.mu.Unlock()
	return nil
}

// lookupClient finds a registered client, or admits a public one under open registration.
func (t *tenant) lookupClient(id string) (*client, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	c, ok := t.clients[id]
	if ok {
		return c, true
	}
	if t.s.cfg.OpenRegistration && id != "" && len(id) <= 256 {
		c = &client{cfg: ClientConfig{ClientID: id, Tenant: t.name}, open: true}
		return c, true
	}
	return nil, false
}

// gc drops expired codes, tokens and launches.
func (t *tenant) gc(now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for k, c := range t.codes {
		if now.After(c.exp) {
			delete(t.codes, k)
		}
	}
	for k, a := range t.access {
		if now.After(a.exp.Add(time.Hour)) {
			delete(t.access, k)
		}
	}
	for k, l := range t.launches {
		if now.After(l.exp) {
			delete(t.launches, k)
		}
	}
	for k, p := range t.pending {
		if now.After(p.exp) {
			delete(t.pending, k)
		}
	}
	for k, r := range t.refresh {
		if !r.exp.IsZero() && now.After(r.exp) {
			delete(t.refresh, k)
		}
	}
}

// revokePatient revokes every grant for one patient: their refresh tokens
// answer invalid_grant and their access tokens 401.
func (t *tenant) revokePatient(patient string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, f := range t.families {
		if f.patient == patient && !f.revoked {
			f.revoked = true
			n++
		}
	}
	return n
}

// practice is the athenahealth practice a patient belongs to.
func (t *tenant) practice(p int) int {
	if t.prof.Practices <= 0 {
		return 0
	}
	return p % t.prof.Practices
}

func practiceRef(n int) string { return fmt.Sprintf("Organization/a-1.Practice-%d", 195900+n) }

func parsePractice(v string) (int, bool) {
	v = strings.TrimPrefix(v, "Organization/")
	var n int
	if _, err := fmt.Sscanf(v, "a-1.Practice-%d", &n); err != nil || n < 195900 {
		return 0, false
	}
	return n - 195900, true
}
