// Package sandboxtest starts an in-process medrelay-sandbox for tests.
package sandboxtest

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/url"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/medrelay/medrelay/internal/sandbox"
)

// Option adjusts the sandbox configuration.
type Option func(*sandbox.Config)

// WithPatients sets the number of patients per tenant.
func WithPatients(n int) Option { return func(c *sandbox.Config) { c.Patients = n } }

// WithSeed sets the data seed.
func WithSeed(seed int64) Option { return func(c *sandbox.Config) { c.Seed = seed } }

// WithConsentPage turns auto-approve off, so authorize shows the HTML
// login-and-consent page (sandboxtest turns auto-approve on by default).
func WithConsentPage() Option { return func(c *sandbox.Config) { c.AutoApprove = false } }

// WithOpenRegistration accepts any public client id and redirect URI.
func WithOpenRegistration() Option { return func(c *sandbox.Config) { c.OpenRegistration = true } }

// WithTLS serves HTTPS with a generated certificate; use Sandbox.HTTPClient.
func WithTLS() Option { return func(c *sandbox.Config) { c.TLS = true } }

// WithTenants replaces the default tenants (one per profile).
func WithTenants(t ...sandbox.TenantConfig) Option {
	return func(c *sandbox.Config) { c.Tenants = append(c.Tenants, t...) }
}

// WithClients pre-registers clients.
func WithClients(cl ...sandbox.ClientConfig) Option {
	return func(c *sandbox.Config) { c.Clients = append(c.Clients, cl...) }
}

// WithFaults starts with faults active.
func WithFaults(f ...sandbox.Faults) Option {
	return func(c *sandbox.Config) { c.Faults = append(c.Faults, f...) }
}

// WithConfig edits the configuration freely (clock, bulk file size, ...).
func WithConfig(fn func(*sandbox.Config)) Option { return fn }

// WithClock makes the sandbox read the time from c.
func WithClock(c *Clock) Option { return func(cfg *sandbox.Config) { cfg.Now = c.Now } }

// Clock is a test clock for a sandbox, an agent component or both: the wall
// clock moved on by Advance (the zero Clock), or a fixed time moved only by
// Advance (FrozenClock). Safe for concurrent use.
type Clock struct {
	mu     sync.Mutex
	frozen time.Time // zero: follow the wall clock
	off    time.Duration
	timers []*clockTimer // pending After channels
}

type clockTimer struct {
	at time.Time
	ch chan time.Time
}

// FrozenClock returns a Clock that stands at t until the test advances it.
func FrozenClock(t time.Time) *Clock { return &Clock{frozen: t} }

// Now is the clock's time; pass the method value as a Now option.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nowLocked()
}

func (c *Clock) nowLocked() time.Time {
	if c.frozen.IsZero() {
		return time.Now().Add(c.off)
	}
	return c.frozen.Add(c.off)
}

// Advance moves the clock on by d, firing the After channels it passes.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.off += d
	now := c.nowLocked()
	keep := c.timers[:0]
	for _, t := range c.timers {
		if t.at.After(now) {
			keep = append(keep, t)
		} else {
			t.ch <- now
		}
	}
	c.timers = keep
}

// After returns a channel that receives the clock's time once d has passed
// on it: when Advance reaches it, or (a clock that follows the wall clock)
// when d of wall time has passed, whichever comes first. For components
// that wait on their clock (retry schedules spanning days).
func (c *Clock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	if d <= 0 {
		ch <- c.nowLocked()
		return ch
	}
	t := &clockTimer{at: c.nowLocked().Add(d), ch: ch}
	c.timers = append(c.timers, t)
	if c.frozen.IsZero() {
		time.AfterFunc(d, func() { c.fire(t) })
	}
	return ch
}

// fire sends on t's channel unless Advance did already.
func (c *Clock) fire(t *clockTimer) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, x := range c.timers {
		if x == t {
			c.timers = append(c.timers[:i], c.timers[i+1:]...)
			t.ch <- c.nowLocked()
			return
		}
	}
}

// Waiting is how many After channels have not fired yet: a test advances
// the clock once the component waits on it.
func (c *Clock) Waiting() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.timers)
}

// Start runs a sandbox on a random loopback port with auto-approve on, closed
// when the test ends.
func Start(t testing.TB, opts ...Option) *sandbox.Sandbox {
	t.Helper()
	cfg := sandbox.Config{Addr: "127.0.0.1:0", AutoApprove: true, Seed: 1}
	for _, o := range opts {
		o(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := sandbox.Start(ctx, cfg)
	if err != nil {
		t.Fatalf("sandboxtest: start: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// Approve opens an authorization URL at an auto-approving sandbox and
// returns the query of the redirect to the client's callback (code and
// state, or an error), without following it.
func Approve(t testing.TB, authorizeURL string) url.Values {
	t.Helper()
	hc := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	r, err := hc.Get(authorizeURL)
	if err != nil {
		t.Fatalf("sandboxtest: authorize: %v", err)
	}
	r.Body.Close()
	loc, err := url.Parse(r.Header.Get("Location"))
	if err != nil || loc.String() == "" {
		t.Fatalf("sandboxtest: authorize answered HTTP %d without a redirect to the callback (%v)", r.StatusCode, err)
	}
	return loc.Query()
}

// Key is a client key pair for private_key_jwt tests.
type Key struct {
	Alg     jose.SignatureAlgorithm
	KID     string
	Private crypto.Signer
}

// NewKey generates an RS384 or ES384 key.
func NewKey(t testing.TB, alg string) *Key {
	t.Helper()
	var priv crypto.Signer
	var err error
	switch alg {
	case "RS384":
		priv, err = rsa.GenerateKey(rand.Reader, 2048)
	case "ES384":
		priv, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	default:
		t.Fatalf("sandboxtest: unsupported alg %s", alg)
	}
	if err != nil {
		t.Fatalf("sandboxtest: key: %v", err)
	}
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return &Key{Alg: jose.SignatureAlgorithm(alg), KID: alg + "-" + base64.RawURLEncoding.EncodeToString(b), Private: priv}
}

// JWKS is the public key set to register with the sandbox.
func (k *Key) JWKS() json.RawMessage {
	set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: k.Private.Public(), KeyID: k.KID, Algorithm: string(k.Alg), Use: "sig"}}}
	b, _ := json.Marshal(set)
	return b
}

// Assertion signs a client authentication JWT for tokenURL with the given
// lifetime and a fresh jti; extra claims or headers may override.
func (k *Key) Assertion(t testing.TB, clientID, tokenURL string, lifetime time.Duration, extra map[string]any) string {
	t.Helper()
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	claims := map[string]any{
		"iss": clientID, "sub": clientID, "aud": tokenURL,
		"exp": time.Now().Add(lifetime).Unix(), "jti": base64.RawURLEncoding.EncodeToString(b),
	}
	for key, v := range extra {
		if v == nil {
			delete(claims, key)
		} else {
			claims[key] = v
		}
	}
	return k.Sign(t, claims, nil)
}

// Sign signs arbitrary claims with extra protected headers (typ JWT unless
// headers override it; a nil value drops a header).
func (k *Key) Sign(t testing.TB, claims map[string]any, headers map[string]any) string {
	t.Helper()
	opts := &jose.SignerOptions{}
	if v, ok := headers["typ"]; !ok {
		opts = opts.WithType("JWT")
	} else if v != nil {
		opts = opts.WithHeader("typ", v)
	}
	for h, v := range headers {
		if h != "typ" && v != nil {
			opts = opts.WithHeader(jose.HeaderKey(h), v)
		}
	}
	key := jose.JSONWebKey{Key: k.Private, KeyID: k.KID}
	if v, ok := headers["kid"]; ok && v == nil {
		key.KeyID = ""
	}
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: k.Alg, Key: key}, opts)
	if err != nil {
		t.Fatalf("sandboxtest: signer: %v", err)
	}
	payload, _ := json.Marshal(claims)
	obj, err := sig.Sign(payload)
	if err != nil {
		t.Fatalf("sandboxtest: sign: %v", err)
	}
	s, err := obj.CompactSerialize()
	if err != nil {
		t.Fatalf("sandboxtest: serialize: %v", err)
	}
	return s
}
