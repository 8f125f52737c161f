package directory

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/medrelay/medrelay/internal/sandbox/sandboxtest"
)

const smartConfig = `{
  "issuer": "ISSUER",
  "authorization_endpoint": "auth/authorize",
  "token_endpoint": "BASE/auth/token",
  "capabilities": ["launch-standalone", "client-public", "context-standalone-patient"],
  "grant_types_supported": ["authorization_code"],
  "code_challenge_methods_supported": ["S256"],
  "token_endpoint_auth_methods_supported": ["private_key_jwt"],
  "scopes_supported": ["openid", "patient/*.rs"]
}`

const capability = `{"resourceType":"CapabilityStatement","fhirVersion":"4.0.1","software":{"name":"TestEHR","version":"9"},
 "format":["json"],"rest":[{"mode":"server","resource":[{"type":"Patient"},{"type":"Observation"}],
 "security":{"service":[{"coding":[{"code":"SMART-on-FHIR"}]}]}}]}`

// fhirServer is a FHIR server answering discovery, counting conditional
// requests.
type fhirServer struct {
	*httptest.Server
	smartHits, metaHits, notModified atomic.Int32
	smart, meta, brands              atomic.Value
}

func newFHIRServer(t *testing.T) *fhirServer {
	s := &fhirServer{}
	s.smart.Store(smartConfig)
	s.meta.Store(capability)
	s.Server = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/fhir/.well-known/smart-configuration":
			s.smartHits.Add(1)
			// smart-2.2-client #29: the request accepts JSON.
			if !strings.Contains(r.Header.Get("Accept"), "application/json") {
				http.Error(w, "accept json", http.StatusNotAcceptable)
				return
			}
			if r.Header.Get("If-None-Match") == `"s1"` {
				s.notModified.Add(1)
				w.WriteHeader(http.StatusNotModified)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("ETag", `"s1"`)
			w.Header().Set("Cache-Control", "max-age=3600")
			body := strings.ReplaceAll(s.smart.Load().(string), "BASE", s.URL+"/fhir")
			w.Write([]byte(strings.ReplaceAll(body, "ISSUER", s.URL)))
		case "/fhir/metadata":
			s.metaHits.Add(1)
			w.Header().Set("Content-Type", "application/fhir+json")
			w.Header().Set("ETag", `W/"m1"`)
			w.Write([]byte(s.meta.Load().(string)))
		case "/brands.json":
			b, _ := s.brands.Load().(string)
			if b == "" {
				http.NotFound(w, r)
				return
			}
			w.Header().Set("Content-Type", "application/fhir+json")
			w.Write([]byte(strings.ReplaceAll(b, "BASE", s.URL+"/fhir")))
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(s.Close)
	return s
}

// sourceAt imports a one-row list naming a source at base and returns its id.
func sourceAt(t *testing.T, c *Catalog, base, name string) string {
	t.Helper()
	s, err := c.Import(context.Background(), lanternJSON([2]string{base, name}), ImportOptions{FileName: "T_EndpointSources.json", ListID: "t:" + strings.ReplaceAll(name, " ", "-")}, nil)
	if err != nil || s.Created != 1 {
		t.Fatalf("import %s: %+v %v", base, s, err)
	}
	res, err := c.Search(context.Background(), SearchParams{Query: name, Limit: 1})
	if err != nil || len(res.Hits) != 1 {
		t.Fatalf("find %s: %v", name, err)
	}
	return res.Hits[0].Source.ID
}

func TestDiscover(t *testing.T) {
	srv := newFHIRServer(t)
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	c := newCatalog(t, openStore(t), WithHTTPClient(srv.Client()), WithClock(clock))
	id := sourceAt(t, c, srv.URL+"/fhir", "Discovery General")

	e, err := c.Discover(context.Background(), id, false)
	if err != nil {
		t.Fatal(err)
	}
	d := e.Endpoints[0].Discovery
	if d == nil || d.Status != DiscoveryOK || d.Smart == nil || d.Capability == nil {
		t.Fatalf("discovery: %+v", d)
	}
	// smart-2.2-client #379: a relative endpoint is resolved against the base.
	if d.Smart.AuthorizationEndpoint != srv.URL+"/fhir/auth/authorize" || d.Smart.TokenEndpoint != srv.URL+"/fhir/auth/token" {
		t.Errorf("endpoints: %q %q", d.Smart.AuthorizationEndpoint, d.Smart.TokenEndpoint)
	}
	if !strings.Contains(strings.Join(d.Problems, ";"), "authorization_endpoint is relative") {
		t.Errorf("the relative URL is not reported: %v", d.Problems)
	}
	if d.Capability.FHIRVersion != "4.0.1" || d.Capability.Software != "TestEHR" || len(d.Capability.Resources) != 2 {
		t.Errorf("capability: %+v", d.Capability)
	}
	if !d.ExpiresAt.Equal(now.Add(time.Hour)) || d.SmartETag != `"s1"` || d.MetaETag != `W/"m1"` {
		t.Errorf("expiry %v, etags %q %q", d.ExpiresAt, d.SmartETag, d.MetaETag)
	}
	// Kept until it expires: no new request.
	if _, err := c.EnsureDiscovered(context.Background(), id); err != nil || srv.smartHits.Load() != 1 {
		t.Fatalf("ensure within expiry: %v, %d requests", err, srv.smartHits.Load())
	}
	// Expired: revalidated with the ETag, the kept document reused.
	now = now.Add(2 * time.Hour)
	e, err = c.EnsureDiscovered(context.Background(), id)
	if err != nil || srv.smartHits.Load() != 2 || srv.notModified.Load() != 1 {
		t.Fatalf("revalidation: %v, %d requests, %d 304s", err, srv.smartHits.Load(), srv.notModified.Load())
	}
	if d := e.Endpoints[0].Discovery; d.Smart == nil || d.Smart.TokenEndpoint == "" || !d.FetchedAt.Equal(now) {
		t.Fatalf("after 304: %+v", d)
	}
	// Kept in the store: a restarted catalog still has it.
	c2 := newCatalog(t, c.db)
	if g, _ := c2.Get(context.Background(), id); g.Endpoints[0].Discovery == nil || g.Endpoints[0].Discovery.Status != DiscoveryOK {
		t.Fatalf("after restart: %+v", g.Endpoints[0].Discovery)
	}
}

// smart-2.2-client #415, #416: the brands bundle an endpoint links from its
// SMART configuration is followed, and its facts win over a consolidated
// list's.
func TestDiscoverFollowsLinkedBrandsBundle(t *testing.T) {
	srv := newFHIRServer(t)
	srv.smart.Store(strings.Replace(smartConfig, `"issuer"`, `"user_access_brand_bundle": "ISSUER/brands.json", "issuer"`, 1))
	srv.brands.Store(`{"resourceType":"Bundle","type":"collection","entry":[
	 {"fullUrl":"https://b/Organization/o","resource":{"resourceType":"Organization","id":"o","name":"Linked General",
	  "extension":[{"url":"http://hl7.org/fhir/StructureDefinition/organization-brand","extension":[{"url":"brandLogo","valueUrl":"https://b/logo.svg"}]},
	   {"url":"http://hl7.org/fhir/StructureDefinition/organization-portal","extension":[{"url":"portalName","valueString":"Linked MyChart"},
	    {"url":"portalUrl","valueUrl":"https://b/mychart"},{"url":"portalEndpoint","valueReference":{"reference":"Endpoint/e"}}]}]}},
	 {"fullUrl":"https://b/Endpoint/e","resource":{"resourceType":"Endpoint","id":"e","address":"BASE"}}]}`)
	c := newCatalog(t, openStore(t), WithHTTPClient(srv.Client()))
	id := sourceAt(t, c, srv.URL+"/fhir", "Linked General")
	e, err := c.Discover(context.Background(), id, false)
	if err != nil {
		t.Fatal(err)
	}
	s := e.Source
	if s.ID != id || len(s.Portals) != 1 || s.Portals[0].Name != "Linked MyChart" || s.Logo != "https://b/logo.svg" || !slices.Contains(s.Lists, srv.URL+"/brands.json") {
		t.Fatalf("source after discovery: %+v", s)
	}
}

func TestDiscoverNonConformant(t *testing.T) {
	srv := newFHIRServer(t)
	srv.smart.Store(`{"authorization_endpoint": "https://x/authorize", "code_challenge_methods_supported": ["plain"]}`)
	srv.meta.Store(`<html>not fhir</html>`)
	c := newCatalog(t, openStore(t), WithHTTPClient(srv.Client()))
	id := sourceAt(t, c, srv.URL+"/fhir", "Broken Clinic")
	e, err := c.Discover(context.Background(), id, true)
	if !errors.Is(err, ErrNonConformant) {
		t.Fatalf("want non-conformant, got %v", err)
	}
	d := e.Endpoints[0].Discovery
	// A non-conformant server is asked again after an hour, not a day.
	if got := d.ExpiresAt.Sub(d.FetchedAt); got != time.Hour {
		t.Errorf("non-conformant result kept %v, want 1h", got)
	}
	msg := strings.Join(d.Problems, "; ")
	for _, want := range []string{"no token_endpoint", "not a CapabilityStatement"} {
		if !strings.Contains(msg, want) {
			t.Errorf("problems %q lack %q", msg, want)
		}
	}
}

func TestDiscoverUnreachableAndInsecure(t *testing.T) {
	// A port nothing listens on, on this machine (plain http is allowed to
	// loopback).
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	c := newCatalog(t, openStore(t))
	id := sourceAt(t, c, "http://"+addr+"/fhir", "Nowhere Hospital")
	e, err := c.Discover(context.Background(), id, false)
	if !errors.Is(err, ErrUnreachable) || e.Endpoints[0].Discovery.Status != DiscoveryUnreachable {
		t.Fatalf("want unreachable, got %v", err)
	}
	if !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("unclear error: %v", err)
	}
	// An unreachable server is tried again after 15 minutes.
	if d := e.Endpoints[0].Discovery; d.ExpiresAt.Sub(d.FetchedAt) != 15*time.Minute {
		t.Errorf("unreachable result kept %v, want 15m", d.ExpiresAt.Sub(d.FetchedAt))
	}

	// An endpoint on plain http elsewhere is refused without a request
	// (smart-2.2-client #1: secrets only over TLS). Imports refuse such
	// URLs, so put one in the catalog directly.
	ep := &Endpoint{ID: endpointID("http://fhir.example.org/r4"), URL: "http://fhir.example.org/r4"}
	c.mu.Lock()
	c.endpoints[ep.ID] = ep
	src := *c.sources[id]
	src.Endpoints = []string{ep.ID}
	c.sources[id] = &src
	c.mu.Unlock()
	if _, err := c.Discover(context.Background(), id, true); !errors.Is(err, ErrDiscoveryURL) {
		t.Fatalf("plain http: %v", err)
	}
	if _, err := c.Discover(context.Background(), "missing", false); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing: %v", err)
	}
}

// The sandbox's brands.json imports, and its endpoints discover cleanly.
func TestSandboxBrandsAndDiscovery(t *testing.T) {
	sb := sandboxtest.Start(t)
	c := newCatalog(t, openStore(t))
	s, err := c.ImportURL(context.Background(), sb.URL()+"/brands.json", ImportOptions{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if s.Format != "smart-brands" || s.Entries < 6 || s.RejectedCount != 0 || s.ListID != sb.URL()+"/brands.json" {
		t.Fatalf("sandbox brands: %+v", s)
	}
	res, err := c.Search(context.Background(), SearchParams{Query: "sandbox health", Limit: 50})
	if err != nil {
		t.Fatal(err)
	}
	var id string
	for _, h := range res.Hits {
		for _, ep := range h.Endpoints {
			if ep.URL == sb.FHIRBase("generic") {
				id = h.Source.ID
			}
		}
	}
	if id == "" {
		t.Fatalf("no source reaches %s: %v", sb.FHIRBase("generic"), names(res))
	}
	e, err := c.Discover(context.Background(), id, false)
	if err != nil {
		t.Fatal(err)
	}
	d := e.Endpoints[0].Discovery
	if d.Status != DiscoveryOK || d.Smart.TokenEndpoint == "" || d.Capability == nil {
		t.Fatalf("sandbox discovery: %+v", d)
	}
}

func FuzzParseSmartConfig(f *testing.F) {
	f.Add([]byte(smartConfig))
	f.Add([]byte(`{"token_endpoint":"/t","capabilities":[1]}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		cfg, _, err := ParseSmartConfig(b, "https://fhir.example.org/r4")
		if err == nil && cfg.TokenEndpoint == "" {
			t.Fatal("accepted without a token endpoint")
		}
	})
}

func FuzzParseCapabilityStatement(f *testing.F) {
	f.Add([]byte(capability))
	f.Add([]byte(`{"resourceType":"Conformance","rest":[{"security":{"extension":[{"url":"http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris","extension":[{"url":"token","valueUri":"token"}]}]}}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = ParseCapabilityStatement(b, "https://fhir.example.org/r4")
	})
}

// Documented limits of discovery: a server's max-age is held between 5
// minutes and 7 days, and a redirect from https to plain http elsewhere is
// not followed.
func TestDiscoverMaxAgeBoundsAndNoDowngrade(t *testing.T) {
	var maxAge atomic.Value
	maxAge.Store("max-age=60")
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/fhir/.well-known/smart-configuration":
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Cache-Control", maxAge.Load().(string))
			w.Write([]byte(strings.ReplaceAll(strings.ReplaceAll(smartConfig, "BASE", "https://x/fhir"), "ISSUER", "https://x")))
		case "/fhir/metadata":
			w.Write([]byte(capability))
		case "/down/.well-known/smart-configuration", "/down/metadata":
			http.Redirect(w, r, "http://fhir.example.org"+r.URL.Path, http.StatusFound)
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	// The agent's own client (its redirect policy), trusting the test server.
	hc := defaultHTTPClient()
	hc.Transport.(*http.Transport).TLSClientConfig.RootCAs = srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs
	c := newCatalog(t, openStore(t), WithHTTPClient(hc), WithClock(func() time.Time { return now }))
	id := sourceAt(t, c, srv.URL+"/fhir", "Bounded Clinic")
	for _, tc := range []struct {
		cc   string
		want time.Duration
	}{{"max-age=60", 5 * time.Minute}, {"public, max-age=31536000", 7 * 24 * time.Hour}} {
		maxAge.Store(tc.cc)
		e, err := c.Discover(context.Background(), id, true)
		if err != nil {
			t.Fatal(err)
		}
		if d := e.Endpoints[0].Discovery; !d.ExpiresAt.Equal(now.Add(tc.want)) {
			t.Errorf("Cache-Control %q: expires %v, want now+%v", tc.cc, d.ExpiresAt, tc.want)
		}
	}

	id = sourceAt(t, c, srv.URL+"/down", "Downgrade Clinic")
	e, err := c.Discover(context.Background(), id, true)
	if !errors.Is(err, ErrUnreachable) {
		t.Fatalf("redirect to plain http: %v", err)
	}
	if msg := strings.Join(e.Endpoints[0].Discovery.Problems, "; "); !strings.Contains(msg, "redirected to plain http (refused)") {
		t.Errorf("problems %q do not say the redirect was refused", msg)
	}
}
