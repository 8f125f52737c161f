package sandbox

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/medrelay/medrelay/internal/sandbox/synth"
)

// Sandbox is a running medrelay-sandbox.
type Sandbox struct {
	cfg     Config
	ln      net.Listener
	srv     *http.Server
	base    string
	keys    *serverKeys
	tenants map[string]*tenant
	order   []string
	client  *http.Client // fetches client JWKS URLs and CDS services
	cert    *x509.Certificate

	mu      sync.Mutex
	faults  []*faultState
	jtis    map[string]time.Time // client assertion jti -> exp, replay cache
	exports map[string]*exportJob
	stats   Stats
	done    chan struct{}
}

// Start listens on cfg.Addr and serves in the background. It returns once
// the listener is open; Close stops it.
func Start(ctx context.Context, cfg Config) (*Sandbox, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	keys, err := processKeys()
	if err != nil {
		return nil, err
	}
	s := &Sandbox{
		cfg:     cfg,
		keys:    keys,
		tenants: map[string]*tenant{},
		jtis:    map[string]time.Time{},
		exports: map[string]*exportJob{},
		stats:   newStats(),
		done:    make(chan struct{}),
		client:  &http.Client{Timeout: 10 * time.Second},
	}
	for _, tc := range cfg.Tenants {
		s.tenants[tc.Name] = newTenant(s, tc)
		s.order = append(s.order, tc.Name)
	}
	for _, c := range cfg.Clients {
		if err := s.RegisterClient(c.Tenant, c); err != nil {
			return nil, err
		}
	}
	if err := s.SetFaults(cfg.Faults...); err != nil {
		return nil, err
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("sandbox: listen %s: %w", cfg.Addr, err)
	}
	scheme := "http"
	if cfg.TLS {
		cert, err := selfSignedCert(ln.Addr())
		if err != nil {
			ln.Close()
			return nil, err
		}
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
		scheme = "https"
		leaf, err := x509.ParseCertificate(cert.Certificate[0])
		if err != nil {
			ln.Close()
			return nil, fmt.Errorf("sandbox: certificate: %w", err)
		}
		s.cert = leaf
	}
	s.ln = ln
	s.base = scheme + "://" + ln.Addr().String()
	s.srv = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			cfg.Logger.Warn("sandbox: serve", "err", err)
		}
	}()
	go s.janitor()
	cfg.Logger.Info("sandbox started", "url", s.base, "tenants", s.order, "patients", cfg.Patients)
	return s, nil
}

// URL is the base URL, e.g. http://127.0.0.1:41234.
func (s *Sandbox) URL() string { return s.base }

// FHIRBase is the FHIR base URL of a tenant: {base}/{tenant}/fhir.
func (s *Sandbox) FHIRBase(tenant string) string { return s.base + "/" + tenant + "/fhir" }

// Tenants lists the tenant names in configuration order.
func (s *Sandbox) Tenants() []string { return append([]string(nil), s.order...) }

// Certificate is the generated self-signed certificate (nil without TLS).
func (s *Sandbox) Certificate() *x509.Certificate { return s.cert }

// HTTPClient returns a client that trusts the sandbox's certificate when TLS
// is on (and nothing else self-signed).
func (s *Sandbox) HTTPClient() *http.Client {
	if s.cert == nil {
		return &http.Client{}
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	pool.AddCert(s.cert)
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
}

// Close stops the server.
func (s *Sandbox) Close() error {
	select {
	case <-s.done:
		return nil
	default:
	}
	close(s.done)
	s.mu.Lock()
	for _, j := range s.exports {
		j.cancel() // stop planning goroutines
	}
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	if err != nil {
		err = s.srv.Close()
	}
	return err
}

func (s *Sandbox) now() time.Time { return s.cfg.Now() }

func (s *Sandbox) tenant(name string) (*tenant, error) {
	t, ok := s.tenants[name]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnknownTenant, name)
	}
	return t, nil
}

// janitor drops expired tokens, jtis and exports.
func (s *Sandbox) janitor() {
	tk := time.NewTicker(30 * time.Second)
	defer tk.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-tk.C:
		}
		now := s.now()
		s.mu.Lock()
		for j, exp := range s.jtis {
			if now.After(exp.Add(time.Minute)) {
				delete(s.jtis, j)
			}
		}
		for id, e := range s.exports {
			if now.After(e.created.Add(time.Duration(s.cfg.BulkFileTTL) * 4)) {
				e.cancel()
				delete(s.exports, id)
			}
		}
		s.mu.Unlock()
		for _, t := range s.tenants {
			t.gc(now)
		}
	}
}

// ServeHTTP routes {base}/brands.json, {base}/admin/... and {base}/{tenant}/...
func (s *Sandbox) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path := r.URL.Path
	s.cfg.Logger.Debug("request", "method", r.Method, "path", path)
	w.Header().Set("Cache-Control", "no-store")
	switch {
	case path == "/" || path == "":
		s.serveIndex(w, r)
		return
	case path == "/brands.json":
		s.count(nil, "brands", "")
		s.serveBrands(w, r)
		return
	case strings.HasPrefix(path, "/admin/"):
		s.serveAdmin(w, r, strings.TrimPrefix(path, "/admin/"))
		return
	}
	name, rest, _ := strings.Cut(strings.TrimPrefix(path, "/"), "/")
	t, ok := s.tenants[name]
	if !ok {
		writeOutcome(w, http.StatusNotFound, "not-found", "no such tenant: "+name)
		return
	}
	switch {
	case rest == "fhir" || strings.HasPrefix(rest, "fhir/"):
		s.serveFHIR(w, r, t, strings.TrimPrefix(strings.TrimPrefix(rest, "fhir"), "/"))
	case strings.HasPrefix(rest, "auth/"):
		s.serveAuth(w, r, t, strings.TrimPrefix(rest, "auth/"))
	case rest == "launch":
		s.serveLaunch(w, r, t)
	case strings.HasPrefix(rest, "bulk/"):
		s.serveBulk(w, r, t, strings.TrimPrefix(rest, "bulk/"))
	case rest == "style.json":
		// SMART styling (smart_style_url), so apps can look like the portal.
		writeJSON(w, http.StatusOK, "application/json", map[string]any{
			"color_background": "#edeae3", "color_error": "#9e2d2d", "color_highlight": t.prof.Color,
			"color_modal_backdrop": "", "color_success": "#498e49", "color_text": "#303030",
			"dim_border_radius": "6px", "dim_font_size": "13px", "dim_spacing_size": "20px",
			"font_family_body": "system-ui, sans-serif", "font_family_heading": "system-ui, sans-serif",
		})
	case rest == "" || rest == "portal":
		s.serveIndex(w, r)
	default:
		writeOutcome(w, http.StatusNotFound, "not-found", "no such endpoint")
	}
}

// writeJSON answers v as JSON with status.
func writeJSON(w http.ResponseWriter, status int, contentType string, v any) {
	if contentType == "" {
		contentType = "application/json"
	}
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, "encode: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", contentType)
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// writeOutcome answers a FHIR OperationOutcome.
func writeOutcome(w http.ResponseWriter, status int, code, diag string) {
	severity := "error"
	if status < 400 {
		severity = "information"
	}
	writeJSON(w, status, "application/fhir+json", map[string]any{
		"resourceType": "OperationOutcome",
		"issue": []map[string]any{{
			"severity": severity, "code": code, "diagnostics": diag,
		}},
	})
}

// oauthError answers an RFC 6749 error.
func oauthError(w http.ResponseWriter, status int, code, desc string) {
	writeJSON(w, status, "", map[string]string{"error": code, "error_description": desc})
}

func sortedKeys[M ~map[string]V, V any](m M) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// servedTypes are the synthetic types a profile serves (its Types, or all).
func servedTypes(p *profile) []synth.Type {
	if p.Types == nil {
		return synth.AllTypes()
	}
	var out []synth.Type
	for _, n := range p.Types {
		if ty, ok := synth.ParseType(n); ok {
			out = append(out, ty)
		}
	}
	return out
}

func (t *tenant) serves(ty synth.Type) bool { return slices.Contains(t.served, ty) }
