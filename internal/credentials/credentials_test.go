package credentials_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/medrelay/medrelay/internal/credentials"
	"github.com/medrelay/medrelay/internal/oauth"
	"github.com/medrelay/medrelay/internal/sandbox/sandboxtest"
	"github.com/medrelay/medrelay/internal/secrets"
	"github.com/medrelay/medrelay/internal/store"
)

// syncBuffer is a log sink safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type fixture struct {
	db    *store.DB
	creds *credentials.Store
	clock *sandboxtest.Clock
	logs  *syncBuffer
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	db, err := store.Open(context.Background(), store.Options{InMemory: true, Key: key, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	f := &fixture{db: db, clock: &sandboxtest.Clock{}, logs: &syncBuffer{}}
	f.creds = credentials.New(db, credentials.Options{Logger: slog.New(slog.NewJSONHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug})), Now: f.clock.Now})
	return f
}

func (f *fixture) set(t *testing.T, in credentials.Input) credentials.Credential {
	t.Helper()
	c, err := f.creds.Set(context.Background(), in)
	if err != nil {
		t.Fatalf("Set: %v", err)
	}
	return c
}

// TestSet_Methods: a public client, a client secret (Basic or form), a key
// generated in the agent (ES384, RS384). smart-2.2-client #10, #11, #12,
// #22, #23, #65, #66, #290.
func TestSet_Methods(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	pub := f.set(t, credentials.Input{SourceID: "src-public", ClientID: "pub"})
	basic := f.set(t, credentials.Input{SourceID: "src-basic", ClientID: "basic", ClientSecret: "s-basic"})
	post := f.set(t, credentials.Input{SourceID: "src-post", ClientID: "post", ClientSecret: "s-post", Method: oauth.AuthClientSecretPost})
	es := f.set(t, credentials.Input{Vendor: "epic", ClientID: "es", GenerateKey: "ES384", Scopes: []string{"openid", "patient/*.rs"}})
	rs := f.set(t, credentials.Input{Vendor: "oraclehealth", ClientID: "rs", GenerateKey: "RS384"})
	for _, tc := range []struct {
		c      credentials.Credential
		method string
		secret string
		alg    string
	}{
		{pub, oauth.AuthNone, "", ""}, {basic, oauth.AuthClientSecretBasic, "s-basic", ""}, {post, oauth.AuthClientSecretPost, "s-post", ""},
		{es, oauth.AuthPrivateKeyJWT, "", "ES384"}, {rs, oauth.AuthPrivateKeyJWT, "", "RS384"},
	} {
		if tc.c.Method != tc.method || tc.c.HasSecret != (tc.secret != "") || tc.c.KeyAlgorithm != tc.alg || (tc.alg != "") != (len(tc.c.KeyIDs) == 1) {
			t.Errorf("%s: %+v", tc.c.ClientID, tc.c)
		}
		c, auth, err := f.creds.ByID(ctx, tc.c.ID)
		if err != nil {
			t.Fatal(err)
		}
		if auth.Method != tc.method || auth.Secret.Reveal() != tc.secret || (auth.Signer != nil) != (tc.alg != "") || c.ID != tc.c.ID {
			t.Errorf("%s: auth %+v", tc.c.ClientID, auth)
		}
		if tc.alg != "" {
			if a, ok := auth.Signer.(oauth.Algorithmer); !ok || a.Algorithm() != tc.alg {
				t.Errorf("%s: signer algorithm", tc.c.ClientID)
			}
		}
	}
	list, err := f.creds.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var targets []string
	for _, c := range list {
		targets = append(targets, c.Target())
	}
	want := []string{"source src-basic", "source src-post", "source src-public", "vendor epic", "vendor oraclehealth"}
	if !slices.Equal(targets, want) {
		t.Errorf("list order %v", targets)
	}
	if got, _ := f.creds.Find(ctx, "", "EPIC"); got.ID != es.ID || !slices.Equal(got.Scopes, []string{"openid", "patient/*.rs"}) {
		t.Errorf("find vendor (case-insensitive): %+v", got)
	}
}

// TestResolve_SourceBeatsVendor: a source's own credential wins over its
// vendor's; without either, a clear not-found.
func TestResolve_SourceBeatsVendor(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	vendor := f.set(t, credentials.Input{Vendor: "epic", ClientID: "epic-wide", GenerateKey: "ES384"})
	own := f.set(t, credentials.Input{SourceID: "mercy", ClientID: "mercy-only", ClientSecret: "x"})
	if c, _, err := f.creds.Resolve(ctx, "mercy", "epic"); err != nil || c.ID != own.ID {
		t.Fatalf("mercy: %+v %v", c, err)
	}
	if c, _, err := f.creds.Resolve(ctx, "", "Epic"); err != nil || c.ID != vendor.ID {
		t.Fatalf("vendor by display name: %+v %v", c, err)
	}
	oh := f.set(t, credentials.Input{Vendor: "oraclehealth", ClientID: "oh"})
	if c, _, err := f.creds.Resolve(ctx, "x", "Oracle Health"); err != nil || c.ID != oh.ID {
		t.Fatalf("Oracle Health: %+v %v", c, err)
	}
	if c, auth, err := f.creds.Resolve(ctx, "other-epic-site", "epic"); err != nil || c.ID != vendor.ID || auth.Method != oauth.AuthPrivateKeyJWT {
		t.Fatalf("other epic site: %+v %v", c, err)
	}
	_, _, err := f.creds.Resolve(ctx, "nowhere", "athenahealth")
	if !errors.Is(err, credentials.ErrNotFound) || !strings.Contains(err.Error(), "credentials set") {
		t.Fatalf("no credential: %v", err)
	}
	if _, err := f.creds.Delete(ctx, own.ID); err != nil {
		t.Fatal(err)
	}
	if c, _, err := f.creds.Resolve(ctx, "mercy", "epic"); err != nil || c.ID != vendor.ID {
		t.Fatalf("after deleting the source's own: %+v %v", c, err)
	}
}

// TestSet_Updates: secret material is replaced only when new material
// comes; a new client id needs its own secret.
func TestSet_Updates(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	c := f.set(t, credentials.Input{SourceID: "s", ClientID: "id-1", ClientSecret: "first"})
	c2 := f.set(t, credentials.Input{SourceID: "s", ClientID: "id-1", Scopes: []string{"openid"}})
	if c2.ID != c.ID || !c2.HasSecret || c2.Method != oauth.AuthClientSecretBasic || !slices.Equal(c2.Scopes, []string{"openid"}) {
		t.Fatalf("scopes update lost the secret: %+v", c2)
	}
	c3 := f.set(t, credentials.Input{SourceID: "s", ClientID: "id-1", Method: oauth.AuthClientSecretPost})
	if c3.Method != oauth.AuthClientSecretPost || !c3.HasSecret {
		t.Fatalf("switch to post: %+v", c3)
	}
	if _, auth, _ := f.creds.ByID(ctx, c.ID); auth.Secret != "first" {
		t.Fatal("secret changed")
	}
	if _, err := f.creds.Set(ctx, credentials.Input{SourceID: "s", ClientID: "id-2"}); !errors.Is(err, credentials.ErrInvalid) {
		t.Fatalf("new client id with the old secret: %v", err)
	}
	if _, err := f.creds.Set(ctx, credentials.Input{SourceID: "s", ClientID: "id-1", Method: oauth.AuthPrivateKeyJWT}); !errors.Is(err, credentials.ErrInvalid) {
		t.Fatalf("private_key_jwt without a key: %v", err)
	}
	c4 := f.set(t, credentials.Input{SourceID: "s", ClientID: "id-2", GenerateKey: "ES384"})
	if c4.HasSecret || c4.Method != oauth.AuthPrivateKeyJWT {
		t.Fatalf("key replaces the secret: %+v", c4)
	}
	c5 := f.set(t, credentials.Input{SourceID: "s", ClientID: "id-2", Method: oauth.AuthNone})
	if c5.Method != oauth.AuthNone || c5.HasSecret || c5.KeyAlgorithm != "" {
		t.Fatalf("public: %+v", c5)
	}
	// Nothing changes the id or the creation time.
	if c5.ID != c.ID || !c5.CreatedAt.Equal(c.CreatedAt) {
		t.Fatal("identity changed")
	}
}

// TestSet_Invalid: bad input is refused with a reason, never an echo of
// the secret.
func TestSet_Invalid(t *testing.T) {
	f := newFixture(t)
	const sentinel = "SENTINEL-bad-secret"
	cases := []credentials.Input{
		{ClientID: "x"},
		{SourceID: "a", Vendor: "b", ClientID: "x"},
		{SourceID: "a b", ClientID: "x"},
		{SourceID: "a", ClientID: ""},
		{SourceID: "a", ClientID: " padded"},
		{SourceID: "a", ClientID: "x", ClientSecret: sentinel + "\x00"},
		{SourceID: "a", ClientID: "x", ClientSecret: secrets.Value(strings.Repeat("s", 5000))},
		{SourceID: "a", ClientID: "x", ClientSecret: sentinel, GenerateKey: "ES384"},
		{SourceID: "a", ClientID: "x", GenerateKey: "HS256"},
		{SourceID: "a", ClientID: "x", Method: "tls_client_auth"},
		{SourceID: "a", ClientID: "x", Method: oauth.AuthNone, ClientSecret: sentinel},
		{SourceID: "a", ClientID: "x", Scopes: []string{"two words"}},
	}
	for i, in := range cases {
		_, err := f.creds.Set(context.Background(), in)
		if !errors.Is(err, credentials.ErrInvalid) {
			t.Errorf("case %d: %v", i, err)
		}
		if err != nil && strings.Contains(err.Error(), sentinel) {
			t.Errorf("case %d: the error carries the secret", i)
		}
	}
}

func jwks(t *testing.T, f *fixture) []map[string]any {
	t.Helper()
	b, err := f.creds.JWKS(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var set struct {
		Keys []map[string]any `json:"keys"`
	}
	if err := json.Unmarshal(b, &set); err != nil {
		t.Fatal(err)
	}
	return set.Keys
}

func kids(keys []map[string]any) []string {
	var out []string
	for _, k := range keys {
		out = append(out, k["kid"].(string))
	}
	return out
}

// TestJWKS_Format: public keys only, bare key members, kty/kid/alg/use,
// kids unique. smart-2.2-client #294, #307, #313, #314, #315.
func TestJWKS_Format(t *testing.T) {
	f := newFixture(t)
	es := f.set(t, credentials.Input{Vendor: "a", ClientID: "a", GenerateKey: "ES384"})
	rs := f.set(t, credentials.Input{Vendor: "b", ClientID: "b", GenerateKey: "RS384"})
	keys := jwks(t, f)
	if len(keys) != 2 {
		t.Fatalf("%d keys", len(keys))
	}
	seen := map[string]bool{}
	for _, k := range keys {
		kid, _ := k["kid"].(string)
		if kid == "" || seen[kid] || k["use"] != "sig" {
			t.Errorf("kid %q use %v", kid, k["use"])
		}
		seen[kid] = true
		for _, private := range []string{"d", "p", "q", "dp", "dq", "qi"} {
			if _, ok := k[private]; ok {
				t.Fatalf("published key has private member %q", private)
			}
		}
		var want []string
		switch kid {
		case es.KeyIDs[0]:
			want = []string{"kty:EC", "crv:P-384", "alg:ES384", "x", "y"}
		case rs.KeyIDs[0]:
			want = []string{"kty:RSA", "alg:RS384", "n", "e"}
		default:
			t.Fatalf("unexpected kid %s", kid)
		}
		for _, w := range want {
			name, val, hasVal := strings.Cut(w, ":")
			v, ok := k[name].(string)
			if !ok || v == "" || hasVal && v != val {
				t.Errorf("%s: %s = %v", kid, name, k[name])
			}
		}
		// The published set parses as JWKs a server can verify with.
		b, _ := json.Marshal(k)
		var jwk jose.JSONWebKey
		if err := jwk.UnmarshalJSON(b); err != nil || !jwk.IsPublic() || !jwk.Valid() {
			t.Errorf("%s does not parse as a public JWK: %v", kid, err)
		}
	}
}

// TestSigner_Assertion: the client assertion a server checks.
// smart-2.2-client #319-#323, #327-#332.
func TestSigner_Assertion(t *testing.T) {
	f := newFixture(t)
	for _, alg := range []string{"ES384", "RS384"} {
		c := f.set(t, credentials.Input{Vendor: "v-" + alg, ClientID: "client-" + alg, GenerateKey: alg})
		_, auth, err := f.creds.ByID(context.Background(), c.ID)
		if err != nil {
			t.Fatal(err)
		}
		pubs := publicKeys(t, f)
		jtis := map[string]bool{}
		for range 20 {
			raw, err := auth.Signer.SignAssertion(context.Background(), "https://ehr.example/token")
			if err != nil {
				t.Fatal(err)
			}
			claims := verifyAssertion(t, raw, pubs, alg, c.KeyIDs[0])
			if claims.Iss != "client-"+alg || claims.Sub != claims.Iss || claims.Aud != "https://ehr.example/token" {
				t.Fatalf("claims %+v", claims)
			}
			if left := time.Unix(claims.Exp, 0).Sub(f.clock.Now()); left <= 0 || left > 5*time.Minute {
				t.Fatalf("exp %v ahead", left)
			}
			if jtis[claims.Jti] || len(claims.Jti) < 16 {
				t.Fatalf("jti %q repeated or short", claims.Jti)
			}
			jtis[claims.Jti] = true
		}
	}
}

type assertion struct {
	Iss, Sub, Aud, Jti string
	Exp, Iat           int64
}

func publicKeys(t *testing.T, f *fixture) *jose.JSONWebKeySet {
	t.Helper()
	b, err := f.creds.JWKS(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	set, err := oauth.ParseJWKS(b)
	if err != nil {
		t.Fatal(err)
	}
	return set
}

// verifyAssertion checks signature, alg, kid and typ against the published
// keys, as an authorization server would.
func verifyAssertion(t *testing.T, raw string, set *jose.JSONWebKeySet, alg, kid string) assertion {
	t.Helper()
	obj, err := jose.ParseSigned(raw, []jose.SignatureAlgorithm{jose.ES384, jose.RS384})
	if err != nil {
		t.Fatal(err)
	}
	h := obj.Signatures[0].Header
	if h.Algorithm != alg || h.KeyID != kid || h.ExtraHeaders[jose.HeaderType] != "JWT" {
		t.Fatalf("header alg %s kid %s typ %v; want %s %s JWT", h.Algorithm, h.KeyID, h.ExtraHeaders[jose.HeaderType], alg, kid)
	}
	if _, ok := h.ExtraHeaders["jku"]; ok {
		t.Fatal("jku sent (#324, #325: medrelay does not send it)")
	}
	keys := set.Key(kid)
	if len(keys) != 1 {
		t.Fatalf("kid %s not published", kid)
	}
	payload, err := obj.Verify(keys[0].Key)
	if err != nil {
		t.Fatalf("signature: %v", err)
	}
	var a assertion
	if err := json.Unmarshal(payload, &a); err != nil {
		t.Fatal(err)
	}
	return a
}

// TestRotate: the new key signs at once; the old one stays published until
// its last assertion has expired, then leaves the JWKS and the store.
func TestRotate(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	c := f.set(t, credentials.Input{Vendor: "epic", ClientID: "epic", GenerateKey: "RS384"})
	_, auth, _ := f.creds.ByID(ctx, c.ID)
	old := c.KeyIDs[0]
	if kid := auth.Signer.(*credentials.Signer).KeyID(); kid != old {
		t.Fatalf("signing with %s, want %s", kid, old)
	}
	r, err := f.creds.Rotate(ctx, c.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.KeyIDs) != 2 || r.KeyIDs[1] != old || r.KeyIDs[0] == old || r.KeyAlgorithm != "RS384" {
		t.Fatalf("after rotation: %v %s", r.KeyIDs, r.KeyAlgorithm)
	}
	// The signer from before the rotation follows it.
	raw, err := auth.Signer.SignAssertion(ctx, "https://x/token")
	if err != nil {
		t.Fatal(err)
	}
	verifyAssertion(t, raw, publicKeys(t, f), "RS384", r.KeyIDs[0])
	if got := kids(jwks(t, f)); !slices.Equal(got, []string{r.KeyIDs[0], old}) {
		t.Fatalf("JWKS kids %v: the new key first, the old still there", got)
	}
	// Four minutes of assertion lifetime plus five of grace later, the
	// old key is gone.
	f.clock.Advance(8 * time.Minute)
	if got := kids(jwks(t, f)); len(got) != 2 {
		t.Fatalf("old key dropped too early: %v", got)
	}
	f.clock.Advance(2 * time.Minute)
	if got := kids(jwks(t, f)); !slices.Equal(got, []string{r.KeyIDs[0]}) {
		t.Fatalf("JWKS kids %v after the retirement period", got)
	}
	if got, _ := f.creds.Get(ctx, c.ID); !slices.Equal(got.KeyIDs, []string{r.KeyIDs[0]}) {
		t.Fatalf("credential still lists %v", got.KeyIDs)
	}
	// Rotating a credential without a key is refused.
	s := f.set(t, credentials.Input{SourceID: "x", ClientID: "x", ClientSecret: "y"})
	if _, err := f.creds.Rotate(ctx, s.ID); !errors.Is(err, credentials.ErrNoKey) {
		t.Fatalf("rotate a secret: %v", err)
	}
}

// TestDelete_KeyStaysUntilExpired: a deleted credential's key stops
// signing at once but stays published for assertions in flight.
func TestDelete_KeyStaysUntilExpired(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	c := f.set(t, credentials.Input{SourceID: "s", ClientID: "x", GenerateKey: "ES384"})
	_, auth, _ := f.creds.ByID(ctx, c.ID)
	if _, err := f.creds.Delete(ctx, c.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := auth.Signer.SignAssertion(ctx, "https://x/token"); err == nil {
		t.Fatal("a deleted credential's key still signs")
	}
	if got := kids(jwks(t, f)); !slices.Equal(got, c.KeyIDs) {
		t.Fatalf("JWKS %v right after deletion", got)
	}
	f.clock.Advance(10 * time.Minute)
	if got := jwks(t, f); len(got) != 0 {
		t.Fatalf("JWKS %v after the retirement period", got)
	}
	if _, err := f.creds.Get(ctx, c.ID); !errors.Is(err, credentials.ErrNotFound) {
		t.Fatalf("get deleted: %v", err)
	}
	if _, err := f.creds.Delete(ctx, c.ID); !errors.Is(err, credentials.ErrNotFound) {
		t.Fatalf("delete twice: %v", err)
	}
}

// TestJWKSHandler: served without authentication, as JSON, with a
// Cache-Control header. smart-2.2-client #298, #299, #302, #303.
func TestJWKSHandler(t *testing.T) {
	f := newFixture(t)
	f.set(t, credentials.Input{Vendor: "v", ClientID: "c", GenerateKey: "ES384"})
	ts := httptest.NewServer(f.creds.JWKSHandler())
	defer ts.Close()
	resp, err := http.Get(ts.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" || !strings.Contains(resp.Header.Get("Cache-Control"), "max-age=") {
		t.Fatalf("HTTP %d %v", resp.StatusCode, resp.Header)
	}
	if _, err := oauth.ParseJWKS(b); err != nil {
		t.Fatalf("served JWKS: %v", err)
	}
}

// TestSecretsNeverLeave: with a sentinel secret and generated keys, no
// Credential, log line, error or printed value holds the secret or any
// private key material. smart-2.2-client #295.
func TestSecretsNeverLeave(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	const sentinel = "SENTINEL-client-secret-4f1d"
	c1 := f.set(t, credentials.Input{SourceID: "s1", ClientID: "c1", ClientSecret: sentinel})
	c2 := f.set(t, credentials.Input{SourceID: "s2", ClientID: "c2", GenerateKey: "ES384"})
	c3 := f.set(t, credentials.Input{SourceID: "s3", ClientID: "c3", GenerateKey: "RS384"})
	if _, err := f.creds.Rotate(ctx, c3.ID); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	list, _ := f.creds.List(ctx)
	for _, c := range list {
		b, _ := json.Marshal(c)
		out.Write(b)
		fmt.Fprintf(&out, "%v %+v %#v", c, c, c)
	}
	for _, id := range []string{c1.ID, c2.ID, c3.ID} {
		c, auth, _ := f.creds.ByID(ctx, id)
		fmt.Fprintf(&out, "%v %+v %#v %v %+v", c, c, c, auth, auth)
		slog.New(slog.NewJSONHandler(&out, nil)).Info("resolved", "auth", auth, "secret", auth.Secret)
	}
	b, _ := f.creds.JWKS(ctx)
	out.Write(b)
	_, err := f.creds.Set(ctx, credentials.Input{SourceID: "s1", ClientID: "other"})
	fmt.Fprint(&out, err)
	everything := out.String() + f.logs.String()

	if strings.Contains(everything, sentinel) {
		t.Fatal("the client secret leaked")
	}
	for _, priv := range privateKeys(t, f) {
		if strings.Contains(everything, priv) || strings.Contains(everything, priv[:40]) {
			t.Fatal("private key material leaked")
		}
	}
	if !strings.Contains(f.logs.String(), "credential set") {
		t.Fatal("the log sink saw nothing (the test would prove nothing)")
	}
}

// privateKeys reads the stored private keys (base64 PKCS #8) straight from
// the store, where only this package's code ever reads them.
func privateKeys(t *testing.T, f *fixture) []string {
	t.Helper()
	var out []string
	err := store.NewTable[map[string]any](f.db, store.CredentialKeys).Scan(context.Background(), store.ScanOptions{}, func(_ string, v map[string]any) error {
		p, _ := v["private"].(string)
		if len(p) < 100 {
			return fmt.Errorf("key without private material: %v", v["kid"])
		}
		out = append(out, p)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(out) < 3 {
		t.Fatalf("%d keys stored", len(out))
	}
	return out
}

// TestConcurrentSigning: many signers at once while keys rotate; every
// assertion verifies with a key published at that moment.
func TestConcurrentSigning(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	c := f.set(t, credentials.Input{Vendor: "v", ClientID: "c", GenerateKey: "ES384"})
	_, auth, _ := f.creds.ByID(ctx, c.ID)
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 10 {
				raw, err := auth.Signer.SignAssertion(ctx, "https://x/token")
				if err != nil {
					errs <- err
					return
				}
				obj, err := jose.ParseSigned(raw, []jose.SignatureAlgorithm{jose.ES384})
				if err != nil {
					errs <- err
					return
				}
				b, _ := f.creds.JWKS(ctx)
				set, _ := oauth.ParseJWKS(b)
				ks := set.Key(obj.Signatures[0].Header.KeyID)
				if len(ks) != 1 {
					errs <- fmt.Errorf("signed with unpublished kid %s", obj.Signatures[0].Header.KeyID)
					return
				}
				if _, err := obj.Verify(ks[0].Key); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	for range 3 {
		if _, err := f.creds.Rotate(ctx, c.ID); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
