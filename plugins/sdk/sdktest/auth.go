package sdktest

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/medrelay/medrelay/plugins/sdk"
)

// PatientLogin describes a SMART standalone launch against a sandbox tenant
// with auto-approve on (medrelay-sandbox --auto-approve, or sandboxtest).
type PatientLogin struct {
	// FHIRBase is the tenant's FHIR base URL.
	FHIRBase string
	ClientID string
	// ClientSecret makes the client confidential (client_secret_basic).
	ClientSecret string
	// RedirectURI registered for the client; default http://127.0.0.1/callback.
	RedirectURI string
	// LoginHint picks the patient ("" is the first).
	LoginHint string
	// Scope; default "launch/patient openid fhirUser offline_access patient/*.read".
	Scope string
	// HTTPClient; default http.DefaultClient.
	HTTPClient *http.Client
}

// PatientTokens is a TokenSource for one patient connection, obtained by a
// real authorization-code flow with PKCE. It refreshes when the plugin says
// the token was rejected.
type PatientTokens struct {
	login   PatientLogin
	tokenEP string

	mu      sync.Mutex
	access  string
	refresh string
	expiry  time.Time
	// Patient is the patient id the server returned with the token.
	Patient string
	// Refreshes counts refresh-token grants made.
	Refreshes int
}

var _ sdk.TokenSource = (*PatientTokens)(nil)

// LoginPatient runs the flow and returns the tokens.
func LoginPatient(ctx context.Context, l PatientLogin) (*PatientTokens, error) {
	if l.RedirectURI == "" {
		l.RedirectURI = "http://127.0.0.1/callback"
	}
	if l.Scope == "" {
		l.Scope = "launch/patient openid fhirUser offline_access patient/*.read"
	}
	hc := l.HTTPClient
	if hc == nil {
		hc = http.DefaultClient
	}
	cfg, err := discover(ctx, hc, l.FHIRBase)
	if err != nil {
		return nil, err
	}
	verifier := randString(32)
	sum := sha256.Sum256([]byte(verifier))
	state := randString(12)
	q := url.Values{
		"response_type":         {"code"},
		"client_id":             {l.ClientID},
		"redirect_uri":          {l.RedirectURI},
		"scope":                 {l.Scope},
		"state":                 {state},
		"aud":                   {l.FHIRBase},
		"code_challenge":        {base64.RawURLEncoding.EncodeToString(sum[:])},
		"code_challenge_method": {"S256"},
		"login_hint":            {l.LoginHint},
	}
	authURL := cfg.Authorize
	if strings.Contains(authURL, "?") {
		authURL += "&" + q.Encode()
	} else {
		authURL += "?" + q.Encode()
	}
	noRedirect := *hc
	noRedirect.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, authURL, nil)
	resp, err := noRedirect.Do(req)
	if err != nil {
		return nil, fmt.Errorf("authorize: %w", err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil || resp.StatusCode/100 != 3 {
		return nil, fmt.Errorf("authorize answered %d (is the sandbox started with auto-approve?)", resp.StatusCode)
	}
	if e := loc.Query().Get("error"); e != "" {
		return nil, fmt.Errorf("authorize: %s: %s", e, loc.Query().Get("error_description"))
	}
	if loc.Query().Get("state") != state {
		return nil, errors.New("authorize: state mismatch")
	}
	t := &PatientTokens{login: l, tokenEP: cfg.Token}
	err = t.grant(ctx, url.Values{
		"grant_type":    {"authorization_code"},
		"code":          {loc.Query().Get("code")},
		"redirect_uri":  {l.RedirectURI},
		"code_verifier": {verifier},
	})
	if err != nil {
		return nil, err
	}
	return t, nil
}

type smartConfig struct {
	Authorize string `json:"authorization_endpoint"`
	Token     string `json:"token_endpoint"`
}

func discover(ctx context.Context, hc *http.Client, base string) (smartConfig, error) {
	var c smartConfig
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(base, "/")+"/.well-known/smart-configuration", nil)
	req.Header.Set("Accept", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return c, fmt.Errorf("smart-configuration: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return c, fmt.Errorf("smart-configuration: %d", resp.StatusCode)
	}
	if err := json.NewDecoder(resp.Body).Decode(&c); err != nil {
		return c, fmt.Errorf("smart-configuration: %w", err)
	}
	if c.Authorize == "" || c.Token == "" {
		return c, errors.New("smart-configuration lacks authorization_endpoint or token_endpoint")
	}
	return c, nil
}

func (t *PatientTokens) grant(ctx context.Context, form url.Values) error {
	hc := t.login.HTTPClient
	if hc == nil {
		hc = http.DefaultClient
	}
	if t.login.ClientSecret == "" {
		form.Set("client_id", t.login.ClientID)
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, t.tokenEP, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	if t.login.ClientSecret != "" {
		req.SetBasicAuth(url.QueryEscape(t.login.ClientID), url.QueryEscape(t.login.ClientSecret))
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("token: %w", err)
	}
	defer resp.Body.Close()
	var body struct {
		AccessToken  string `json:"access_token"`
		RefreshToken string `json:"refresh_token"`
		ExpiresIn    int64  `json:"expires_in"`
		Patient      string `json:"patient"`
		Error        string `json:"error"`
		Description  string `json:"error_description"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&body); err != nil {
		return fmt.Errorf("token: %d: %w", resp.StatusCode, err)
	}
	if resp.StatusCode != http.StatusOK || body.AccessToken == "" {
		return fmt.Errorf("token: %d %s %s", resp.StatusCode, body.Error, body.Description)
	}
	t.access = body.AccessToken
	if body.RefreshToken != "" {
		t.refresh = body.RefreshToken
	}
	if body.ExpiresIn > 0 {
		t.expiry = time.Now().Add(time.Duration(body.ExpiresIn) * time.Second)
	}
	if body.Patient != "" {
		t.Patient = body.Patient
	}
	return nil
}

// AccessToken implements sdk.TokenSource for any connection id.
func (t *PatientTokens) AccessToken(ctx context.Context, _ string, rejected bool) (sdk.Token, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if rejected || (!t.expiry.IsZero() && time.Until(t.expiry) < 10*time.Second) {
		if t.refresh == "" {
			return sdk.Token{}, errors.New("sdktest: token rejected and no refresh token")
		}
		if err := t.grant(ctx, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {t.refresh}}); err != nil {
			return sdk.Token{}, err
		}
		t.Refreshes++
	}
	return sdk.Token{AccessToken: t.access, TokenType: "Bearer", Expiry: t.expiry}, nil
}

// StaticToken is a TokenSource that always answers the same token.
type StaticToken string

// AccessToken implements sdk.TokenSource.
func (s StaticToken) AccessToken(context.Context, string, bool) (sdk.Token, error) {
	return sdk.Token{AccessToken: string(s), TokenType: "Bearer"}, nil
}

func randString(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}
