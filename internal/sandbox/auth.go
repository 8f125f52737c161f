package sandbox

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/medrelay/medrelay/internal/sandbox/synth"
)

const assertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

// serveAuth routes {tenant}/auth/... (authorize, token, introspect, revoke, jwks).
func (s *Sandbox) serveAuth(w http.ResponseWriter, r *http.Request, t *tenant, rest string) {
	name, slash := strings.CutSuffix(rest, "/")
	if name == "authorize" || name == "token" {
		// Blue Button answers its OAuth endpoints only with the trailing
		// slash; everyone else only without.
		if slash != t.prof.TrailingSlash {
			s.count(t, name, "")
			writeOutcome(w, http.StatusNotFound, "not-found", "no such endpoint (mind the trailing slash)")
			return
		}
	} else if slash {
		writeOutcome(w, http.StatusNotFound, "not-found", "no such endpoint")
		return
	}
	switch name {
	case "authorize":
		s.handleAuthorize(w, r, t)
	case "token":
		s.handleToken(w, r, t)
	case "introspect":
		s.handleIntrospect(w, r, t)
	case "revoke":
		s.handleRevoke(w, r, t)
	case "jwks":
		if !s.begin(w, r, t, EndpointJWKS, "") {
			return
		}
		w.Header().Set("Cache-Control", "max-age=300")
		writeJSON(w, http.StatusOK, "application/json", s.keys.jwks())
	default:
		writeOutcome(w, http.StatusNotFound, "not-found", "no such endpoint")
	}
}

func (s *Sandbox) smartConfiguration(t *tenant) map[string]any {
	caps := []string{"launch-ehr", "launch-standalone", "client-public", "client-confidential-symmetric",
		"client-confidential-asymmetric", "context-passthrough-banner", "context-passthrough-style",
		"context-ehr-patient", "context-ehr-encounter", "context-standalone-patient", "permission-offline",
		"permission-online", "permission-patient", "permission-user", "sso-openid-connect", "authorize-post"}
	scopes := []string{"openid", "fhirUser", "launch", "launch/patient", "launch/encounter", "offline_access", "online_access",
		"patient/*.read", "user/*.read", "system/*.read"}
	authMethods := []string{"client_secret_basic", "client_secret_post", "private_key_jwt"}
	switch {
	case t.prof.AsymmetricOnly:
		authMethods = []string{"private_key_jwt"}
		caps = remove(caps, "client-confidential-symmetric")
	case t.prof.ConfidentialOnly:
		authMethods = []string{"client_secret_basic", "client_secret_post"}
		caps = remove(caps, "client-public", "client-confidential-asymmetric", "launch-ehr", "context-ehr-patient", "context-ehr-encounter")
	}
	if t.prof.ScopesV2 {
		caps = append(caps, "permission-v1", "permission-v2")
		scopes = append(scopes, "patient/*.rs", "user/*.rs", "system/*.rs")
	} else {
		caps = append(caps, "permission-v1")
	}
	return map[string]any{
		"issuer":                                t.fhirBase(),
		"jwks_uri":                              t.authURL("jwks"),
		"authorization_endpoint":                t.authURL("authorize"),
		"token_endpoint":                        t.authURL("token"),
		"introspection_endpoint":                t.authURL("introspect"),
		"revocation_endpoint":                   t.authURL("revoke"),
		"grant_types_supported":                 []string{"authorization_code", "refresh_token", "client_credentials"},
		"token_endpoint_auth_methods_supported": authMethods,
		"token_endpoint_auth_signing_alg_values_supported": []string{"RS384", "ES384"},
		"scopes_supported":                 scopes,
		"response_types_supported":         []string{"code"},
		"code_challenge_methods_supported": []string{"S256"},
		"capabilities":                     caps,
	}
}

func (s *Sandbox) openIDConfiguration(t *tenant) map[string]any {
	return map[string]any{
		"issuer":                                t.fhirBase(),
		"jwks_uri":                              t.authURL("jwks"),
		"authorization_endpoint":                t.authURL("authorize"),
		"token_endpoint":                        t.authURL("token"),
		"response_types_supported":              []string{"code"},
		"subject_types_supported":               []string{"public"},
		"id_token_signing_alg_values_supported": []string{"RS256"},
		"scopes_supported":                      []string{"openid", "fhirUser", "profile"},
		"claims_supported":                      []string{"iss", "sub", "aud", "exp", "iat", "fhirUser", "nonce"},
		"token_endpoint_auth_methods_supported": []string{"client_secret_basic", "private_key_jwt"},
	}
}

func remove(list []string, drop ...string) []string {
	var out []string
next:
	for _, x := range list {
		for _, d := range drop {
			if x == d {
				continue next
			}
		}
		out = append(out, x)
	}
	return out
}

// authRequest is a validated authorization request.
type authRequest struct {
	client      *client
	redirect    string
	state       string
	scope       string
	challenge   string
	nonce       string
	launch      *launchCtx
	loginHint   string
	launchToken string
}

type pendingAuth struct {
	req *authRequest
	exp time.Time
}

func formValues(r *http.Request) (url.Values, error) {
	if r.Method == http.MethodPost {
		ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
		if ct != "application/x-www-form-urlencoded" {
			return nil, errors.New("content type must be application/x-www-form-urlencoded")
		}
		r.Body = http.MaxBytesReader(nil, r.Body, 1<<20)
		if err := r.ParseForm(); err != nil {
			return nil, err
		}
		return r.PostForm, nil
	}
	return r.URL.Query(), nil
}

func (s *Sandbox) handleAuthorize(w http.ResponseWriter, r *http.Request, t *tenant) {
	if r.Method != http.MethodGet && r.Method != http.MethodPost {
		w.Header().Set("Allow", "GET, POST")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	q, err := formValues(r)
	if err != nil {
		s.count(t, EndpointAuthorize, "")
		authErrorPage(w, http.StatusBadRequest, err.Error())
		return
	}
	if id := q.Get("request_id"); id != "" && r.Method == http.MethodPost {
		s.handleConsent(w, r, t, q)
		return
	}
	clientID := q.Get("client_id")
	if !s.begin(w, r, t, EndpointAuthorize, clientID) {
		return
	}
	req, errPage, errCode, errDesc := s.validateAuthorize(t, q)
	if errPage != "" {
		authErrorPage(w, http.StatusBadRequest, errPage)
		return
	}
	if errCode != "" {
		redirectError(w, r, req.redirect, req.state, errCode, errDesc, t)
		return
	}
	fs := s.settings(t.name, clientID)
	if fs.denyAuthorize || req.loginHint == "deny" {
		redirectError(w, r, req.redirect, req.state, "access_denied", "the patient declined", t)
		return
	}
	// In an EHR launch the clinician is already signed in to the EHR.
	if s.cfg.AutoApprove || req.launch != nil {
		patient := ""
		if req.launch != nil {
			patient = req.launch.patient
		} else {
			patient = t.patientFromHint(req.loginHint)
			if patient == "" {
				redirectError(w, r, req.redirect, req.state, "access_denied", "no such patient: "+req.loginHint, t)
				return
			}
		}
		s.issueCode(w, r, t, req, patient, req.scope)
		return
	}
	id := randomToken(16)
	t.mu.Lock()
	if t.pending == nil {
		t.pending = map[string]*pendingAuth{}
	}
	t.pending[id] = &pendingAuth{req: req, exp: s.now().Add(15 * time.Minute)}
	t.mu.Unlock()
	s.renderConsent(w, t, id, req)
}

// patientFromHint resolves login_hint ("pat-3", "Patient/pat-3", "3" or "")
// to a patient id; "" picks the first patient.
func (t *tenant) patientFromHint(hint string) string {
	hint = strings.TrimPrefix(hint, "Patient/")
	if hint == "" {
		return synth.PatientID(0)
	}
	if ref, ok := t.data.ParseID(synth.Patient, hint); ok {
		return ref.ID()
	}
	if n, err := strconv.Atoi(hint); err == nil && n >= 0 && n < t.data.Patients() {
		return synth.PatientID(n)
	}
	return ""
}

// validateAuthorize checks an authorization request. errPage is set when the
// redirect URI cannot be trusted (answer with a page, never redirect);
// errCode when the error goes back to the app.
func (s *Sandbox) validateAuthorize(t *tenant, q url.Values) (req *authRequest, errPage, errCode, errDesc string) {
	req = &authRequest{state: q.Get("state"), redirect: q.Get("redirect_uri"), scope: q.Get("scope"),
		challenge: q.Get("code_challenge"), nonce: q.Get("nonce"), loginHint: q.Get("login_hint"), launchToken: q.Get("launch")}
	c, ok := t.lookupClient(q.Get("client_id"))
	if !ok {
		return req, "unknown client_id", "", ""
	}
	req.client = c
	if !c.open {
		if req.redirect == "" && len(c.cfg.RedirectURIs) == 1 {
			req.redirect = c.cfg.RedirectURIs[0]
		}
		if !slices.Contains(c.cfg.RedirectURIs, req.redirect) {
			return req, "redirect_uri is not registered for this client", "", ""
		}
	} else if u, err := url.Parse(req.redirect); err != nil || !u.IsAbs() {
		return req, "redirect_uri must be an absolute URL", "", ""
	}
	if q.Get("response_type") != "code" {
		return req, "", "unsupported_response_type", "response_type must be code"
	}
	if req.state == "" {
		return req, "", "invalid_request", "state is required"
	}
	aud := q.Get("aud")
	if aud == "" {
		aud = q.Get("resource")
	}
	if strings.TrimSuffix(aud, "/") != t.fhirBase() {
		return req, "", "invalid_request", "aud must be this server's FHIR base URL " + t.fhirBase()
	}
	if req.challenge == "" {
		return req, "", "invalid_request", "PKCE code_challenge is required"
	}
	if m := q.Get("code_challenge_method"); m != "S256" {
		return req, "", "invalid_request", "code_challenge_method must be S256 (plain is not accepted)"
	}
	if len(req.challenge) < 43 || len(req.challenge) > 128 {
		return req, "", "invalid_request", "code_challenge must be a base64url SHA-256"
	}
	if t.prof.ConfidentialOnly && !c.cfg.Confidential() {
		return req, "", "unauthorized_client", "this server accepts confidential clients only"
	}
	if strings.TrimSpace(req.scope) == "" {
		return req, "", "invalid_scope", "scope is required"
	}
	if req.launchToken != "" {
		t.mu.Lock()
		l, ok := t.launches[req.launchToken]
		t.mu.Unlock()
		if !ok || s.now().After(l.exp) || l.client != c.cfg.ClientID {
			return req, "", "invalid_request", "unknown or expired launch"
		}
		req.launch = l
	}
	granted := grantScopes(req.scope, c.cfg.Scope, t.prof.ScopesV2)
	if len(parseScopes(granted)) == 0 && !hasScope(granted, "openid") {
		return req, "", "invalid_scope", "none of the requested scopes can be granted"
	}
	req.scope = granted
	return req, "", "", ""
}

func redirectError(w http.ResponseWriter, r *http.Request, redirect, state, code, desc string, t *tenant) {
	u, err := url.Parse(redirect)
	if err != nil {
		authErrorPage(w, http.StatusBadRequest, "bad redirect_uri")
		return
	}
	q := u.Query()
	q.Set("error", code)
	q.Set("error_description", desc)
	if state != "" {
		q.Set("state", state)
	}
	q.Set("iss", t.fhirBase())
	u.RawQuery = q.Encode()
	http.Redirect(w, r, u.String(), http.StatusFound)
}

// issueCode creates the grant family and redirects with a code.
func (s *Sandbox) issueCode(w http.ResponseWriter, r *http.Request, t *tenant, req *authRequest, patient, scope string) {
	now := s.now()
	fam := &family{id: randomToken(12), client: req.client.cfg.ClientID, scope: scope, scopes: parseScopes(scope),
		issuedAt: now, nonce: req.nonce, offline: hasScope(scope, "offline_access") || hasScope(scope, "online_access")}
	if t.prof.GrantExpiration > 0 {
		fam.grantExp = now.Add(t.prof.GrantExpiration)
	}
	needPatient := hasScope(scope, "launch/patient") || hasScope(scope, "launch") || anyPatientScope(fam.scopes)
	if req.launch != nil {
		fam.patient = req.launch.patient
		fam.encounter = req.launch.encounter
		fam.fhirUser = "Practitioner/" + synth.Ref{Type: synth.Practitioner, K: 0}.ID()
	} else {
		if needPatient {
			fam.patient = patient
		}
		fam.fhirUser = "Patient/" + patient
	}
	code := s.secret(24)
	t.mu.Lock()
	t.families[fam.id] = fam
	t.codes[code] = &authCode{fam: fam, redirect: req.redirect, challenge: req.challenge, exp: now.Add(5 * time.Minute),
		nonce: req.nonce, launch: req.launch != nil}
	t.mu.Unlock()
	u, _ := url.Parse(req.redirect)
	q := u.Query()
	q.Set("code", code)
	q.Set("state", req.state)
	q.Set("iss", t.fhirBase())
	u.RawQuery = q.Encode()
	http.Redirect(w, r, u.String(), http.StatusFound)
}

func anyPatientScope(scopes []scope) bool {
	for _, s := range scopes {
		if s.context == "patient" {
			return true
		}
	}
	return false
}

// handleConsent completes the login/consent page.
func (s *Sandbox) handleConsent(w http.ResponseWriter, r *http.Request, t *tenant, q url.Values) {
	id := q.Get("request_id")
	t.mu.Lock()
	p, ok := t.pending[id]
	if ok {
		delete(t.pending, id)
	}
	t.mu.Unlock()
	if !ok || s.now().After(p.exp) {
		s.count(t, EndpointAuthorize, "")
		authErrorPage(w, http.StatusBadRequest, "this sign-in page has expired; start again from the app")
		return
	}
	req := p.req
	if !s.begin(w, r, t, EndpointAuthorize, req.client.cfg.ClientID) {
		return
	}
	if q.Get("decision") != "approve" {
		redirectError(w, r, req.redirect, req.state, "access_denied", "the patient declined", t)
		return
	}
	patient := t.patientFromHint(q.Get("patient"))
	if req.launch != nil {
		patient = req.launch.patient
	}
	if patient == "" {
		redirectError(w, r, req.redirect, req.state, "access_denied", "no such patient", t)
		return
	}
	// Unchecked scopes on the page are not granted (the patient may narrow).
	var kept []string
	chosen := q["scope_item"]
	for _, f := range strings.Fields(req.scope) {
		if _, isRes := parseScope(f); !isRes || slices.Contains(chosen, f) {
			kept = append(kept, f)
		}
	}
	s.issueCode(w, r, t, req, patient, strings.Join(kept, " "))
}

// clientAuth is who called the token endpoint and how.
type clientAuth struct {
	client *client
	method string // none, client_secret_basic, client_secret_post, private_key_jwt
}

func (s *Sandbox) authenticateClient(r *http.Request, t *tenant, form url.Values) (*clientAuth, string, error) {
	id, secret, basic := r.BasicAuth()
	if basic {
		id, _ = url.QueryUnescape(id)
		secret, _ = url.QueryUnescape(secret)
	}
	assertion := form.Get("client_assertion")
	switch {
	case basic:
	case assertion != "":
		if form.Get("client_assertion_type") != assertionType {
			return nil, "", errors.New("client_assertion_type must be " + assertionType)
		}
		iss, err := unverifiedIssuer(assertion)
		if err != nil {
			return nil, "", err
		}
		id = iss
	case form.Get("client_secret") != "":
		id, secret = form.Get("client_id"), form.Get("client_secret")
	default:
		id = form.Get("client_id")
	}
	if fid := form.Get("client_id"); fid != "" && fid != id {
		return nil, id, errors.New("client_id does not match the client's authentication")
	}
	c, ok := t.lookupClient(id)
	if !ok {
		return nil, id, errors.New("unknown client")
	}
	switch {
	case assertion != "":
		if c.cfg.JWKSURL == "" && c.jwks == nil {
			return nil, id, errors.New("client has no registered keys for private_key_jwt")
		}
		if err := s.verifyClientAssertion(r, t, c, assertion); err != nil {
			return nil, id, err
		}
		return &clientAuth{client: c, method: "private_key_jwt"}, id, nil
	case basic || form.Get("client_secret") != "":
		if t.prof.AsymmetricOnly {
			return nil, id, errors.New("this server requires private_key_jwt for confidential clients")
		}
		if c.cfg.ClientSecret == "" || subtle.ConstantTimeCompare([]byte(secret), []byte(c.cfg.ClientSecret)) != 1 {
			return nil, id, errors.New("client authentication failed")
		}
		m := "client_secret_post"
		if basic {
			m = "client_secret_basic"
		}
		return &clientAuth{client: c, method: m}, id, nil
	default:
		if c.cfg.Confidential() {
			return nil, id, errors.New("confidential client must authenticate")
		}
		if t.prof.ConfidentialOnly {
			return nil, id, errors.New("this server accepts confidential clients only")
		}
		return &clientAuth{client: c, method: "none"}, id, nil
	}
}

func (s *Sandbox) handleToken(w http.ResponseWriter, r *http.Request, t *tenant) {
	if r.Method != http.MethodPost {
		s.count(t, EndpointToken, "")
		w.Header().Set("Allow", "POST")
		oauthError(w, http.StatusMethodNotAllowed, "invalid_request", "use POST")
		return
	}
	form, err := formValues(r)
	if err != nil {
		s.count(t, EndpointToken, "")
		oauthError(w, http.StatusBadRequest, "invalid_request", err.Error())
		return
	}
	ca, clientID, authErr := s.authenticateClient(r, t, form)
	if !s.begin(w, r, t, EndpointToken, clientID) {
		return
	}
	grant := form.Get("grant_type")
	switch grant {
	case "authorization_code", "refresh_token", "client_credentials":
		s.countSub(t, "token:"+grant, clientID)
	}
	if authErr != nil {
		w.Header().Set("WWW-Authenticate", `Basic realm="sandbox"`)
		oauthError(w, http.StatusUnauthorized, "invalid_client", authErr.Error())
		return
	}
	switch grant {
	case "authorization_code":
		s.tokenFromCode(w, t, ca, form)
	case "refresh_token":
		s.tokenFromRefresh(w, t, ca, form)
	case "client_credentials":
		s.tokenFromClientCredentials(w, t, ca, form)
	default:
		oauthError(w, http.StatusBadRequest, "unsupported_grant_type", "grant_type "+strconv.Quote(grant)+" is not supported")
	}
}

func pkceS256(verifier string) string {
	sum := sha256.Sum256([]byte(verifier))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

func (s *Sandbox) tokenFromCode(w http.ResponseWriter, t *tenant, ca *clientAuth, form url.Values) {
	code := form.Get("code")
	t.mu.Lock()
	ac, ok := t.codes[code]
	replay := ok && ac.used
	if replay {
		// A replayed code revokes everything issued from it (RFC 6749 §4.1.2).
		ac.fam.revoked = true
	}
	revoked := false
	if ok {
		ac.used = true
		revoked = ac.fam.revoked
	}
	t.mu.Unlock()
	switch {
	case !ok || replay || revoked:
		oauthError(w, http.StatusBadRequest, "invalid_grant", "unknown, expired or already used code")
		return
	case s.now().After(ac.exp):
		oauthError(w, http.StatusBadRequest, "invalid_grant", "code expired")
		return
	case ac.fam.client != ca.client.cfg.ClientID:
		oauthError(w, http.StatusBadRequest, "invalid_grant", "code was issued to another client")
		return
	case form.Get("redirect_uri") != ac.redirect:
		oauthError(w, http.StatusBadRequest, "invalid_grant", "redirect_uri does not match the authorization request")
		return
	}
	v := form.Get("code_verifier")
	if v == "" || subtle.ConstantTimeCompare([]byte(pkceS256(v)), []byte(ac.challenge)) != 1 {
		oauthError(w, http.StatusBadRequest, "invalid_grant", "PKCE verification failed")
		return
	}
	s.writeTokenResponse(w, t, ac.fam, ca, nil)
}

func (s *Sandbox) tokenFromRefresh(w http.ResponseWriter, t *tenant, ca *clientAuth, form url.Values) {
	if s.settings(t.name, ca.client.cfg.ClientID).refuseRefresh {
		oauthError(w, http.StatusBadRequest, "invalid_grant", "refresh refused (injected fault)")
		return
	}
	rt := form.Get("refresh_token")
	now := s.now()
	t.mu.Lock()
	tok, ok := t.refresh[rt]
	var fam *family
	var prev *refreshToken
	reason := ""
	switch {
	case !ok:
		reason = "unknown refresh token"
	case tok.fam.client != ca.client.cfg.ClientID:
		reason = "refresh token was issued to another client"
	default:
		var v refreshVerdict
		switch v, reason = t.judgeRefresh(tok, now); v {
		case refreshRetry:
			// Replace what we rotated to instead of revoking.
			tok.successor.superseded = true
			fam, prev = tok.fam, tok
		case refreshReuse:
			// Assume theft: revoke the whole family.
			tok.fam.revoked = true
		case refreshAccepted:
			fam = tok.fam
			if t.rotate {
				tok.used, tok.rotatedAt, prev = true, now, tok
			}
		}
	}
	t.mu.Unlock()
	if fam == nil {
		oauthError(w, http.StatusBadRequest, "invalid_grant", reason)
		return
	}
	if sc := form.Get("scope"); sc != "" {
		for _, f := range strings.Fields(sc) {
			if !hasScope(fam.scope, f) {
				oauthError(w, http.StatusBadRequest, "invalid_scope", "scope exceeds the original grant")
				return
			}
		}
	}
	if !t.rotate {
		s.writeTokenResponseWithRefresh(w, t, fam, ca, rt)
		return
	}
	s.writeTokenResponse(w, t, fam, ca, prev)
}

// refreshVerdict is what the token endpoint does with a refresh token.
type refreshVerdict int

const (
	refreshRefused  refreshVerdict = iota // invalid_grant
	refreshAccepted                       // a refresh (rotating the token when the tenant rotates)
	refreshRetry                          // a rotated token presented again within the reuse grace
	refreshReuse                          // a rotated token presented again otherwise: theft
)

// judgeRefresh decides, under t.mu, whether the token endpoint accepts tok
// now, with the reason when it does not. Introspection asks it too, so the
// two never disagree about a refresh token.
func (t *tenant) judgeRefresh(tok *refreshToken, now time.Time) (refreshVerdict, string) {
	switch {
	case tok.fam.revoked:
		return refreshRefused, "the grant has been revoked"
	case tok.superseded:
		return refreshRefused, "refresh token was replaced after a retry"
	case tok.used && t.reuseGrace > 0 && now.Sub(tok.rotatedAt) <= t.reuseGrace && tok.successor != nil && !tok.successor.used:
		// The client never used what we rotated to, so it most likely never
		// received it (it crashed before storing it).
		return refreshRetry, ""
	case tok.used:
		return refreshReuse, "refresh token reuse detected; the grant is revoked"
	case !tok.exp.IsZero() && now.After(tok.exp):
		return refreshRefused, "refresh token expired"
	case !tok.fam.grantExp.IsZero() && now.After(tok.fam.grantExp):
		return refreshRefused, "the grant has expired"
	}
	return refreshAccepted, ""
}

func (s *Sandbox) tokenFromClientCredentials(w http.ResponseWriter, t *tenant, ca *clientAuth, form url.Values) {
	if ca.method != "private_key_jwt" {
		oauthError(w, http.StatusUnauthorized, "invalid_client", "client_credentials requires private_key_jwt (SMART Backend Services)")
		return
	}
	requested := form.Get("scope")
	if requested == "" {
		oauthError(w, http.StatusBadRequest, "invalid_scope", "scope is required")
		return
	}
	var granted []string
	for _, sc := range parseScopes(grantScopes(requested, ca.client.cfg.Scope, t.prof.ScopesV2)) {
		if sc.context == "system" {
			granted = append(granted, sc.raw)
		}
	}
	if len(granted) == 0 {
		oauthError(w, http.StatusBadRequest, "invalid_scope", "no system/ scope can be granted")
		return
	}
	scope := strings.Join(granted, " ")
	life := s.lifetime(t, ca.client.cfg.ClientID)
	at := &accessToken{client: ca.client.cfg.ClientID, scope: scope, scopes: parseScopes(scope), exp: s.now().Add(life), system: true}
	tok := s.secret(32)
	t.mu.Lock()
	t.access[tok] = at
	t.mu.Unlock()
	writeJSON(w, http.StatusOK, "", map[string]any{
		"access_token": tok, "token_type": "Bearer", "expires_in": int(life / time.Second), "scope": scope,
	})
}

func (s *Sandbox) lifetime(t *tenant, clientID string) time.Duration {
	if l := s.settings(t.name, clientID).atLifetime; l > 0 {
		return l
	}
	return t.atLifetime
}

// writeTokenResponse issues an access token and, for offline grants, a new
// refresh token (linked from prev when it rotates one).
func (s *Sandbox) writeTokenResponse(w http.ResponseWriter, t *tenant, fam *family, ca *clientAuth, prev *refreshToken) {
	rt := ""
	if fam.offline {
		rt = s.secret(32)
		nt := &refreshToken{fam: fam}
		t.mu.Lock()
		t.refresh[rt] = nt
		if prev != nil {
			prev.successor = nt
		}
		t.mu.Unlock()
	}
	s.writeTokenResponseWithRefresh(w, t, fam, ca, rt)
}

func (s *Sandbox) writeTokenResponseWithRefresh(w http.ResponseWriter, t *tenant, fam *family, ca *clientAuth, rt string) {
	now := s.now()
	life := s.lifetime(t, ca.client.cfg.ClientID)
	tok := s.secret(32)
	at := &accessToken{fam: fam, client: fam.client, scope: fam.scope, scopes: fam.scopes, patient: fam.patient, exp: now.Add(life)}
	t.mu.Lock()
	t.access[tok] = at
	t.mu.Unlock()
	nonce := fam.nonce
	scope := fam.scope
	if !t.prof.EchoOfflineAccess {
		scope = strings.Join(remove(strings.Fields(scope), "offline_access"), " ")
	}
	resp := map[string]any{
		"access_token": tok, "token_type": "Bearer", "expires_in": int(life / time.Second), "scope": scope,
		"need_patient_banner": true, "smart_style_url": t.s.base + "/" + t.name + "/style.json",
	}
	if rt != "" {
		resp["refresh_token"] = rt
	}
	if fam.patient != "" {
		resp["patient"] = fam.patient
	}
	if fam.encounter != "" {
		resp["encounter"] = fam.encounter
	}
	if !fam.grantExp.IsZero() {
		// Blue Button reports when the patient's grant ends.
		resp["access_grant_expiration"] = fam.grantExp.UTC().Format("2006-01-02 15:04:05Z")
	}
	if hasScope(fam.scope, "openid") && (hasScope(fam.scope, "fhirUser") || hasScope(fam.scope, "profile")) {
		claims := map[string]any{
			"iss": t.fhirBase(), "sub": strings.ReplaceAll(fam.fhirUser, "/", "-"), "aud": fam.client,
			"exp": now.Add(time.Hour).Unix(), "iat": now.Unix(), "fhirUser": t.fhirBase() + "/" + fam.fhirUser,
		}
		if nonce != "" {
			claims["nonce"] = nonce
		}
		idt, err := s.keys.signRS256(claims)
		if err != nil {
			oauthError(w, http.StatusInternalServerError, "server_error", "id_token signing failed")
			return
		}
		resp["id_token"] = idt
	}
	writeJSON(w, http.StatusOK, "", resp)
}

// bearer resolves the request's access token.
func (t *tenant) bearer(r *http.Request) (*accessToken, string, error) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return nil, "", errNoToken
	}
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || tok == "" {
		return nil, "", errBadToken
	}
	t.mu.Lock()
	at, ok := t.access[tok]
	revoked := ok && at.fam != nil && at.fam.revoked
	t.mu.Unlock()
	if !ok {
		return nil, "", errBadToken
	}
	if revoked {
		return nil, at.client, fmt.Errorf("%w: grant revoked", errBadToken)
	}
	if t.s.now().After(at.exp) {
		return nil, at.client, fmt.Errorf("%w: expired", errBadToken)
	}
	return at, at.client, nil
}

var (
	errNoToken  = errors.New("missing bearer token")
	errBadToken = errors.New("invalid or expired access token")
)

func (s *Sandbox) handleIntrospect(w http.ResponseWriter, r *http.Request, t *tenant) {
	form, err := formValues(r)
	if err != nil || r.Method != http.MethodPost {
		s.count(t, EndpointIntrospect, "")
		oauthError(w, http.StatusBadRequest, "invalid_request", "POST a form with token")
		return
	}
	// RFC 7662 §2.1: the caller authenticates, as a client or with a bearer token.
	caller := ""
	if _, c, err := t.bearer(r); err == nil {
		caller = c
	} else if ca, id, err := s.authenticateClient(r, t, form); err == nil && ca.method != "none" {
		caller = id
	}
	if !s.begin(w, r, t, EndpointIntrospect, caller) {
		return
	}
	if caller == "" {
		oauthError(w, http.StatusUnauthorized, "invalid_client", "introspection requires client authentication or a bearer token")
		return
	}
	tok := form.Get("token")
	now := s.now()
	// revoked, used and superseded change under t.mu (revoke, refresh,
	// RevokePatient): read them under it too.
	t.mu.Lock()
	at, isAT := t.access[tok]
	rt, isRT := t.refresh[tok]
	atLive := isAT && (at.fam == nil || !at.fam.revoked)
	rtLive := false
	if isRT {
		// Active exactly when the token endpoint would take it (a retry
		// within the reuse grace included).
		v, _ := t.judgeRefresh(rt, now)
		rtLive = v == refreshAccepted || v == refreshRetry
	}
	t.mu.Unlock()
	resp := map[string]any{"active": false}
	switch {
	case atLive && now.Before(at.exp):
		resp = map[string]any{"active": true, "scope": at.scope, "client_id": at.client, "exp": at.exp.Unix(),
			"token_type": "Bearer", "iss": t.fhirBase()}
		if at.patient != "" {
			resp["patient"] = at.patient
		}
		if at.fam != nil {
			resp["fhirUser"] = t.fhirBase() + "/" + at.fam.fhirUser
			resp["sub"] = strings.ReplaceAll(at.fam.fhirUser, "/", "-")
			resp["iat"] = at.fam.issuedAt.Unix()
		}
	case rtLive:
		resp = map[string]any{"active": true, "scope": rt.fam.scope, "client_id": rt.fam.client, "token_type": "refresh_token"}
	}
	writeJSON(w, http.StatusOK, "", resp)
}

func (s *Sandbox) handleRevoke(w http.ResponseWriter, r *http.Request, t *tenant) {
	form, err := formValues(r)
	if err != nil || r.Method != http.MethodPost {
		s.count(t, EndpointRevoke, "")
		oauthError(w, http.StatusBadRequest, "invalid_request", "POST a form with token")
		return
	}
	ca, id, authErr := s.authenticateClient(r, t, form)
	if !s.begin(w, r, t, EndpointRevoke, id) {
		return
	}
	if authErr != nil {
		oauthError(w, http.StatusUnauthorized, "invalid_client", authErr.Error())
		return
	}
	tok := form.Get("token")
	t.mu.Lock()
	if at, ok := t.access[tok]; ok && at.client == ca.client.cfg.ClientID {
		delete(t.access, tok)
	}
	if rt, ok := t.refresh[tok]; ok && rt.fam.client == ca.client.cfg.ClientID {
		rt.fam.revoked = true // RFC 7009 §2.1: revoking a refresh token ends the grant
	}
	t.mu.Unlock()
	w.WriteHeader(http.StatusOK) // RFC 7009: 200 even for unknown tokens
}

// serveLaunch starts an EHR launch: {tenant}/launch?client_id=&launch_url=&patient=[&encounter=]
// redirects to the app's launch URL with iss and launch.
func (s *Sandbox) serveLaunch(w http.ResponseWriter, r *http.Request, t *tenant) {
	q := r.URL.Query()
	clientID := q.Get("client_id")
	if !s.begin(w, r, t, EndpointLaunch, clientID) {
		return
	}
	c, ok := t.lookupClient(clientID)
	if !ok {
		writeOutcome(w, http.StatusBadRequest, "invalid", "unknown client_id")
		return
	}
	launchURL := q.Get("launch_url")
	if launchURL == "" && len(c.cfg.LaunchURLs) > 0 {
		launchURL = c.cfg.LaunchURLs[0]
	}
	u, err := url.Parse(launchURL)
	if err != nil || !u.IsAbs() {
		writeOutcome(w, http.StatusBadRequest, "invalid", "launch_url must be an absolute URL")
		return
	}
	if !c.open && len(c.cfg.LaunchURLs) > 0 && !slices.Contains(c.cfg.LaunchURLs, launchURL) {
		writeOutcome(w, http.StatusBadRequest, "invalid", "launch_url is not registered for this client")
		return
	}
	patient := t.patientFromHint(q.Get("patient"))
	if patient == "" {
		writeOutcome(w, http.StatusBadRequest, "invalid", "no such patient")
		return
	}
	enc := q.Get("encounter")
	if enc != "" {
		ref, ok := t.data.ParseID(synth.Encounter, enc)
		if !ok || synth.PatientID(ref.Patient) != patient {
			writeOutcome(w, http.StatusBadRequest, "invalid", "encounter does not belong to the patient")
			return
		}
	}
	id := randomToken(16)
	t.mu.Lock()
	t.launches[id] = &launchCtx{client: clientID, patient: patient, encounter: enc, exp: s.now().Add(10 * time.Minute)}
	t.mu.Unlock()
	lq := u.Query()
	lq.Set("iss", t.fhirBase())
	lq.Set("launch", id)
	u.RawQuery = lq.Encode()
	http.Redirect(w, r, u.String(), http.StatusFound)
}
