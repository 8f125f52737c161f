package oauth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/medrelay/medrelay/internal/secrets"
)

// Token is a token response, parsed. Secret parts are secrets.Value.
type Token struct {
	AccessToken  secrets.Value
	RefreshToken secrets.Value
	IDToken      secrets.Value
	TokenType    string
	// Expiry of the access token; zero when the server did not say.
	Expiry time.Time
	// Scopes granted. Nil when the server did not say, which means what was
	// requested (RFC 6749 §5.1).
	Scopes []string
	// Patient and Encounter in context (SMART launch context).
	Patient, Encounter string
	// FHIRUser from the verified ID token; empty when there is none or it
	// did not verify (see IDTokenErr).
	FHIRUser string
	// GrantExpiry is the end of the whole grant (access_grant_expiration,
	// CMS Blue Button); zero when unknown.
	GrantExpiry time.Time

	// RefreshRotated: the response carried a new refresh token. When false
	// after Refresh, RefreshToken is the one that was used (keep it).
	RefreshRotated bool
	// IDTokenErr says why an ID token that came with the response was not
	// trusted; nil when it verified or there was none.
	IDTokenErr error

	// SMART launch-context extras.
	FHIRContext       []ContextItem
	NeedPatientBanner bool
	SmartStyleURL     string
	Intent            string
	Tenant            string
}

// LogValue keeps the tokens out of structured logs.
func (t *Token) LogValue() slog.Value {
	if t == nil {
		return slog.StringValue("<nil>")
	}
	return slog.GroupValue(slog.String("type", t.TokenType), slog.Time("expiry", t.Expiry),
		slog.Bool("refresh_token", t.RefreshToken != ""), slog.Bool("id_token", t.IDToken != ""),
		slog.Any("scopes", t.Scopes), slog.String("patient", t.Patient))
}

// ContextItem is one entry of the token response's fhirContext.
type ContextItem struct {
	Reference string `json:"reference,omitempty"`
	Canonical string `json:"canonical,omitempty"`
	Type      string `json:"type,omitempty"`
	// Role; empty means "launch" (smart-2.2-client #191).
	Role string `json:"role,omitempty"`
}

// HasScope reports whether scope s was granted.
func (t *Token) HasScope(s string) bool { return slices.Contains(t.Scopes, s) }

// Error is an OAuth error response from the token, revocation or
// introspection endpoint. It unwraps to ErrInvalidGrant, ErrTransient,
// ErrInvalidClient or ErrRejected, so errors.Is answers what to do.
type Error struct {
	Code, Description string
	Status            int
	// RetryAfter from the response, when it had one.
	RetryAfter time.Duration
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("oauth: ")
	if e.Code != "" {
		b.WriteString(e.Code)
	} else {
		b.WriteString("error response")
	}
	if e.Description != "" {
		b.WriteString(": ")
		b.WriteString(e.Description)
	}
	if e.Status != 0 {
		fmt.Fprintf(&b, " (HTTP %d)", e.Status)
	}
	return b.String()
}

// Unwrap classifies the error: the OAuth code decides first (a 500 that
// says invalid_grant is still a dead grant), then the HTTP status.
func (e *Error) Unwrap() error {
	switch e.Code {
	case "invalid_grant":
		return ErrInvalidGrant
	case "invalid_client":
		return ErrInvalidClient
	case "access_denied":
		return ErrAccessDenied
	case "temporarily_unavailable", "server_error", "slow_down":
		return ErrTransient
	}
	if e.Status >= 500 || e.Status == http.StatusTooManyRequests || e.Status == http.StatusRequestTimeout {
		return ErrTransient
	}
	if e.Status == http.StatusUnauthorized {
		return ErrInvalidClient
	}
	return ErrRejected
}

// maxBody bounds what is read from an OAuth endpoint.
const maxBody = 1 << 20

// fhirID is FHIR's id datatype. Launch context ids end up in URLs; anything
// else in them is refused.
var fhirID = regexp.MustCompile(`^[A-Za-z0-9\-.]{1,64}$`)

// ParseTokenResponse parses a token endpoint's answer. A non-2xx status is
// an *Error; a 2xx without a usable bearer token is ErrBadResponse. The
// expiry is computed from the current time.
func ParseTokenResponse(status int, body []byte) (*Token, error) {
	return parseTokenResponse(status, body, nil, time.Now(), nil)
}

// parseTokenResponse parses; scrub are secret values the request carried,
// redacted from an error description that echoes them.
func parseTokenResponse(status int, body []byte, h http.Header, now time.Time, scrub []string) (*Token, error) {
	if status < 200 || status > 299 {
		return nil, parseErrorResponse(status, body, h, now, scrub)
	}
	// One pass into raw fields (a map or a Decoder costs twice what the
	// refresher can spare at 100,000 connections), then each field on its own.
	var f tokenFields
	if err := json.Unmarshal(body, &f); err != nil {
		return nil, fmt.Errorf("%w: the token response is not a JSON object", ErrBadResponse)
	}
	str := func(k string, raw json.RawMessage) (string, error) {
		if len(raw) == 0 || string(raw) == "null" {
			return "", nil
		}
		s, ok := jsonString(raw)
		if !ok {
			return "", fmt.Errorf("%w: %s is not a string", ErrBadResponse, k)
		}
		return s, nil
	}
	t := &Token{}
	var err error
	var at, rt, idt string
	if at, err = str("access_token", f.AccessToken); err != nil {
		return nil, err
	}
	if at == "" {
		return nil, fmt.Errorf("%w: no access_token", ErrBadResponse)
	}
	if rt, err = str("refresh_token", f.RefreshToken); err != nil {
		return nil, err
	}
	if idt, err = str("id_token", f.IDToken); err != nil {
		return nil, err
	}
	t.AccessToken, t.RefreshToken, t.IDToken = secrets.Value(at), secrets.Value(rt), secrets.Value(idt)
	t.RefreshRotated = rt != ""
	if t.TokenType, err = str("token_type", f.TokenType); err != nil {
		return nil, err
	}
	switch {
	case t.TokenType == "":
		// Required by RFC 6749, but some servers omit it; SMART only
		// issues bearer tokens.
		t.TokenType = "Bearer"
	case strings.EqualFold(t.TokenType, "bearer"):
		t.TokenType = "Bearer"
	default:
		return nil, fmt.Errorf("%w: token_type %q is not Bearer", ErrBadResponse, clean(t.TokenType, 32))
	}
	if raw := f.ExpiresIn; len(raw) > 0 && string(raw) != "null" {
		secs, ok := number(raw)
		if !ok {
			return nil, fmt.Errorf("%w: expires_in is not a number", ErrBadResponse)
		}
		if secs > 0 {
			// Ten years is forever for an access token, and keeps the
			// arithmetic away from overflow.
			secs = math.Min(secs, 10*365*24*3600)
			t.Expiry = now.Add(time.Duration(secs * float64(time.Second)))
		}
	}
	if raw := f.Scope; len(raw) > 0 && string(raw) != "null" {
		var list []string
		if s, ok := jsonString(raw); ok {
			t.Scopes = strings.Fields(s)
		} else {
			switch {
			case json.Unmarshal(raw, &list) == nil:
				// Not the standard (a space-separated string), but seen.
				for _, x := range list {
					t.Scopes = append(t.Scopes, strings.Fields(x)...)
				}
			default:
				return nil, fmt.Errorf("%w: scope is neither a string nor a list", ErrBadResponse)
			}
		}
		if t.Scopes == nil {
			t.Scopes = []string{}
		}
	}
	for _, c := range []struct {
		key string
		raw json.RawMessage
		dst *string
	}{{"patient", f.Patient, &t.Patient}, {"encounter", f.Encounter, &t.Encounter}} {
		v, err := str(c.key, c.raw)
		if err != nil {
			return nil, err
		}
		if v != "" && !fhirID.MatchString(v) {
			return nil, fmt.Errorf("%w: %s is not a FHIR id", ErrBadResponse, c.key)
		}
		*c.dst = v
	}
	if v, err := str("access_grant_expiration", f.GrantExpiration); err == nil && v != "" {
		t.GrantExpiry, err = parseGrantExpiry(v)
		if err != nil {
			return nil, fmt.Errorf("%w: access_grant_expiration %q: %w", ErrBadResponse, clean(v, 40), err)
		}
	} else if raw := f.GrantExpiration; len(raw) > 0 && err != nil {
		if secs, ok := number(raw); ok && secs > 0 && secs < 1e11 {
			t.GrantExpiry = time.Unix(int64(secs), 0)
		} else {
			return nil, fmt.Errorf("%w: access_grant_expiration is neither a date nor a number", ErrBadResponse)
		}
	}
	// Launch-context extras are informative: a malformed one is dropped,
	// never a reason to lose the token.
	if raw := f.FHIRContext; len(raw) > 0 {
		var items []ContextItem
		if json.Unmarshal(raw, &items) == nil {
			t.FHIRContext = items
		}
	}
	if raw := f.NeedPatientBanner; len(raw) > 0 {
		_ = json.Unmarshal(raw, &t.NeedPatientBanner)
	}
	t.SmartStyleURL, _ = str("smart_style_url", f.SmartStyleURL)
	t.Intent, _ = str("intent", f.Intent)
	t.Tenant, _ = str("tenant", f.Tenant)
	return t, nil
}

// tokenFields are the token response's members, raw.
type tokenFields struct {
	AccessToken       json.RawMessage `json:"access_token"`
	RefreshToken      json.RawMessage `json:"refresh_token"`
	IDToken           json.RawMessage `json:"id_token"`
	TokenType         json.RawMessage `json:"token_type"`
	ExpiresIn         json.RawMessage `json:"expires_in"`
	Scope             json.RawMessage `json:"scope"`
	Patient           json.RawMessage `json:"patient"`
	Encounter         json.RawMessage `json:"encounter"`
	GrantExpiration   json.RawMessage `json:"access_grant_expiration"`
	FHIRContext       json.RawMessage `json:"fhirContext"`
	NeedPatientBanner json.RawMessage `json:"need_patient_banner"`
	SmartStyleURL     json.RawMessage `json:"smart_style_url"`
	Intent            json.RawMessage `json:"intent"`
	Tenant            json.RawMessage `json:"tenant"`
}

// jsonString decodes a JSON string; plain printable ASCII without escapes
// (every token ever seen) is sliced without a decoder.
func jsonString(raw json.RawMessage) (string, bool) {
	if n := len(raw); n >= 2 && raw[0] == '"' && raw[n-1] == '"' {
		plain := true
		for _, c := range raw[1 : n-1] {
			if c < 0x20 || c > 0x7e || c == '\\' || c == '"' {
				plain = false
				break
			}
		}
		if plain {
			return string(raw[1 : n-1]), true
		}
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", false
	}
	return s, true
}

// number reads a JSON number or a string holding one.
func number(raw json.RawMessage) (float64, bool) {
	var n json.Number
	if err := json.Unmarshal(raw, &n); err != nil {
		var s string
		if json.Unmarshal(raw, &s) != nil {
			return 0, false
		}
		n = json.Number(strings.TrimSpace(s))
	}
	f, err := n.Float64()
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return 0, false
	}
	return f, true
}

// Blue Button documents "2024-04-14 15:29:00Z"; accept the RFC 3339
// spellings too.
var grantExpiryLayouts = []string{"2006-01-02 15:04:05Z07:00", "2006-01-02 15:04:05Z", "2006-01-02 15:04:05", time.RFC3339Nano, "2006-01-02"}

func parseGrantExpiry(v string) (time.Time, error) {
	v = strings.TrimSpace(v)
	for _, l := range grantExpiryLayouts {
		if t, err := time.Parse(l, v); err == nil {
			return t, nil
		}
	}
	return time.Time{}, errors.New("not a date")
}

func parseErrorResponse(status int, body []byte, h http.Header, now time.Time, scrub []string) *Error {
	e := &Error{Status: status}
	var m struct {
		Error       any    `json:"error"`
		Description any    `json:"error_description"`
		URI         string `json:"error_uri"`
	}
	if json.Unmarshal(body, &m) == nil {
		if s, ok := m.Error.(string); ok {
			e.Code = clean(redact(s, scrub...), 64)
		}
		if s, ok := m.Description.(string); ok {
			e.Description = clean(redact(s, scrub...), 300)
		}
	}
	if h != nil {
		e.RetryAfter = parseRetryAfter(h.Get("Retry-After"), now)
	}
	return e
}

func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if n, err := strconv.Atoi(v); err == nil && n >= 0 {
		return time.Duration(min(n, 7*24*3600)) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return min(t.Sub(now), 7*24*time.Hour)
	}
	return 0
}

// clean keeps text from an outside server fit for logs and pages: printable,
// one line, bounded.
func clean(s string, max int) string {
	var b strings.Builder
	for _, r := range s {
		if b.Len() >= max {
			b.WriteString("…")
			break
		}
		if unicode.IsPrint(r) {
			b.WriteRune(r)
		} else {
			b.WriteRune(' ')
		}
	}
	return strings.TrimSpace(b.String())
}

// Exchange trades an authorization code for tokens (smart-2.2-client #62,
// #67-#72): grant_type=authorization_code, code, redirect_uri, the PKCE
// verifier and the client's authentication. An ID token in the response is
// verified (#201, #218) and gives FHIRUser.
func (c *Client) Exchange(ctx context.Context, code, verifier string) (*Token, error) {
	if code == "" || verifier == "" {
		return nil, fmt.Errorf("%w: code and verifier are required", ErrBadCallback)
	}
	form := url.Values{
		"grant_type":    {"authorization_code"},
		"code":          {code},
		"redirect_uri":  {c.cfg.RedirectURI},
		"code_verifier": {verifier},
	}
	t, err := c.token(ctx, form, code, verifier)
	if err != nil {
		return nil, err
	}
	c.finish(ctx, t)
	return t, nil
}

// Refresh uses a refresh token (smart-2.2-client #105-#108). scopes, when
// given, must be a subset of the original grant; nil asks for the same.
// When the server rotates the refresh token the new one is in
// RefreshToken with RefreshRotated set; otherwise RefreshToken is the one
// given (#117).
func (c *Client) Refresh(ctx context.Context, refresh secrets.Value, scopes []string) (*Token, error) {
	if refresh.IsZero() {
		return nil, fmt.Errorf("%w: no refresh token", ErrInvalidGrant)
	}
	form := url.Values{"grant_type": {"refresh_token"}, "refresh_token": {refresh.Reveal()}}
	if len(scopes) > 0 {
		sc, err := ConvertScopes(scopes, c.v2)
		if err != nil {
			return nil, err
		}
		form.Set("scope", strings.Join(sc, " "))
	}
	t, err := c.token(ctx, form, refresh.Reveal())
	if err != nil {
		return nil, err
	}
	// Servers that do not rotate may send the same token back.
	if !t.RefreshRotated || t.RefreshToken == refresh {
		t.RefreshToken, t.RefreshRotated = refresh, false
	}
	c.finish(ctx, t)
	return t, nil
}

// ClientCredentials obtains a token without a user (SMART Backend
// Services, smart-2.2-client #229, #233-#239): grant_type=client_credentials
// with the client's authentication, normally private_key_jwt. nil scopes
// ask for BackendScopes.
func (c *Client) ClientCredentials(ctx context.Context, scopes []string) (*Token, error) {
	if c.cfg.Auth.Method == AuthNone {
		return nil, fmt.Errorf("%w: client_credentials needs a confidential client (register a key)", ErrConfig)
	}
	if scopes == nil {
		scopes = BackendScopes(c.cfg.Profile, c.cfg.Endpoints)
	}
	sc, err := ConvertScopes(scopes, c.v2)
	if err != nil {
		return nil, err
	}
	if len(sc) == 0 {
		return nil, fmt.Errorf("%w: no scopes to request", ErrConfig)
	}
	form := url.Values{"grant_type": {"client_credentials"}, "scope": {strings.Join(sc, " ")}}
	return c.token(ctx, form)
}

// finish applies what the profile knows and verifies the ID token.
func (c *Client) finish(ctx context.Context, t *Token) {
	// Epic grants offline_access without saying so: a refresh token is the
	// evidence.
	if !c.cfg.Profile.EchoesOfflineAccess && t.RefreshToken != "" && t.Scopes != nil && !t.HasScope("offline_access") && !t.HasScope("online_access") {
		t.Scopes = append(t.Scopes, "offline_access")
	}
	if t.IDToken != "" {
		claims, err := c.VerifyIDToken(ctx, t.IDToken.Reveal())
		if err != nil {
			t.IDTokenErr = err
		} else {
			t.FHIRUser = claims.FHIRUser
		}
	}
}

// token POSTs form to the token endpoint with the client's authentication
// and parses the answer. scrub lists secret values sent in form, which are
// redacted should the server echo them in an error.
func (c *Client) token(ctx context.Context, form url.Values, scrub ...string) (*Token, error) {
	status, body, h, sent, err := c.post(ctx, c.cfg.Endpoints.TokenURL, form)
	if err != nil {
		return nil, err
	}
	return parseTokenResponse(status, body, h, c.now(), append(scrub, sent...))
}

// post sends form with the client's authentication. It returns the secret
// values it added (secret, assertion) so errors can be scrubbed of them.
func (c *Client) post(ctx context.Context, endpoint string, form url.Values) (int, []byte, http.Header, []string, error) {
	var sent []string
	req, err := c.authenticatedRequest(ctx, endpoint, form, &sent)
	if err != nil {
		return 0, nil, nil, sent, err
	}
	status, body, h, err := c.do(req, endpoint, sent)
	return status, body, h, sent, err
}

// do sends req (never following redirects) and reads a bounded answer.
func (c *Client) do(req *http.Request, endpoint string, sent []string) (int, []byte, http.Header, error) {
	resp, err := c.hc.Do(req)
	if err != nil {
		if errors.Is(err, context.Canceled) {
			return 0, nil, nil, fmt.Errorf("oauth: %s: %w", hostOf(endpoint), context.Canceled)
		}
		return 0, nil, nil, fmt.Errorf("%w: %s: %s", ErrTransient, hostOf(endpoint), redact(err.Error(), sent...))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
	if err != nil {
		return 0, nil, nil, fmt.Errorf("%w: %s: reading the response: %v", ErrTransient, hostOf(endpoint), err)
	}
	if len(body) > maxBody {
		return 0, nil, nil, fmt.Errorf("%w: %s: response larger than %d bytes", ErrBadResponse, hostOf(endpoint), maxBody)
	}
	if resp.StatusCode >= 300 && resp.StatusCode < 400 {
		return 0, nil, nil, fmt.Errorf("%w: %s answered with a redirect (HTTP %d), which is not followed", ErrBadResponse, hostOf(endpoint), resp.StatusCode)
	}
	return resp.StatusCode, body, resp.Header, nil
}

func (c *Client) authenticatedRequest(ctx context.Context, endpoint string, form url.Values, sent *[]string) (*http.Request, error) {
	a := c.cfg.Auth
	var basicUser, basicPass string
	switch a.Method {
	case AuthNone:
		form.Set("client_id", c.cfg.ClientID) // smart-2.2-client #71
	case AuthClientSecretBasic:
		// RFC 6749 §2.3.1: both are form-encoded before base64
		// (smart-2.2-client #345). client_id stays out of the body (#72).
		basicUser, basicPass = url.QueryEscape(c.cfg.ClientID), url.QueryEscape(a.Secret.Reveal())
		*sent = append(*sent, a.Secret.Reveal())
	case AuthClientSecretPost:
		form.Set("client_id", c.cfg.ClientID)
		form.Set("client_secret", a.Secret.Reveal())
		*sent = append(*sent, a.Secret.Reveal())
	case AuthPrivateKeyJWT:
		// smart-2.2-client #319-#334: a one-time assertion for this token
		// URL; client_id omitted (#72).
		jwt, err := a.Signer.SignAssertion(ctx, endpoint)
		if err != nil {
			return nil, fmt.Errorf("oauth: signing the client assertion: %w", err)
		}
		form.Set("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
		form.Set("client_assertion", jwt)
		*sent = append(*sent, jwt)
	}
	req, err := formRequest(ctx, endpoint, form)
	if err != nil {
		return nil, err
	}
	if basicUser != "" {
		req.SetBasicAuth(basicUser, basicPass)
	}
	return req, nil
}

// formRequest is a POST of form (application/x-www-form-urlencoded;
// smart-2.2-client #62, #234) that asks for JSON.
func formRequest(ctx context.Context, endpoint string, form url.Values) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, strings.NewReader(form.Encode()))
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrConfig, hostOf(endpoint), err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	return req, nil
}

func hostOf(u string) string {
	p, err := url.Parse(u)
	if err != nil || p.Host == "" {
		return "endpoint"
	}
	return p.Host + p.Path
}

// redact removes every secret (and its form-encoded spelling) from s.
func redact(s string, secretVals ...string) string {
	for _, v := range secretVals {
		if len(v) < 4 {
			continue
		}
		s = strings.ReplaceAll(s, v, "[redacted]")
		if enc := url.QueryEscape(v); enc != v {
			s = strings.ReplaceAll(s, enc, "[redacted]")
		}
	}
	return s
}
