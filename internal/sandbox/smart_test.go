package sandbox_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"golang.org/x/oauth2"

	"github.com/medrelay/medrelay/internal/sandbox"
	"github.com/medrelay/medrelay/internal/sandbox/sandboxtest"
)

var publicApp = sandbox.ClientConfig{ClientID: "app", RedirectURIs: []string{redirectURI}}
var secretApp = sandbox.ClientConfig{ClientID: "conf-app", ClientSecret: "s3cret", RedirectURIs: []string{redirectURI}}

const patientScopes = "launch/patient openid fhirUser offline_access patient/*.rs"

// smart-2.2-client #29 #227: discovery document, with the endpoints the
// client needs and S256 as the only PKCE method (#13).
func TestSMARTConfiguration(t *testing.T) {
	s := sandboxtest.Start(t)
	for _, tenant := range s.Tenants() {
		sc := discover(t, s, tenant)
		if sc.Authorize == "" || sc.Token == "" || sc.JWKSURI == "" || sc.Introspect == "" || sc.Revoke == "" {
			t.Errorf("%s: endpoints missing: %+v", tenant, sc)
		}
		if len(sc.PKCEMethods) != 1 || sc.PKCEMethods[0] != "S256" {
			t.Errorf("%s: code_challenge_methods_supported = %v", tenant, sc.PKCEMethods)
		}
		var oidc map[string]any
		getJSON(t, http.DefaultClient, s.FHIRBase(tenant)+"/.well-known/openid-configuration", &oidc)
		if oidc["jwks_uri"] != sc.JWKSURI || oidc["issuer"] != s.FHIRBase(tenant) {
			t.Errorf("%s: openid-configuration %v", tenant, oidc)
		}
	}
	if sc := discover(t, s, "bluebutton"); !strings.HasSuffix(sc.Authorize, "/authorize/") || !strings.HasSuffix(sc.Token, "/token/") {
		t.Errorf("bluebutton OAuth URLs need the trailing slash: %s %s", sc.Authorize, sc.Token)
	}
	if sc := discover(t, s, "epic"); len(sc.AuthMethods) != 1 || sc.AuthMethods[0] != "private_key_jwt" {
		t.Errorf("epic auth methods = %v", sc.AuthMethods)
	}
}

// smart-2.2-client #32-#45 #62-#71 #93 #196 #202 #218: a standalone launch
// with x/oauth2, PKCE S256, state, aud; id_token validated via the
// OpenID configuration's JWKS; the FHIR API answers with the token.
func TestStandaloneLaunch(t *testing.T) {
	s := sandboxtest.Start(t, sandboxtest.WithClients(publicApp))
	conf := oauthConf(t, s, "generic", "app", "", patientScopes)
	tok := standalone(t, s, "generic", conf, oauth2.SetAuthURLParam("login_hint", "pat-3"), oauth2.SetAuthURLParam("nonce", "n-123"))
	if tok.RefreshToken == "" {
		t.Fatal("offline_access granted but no refresh token")
	}
	if got := tok.Extra("patient"); got != "pat-3" {
		t.Fatalf("patient = %v, want pat-3 (login_hint)", got)
	}
	if sc, _ := tok.Extra("scope").(string); !strings.Contains(sc, "offline_access") || !strings.Contains(sc, "patient/*.rs") {
		t.Fatalf("scope = %q", sc)
	}
	// #218: validate the id_token against the server's keys.
	idt, _ := tok.Extra("id_token").(string)
	obj, err := jose.ParseSigned(idt, []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		t.Fatalf("id_token: %v", err)
	}
	var set jose.JSONWebKeySet
	getJSON(t, http.DefaultClient, discover(t, s, "generic").JWKSURI, &set)
	keys := set.Key(obj.Signatures[0].Header.KeyID)
	if len(keys) != 1 {
		t.Fatalf("id_token kid not in JWKS")
	}
	payload, err := obj.Verify(keys[0].Key)
	if err != nil {
		t.Fatalf("id_token signature: %v", err)
	}
	var claims map[string]any
	_ = json.Unmarshal(payload, &claims)
	if claims["aud"] != "app" || claims["iss"] != s.FHIRBase("generic") || claims["nonce"] != "n-123" {
		t.Fatalf("id_token claims %v", claims)
	}
	// #202: fhirUser is a URL the app can read.
	fu, _ := claims["fhirUser"].(string)
	if fu != s.FHIRBase("generic")+"/Patient/pat-3" {
		t.Fatalf("fhirUser = %q", fu)
	}
	resp, err := conf.Client(context.Background(), tok).Get(fu)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("read fhirUser: %v %v", err, resp.Status)
	}
	resp.Body.Close()
	// Another patient's data is not visible to this patient's token.
	if r, _ := bearerGet(t, s.FHIRBase("generic")+"/Patient/pat-4", tok.AccessToken); r.StatusCode != 404 {
		t.Fatalf("other patient: HTTP %d, want 404", r.StatusCode)
	}
}

// smart-2.2-client #13 #44 #45 #70: PKCE is required, S256 only, and verified.
func TestPKCE(t *testing.T) {
	s := sandboxtest.Start(t, sandboxtest.WithClients(publicApp))
	conf := oauthConf(t, s, "generic", "app", "", patientScopes)
	aud := oauth2.SetAuthURLParam("aud", s.FHIRBase("generic"))
	for name, opts := range map[string][]oauth2.AuthCodeOption{
		"missing": {aud},
		"plain":   {aud, oauth2.SetAuthURLParam("code_challenge", strings.Repeat("a", 43)), oauth2.SetAuthURLParam("code_challenge_method", "plain")},
	} {
		q, _ := authorize(t, conf.AuthCodeURL("st-"+name, opts...))
		if q.Get("error") != "invalid_request" || q.Get("state") != "st-"+name {
			t.Errorf("%s: redirect %v, want error=invalid_request with state", name, q)
		}
	}
	verifier := oauth2.GenerateVerifier()
	q, _ := authorize(t, conf.AuthCodeURL("st", aud, oauth2.S256ChallengeOption(verifier)))
	_, err := conf.Exchange(context.Background(), q.Get("code"), oauth2.VerifierOption(oauth2.GenerateVerifier()))
	if retrieveErrorCode(err) != "invalid_grant" {
		t.Fatalf("wrong verifier: %v, want invalid_grant", err)
	}
}

// smart-2.2-client #34 #39 #41: a bad redirect_uri is never redirected to;
// missing state and a wrong aud come back as errors.
func TestAuthorizeValidation(t *testing.T) {
	s := sandboxtest.Start(t, sandboxtest.WithClients(publicApp))
	conf := oauthConf(t, s, "generic", "app", "", patientScopes)
	v := oauth2.GenerateVerifier()
	bad := *conf
	bad.RedirectURL = "http://evil.example/cb"
	_, resp := authorize(t, bad.AuthCodeURL("st", oauth2.S256ChallengeOption(v), oauth2.SetAuthURLParam("aud", s.FHIRBase("generic"))))
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("unregistered redirect_uri: HTTP %d, want 400 page", resp.StatusCode)
	}
	q, _ := authorize(t, conf.AuthCodeURL("", oauth2.S256ChallengeOption(v), oauth2.SetAuthURLParam("aud", s.FHIRBase("generic"))))
	if q.Get("error") != "invalid_request" {
		t.Fatalf("missing state: %v", q)
	}
	q, _ = authorize(t, conf.AuthCodeURL("st", oauth2.S256ChallengeOption(v), oauth2.SetAuthURLParam("aud", s.FHIRBase("epic"))))
	if q.Get("error") != "invalid_request" || !strings.Contains(q.Get("error_description"), "aud") {
		t.Fatalf("wrong aud: %v", q)
	}
	// #43: resource works as a synonym for aud.
	q, _ = authorize(t, conf.AuthCodeURL("st", oauth2.S256ChallengeOption(v), oauth2.SetAuthURLParam("resource", s.FHIRBase("generic"))))
	if q.Get("code") == "" {
		t.Fatalf("resource= as aud: %v", q)
	}
}

// smart-2.2-client #52: authorization by POST.
func TestAuthorizePOST(t *testing.T) {
	s := sandboxtest.Start(t, sandboxtest.WithClients(publicApp))
	sc := discover(t, s, "generic")
	v := oauth2.GenerateVerifier()
	form := url.Values{"response_type": {"code"}, "client_id": {"app"}, "redirect_uri": {redirectURI}, "scope": {patientScopes},
		"state": {"st"}, "aud": {s.FHIRBase("generic")}, "code_challenge": {oauth2.S256ChallengeFromVerifier(v)}, "code_challenge_method": {"S256"}}
	resp, err := noRedirect.PostForm(sc.Authorize, form)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc, _ := url.Parse(resp.Header.Get("Location"))
	if resp.StatusCode != http.StatusFound || loc.Query().Get("code") == "" {
		t.Fatalf("POST authorize: %d %s", resp.StatusCode, resp.Header.Get("Location"))
	}
}

// Code replay is refused and revokes what the code produced.
func TestCodeReplayRevokesGrant(t *testing.T) {
	s := sandboxtest.Start(t, sandboxtest.WithClients(publicApp))
	conf := oauthConf(t, s, "generic", "app", "", patientScopes)
	v := oauth2.GenerateVerifier()
	q, _ := authorize(t, conf.AuthCodeURL("st", oauth2.S256ChallengeOption(v), oauth2.SetAuthURLParam("aud", s.FHIRBase("generic"))))
	tok, err := conf.Exchange(context.Background(), q.Get("code"), oauth2.VerifierOption(v))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conf.Exchange(context.Background(), q.Get("code"), oauth2.VerifierOption(v)); retrieveErrorCode(err) != "invalid_grant" {
		t.Fatalf("replayed code: %v", err)
	}
	if r, _ := bearerGet(t, s.FHIRBase("generic")+"/Patient/pat-0", tok.AccessToken); r.StatusCode != 401 {
		t.Fatalf("token from a replayed code still works: %d", r.StatusCode)
	}
}

// smart-2.2-client #105 #106 #108 #117 #216: refresh with rotation; reusing a
// rotated refresh token revokes the whole family; stats count refreshes.
func TestRefreshRotationAndReuse(t *testing.T) {
	s := sandboxtest.Start(t, sandboxtest.WithClients(publicApp))
	conf := oauthConf(t, s, "generic", "app", "", patientScopes)
	tok := standalone(t, s, "generic", conf)
	old := tok.RefreshToken
	tok.Expiry = time.Now().Add(-time.Minute) // make x/oauth2 refresh
	fresh, err := conf.TokenSource(context.Background(), tok).Token()
	if err != nil {
		t.Fatalf("refresh: %v", err)
	}
	if fresh.RefreshToken == "" || fresh.RefreshToken == old {
		t.Fatal("refresh token not rotated")
	}
	if n := s.Stats().Tenants["generic"]["token:refresh_token"]; n != 1 {
		t.Fatalf("refresh requests counted = %d, want 1", n)
	}
	// #108: scope may only narrow.
	resp, body := postForm(t, conf.Endpoint.TokenURL, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {fresh.RefreshToken},
		"client_id": {"app"}, "scope": {"user/*.rs"}}, "", "")
	if resp.StatusCode != 400 || body["error"] != "invalid_scope" {
		t.Fatalf("widening scope: %d %v", resp.StatusCode, body)
	}
	// Reuse of the rotated token: family revoked, the newest token dies too.
	stale := &oauth2.Token{RefreshToken: old, Expiry: time.Now().Add(-time.Minute)}
	if _, err := conf.TokenSource(context.Background(), stale).Token(); retrieveErrorCode(err) != "invalid_grant" {
		t.Fatalf("reuse: %v, want invalid_grant", err)
	}
	fresh.Expiry = time.Now().Add(-time.Minute)
	if _, err := conf.TokenSource(context.Background(), fresh).Token(); retrieveErrorCode(err) != "invalid_grant" {
		t.Fatalf("family not revoked after reuse: %v", err)
	}
	if r, _ := bearerGet(t, s.FHIRBase("generic")+"/Patient/pat-0", fresh.AccessToken); r.StatusCode != 401 {
		t.Fatalf("access token of a revoked family: %d", r.StatusCode)
	}
}

// smart-2.2-client #64 #345: confidential clients authenticate with HTTP Basic.
func TestConfidentialSymmetric(t *testing.T) {
	s := sandboxtest.Start(t, sandboxtest.WithClients(secretApp))
	conf := oauthConf(t, s, "generic", "conf-app", "s3cret", patientScopes)
	standalone(t, s, "generic", conf)
	wrong := *conf
	wrong.ClientSecret = "nope"
	v := oauth2.GenerateVerifier()
	q, _ := authorize(t, wrong.AuthCodeURL("st", oauth2.S256ChallengeOption(v), oauth2.SetAuthURLParam("aud", s.FHIRBase("generic"))))
	if _, err := wrong.Exchange(context.Background(), q.Get("code"), oauth2.VerifierOption(v)); retrieveErrorCode(err) != "invalid_client" {
		t.Fatalf("wrong secret: %v", err)
	}
	// A confidential client that does not authenticate is refused.
	noauth := *conf
	noauth.ClientSecret = ""
	noauth.Endpoint.AuthStyle = oauth2.AuthStyleInParams
	q, _ = authorize(t, noauth.AuthCodeURL("st", oauth2.S256ChallengeOption(v), oauth2.SetAuthURLParam("aud", s.FHIRBase("generic"))))
	if _, err := noauth.Exchange(context.Background(), q.Get("code"), oauth2.VerifierOption(v)); retrieveErrorCode(err) != "invalid_client" {
		t.Fatalf("unauthenticated confidential client: %v", err)
	}
}

// Epic: offline_access granted (refresh token issued) but not echoed;
// client secrets refused; no $everything.
func TestEpicProfile(t *testing.T) {
	s := sandboxtest.Start(t, sandboxtest.WithClients(publicApp, secretApp))
	conf := oauthConf(t, s, "epic", "app", "", patientScopes)
	tok := standalone(t, s, "epic", conf)
	if tok.RefreshToken == "" {
		t.Fatal("epic: no refresh token")
	}
	if sc, _ := tok.Extra("scope").(string); strings.Contains(sc, "offline_access") {
		t.Fatalf("epic echoed offline_access: %q", sc)
	}
	// Not rotated: the same refresh token keeps working.
	tok.Expiry = time.Now().Add(-time.Minute)
	n1, err := conf.TokenSource(context.Background(), tok).Token()
	if err != nil || n1.RefreshToken != tok.RefreshToken {
		t.Fatalf("epic refresh: %v (rotated: %v)", err, n1 != nil && n1.RefreshToken != tok.RefreshToken)
	}
	if r, _ := bearerGet(t, s.FHIRBase("epic")+"/Patient/pat-0/$everything", tok.AccessToken); r.StatusCode != 404 {
		t.Fatalf("epic $everything: %d, want 404", r.StatusCode)
	}
	sconf := oauthConf(t, s, "epic", "conf-app", "s3cret", patientScopes)
	v := oauth2.GenerateVerifier()
	q, _ := authorize(t, sconf.AuthCodeURL("st", oauth2.S256ChallengeOption(v), oauth2.SetAuthURLParam("aud", s.FHIRBase("epic"))))
	if _, err := sconf.Exchange(context.Background(), q.Get("code"), oauth2.VerifierOption(v)); retrieveErrorCode(err) != "invalid_client" {
		t.Fatalf("epic client secret: %v, want invalid_client", err)
	}
}

func TestOracleHealthShortTokens(t *testing.T) {
	s := sandboxtest.Start(t, sandboxtest.WithClients(publicApp))
	tok := standalone(t, s, "oraclehealth", oauthConf(t, s, "oraclehealth", "app", "", patientScopes))
	if left := time.Until(tok.Expiry); left > 10*time.Minute || left < 5*time.Minute {
		t.Fatalf("oraclehealth token lifetime %v, want about 10 minutes", left)
	}
}

// Blue Button: trailing slash, confidential only, access_grant_expiration,
// only Patient/Coverage/ExplanationOfBenefit.
func TestBlueButtonProfile(t *testing.T) {
	s := sandboxtest.Start(t, sandboxtest.WithClients(publicApp, secretApp))
	sc := discover(t, s, "bluebutton")
	if r := getJSON(t, noRedirect, strings.TrimSuffix(sc.Authorize, "/")+"?client_id=conf-app", nil); r.StatusCode != 404 {
		t.Fatalf("authorize without trailing slash: %d, want 404", r.StatusCode)
	}
	pub := oauthConf(t, s, "bluebutton", "app", "", patientScopes)
	q, _ := authorize(t, pub.AuthCodeURL("st", oauth2.S256ChallengeOption(oauth2.GenerateVerifier()), oauth2.SetAuthURLParam("aud", s.FHIRBase("bluebutton"))))
	if q.Get("error") != "unauthorized_client" {
		t.Fatalf("public client at bluebutton: %v", q)
	}
	conf := oauthConf(t, s, "bluebutton", "conf-app", "s3cret", patientScopes)
	tok := standalone(t, s, "bluebutton", conf)
	if tok.Extra("access_grant_expiration") == nil {
		t.Fatal("no access_grant_expiration")
	}
	if r, _ := bearerGet(t, s.FHIRBase("bluebutton")+"/ExplanationOfBenefit?patient=pat-0", tok.AccessToken); r.StatusCode != 200 {
		t.Fatalf("EOB search: %d", r.StatusCode)
	}
	if r, _ := bearerGet(t, s.FHIRBase("bluebutton")+"/Observation?patient=pat-0", tok.AccessToken); r.StatusCode != 404 {
		t.Fatalf("Observation at bluebutton: %d, want 404", r.StatusCode)
	}
}

// eClinicalWorks takes v1 scopes only: v2 ones are not granted.
func TestEClinicalWorksV1Scopes(t *testing.T) {
	s := sandboxtest.Start(t, sandboxtest.WithClients(publicApp))
	tok := standalone(t, s, "eclinicalworks", oauthConf(t, s, "eclinicalworks", "app", "", "launch/patient patient/*.rs patient/Observation.read offline_access"))
	sc, _ := tok.Extra("scope").(string)
	if strings.Contains(sc, ".rs") || !strings.Contains(sc, "patient/Observation.read") {
		t.Fatalf("granted %q", sc)
	}
	if r, _ := bearerGet(t, s.FHIRBase("eclinicalworks")+"/Condition?patient=pat-0", tok.AccessToken); r.StatusCode != 403 {
		t.Fatalf("Condition with only Observation.read: %d, want 403", r.StatusCode)
	}
}

// smart-2.2-client #35 #161 #162: EHR launch passes iss and launch; the
// token response carries patient and encounter.
func TestEHRLaunch(t *testing.T) {
	app := sandbox.ClientConfig{ClientID: "ehr-app", RedirectURIs: []string{redirectURI}, LaunchURLs: []string{"http://127.0.0.1:1/launch"}}
	s := sandboxtest.Start(t, sandboxtest.WithClients(app), sandboxtest.WithConsentPage())
	resp, err := noRedirect.Get(s.URL() + "/generic/launch?client_id=ehr-app&patient=pat-2&encounter=enc-2-1&launch_url=" + url.QueryEscape("http://127.0.0.1:1/launch"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc, _ := url.Parse(resp.Header.Get("Location"))
	if loc.Query().Get("iss") != s.FHIRBase("generic") || loc.Query().Get("launch") == "" {
		t.Fatalf("launch redirect %s", loc)
	}
	conf := oauthConf(t, s, "generic", "ehr-app", "", "launch openid fhirUser user/*.rs")
	tok := standalone(t, s, "generic", conf, oauth2.SetAuthURLParam("launch", loc.Query().Get("launch")))
	if tok.Extra("patient") != "pat-2" || tok.Extra("encounter") != "enc-2-1" {
		t.Fatalf("context patient=%v encounter=%v", tok.Extra("patient"), tok.Extra("encounter"))
	}
	// An unknown launch is refused.
	v := oauth2.GenerateVerifier()
	q, _ := authorize(t, conf.AuthCodeURL("st", oauth2.S256ChallengeOption(v), oauth2.SetAuthURLParam("aud", s.FHIRBase("generic")), oauth2.SetAuthURLParam("launch", "bogus")))
	if q.Get("error") != "invalid_request" {
		t.Fatalf("bogus launch: %v", q)
	}
}

// The login-and-consent page: approve as a chosen patient, or decline.
func TestConsentPage(t *testing.T) {
	s := sandboxtest.Start(t, sandboxtest.WithClients(publicApp), sandboxtest.WithConsentPage())
	conf := oauthConf(t, s, "generic", "app", "", patientScopes)
	v := oauth2.GenerateVerifier()
	authURL := conf.AuthCodeURL("st", oauth2.S256ChallengeOption(v), oauth2.SetAuthURLParam("aud", s.FHIRBase("generic")))
	page := func() string {
		resp, err := http.Get(authURL)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || !strings.Contains(string(b), "<form") {
			t.Fatalf("consent page: %d", resp.StatusCode)
		}
		i := strings.Index(string(b), `name="request_id" value="`)
		rest := string(b)[i+len(`name="request_id" value="`):]
		return rest[:strings.IndexByte(rest, '"')]
	}
	post := func(form url.Values) url.Values {
		resp, err := noRedirect.PostForm(conf.Endpoint.AuthURL, form)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		loc, _ := url.Parse(resp.Header.Get("Location"))
		return loc.Query()
	}
	q := post(url.Values{"request_id": {page()}, "decision": {"deny"}})
	if q.Get("error") != "access_denied" || q.Get("state") != "st" {
		t.Fatalf("deny: %v", q)
	}
	q = post(url.Values{"request_id": {page()}, "decision": {"approve"}, "patient": {"pat-5"}, "scope_item": {"patient/*.rs"}})
	tok, err := conf.Exchange(context.Background(), q.Get("code"), oauth2.VerifierOption(v))
	if err != nil || tok.Extra("patient") != "pat-5" {
		t.Fatalf("approve: %v %v", err, q)
	}
	// A request id works once.
	id := page()
	post(url.Values{"request_id": {id}, "decision": {"approve"}, "patient": {"pat-1"}})
	resp, _ := noRedirect.PostForm(conf.Endpoint.AuthURL, url.Values{"request_id": {id}, "decision": {"approve"}})
	if resp.StatusCode != 400 {
		t.Fatalf("reused request_id: %d", resp.StatusCode)
	}
}

// The patient declines under auto-approve: login_hint=deny or the fault.
func TestDecline(t *testing.T) {
	s := sandboxtest.Start(t, sandboxtest.WithClients(publicApp))
	conf := oauthConf(t, s, "generic", "app", "", patientScopes)
	v := oauth2.GenerateVerifier()
	aud := oauth2.SetAuthURLParam("aud", s.FHIRBase("generic"))
	q, _ := authorize(t, conf.AuthCodeURL("st", aud, oauth2.S256ChallengeOption(v), oauth2.SetAuthURLParam("login_hint", "deny")))
	if q.Get("error") != "access_denied" {
		t.Fatalf("login_hint=deny: %v", q)
	}
	if err := s.SetFaults(sandbox.Faults{Tenant: "generic", DenyAuthorize: true}); err != nil {
		t.Fatal(err)
	}
	q, _ = authorize(t, conf.AuthCodeURL("st", aud, oauth2.S256ChallengeOption(v)))
	if q.Get("error") != "access_denied" {
		t.Fatalf("DenyAuthorize fault: %v", q)
	}
}

// Faults for patient access: token endpoint 5xx, refusing refreshes,
// revoking a patient's grant, short access tokens.
func TestTokenFaults(t *testing.T) {
	clk := &sandboxtest.Clock{}
	s := sandboxtest.Start(t, sandboxtest.WithClients(publicApp), sandboxtest.WithClock(clk))
	conf := oauthConf(t, s, "generic", "app", "", patientScopes)

	if err := s.SetFaults(sandbox.Faults{Tenant: "generic", Endpoints: []string{sandbox.EndpointToken}, Status: 503, Count: 1, RetryAfter: 2}); err != nil {
		t.Fatal(err)
	}
	v := oauth2.GenerateVerifier()
	q, _ := authorize(t, conf.AuthCodeURL("st", oauth2.S256ChallengeOption(v), oauth2.SetAuthURLParam("aud", s.FHIRBase("generic"))))
	_, err := conf.Exchange(context.Background(), q.Get("code"), oauth2.VerifierOption(v))
	var re *oauth2.RetrieveError
	if !asRetrieve(err, &re) || re.Response.StatusCode != 503 || re.Response.Header.Get("Retry-After") != "2" {
		t.Fatalf("injected 503: %v", err)
	}
	tok, err := conf.Exchange(context.Background(), q.Get("code"), oauth2.VerifierOption(v))
	if err != nil {
		t.Fatalf("after the burst: %v", err)
	}

	_ = s.SetFaults(sandbox.Faults{Tenant: "generic", RefuseRefresh: true})
	tok.Expiry = time.Now().Add(-time.Minute)
	if _, err := conf.TokenSource(context.Background(), tok).Token(); retrieveErrorCode(err) != "invalid_grant" {
		t.Fatalf("RefuseRefresh: %v", err)
	}
	_ = s.SetFaults()

	_ = s.SetFaults(sandbox.Faults{Tenant: "generic", AccessTokenLifetime: 30})
	short := standalone(t, s, "generic", conf, oauth2.SetAuthURLParam("login_hint", "pat-7"))
	if got := short.Extra("expires_in"); got != float64(30) {
		t.Fatalf("expires_in = %v, want 30", got)
	}
	clk.Advance(31 * time.Second)
	if r, _ := bearerGet(t, s.FHIRBase("generic")+"/Patient/pat-7", short.AccessToken); r.StatusCode != 401 {
		t.Fatalf("expired token: %d", r.StatusCode)
	}
	_ = s.SetFaults()

	victim := standalone(t, s, "generic", conf, oauth2.SetAuthURLParam("login_hint", "pat-8"))
	if n, err := s.RevokePatient("generic", "pat-8"); err != nil || n != 1 {
		t.Fatalf("RevokePatient = %d, %v", n, err)
	}
	if r, _ := bearerGet(t, s.FHIRBase("generic")+"/Patient/pat-8", victim.AccessToken); r.StatusCode != 401 {
		t.Fatalf("revoked grant's access token: %d", r.StatusCode)
	}
	victim.Expiry = time.Now().Add(-time.Minute)
	if _, err := conf.TokenSource(context.Background(), victim).Token(); retrieveErrorCode(err) != "invalid_grant" {
		t.Fatalf("revoked grant refresh: %v", err)
	}
	if st := s.Stats(); st.Faults["token:503"] != 1 || st.Clients["app"]["token"] < 4 {
		t.Fatalf("stats %+v", st)
	}
}

func asRetrieve(err error, re **oauth2.RetrieveError) bool {
	r, ok := err.(*oauth2.RetrieveError)
	if ok {
		*re = r
	}
	return ok
}

// smart-2.2-client #270: introspection (RFC 7662) and revocation (RFC 7009).
func TestIntrospectAndRevoke(t *testing.T) {
	s := sandboxtest.Start(t, sandboxtest.WithClients(secretApp))
	conf := oauthConf(t, s, "generic", "conf-app", "s3cret", patientScopes)
	tok := standalone(t, s, "generic", conf)
	sc := discover(t, s, "generic")
	resp, body := postForm(t, sc.Introspect, url.Values{"token": {tok.AccessToken}}, "conf-app", "s3cret")
	if resp.StatusCode != 200 || body["active"] != true || body["patient"] != "pat-0" || body["client_id"] != "conf-app" {
		t.Fatalf("introspect: %d %v", resp.StatusCode, body)
	}
	if resp, _ := postForm(t, sc.Introspect, url.Values{"token": {tok.AccessToken}}, "", ""); resp.StatusCode != 401 {
		t.Fatalf("unauthenticated introspection: %d", resp.StatusCode)
	}
	// docs/sandbox.md: or the caller authenticates with a bearer token.
	req, _ := http.NewRequest(http.MethodPost, sc.Introspect, strings.NewReader(url.Values{"token": {tok.AccessToken}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Authorization", "Bearer "+tok.AccessToken)
	if r, err := http.DefaultClient.Do(req); err != nil || r.StatusCode != 200 {
		t.Fatalf("introspection with a bearer token: %v %v", r, err)
	} else {
		var b map[string]any
		_ = json.NewDecoder(r.Body).Decode(&b)
		r.Body.Close()
		if b["active"] != true {
			t.Fatalf("introspection with a bearer token: %v", b)
		}
	}
	if resp, _ := postForm(t, sc.Revoke, url.Values{"token": {tok.RefreshToken}}, "conf-app", "s3cret"); resp.StatusCode != 200 {
		t.Fatalf("revoke: %d", resp.StatusCode)
	}
	_, body = postForm(t, sc.Introspect, url.Values{"token": {tok.AccessToken}}, "conf-app", "s3cret")
	if body["active"] != false {
		t.Fatalf("access token active after its grant was revoked: %v", body)
	}
	// docs/sandbox.md: a revoked refresh token is inactive, as the token endpoint refuses it.
	_, body = postForm(t, sc.Introspect, url.Values{"token": {tok.RefreshToken}}, "conf-app", "s3cret")
	if body["active"] != false {
		t.Fatalf("refresh token active after it was revoked: %v", body)
	}
	if _, err := conf.TokenSource(context.Background(), &oauth2.Token{RefreshToken: tok.RefreshToken, Expiry: time.Now().Add(-time.Minute)}).Token(); retrieveErrorCode(err) != "invalid_grant" {
		t.Fatalf("revoked refresh token at the token endpoint: %v", err)
	}
}

// smart-2.2-client #93 #120-#146: scopes are enforced on FHIR calls,
// including v2 fine-grained query restrictions; 401/403 carry OperationOutcome.
func TestScopeEnforcement(t *testing.T) {
	s := sandboxtest.Start(t, sandboxtest.WithClients(publicApp))
	base := s.FHIRBase("generic")
	r, body := bearerGet(t, base+"/Observation?patient=pat-0", "")
	if r.StatusCode != 401 || !strings.Contains(string(body), "OperationOutcome") || r.Header.Get("WWW-Authenticate") == "" {
		t.Fatalf("no token: %d %s", r.StatusCode, body)
	}
	tok := standalone(t, s, "generic", oauthConf(t, s, "generic", "app", "", "launch/patient patient/Observation.rs?category=laboratory"))
	r, body = bearerGet(t, base+"/Observation?patient=pat-0&_count=1000", tok.AccessToken)
	if r.StatusCode != 200 {
		t.Fatalf("labs: %d %s", r.StatusCode, body)
	}
	if strings.Contains(string(body), `"code":"vital-signs"`) || !strings.Contains(string(body), `"code":"laboratory"`) {
		t.Fatal("v2 category restriction not applied")
	}
	if r, body = bearerGet(t, base+"/Condition?patient=pat-0", tok.AccessToken); r.StatusCode != 403 || !strings.Contains(string(body), "OperationOutcome") {
		t.Fatalf("Condition: %d", r.StatusCode)
	}
}

// With a reuse grace, a client that crashed before storing its rotated
// refresh token may retry with the old one once; real reuse still revokes.
func TestRefreshReuseGrace(t *testing.T) {
	clk := &sandboxtest.Clock{}
	s := sandboxtest.Start(t, sandboxtest.WithClients(publicApp), sandboxtest.WithClock(clk),
		sandboxtest.WithTenants(sandbox.TenantConfig{Name: "graceful", Profile: "generic", RefreshReuseGrace: sandbox.Duration(30 * time.Second)}))
	conf := oauthConf(t, s, "graceful", "app", "", patientScopes)
	refresh := func(rt string) (*oauth2.Token, error) {
		return conf.TokenSource(context.Background(), &oauth2.Token{RefreshToken: rt, Expiry: time.Now().Add(-time.Minute)}).Token()
	}
	tok := standalone(t, s, "graceful", conf)
	lost, err := refresh(tok.RefreshToken) // the client "crashes" before storing lost.RefreshToken
	if err != nil {
		t.Fatal(err)
	}
	retry, err := refresh(tok.RefreshToken)
	if err != nil || retry.RefreshToken == lost.RefreshToken {
		t.Fatalf("retry within the grace: %v", err)
	}
	if _, err := refresh(lost.RefreshToken); retrieveErrorCode(err) != "invalid_grant" {
		t.Fatalf("superseded token: %v", err)
	}
	next, err := refresh(retry.RefreshToken)
	if err != nil {
		t.Fatalf("grant revoked by a graceful retry: %v", err)
	}
	after, err := refresh(next.RefreshToken) // the successor of retry is used now
	if err != nil {
		t.Fatal(err)
	}
	// Presenting retry's token again is theft: its successor was used.
	if _, err := refresh(retry.RefreshToken); retrieveErrorCode(err) != "invalid_grant" {
		t.Fatalf("reuse after the successor was used: %v", err)
	}
	if _, err := refresh(after.RefreshToken); retrieveErrorCode(err) != "invalid_grant" {
		t.Fatalf("family not revoked: %v", err)
	}
	// Past the grace window a retry is theft too.
	tok = standalone(t, s, "graceful", conf)
	if _, err := refresh(tok.RefreshToken); err != nil {
		t.Fatal(err)
	}
	clk.Advance(31 * time.Second)
	if _, err := refresh(tok.RefreshToken); retrieveErrorCode(err) != "invalid_grant" {
		t.Fatalf("retry after the grace: %v", err)
	}
}

// smart-2.2-client #270: introspection (RFC 7662) says a refresh token is
// active exactly when the token endpoint would accept it. After rotation the
// old token is inactive, unless the tenant's reuse grace is open and its
// successor unused (the token endpoint takes it as a retry); a token replaced
// by such a retry, one past the grace, or one whose grant ended is inactive.
func TestIntrospectRefreshTokensAsTheTokenEndpointWouldAccept(t *testing.T) {
	clk := &sandboxtest.Clock{}
	s := sandboxtest.Start(t, sandboxtest.WithClients(secretApp), sandboxtest.WithClock(clk),
		sandboxtest.WithTenants(sandbox.TenantConfig{Name: "generic", Profile: "generic"}, sandbox.TenantConfig{Name: "bluebutton", Profile: "bluebutton"},
			sandbox.TenantConfig{Name: "graceful", Profile: "generic", RefreshReuseGrace: sandbox.Duration(30 * time.Second)}))
	active := func(tenant, rt string) bool {
		t.Helper()
		resp, body := postForm(t, discover(t, s, tenant).Introspect, url.Values{"token": {rt}}, "conf-app", "s3cret")
		if resp.StatusCode != 200 {
			t.Fatalf("introspect: HTTP %d %v", resp.StatusCode, body)
		}
		if body["active"] == true && body["token_type"] != "refresh_token" {
			t.Fatalf("introspect a refresh token: %v", body)
		}
		return body["active"] == true
	}
	refresher := func(conf *oauth2.Config) func(string) *oauth2.Token {
		return func(rt string) *oauth2.Token {
			t.Helper()
			tok, err := conf.TokenSource(context.Background(), &oauth2.Token{RefreshToken: rt, Expiry: time.Now().Add(-time.Minute)}).Token()
			if err != nil {
				t.Fatalf("refresh: %v", err)
			}
			return tok
		}
	}

	// No grace: the rotated token is dead at once.
	conf := oauthConf(t, s, "generic", "conf-app", "s3cret", patientScopes)
	refresh := refresher(conf)
	tok := standalone(t, s, "generic", conf)
	if !active("generic", tok.RefreshToken) {
		t.Fatal("a new refresh token is inactive")
	}
	rotated := refresh(tok.RefreshToken)
	if active("generic", tok.RefreshToken) || !active("generic", rotated.RefreshToken) {
		t.Fatalf("after rotation: old active=%v, new active=%v; want false, true",
			active("generic", tok.RefreshToken), active("generic", rotated.RefreshToken))
	}

	// With a 30 s grace.
	conf = oauthConf(t, s, "graceful", "conf-app", "s3cret", patientScopes)
	refresh = refresher(conf)
	tok = standalone(t, s, "graceful", conf)
	lost := refresh(tok.RefreshToken) // the client "crashes" before storing it
	if !active("graceful", tok.RefreshToken) {
		t.Fatal("inside the grace, with its successor unused, the old token is refused by introspection but accepted by the token endpoint")
	}
	retry := refresh(tok.RefreshToken)
	if active("graceful", lost.RefreshToken) {
		t.Fatal("a token superseded by a retry is active")
	}
	next := refresh(retry.RefreshToken) // retry's token rotated; its successor unused
	if active("graceful", tok.RefreshToken) {
		t.Fatal("the first token is active although its successor was used")
	}
	if !active("graceful", retry.RefreshToken) || !active("graceful", next.RefreshToken) {
		t.Fatal("inside the grace: rotated token or its successor inactive")
	}
	clk.Advance(31 * time.Second)
	if active("graceful", retry.RefreshToken) {
		t.Fatal("a rotated token is active past the grace")
	}
	if !active("graceful", next.RefreshToken) {
		t.Fatal("the current token is inactive")
	}
	// What introspection said, the token endpoint does.
	if _, err := conf.TokenSource(context.Background(), &oauth2.Token{RefreshToken: lost.RefreshToken, Expiry: time.Now().Add(-time.Minute)}).Token(); retrieveErrorCode(err) != "invalid_grant" {
		t.Fatalf("superseded token at the token endpoint: %v", err)
	}
	refresh(next.RefreshToken)

	// A grant past its end (Blue Button's access_grant_expiration).
	conf = oauthConf(t, s, "bluebutton", "conf-app", "s3cret", patientScopes)
	tok = standalone(t, s, "bluebutton", conf)
	if !active("bluebutton", tok.RefreshToken) {
		t.Fatal("bluebutton refresh token inactive")
	}
	clk.Advance(14 * 30 * 24 * time.Hour)
	if active("bluebutton", tok.RefreshToken) {
		t.Fatal("a refresh token of an ended grant is active")
	}
	if _, err := conf.TokenSource(context.Background(), &oauth2.Token{RefreshToken: tok.RefreshToken, Expiry: time.Now().Add(-time.Minute)}).Token(); retrieveErrorCode(err) != "invalid_grant" {
		t.Fatalf("ended grant at the token endpoint: %v", err)
	}
}
