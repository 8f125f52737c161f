package directory

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/medrelay/medrelay/internal/directory/importers"
)

// Discovery is what an endpoint says about itself: its SMART configuration
// and its CapabilityStatement, kept with an expiry and the ETags to revalidate
// them cheaply.
type Discovery struct {
	EndpointID string    `json:"endpoint_id"`
	URL        string    `json:"url"`
	FetchedAt  time.Time `json:"fetched_at"`
	ExpiresAt  time.Time `json:"expires_at"`
	// Status is ok, partial (one of the two documents is missing or
	// broken), nonconformant, unreachable or insecure.
	Status   string   `json:"status"`
	Problems []string `json:"problems,omitempty"`

	Smart      *SmartConfig `json:"smart,omitempty"`
	SmartETag  string       `json:"smart_etag,omitempty"`
	Capability *Capability  `json:"capability,omitempty"`
	MetaETag   string       `json:"metadata_etag,omitempty"`
}

// Discovery statuses.
const (
	DiscoveryOK            = "ok"
	DiscoveryPartial       = "partial"
	DiscoveryNonConformant = "nonconformant"
	DiscoveryUnreachable   = "unreachable"
	DiscoveryInsecure      = "insecure"
)

// SmartConfig is the part of .well-known/smart-configuration we keep.
type SmartConfig struct {
	Issuer                       string   `json:"issuer,omitempty"`
	JWKSURI                      string   `json:"jwks_uri,omitempty"`
	AuthorizationEndpoint        string   `json:"authorization_endpoint,omitempty"`
	TokenEndpoint                string   `json:"token_endpoint,omitempty"`
	RegistrationEndpoint         string   `json:"registration_endpoint,omitempty"`
	RevocationEndpoint           string   `json:"revocation_endpoint,omitempty"`
	IntrospectionEndpoint        string   `json:"introspection_endpoint,omitempty"`
	ManagementEndpoint           string   `json:"management_endpoint,omitempty"`
	GrantTypes                   []string `json:"grant_types_supported,omitempty"`
	Scopes                       []string `json:"scopes_supported,omitempty"`
	ResponseTypes                []string `json:"response_types_supported,omitempty"`
	Capabilities                 []string `json:"capabilities,omitempty"`
	CodeChallengeMethods         []string `json:"code_challenge_methods_supported,omitempty"`
	TokenEndpointAuthMethods     []string `json:"token_endpoint_auth_methods_supported,omitempty"`
	TokenEndpointAuthSigningAlgs []string `json:"token_endpoint_auth_signing_alg_values_supported,omitempty"`
	// SMART 2.2: the brand bundle that describes this endpoint's brands
	// more precisely than a vendor-consolidated one.
	UserAccessBrandBundle string `json:"user_access_brand_bundle,omitempty"`
	// RFC 9207: the server sends iss with its authorization responses, so a
	// callback without it must be refused.
	IssParameterSupported bool `json:"authorization_response_iss_parameter_supported,omitempty"`
}

// Capability is the part of the CapabilityStatement we keep.
type Capability struct {
	FHIRVersion     string   `json:"fhir_version,omitempty"`
	Software        string   `json:"software,omitempty"`
	SoftwareVersion string   `json:"software_version,omitempty"`
	Formats         []string `json:"formats,omitempty"`
	Resources       []string `json:"resources,omitempty"`
	Security        []string `json:"security,omitempty"`
	// OAuth URIs from the legacy security extension (SMART 1.0 servers that
	// have no .well-known/smart-configuration).
	OAuthAuthorize string `json:"oauth_authorize,omitempty"`
	OAuthToken     string `json:"oauth_token,omitempty"`
}

// Body limits.
const (
	maxSmartConfigBytes   = 1 << 20
	maxMetadataBytes      = 32 << 20
	maxEndpointsPerSource = 6
)

func defaultHTTPClient() *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	tr.ResponseHeaderTimeout = 20 * time.Second
	return &http.Client{Transport: tr, Timeout: 60 * time.Second, CheckRedirect: noDowngrade}
}

// noDowngrade follows at most five redirects and never from https to plain
// http (except on this machine).
func noDowngrade(req *http.Request, via []*http.Request) error {
	if len(via) >= 5 {
		return errors.New("too many redirects")
	}
	return secureURL(req.URL)
}

// tlsOrLocal: https, or plain http to this machine only. Lists and
// discovery are fetched under the same rule.
func tlsOrLocal(u *url.URL) bool {
	return u.Scheme == "https" || u.Scheme == "http" && importers.IsLoopback(u.Hostname())
}

// secureURL refuses plain http except to loopback.
func secureURL(u *url.URL) error {
	if tlsOrLocal(u) {
		return nil
	}
	return fmt.Errorf("%w: %s", ErrDiscoveryURL, u.Redacted())
}

type discoveryCall struct {
	done chan struct{}
	d    *Discovery
	err  error
}

// Discover fetches the SMART configuration and CapabilityStatement of each
// of the source's endpoints (at most six), unless a result that has not
// expired is kept and force is false. Results are stored on the endpoints.
// When no endpoint could be discovered the error says why (unreachable,
// non-conformant, insecure); the entry carries every endpoint's result.
func (c *Catalog) Discover(ctx context.Context, id string, force bool) (Entry, error) {
	c.mu.RLock()
	s, ok := c.sources[id]
	var eps []*Endpoint
	if ok {
		for _, e := range s.Endpoints {
			if ep, ok := c.endpoints[e]; ok {
				eps = append(eps, ep)
			}
		}
	}
	c.mu.RUnlock()
	if !ok {
		return Entry{}, fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	if len(eps) == 0 {
		return Entry{}, fmt.Errorf("%w: %s", ErrNoEndpoint, id)
	}
	if len(eps) > maxEndpointsPerSource {
		eps = eps[:maxEndpointsPerSource]
	}
	var firstErr error
	okCount := 0
	for _, ep := range eps {
		d, err := c.discoverEndpoint(ctx, ep, force)
		if err != nil && firstErr == nil {
			firstErr = err
		}
		if d != nil && (d.Status == DiscoveryOK || d.Status == DiscoveryPartial) {
			okCount++
		}
	}
	if okCount > 0 {
		c.followBrandBundles(ctx, eps)
	}
	e := c.entry(ctx, c.source(id, s))
	if okCount == 0 && firstErr != nil {
		return e, firstErr
	}
	return e, nil
}

// source returns the current version of a source (an import may just have
// replaced it), or fallback.
func (c *Catalog) source(id string, fallback *Source) *Source {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if s, ok := c.sources[id]; ok {
		return s
	}
	return fallback
}

// followBrandBundles imports the User-access Brands bundles the endpoints
// link from their SMART configuration, so that the brands the endpoint
// itself publishes are selected over a vendor-consolidated bundle's
// (smart-2.2-client #415, #416). A bundle imported within the discovery
// lifetime is not fetched again; a refetch is conditional (ETag). Failures
// are recorded as problems of the endpoint's discovery, not returned: the
// endpoint itself was discovered.
func (c *Catalog) followBrandBundles(ctx context.Context, eps []*Endpoint) {
	done := map[string]bool{}
	for _, ep := range eps {
		c.mu.RLock()
		d := c.discovery[ep.ID]
		c.mu.RUnlock()
		if d == nil || d.Smart == nil || d.Smart.UserAccessBrandBundle == "" || len(done) >= 2 {
			continue
		}
		u := d.Smart.UserAccessBrandBundle
		if done[u] {
			continue
		}
		done[u] = true
		c.mu.RLock()
		l := c.lists[u]
		c.mu.RUnlock()
		if l != nil && c.now().Before(l.ImportedAt.Add(c.ttl)) {
			continue
		}
		if _, err := c.ImportURL(ctx, u, ImportOptions{ListID: u, linked: true}, nil); err != nil {
			c.log.Warn("brands bundle linked from smart-configuration", "endpoint", ep.URL, "bundle", u, "err", err)
			nd := *d
			nd.Problems = append(append([]string(nil), d.Problems...), "user_access_brand_bundle: "+err.Error())
			if perr := c.discoveryT.Put(ctx, ep.ID, nd); perr == nil {
				c.mu.Lock()
				c.discovery[ep.ID] = &nd
				c.mu.Unlock()
			}
		}
	}
}

// EnsureDiscovered is Discover for a source about to be used: it fetches
// only what is missing or expired.
func (c *Catalog) EnsureDiscovered(ctx context.Context, id string) (Entry, error) {
	return c.Discover(ctx, id, false)
}

// discoverEndpoint discovers one endpoint, collapsing concurrent calls.
func (c *Catalog) discoverEndpoint(ctx context.Context, ep *Endpoint, force bool) (*Discovery, error) {
	c.mu.RLock()
	prev := c.discovery[ep.ID]
	c.mu.RUnlock()
	if prev != nil && !force && c.now().Before(prev.ExpiresAt) {
		return prev, resultErr(prev)
	}
	c.dmu.Lock()
	if call, ok := c.discovering[ep.ID]; ok {
		c.dmu.Unlock()
		select {
		case <-call.done:
			return call.d, call.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	call := &discoveryCall{done: make(chan struct{})}
	c.discovering[ep.ID] = call
	c.dmu.Unlock()
	defer func() {
		c.dmu.Lock()
		delete(c.discovering, ep.ID)
		c.dmu.Unlock()
		close(call.done)
	}()

	d := c.fetchDiscovery(ctx, ep, prev)
	call.d, call.err = d, resultErr(d)
	if ctx.Err() != nil {
		return d, ctx.Err()
	}
	if err := c.discoveryT.Put(ctx, ep.ID, *d); err != nil {
		return d, err
	}
	c.mu.Lock()
	c.discovery[ep.ID] = d
	c.mu.Unlock()
	return d, call.err
}

func resultErr(d *Discovery) error {
	if d == nil {
		return nil
	}
	msg := strings.Join(d.Problems, "; ")
	switch d.Status {
	case DiscoveryUnreachable:
		return fmt.Errorf("%w: %s: %s", ErrUnreachable, d.URL, msg)
	case DiscoveryNonConformant:
		return fmt.Errorf("%w: %s: %s", ErrNonConformant, d.URL, msg)
	case DiscoveryInsecure:
		return fmt.Errorf("%w: %s", ErrDiscoveryURL, d.URL)
	}
	return nil
}

// fetchDiscovery asks the server for both documents.
func (c *Catalog) fetchDiscovery(ctx context.Context, ep *Endpoint, prev *Discovery) *Discovery {
	now := c.now().UTC()
	d := &Discovery{EndpointID: ep.ID, URL: ep.URL, FetchedAt: now, ExpiresAt: now.Add(c.ttl)}
	base, err := url.Parse(ep.URL)
	if err != nil || base.Host == "" {
		d.Status = DiscoveryNonConformant
		d.Problems = []string{"the endpoint's URL is not a URL"}
		return d
	}
	if err := secureURL(base); err != nil {
		d.Status = DiscoveryInsecure
		d.Problems = []string{"plain http is refused except to this machine: SMART requires TLS"}
		return d
	}
	var prevSmartETag, prevMetaETag string
	if prev != nil {
		if prev.Smart != nil {
			prevSmartETag = prev.SmartETag
		}
		if prev.Capability != nil {
			prevMetaETag = prev.MetaETag
		}
	}
	smartURL := strings.TrimRight(ep.URL, "/") + "/.well-known/smart-configuration"
	// smart-2.2-client #29, #227: GET with an Accept header for JSON.
	sr := c.get(ctx, smartURL, "application/json", prevSmartETag, maxSmartConfigBytes)
	var unreachable int
	switch {
	case sr.err != nil:
		unreachable++
		d.Problems = append(d.Problems, "smart-configuration: "+sr.err.Error())
	case sr.status == http.StatusNotModified && prev != nil && prev.Smart != nil:
		d.Smart, d.SmartETag = prev.Smart, prev.SmartETag
	case sr.status == http.StatusOK:
		cfg, problems, err := ParseSmartConfig(sr.body, ep.URL)
		if err != nil {
			d.Problems = append(d.Problems, "smart-configuration: "+err.Error())
		} else {
			d.Smart, d.SmartETag = cfg, sr.etag
		}
		for _, p := range problems {
			d.Problems = append(d.Problems, "smart-configuration: "+p)
		}
		if !jsonType(sr.contentType) {
			d.Problems = append(d.Problems, fmt.Sprintf("smart-configuration: served as %q, not JSON", sr.contentType))
		}
		if ma, ok := maxAge(sr.cacheControl); ok {
			d.ExpiresAt = now.Add(min(max(ma, 5*time.Minute), 7*24*time.Hour))
		}
	case sr.status == http.StatusNotFound:
		d.Problems = append(d.Problems, "smart-configuration: not published (404 Not Found)")
	default:
		d.Problems = append(d.Problems, fmt.Sprintf("smart-configuration: HTTP %d", sr.status))
	}
	mr := c.get(ctx, strings.TrimRight(ep.URL, "/")+"/metadata", "application/fhir+json, application/json+fhir;q=0.9, application/json;q=0.8", prevMetaETag, maxMetadataBytes)
	switch {
	case mr.err != nil:
		unreachable++
		d.Problems = append(d.Problems, "metadata: "+mr.err.Error())
	case mr.status == http.StatusNotModified && prev != nil && prev.Capability != nil:
		d.Capability, d.MetaETag = prev.Capability, prev.MetaETag
	case mr.status == http.StatusOK:
		cs, err := ParseCapabilityStatement(mr.body, ep.URL)
		if err != nil {
			d.Problems = append(d.Problems, "metadata: "+err.Error())
		} else {
			d.Capability, d.MetaETag = cs, mr.etag
		}
	default:
		d.Problems = append(d.Problems, fmt.Sprintf("metadata: HTTP %d", mr.status))
	}
	switch {
	case unreachable == 2:
		d.Status = DiscoveryUnreachable
		d.ExpiresAt = now.Add(min(c.ttl, 15*time.Minute))
	case d.Smart != nil && d.Capability != nil:
		d.Status = DiscoveryOK
	case d.Smart != nil || (d.Capability != nil && d.Capability.OAuthToken != ""):
		d.Status = DiscoveryPartial
	case d.Capability != nil:
		d.Status = DiscoveryPartial
		d.Problems = append(d.Problems, "no SMART configuration and no OAuth URIs in the CapabilityStatement: apps cannot authorize here")
	default:
		d.Status = DiscoveryNonConformant
		d.ExpiresAt = now.Add(min(c.ttl, time.Hour))
	}
	return d
}

type fetched struct {
	status       int
	body         []byte
	etag         string
	contentType  string
	cacheControl string
	err          error
}

func (c *Catalog) get(ctx context.Context, u, accept, etag string, limit int64) fetched {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return fetched{err: err}
	}
	req.Header.Set("Accept", accept)
	if etag != "" {
		req.Header.Set("If-None-Match", etag)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fetched{err: describeNetErr(err)}
	}
	defer resp.Body.Close()
	f := fetched{status: resp.StatusCode, etag: resp.Header.Get("ETag"), contentType: resp.Header.Get("Content-Type"), cacheControl: resp.Header.Get("Cache-Control")}
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		return f
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		f.err = describeNetErr(err)
		return f
	}
	if int64(len(b)) > limit {
		f.err = fmt.Errorf("response larger than %d bytes", limit)
		return f
	}
	f.body = b
	return f
}

// describeNetErr says in words what went wrong on the network.
func describeNetErr(err error) error {
	var dnsErr *net.DNSError
	var opErr *net.OpError
	var certErr *tls.CertificateVerificationError
	switch {
	case errors.Is(err, ErrDiscoveryURL):
		return errors.New("redirected to plain http (refused)")
	case errors.As(err, &dnsErr):
		return fmt.Errorf("host %s not found", dnsErr.Name)
	case errors.As(err, &certErr):
		return fmt.Errorf("TLS certificate not trusted: %v", certErr.Err)
	case errors.Is(err, context.DeadlineExceeded), isTimeout(err):
		return errors.New("timed out")
	case errors.As(err, &opErr) && opErr.Op == "dial":
		return fmt.Errorf("connection refused or unreachable (%v)", opErr.Err)
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func jsonType(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return false
	}
	return mt == "application/json" || strings.HasSuffix(mt, "+json")
}

func maxAge(cc string) (time.Duration, bool) {
	for _, p := range strings.Split(cc, ",") {
		p = strings.TrimSpace(strings.ToLower(p))
		if v, ok := strings.CutPrefix(p, "max-age="); ok {
			n, err := strconv.Atoi(v)
			if err == nil && n >= 0 {
				return time.Duration(n) * time.Second, true
			}
		}
		if p == "no-store" || p == "no-cache" {
			return 0, true
		}
	}
	return 0, false
}

// ParseSmartConfig reads a .well-known/smart-configuration document. It
// returns an error when the document is not a JSON object or names no token
// endpoint, and lists lesser departures from SMART App Launch 2.2 as
// problems. Relative endpoint URLs are resolved against the FHIR base
// (smart-2.2-client #379).
func ParseSmartConfig(b []byte, base string) (*SmartConfig, []string, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, nil, fmt.Errorf("not a JSON object: %v", shortJSONErr(err))
	}
	var cfg SmartConfig
	var problems []string
	str := func(k string, dst *string) {
		v, ok := raw[k]
		if !ok {
			return
		}
		if err := json.Unmarshal(v, dst); err != nil {
			problems = append(problems, k+" is not a string")
		}
	}
	list := func(k string, dst *[]string) {
		v, ok := raw[k]
		if !ok {
			return
		}
		if err := json.Unmarshal(v, dst); err != nil {
			problems = append(problems, k+" is not a list of strings")
		}
	}
	str("issuer", &cfg.Issuer)
	str("jwks_uri", &cfg.JWKSURI)
	str("authorization_endpoint", &cfg.AuthorizationEndpoint)
	str("token_endpoint", &cfg.TokenEndpoint)
	str("registration_endpoint", &cfg.RegistrationEndpoint)
	str("revocation_endpoint", &cfg.RevocationEndpoint)
	str("introspection_endpoint", &cfg.IntrospectionEndpoint)
	str("management_endpoint", &cfg.ManagementEndpoint)
	str("user_access_brand_bundle", &cfg.UserAccessBrandBundle)
	list("grant_types_supported", &cfg.GrantTypes)
	list("scopes_supported", &cfg.Scopes)
	list("response_types_supported", &cfg.ResponseTypes)
	list("capabilities", &cfg.Capabilities)
	list("code_challenge_methods_supported", &cfg.CodeChallengeMethods)
	list("token_endpoint_auth_methods_supported", &cfg.TokenEndpointAuthMethods)
	list("token_endpoint_auth_signing_alg_values_supported", &cfg.TokenEndpointAuthSigningAlgs)
	if v, ok := raw["authorization_response_iss_parameter_supported"]; ok {
		if err := json.Unmarshal(v, &cfg.IssParameterSupported); err != nil {
			problems = append(problems, "authorization_response_iss_parameter_supported is not a boolean")
		}
	}

	bu, err := url.Parse(strings.TrimRight(base, "/") + "/")
	if err != nil {
		return nil, nil, fmt.Errorf("bad base URL")
	}
	for _, f := range []struct {
		name string
		p    *string
	}{
		{"authorization_endpoint", &cfg.AuthorizationEndpoint}, {"token_endpoint", &cfg.TokenEndpoint},
		{"registration_endpoint", &cfg.RegistrationEndpoint}, {"revocation_endpoint", &cfg.RevocationEndpoint},
		{"introspection_endpoint", &cfg.IntrospectionEndpoint}, {"management_endpoint", &cfg.ManagementEndpoint},
		{"jwks_uri", &cfg.JWKSURI}, {"user_access_brand_bundle", &cfg.UserAccessBrandBundle},
	} {
		if *f.p == "" {
			continue
		}
		u, err := url.Parse(*f.p)
		if err != nil {
			problems = append(problems, f.name+" is not a URL")
			*f.p = ""
			continue
		}
		if !u.IsAbs() {
			problems = append(problems, f.name+" is relative (resolved against the FHIR base)")
			u = bu.ResolveReference(u)
			*f.p = u.String()
		}
		if err := secureURL(u); err != nil {
			problems = append(problems, f.name+" uses plain http")
		}
	}
	if cfg.TokenEndpoint == "" {
		return nil, problems, errors.New("no token_endpoint")
	}
	launch := false
	for _, c := range cfg.Capabilities {
		if c == "launch-ehr" || c == "launch-standalone" {
			launch = true
		}
	}
	if _, ok := raw["capabilities"]; !ok {
		problems = append(problems, "capabilities is missing (required)")
	}
	if _, ok := raw["grant_types_supported"]; !ok {
		problems = append(problems, "grant_types_supported is missing (required)")
	}
	if launch && cfg.AuthorizationEndpoint == "" {
		problems = append(problems, "authorization_endpoint is missing although launch is supported")
	}
	hasS256, hasPlain := false, false
	for _, m := range cfg.CodeChallengeMethods {
		hasS256 = hasS256 || m == "S256"
		hasPlain = hasPlain || m == "plain"
	}
	if !hasS256 {
		problems = append(problems, "code_challenge_methods_supported does not include S256 (required)")
	}
	if hasPlain {
		problems = append(problems, "code_challenge_methods_supported includes plain (forbidden)")
	}
	sort.Strings(problems)
	return &cfg, problems, nil
}

// ParseCapabilityStatement reads a server's /metadata (a CapabilityStatement,
// or a DSTU2 Conformance).
func ParseCapabilityStatement(b []byte, base string) (*Capability, error) {
	var cs struct {
		ResourceType string `json:"resourceType"`
		FHIRVersion  string `json:"fhirVersion"`
		Software     struct {
			Name    string `json:"name"`
			Version string `json:"version"`
		} `json:"software"`
		Format []string `json:"format"`
		Rest   []struct {
			Mode     string `json:"mode"`
			Security struct {
				Extension []struct {
					URL       string `json:"url"`
					Extension []struct {
						URL      string `json:"url"`
						ValueURI string `json:"valueUri"`
						ValueURL string `json:"valueUrl"`
					} `json:"extension"`
				} `json:"extension"`
				Service []struct {
					Coding []struct {
						Code string `json:"code"`
					} `json:"coding"`
					Text string `json:"text"`
				} `json:"service"`
			} `json:"security"`
			Resource []struct {
				Type string `json:"type"`
			} `json:"resource"`
		} `json:"rest"`
	}
	if err := json.Unmarshal(b, &cs); err != nil {
		return nil, fmt.Errorf("not a CapabilityStatement: %v", shortJSONErr(err))
	}
	if cs.ResourceType != "CapabilityStatement" && cs.ResourceType != "Conformance" {
		if cs.ResourceType == "" {
			return nil, errors.New("not a FHIR resource (no resourceType)")
		}
		return nil, fmt.Errorf("a %s, not a CapabilityStatement", cs.ResourceType)
	}
	c := &Capability{FHIRVersion: cs.FHIRVersion, Software: cs.Software.Name, SoftwareVersion: cs.Software.Version, Formats: cs.Format}
	bu, _ := url.Parse(strings.TrimRight(base, "/") + "/")
	for _, r := range cs.Rest {
		if r.Mode != "" && r.Mode != "server" {
			continue
		}
		for _, res := range r.Resource {
			if res.Type != "" {
				c.Resources = append(c.Resources, res.Type)
			}
		}
		for _, s := range r.Security.Service {
			for _, cd := range s.Coding {
				if cd.Code != "" {
					c.Security = appendUniqueFold(c.Security, cd.Code)
				}
			}
		}
		for _, x := range r.Security.Extension {
			if !strings.HasSuffix(x.URL, "oauth-uris") {
				continue
			}
			for _, y := range x.Extension {
				v := y.ValueURI
				if v == "" {
					v = y.ValueURL
				}
				if u, err := url.Parse(v); err == nil && bu != nil && !u.IsAbs() {
					v = bu.ResolveReference(u).String()
				}
				switch y.URL {
				case "authorize":
					c.OAuthAuthorize = v
				case "token":
					c.OAuthToken = v
				}
			}
		}
	}
	sort.Strings(c.Resources)
	return c, nil
}

func shortJSONErr(err error) string {
	s := err.Error()
	if len(s) > 120 {
		s = s[:120] + "…"
	}
	return strings.TrimPrefix(s, "json: ")
}
