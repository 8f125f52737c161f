package sandbox

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// Errors of client assertion checks (private_key_jwt).
var (
	ErrAssertion       = errors.New("invalid client assertion")
	ErrAssertionReplay = errors.New("client assertion jti already used")
)

// MaxAssertionLifetime is how far in the future a client assertion's exp may
// be (SMART: no more than five minutes), plus a little clock skew.
const MaxAssertionLifetime = 5*time.Minute + 10*time.Second

var assertionAlgs = []jose.SignatureAlgorithm{jose.RS384, jose.ES384}

// assertionClaims are the claims of a SMART client authentication JWT.
type assertionClaims struct {
	Iss string          `json:"iss"`
	Sub string          `json:"sub"`
	Aud json.RawMessage `json:"aud"`
	Exp *json.Number    `json:"exp"`
	Jti string          `json:"jti"`
}

func (c *assertionClaims) audiences() []string {
	var one string
	if json.Unmarshal(c.Aud, &one) == nil {
		return []string{one}
	}
	var many []string
	_ = json.Unmarshal(c.Aud, &many)
	return many
}

// parseAssertion parses (without verifying) a compact JWS client assertion.
// It is the sandbox's parser of outside JWTs and is fuzzed.
func parseAssertion(token string) (*jose.JSONWebSignature, *assertionClaims, error) {
	if len(token) > 16<<10 {
		return nil, nil, fmt.Errorf("%w: too long", ErrAssertion)
	}
	obj, err := jose.ParseSigned(token, assertionAlgs)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w (alg must be RS384 or ES384)", ErrAssertion, err)
	}
	if len(obj.Signatures) != 1 {
		return nil, nil, fmt.Errorf("%w: exactly one signature expected", ErrAssertion)
	}
	var c assertionClaims
	dec := json.NewDecoder(strings.NewReader(string(obj.UnsafePayloadWithoutVerification())))
	dec.UseNumber()
	if err := dec.Decode(&c); err != nil {
		return nil, nil, fmt.Errorf("%w: claims: %w", ErrAssertion, err)
	}
	return obj, &c, nil
}

func unverifiedIssuer(token string) (string, error) {
	_, c, err := parseAssertion(token)
	if err != nil {
		return "", err
	}
	if c.Iss == "" {
		return "", fmt.Errorf("%w: iss required", ErrAssertion)
	}
	return c.Iss, nil
}

// verifyClientAssertion checks a private_key_jwt assertion against the
// client's registered keys, the token URL, exp (at most five minutes ahead)
// and jti (never twice).
func (s *Sandbox) verifyClientAssertion(r *http.Request, t *tenant, c *client, token string) error {
	obj, claims, err := parseAssertion(token)
	if err != nil {
		return err
	}
	h := obj.Signatures[0].Header
	if h.KeyID == "" {
		return fmt.Errorf("%w: kid header required", ErrAssertion)
	}
	if typ, _ := h.ExtraHeaders[jose.HeaderType].(string); typ != "JWT" {
		return fmt.Errorf("%w: typ header must be JWT", ErrAssertion)
	}
	if jku, ok := h.ExtraHeaders["jku"].(string); ok && jku != c.cfg.JWKSURL {
		return fmt.Errorf("%w: jku does not match the registered JWKS URL", ErrAssertion)
	}
	set := c.jwks
	if set == nil {
		set, err = s.fetchJWKS(r, c.cfg.JWKSURL)
		if err != nil {
			return err
		}
	}
	keys := set.Key(h.KeyID)
	if len(keys) == 0 {
		return fmt.Errorf("%w: no registered key with kid %q", ErrAssertion, h.KeyID)
	}
	verified := false
	for _, k := range keys {
		if _, err := obj.Verify(k.Public().Key); err == nil {
			verified = true
			break
		}
	}
	if !verified {
		return fmt.Errorf("%w: signature does not verify", ErrAssertion)
	}
	id := c.cfg.ClientID
	if claims.Iss != id || claims.Sub != id {
		return fmt.Errorf("%w: iss and sub must be the client_id", ErrAssertion)
	}
	tokenURL := t.authURL("token")
	audOK := false
	for _, a := range claims.audiences() {
		if a == tokenURL {
			audOK = true
		}
	}
	if !audOK {
		return fmt.Errorf("%w: aud must be the token URL %s", ErrAssertion, tokenURL)
	}
	if claims.Exp == nil {
		return fmt.Errorf("%w: exp required", ErrAssertion)
	}
	expF, err := claims.Exp.Float64()
	if err != nil {
		return fmt.Errorf("%w: exp must be a number", ErrAssertion)
	}
	now := s.now()
	exp := time.Unix(int64(expF), 0)
	if !now.Before(exp) {
		return fmt.Errorf("%w: expired", ErrAssertion)
	}
	if exp.Sub(now) > MaxAssertionLifetime {
		return fmt.Errorf("%w: exp is more than five minutes in the future", ErrAssertion)
	}
	if claims.Jti == "" {
		return fmt.Errorf("%w: jti required", ErrAssertion)
	}
	key := t.name + "\x00" + id + "\x00" + claims.Jti
	s.mu.Lock()
	_, replay := s.jtis[key]
	if !replay {
		s.jtis[key] = exp
	}
	s.mu.Unlock()
	if replay {
		return ErrAssertionReplay
	}
	return nil
}

func (s *Sandbox) fetchJWKS(r *http.Request, u string) (*jose.JSONWebKeySet, error) {
	req, err := http.NewRequestWithContext(r.Context(), http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: jwks_url: %w", ErrAssertion, err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w: fetching the client's JWKS: %w", ErrAssertion, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%w: the client's JWKS URL answered %s", ErrAssertion, resp.Status)
	}
	var set jose.JSONWebKeySet
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&set); err != nil {
		return nil, fmt.Errorf("%w: the client's JWKS: %w", ErrAssertion, err)
	}
	return &set, nil
}
