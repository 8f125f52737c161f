package oauth_test

import (
	"context"
	"errors"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/medrelay/medrelay/internal/oauth"
	"github.com/medrelay/medrelay/internal/sandbox"
	"github.com/medrelay/medrelay/internal/sandbox/sandboxtest"
	"github.com/medrelay/medrelay/internal/secrets"
)

// TestSandbox_StandaloneGeneric: the whole standalone launch as a public
// client, then refresh with rotation and reuse of the old refresh token.
// smart-2.2-client #13, #62, #63, #67-#71, #105, #106, #117, #147, #201, #218.
func TestSandbox_StandaloneGeneric(t *testing.T) {
	e := newEnv(t, sandbox.ProfileGeneric)
	c := e.client(t, sandbox.ClientConfig{ClientID: "generic-public"}, oauth.ClientAuth{})
	tok, ar := standalone(t, c, nil, url.Values{"login_hint": {"2"}})

	if !slices.Contains(ar.Scopes, "patient/*.rs") || !slices.Contains(ar.Scopes, "offline_access") {
		t.Errorf("requested scopes %v: want v2 patient/*.rs and offline_access", ar.Scopes)
	}
	if tok.Patient == "" || tok.AccessToken == "" || tok.RefreshToken == "" || tok.TokenType != "Bearer" {
		t.Fatalf("token lacks patient/access/refresh/type: %+v", tok)
	}
	if !tok.HasScope("offline_access") || !tok.HasScope("launch/patient") {
		t.Errorf("granted scopes %v", tok.Scopes)
	}
	if tok.Expiry.IsZero() || time.Until(tok.Expiry) < 50*time.Minute {
		t.Errorf("expiry %v, want about an hour ahead", tok.Expiry)
	}
	if tok.IDTokenErr != nil {
		t.Fatalf("id token did not verify: %v", tok.IDTokenErr)
	}
	if want := e.sb.FHIRBase(e.tenant) + "/Patient/" + tok.Patient; tok.FHIRUser != want {
		t.Errorf("fhirUser %q, want %q", tok.FHIRUser, want)
	}
	if code := fhirGet(t, e.sb.FHIRBase(e.tenant)+"/Patient/"+tok.Patient, tok.AccessToken); code != 200 {
		t.Fatalf("reading the patient with the token: HTTP %d", code)
	}

	ref, err := c.Refresh(context.Background(), tok.RefreshToken, nil)
	if err != nil {
		t.Fatalf("refresh: %v", err)
	}
	if !ref.RefreshRotated || ref.RefreshToken == tok.RefreshToken || ref.AccessToken == tok.AccessToken {
		t.Fatalf("generic rotates refresh tokens: rotated=%v", ref.RefreshRotated)
	}
	// Narrowing the scopes on refresh is allowed (#107, #108).
	narrow, err := c.Refresh(context.Background(), ref.RefreshToken, []string{"launch/patient", "patient/*.rs"})
	if err != nil {
		t.Fatalf("narrowed refresh: %v", err)
	}
	// (The sandbox grants the family's scopes again; what was sent is
	// checked in TestRefresh_Request.)
	if !narrow.RefreshRotated {
		t.Error("narrowed refresh did not rotate")
	}
	ref = narrow
	// Reusing a rotated refresh token: the sandbox revokes the grant, and
	// the error says so in a way custody can act on.
	_, err = c.Refresh(context.Background(), tok.RefreshToken, nil)
	if !errors.Is(err, oauth.ErrInvalidGrant) || errors.Is(err, oauth.ErrTransient) {
		t.Fatalf("reused refresh token: %v, want ErrInvalidGrant", err)
	}
	var oe *oauth.Error
	if !errors.As(err, &oe) || oe.Code != "invalid_grant" || oe.Status != 400 {
		t.Fatalf("error %#v", err)
	}
	if strings.Contains(err.Error(), tok.RefreshToken.Reveal()) {
		t.Fatal("error carries the refresh token")
	}
}

// TestSandbox_StandaloneEpic: private_key_jwt (Epic requires it for new
// confidential apps), offline_access granted without being echoed, refresh
// tokens not rotated. smart-2.2-client #64, #65, #72, #319-#334.
func TestSandbox_StandaloneEpic(t *testing.T) {
	e := newEnv(t, sandbox.ProfileEpic)
	key := sandboxtest.NewKey(t, "RS384")
	signer := &keySigner{t: t, key: key, clientID: "epic-confidential"}
	c := e.client(t, sandbox.ClientConfig{ClientID: "epic-confidential", JWKS: key.JWKS()},
		oauth.ClientAuth{Method: oauth.AuthPrivateKeyJWT, Signer: signer})
	tok, _ := standalone(t, c, nil, nil)
	if !tok.HasScope("offline_access") {
		t.Errorf("scopes %v: offline_access must be inferred from the refresh token (Epic does not echo it)", tok.Scopes)
	}
	ref, err := c.Refresh(context.Background(), tok.RefreshToken, nil)
	if err != nil {
		t.Fatalf("refresh: %v", err)
	}
	if ref.RefreshRotated || ref.RefreshToken != tok.RefreshToken {
		t.Fatal("Epic does not rotate: the old refresh token must be kept")
	}
	// More than the original grant is refused as invalid_scope: a
	// rejection, not a dead grant (#108).
	_, err = c.Refresh(context.Background(), tok.RefreshToken, []string{"user/*.rs"})
	if !errors.Is(err, oauth.ErrRejected) || errors.Is(err, oauth.ErrInvalidGrant) {
		t.Fatalf("widened refresh: %v", err)
	}
	// Twice more with the same refresh token: each assertion has a fresh
	// jti, or the sandbox would refuse it as a replay.
	for range 2 {
		if _, err := c.Refresh(context.Background(), tok.RefreshToken, nil); err != nil {
			t.Fatalf("refresh again: %v", err)
		}
	}
	// A client secret is refused before any request: the server lists
	// private_key_jwt only.
	_, err = oauth.New(oauth.ClientConfig{Endpoints: e.ep, FHIRBase: e.sb.FHIRBase(e.tenant), ClientID: "x",
		RedirectURI: redirectURI, Auth: oauth.ClientAuth{Method: oauth.AuthClientSecretBasic, Secret: "s3cret-value"}, Profile: profiles[e.tenant]})
	if !errors.Is(err, oauth.ErrConfig) || strings.Contains(err.Error(), "s3cret-value") {
		t.Fatalf("client secret at Epic: %v", err)
	}
}

// TestSandbox_StandaloneOracleHealth: ten-minute access tokens, rotation.
func TestSandbox_StandaloneOracleHealth(t *testing.T) {
	e := newEnv(t, sandbox.ProfileOracleHealth)
	c := e.client(t, sandbox.ClientConfig{ClientID: "oh-public"}, oauth.ClientAuth{})
	tok, _ := standalone(t, c, nil, nil)
	if left := time.Until(tok.Expiry); left > 10*time.Minute || left < 8*time.Minute {
		t.Errorf("Oracle Health access token lives %v, want about 9.5 minutes", left)
	}
	ref, err := c.Refresh(context.Background(), tok.RefreshToken, nil)
	if err != nil || !ref.RefreshRotated {
		t.Fatalf("refresh: %v rotated=%v", err, ref != nil && ref.RefreshRotated)
	}
}

// TestSandbox_StandaloneBlueButton: trailing slashes added to static
// endpoints, confidential client with HTTP Basic, access_grant_expiration.
// smart-2.2-client #343, #345.
func TestSandbox_StandaloneBlueButton(t *testing.T) {
	e := newEnv(t, sandbox.ProfileBlueButton)
	// Static endpoints written without the slash Blue Button needs.
	ep := e.ep
	ep.AuthorizeURL = strings.TrimSuffix(ep.AuthorizeURL, "/")
	ep.TokenURL = strings.TrimSuffix(ep.TokenURL, "/")
	secret := secrets.Value("bb-secret-Vh7+/=&x")
	if err := e.sb.RegisterClient(e.tenant, sandbox.ClientConfig{ClientID: "bb-app", ClientSecret: secret.Reveal(), RedirectURIs: []string{redirectURI}}); err != nil {
		t.Fatal(err)
	}
	cfg := oauth.ClientConfig{Endpoints: ep, FHIRBase: e.sb.FHIRBase(e.tenant), ClientID: "bb-app", RedirectURI: redirectURI,
		Auth: oauth.ClientAuth{Method: oauth.AuthClientSecretBasic, Secret: secret}, Profile: profiles[e.tenant]}
	c, err := oauth.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Config().Endpoints.TokenURL; !strings.HasSuffix(got, "/token/") {
		t.Fatalf("token URL %s lacks the trailing slash", got)
	}
	tok, ar := standalone(t, c, nil, nil)
	if !slices.Contains(ar.Scopes, "patient/ExplanationOfBenefit.rs") {
		t.Errorf("requested %v: want the profile's default scopes", ar.Scopes)
	}
	if tok.GrantExpiry.IsZero() || time.Until(tok.GrantExpiry) < 300*24*time.Hour {
		t.Errorf("grant expiry %v, want about 13 months ahead", tok.GrantExpiry)
	}
	// Public clients are refused before anything is sent.
	cfg.Auth = oauth.ClientAuth{}
	if _, err := oauth.New(cfg); !errors.Is(err, oauth.ErrConfig) {
		t.Fatalf("public client at Blue Button: %v", err)
	}
	// client_secret_post works too.
	cfg.Auth = oauth.ClientAuth{Method: oauth.AuthClientSecretPost, Secret: secret}
	c2, err := oauth.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c2.Refresh(context.Background(), tok.RefreshToken, nil); err != nil {
		t.Fatalf("refresh with client_secret_post: %v", err)
	}
}

// TestSandbox_StandaloneEClinicalWorks: a server with SMART v1 scopes only
// gets v1 syntax, whatever the caller wrote.
func TestSandbox_StandaloneEClinicalWorks(t *testing.T) {
	e := newEnv(t, sandbox.ProfileEClinicalWorks)
	c := e.client(t, sandbox.ClientConfig{ClientID: "ecw-public"}, oauth.ClientAuth{})
	if c.ScopesV2() {
		t.Fatal("eClinicalWorks advertises permission-v1 only")
	}
	tok, ar := standalone(t, c, []string{"launch/patient", "openid", "fhirUser", "offline_access", "patient/Observation.rs", "patient/Patient.rs"}, nil)
	want := []string{"launch/patient", "openid", "fhirUser", "offline_access", "patient/Observation.read", "patient/Patient.read"}
	if !slices.Equal(ar.Scopes, want) {
		t.Fatalf("requested %v, want %v", ar.Scopes, want)
	}
	if !tok.HasScope("patient/Observation.read") {
		t.Errorf("granted %v", tok.Scopes)
	}
}

// TestSandbox_Declined: a patient who declines comes back with
// access_denied, which parses as ErrAccessDenied.
func TestSandbox_Declined(t *testing.T) {
	e := newEnv(t, sandbox.ProfileGeneric)
	c := e.client(t, sandbox.ClientConfig{ClientID: "declined"}, oauth.ClientAuth{})
	ar, err := c.AuthorizeURL(nil, url.Values{"login_hint": {"deny"}})
	if err != nil {
		t.Fatal(err)
	}
	cb, err := authorize(t, ar)
	if !errors.Is(err, oauth.ErrAccessDenied) || cb.Error != "access_denied" || cb.State != ar.State || !cb.Code.IsZero() {
		t.Fatalf("declined: %+v %v", cb, err)
	}
}

// TestSandbox_PKCEMismatch: the code with another verifier is refused as
// invalid_grant, and the code is then spent. smart-2.2-client #70.
func TestSandbox_PKCEMismatch(t *testing.T) {
	e := newEnv(t, sandbox.ProfileGeneric)
	c := e.client(t, sandbox.ClientConfig{ClientID: "pkce"}, oauth.ClientAuth{})
	ar, _ := c.AuthorizeURL(nil, nil)
	other, _ := c.AuthorizeURL(nil, nil)
	cb, err := authorize(t, ar)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Exchange(context.Background(), cb.Code.Reveal(), other.Verifier)
	if !errors.Is(err, oauth.ErrInvalidGrant) {
		t.Fatalf("wrong verifier: %v", err)
	}
	if strings.Contains(err.Error(), cb.Code.Reveal()) || strings.Contains(err.Error(), other.Verifier) {
		t.Fatal("error carries the code or verifier")
	}
}

// TestSandbox_CodeForAnotherSource: a code minted by one tenant is refused
// at another's token endpoint, and the callback's iss gives it away before
// that (RFC 9207).
func TestSandbox_CodeForAnotherSource(t *testing.T) {
	sb := sandboxtest.Start(t)
	a := discoverEnv(t, sb, sandbox.ProfileGeneric)
	b := discoverEnv(t, sb, sandbox.ProfileOracleHealth)
	ca := a.client(t, sandbox.ClientConfig{ClientID: "shared-id"}, oauth.ClientAuth{})
	cbClient := b.client(t, sandbox.ClientConfig{ClientID: "shared-id"}, oauth.ClientAuth{})
	ar, _ := ca.AuthorizeURL(nil, nil)
	cb, err := authorize(t, ar)
	if err != nil {
		t.Fatal(err)
	}
	if err := cbClient.CheckIssuer(cb.Iss); !errors.Is(err, oauth.ErrBadCallback) {
		t.Fatalf("iss of generic accepted for oraclehealth: %v", err)
	}
	if _, err := cbClient.Exchange(context.Background(), cb.Code.Reveal(), ar.Verifier); !errors.Is(err, oauth.ErrInvalidGrant) {
		t.Fatalf("generic's code at oraclehealth: %v", err)
	}
}

// TestSandbox_TokenEndpoint5xx: a 503 from the token endpoint is
// transient, with its Retry-After.
func TestSandbox_TokenEndpoint5xx(t *testing.T) {
	e := newEnv(t, sandbox.ProfileGeneric)
	c := e.client(t, sandbox.ClientConfig{ClientID: "flaky"}, oauth.ClientAuth{})
	tok, _ := standalone(t, c, nil, nil)
	if err := e.sb.SetFaults(sandbox.Faults{Tenant: e.tenant, Status: 503, Endpoints: []string{sandbox.EndpointToken}, RetryAfter: 7}); err != nil {
		t.Fatal(err)
	}
	_, err := c.Refresh(context.Background(), tok.RefreshToken, nil)
	var oe *oauth.Error
	if !errors.Is(err, oauth.ErrTransient) || errors.Is(err, oauth.ErrInvalidGrant) || !errors.As(err, &oe) || oe.RetryAfter != 7*time.Second {
		t.Fatalf("503: %v", err)
	}
	_ = e.sb.SetFaults()
	if _, err := c.Refresh(context.Background(), tok.RefreshToken, nil); err != nil {
		t.Fatalf("after the outage: %v", err)
	}
	// Refusing every refresh is a dead grant, not an outage.
	_ = e.sb.SetFaults(sandbox.Faults{Tenant: e.tenant, RefuseRefresh: true})
	if _, err := c.Refresh(context.Background(), tok.RefreshToken, nil); !errors.Is(err, oauth.ErrInvalidGrant) {
		t.Fatalf("refused refresh: %v", err)
	}
}

// TestSandbox_IntrospectAndRevoke: RFC 7662 and RFC 7009 against the
// sandbox, as a public and as a confidential client. smart-2.2-client #270.
func TestSandbox_IntrospectAndRevoke(t *testing.T) {
	e := newEnv(t, sandbox.ProfileGeneric)
	pub := e.client(t, sandbox.ClientConfig{ClientID: "intro-public"}, oauth.ClientAuth{})
	tok, _ := standalone(t, pub, nil, nil)
	in, err := pub.Introspect(context.Background(), tok.AccessToken)
	if err != nil {
		t.Fatal(err)
	}
	if !in.Active || in.Patient != tok.Patient || in.ClientID != "intro-public" || in.Expiry.IsZero() {
		t.Fatalf("introspection %+v", in)
	}
	if err := pub.Revoke(context.Background(), tok.RefreshToken, "refresh_token"); err != nil {
		t.Fatal(err)
	}
	if _, err := pub.Refresh(context.Background(), tok.RefreshToken, nil); !errors.Is(err, oauth.ErrInvalidGrant) {
		t.Fatalf("refresh after revocation: %v", err)
	}

	conf := e.client(t, sandbox.ClientConfig{ClientID: "intro-conf", ClientSecret: "intro-secret"},
		oauth.ClientAuth{Method: oauth.AuthClientSecretBasic, Secret: "intro-secret"})
	tok2, _ := standalone(t, conf, nil, nil)
	in, err = conf.Introspect(context.Background(), tok2.AccessToken)
	if err != nil || !in.Active {
		t.Fatalf("confidential introspection: %+v %v", in, err)
	}
}

// TestSandbox_ClientCredentials: SMART Backend Services with ES384 and
// RS384 assertions, system scopes by default, each request a fresh jti.
// smart-2.2-client #229, #233-#239, #263, #308, #309.
func TestSandbox_ClientCredentials(t *testing.T) {
	sb := sandboxtest.Start(t)
	for _, alg := range []string{"ES384", "RS384"} {
		t.Run(alg, func(t *testing.T) {
			e := discoverEnv(t, sb, sandbox.ProfileGeneric)
			key := sandboxtest.NewKey(t, alg)
			id := "backend-" + alg
			c := e.client(t, sandbox.ClientConfig{ClientID: id, JWKS: key.JWKS(), Scope: "system/*.rs"},
				oauth.ClientAuth{Method: oauth.AuthPrivateKeyJWT, Signer: &keySigner{t: t, key: key, clientID: id}})
			for range 2 {
				tok, err := c.ClientCredentials(context.Background(), nil)
				if err != nil {
					t.Fatalf("client_credentials: %v", err)
				}
				if tok.RefreshToken != "" || !tok.HasScope("system/*.rs") || tok.Expiry.IsZero() {
					t.Fatalf("backend token %+v", tok)
				}
				if code := fhirGet(t, e.sb.FHIRBase(e.tenant)+"/Patient?_count=1", tok.AccessToken); code != 200 {
					t.Fatalf("system search: HTTP %d", code)
				}
			}
		})
	}
	t.Run("exp beyond five minutes refused", func(t *testing.T) {
		e := discoverEnv(t, sb, sandbox.ProfileGeneric)
		key := sandboxtest.NewKey(t, "ES384")
		c := e.client(t, sandbox.ClientConfig{ClientID: "backend-long", JWKS: key.JWKS()},
			oauth.ClientAuth{Method: oauth.AuthPrivateKeyJWT, Signer: &keySigner{t: t, key: key, clientID: "backend-long", life: 10 * time.Minute}})
		_, err := c.ClientCredentials(context.Background(), nil)
		if !errors.Is(err, oauth.ErrInvalidClient) {
			t.Fatalf("ten-minute assertion: %v", err)
		}
	})
	t.Run("public client refused", func(t *testing.T) {
		e := discoverEnv(t, sb, sandbox.ProfileGeneric)
		c := e.client(t, sandbox.ClientConfig{ClientID: "backend-public"}, oauth.ClientAuth{})
		if _, err := c.ClientCredentials(context.Background(), nil); !errors.Is(err, oauth.ErrConfig) {
			t.Fatalf("public client_credentials: %v", err)
		}
	})
}

// TestSandbox_TLS: discovery and the whole flow over HTTPS with the
// sandbox's certificate. smart-2.2-client #1, #318.
func TestSandbox_TLS(t *testing.T) {
	sb := sandboxtest.Start(t, sandboxtest.WithTLS())
	hc := sb.HTTPClient()
	ep, err := oauth.Discover(context.Background(), hc, sb.FHIRBase(sandbox.ProfileGeneric))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(ep.TokenURL, "https://") {
		t.Fatalf("token URL %s", ep.TokenURL)
	}
	if err := sb.RegisterClient(sandbox.ProfileGeneric, sandbox.ClientConfig{ClientID: "tls", RedirectURIs: []string{redirectURI}}); err != nil {
		t.Fatal(err)
	}
	c, err := oauth.New(oauth.ClientConfig{Endpoints: ep, FHIRBase: sb.FHIRBase(sandbox.ProfileGeneric), ClientID: "tls",
		RedirectURI: redirectURI, HTTPClient: hc, Profile: profiles[sandbox.ProfileGeneric]})
	if err != nil {
		t.Fatal(err)
	}
	ar, _ := c.AuthorizeURL(nil, nil)
	br := *hc
	br.CheckRedirect = noRedirect.CheckRedirect
	resp, err := br.Get(ar.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc, _ := url.Parse(resp.Header.Get("Location"))
	cb, err := oauth.ParseCallback(loc.Query())
	if err != nil {
		t.Fatal(err)
	}
	tok, err := c.Exchange(context.Background(), cb.Code.Reveal(), ar.Verifier)
	if err != nil {
		t.Fatal(err)
	}
	if tok.IDTokenErr != nil || tok.FHIRUser == "" {
		t.Fatalf("id token over TLS: %v", tok.IDTokenErr)
	}
}
