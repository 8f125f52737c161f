package oauth

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net/url"
	"strings"

	"golang.org/x/oauth2"
)

// StateBytes is the entropy of a state value: 256 bits (SMART asks for at
// least 122; the issue for 128).
const StateBytes = 32

// AuthRequest is an authorization request ready to send the browser to.
// State and Verifier must be kept (server side) until the callback; the
// verifier never goes to the browser.
type AuthRequest struct {
	URL      string
	State    string
	Verifier string
	// Scopes requested, in the server's syntax.
	Scopes []string
}

// reserved authorization parameters extra may not override: they carry
// the request's security.
var reserved = []string{"response_type", "client_id", "redirect_uri", "scope", "state", "aud",
	"code_challenge", "code_challenge_method"}

// AuthorizeURL builds a SMART authorization request (GET, query string;
// smart-2.2-client #50, #51): response_type=code, client_id, redirect_uri,
// scope (DefaultScopes when scopes is nil, rewritten into the server's v1
// or v2 syntax), a fresh unpredictable state, aud (per the vendor's rule)
// and a PKCE S256 challenge. extra adds parameters such as launch (EHR
// launch) or login_hint; it cannot replace any of the above.
// smart-2.2-client #2, #3, #13, #32-#34, #36, #37, #39-#41, #44, #45.
func (c *Client) AuthorizeURL(scopes []string, extra url.Values) (AuthRequest, error) {
	if c.cfg.Endpoints.AuthorizeURL == "" {
		return AuthRequest{}, fmt.Errorf("%w: the server has no authorization endpoint", ErrConfig)
	}
	if c.cfg.RedirectURI == "" {
		return AuthRequest{}, fmt.Errorf("%w: no redirect URI", ErrConfig)
	}
	if scopes == nil {
		scopes = DefaultScopes(c.cfg.Profile, c.cfg.Endpoints, nil)
	}
	scopes, err := ConvertScopes(scopes, c.v2)
	if err != nil {
		return AuthRequest{}, err
	}
	if len(scopes) == 0 {
		return AuthRequest{}, fmt.Errorf("%w: no scopes to request", ErrConfig)
	}
	state, err := NewState()
	if err != nil {
		return AuthRequest{}, err
	}
	verifier := oauth2.GenerateVerifier() // 32 random bytes, 43 characters (RFC 7636 §4.1)
	conf := &oauth2.Config{
		ClientID:    c.cfg.ClientID,
		RedirectURL: c.cfg.RedirectURI,
		Scopes:      scopes,
		Endpoint:    oauth2.Endpoint{AuthURL: c.cfg.Endpoints.AuthorizeURL},
	}
	opts := []oauth2.AuthCodeOption{
		oauth2.S256ChallengeOption(verifier),
		oauth2.SetAuthURLParam("aud", c.aud),
	}
	for k, vs := range extra {
		for _, r := range reserved {
			if strings.EqualFold(k, r) {
				return AuthRequest{}, fmt.Errorf("%w: parameter %s is set by medrelay", ErrConfig, k)
			}
		}
		if len(vs) > 0 {
			opts = append(opts, oauth2.SetAuthURLParam(k, vs[0]))
		}
	}
	return AuthRequest{
		URL:      conf.AuthCodeURL(state, opts...),
		State:    state,
		Verifier: verifier,
		Scopes:   scopes,
	}, nil
}

// NewState returns a fresh state value of StateBytes random bytes,
// base64url-encoded.
func NewState() (string, error) {
	b := make([]byte, StateBytes)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("oauth: random state: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// Audience is the aud value this client sends.
func (c *Client) Audience() string { return c.aud }
