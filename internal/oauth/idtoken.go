package oauth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// idTokenAlgs are the signature algorithms accepted on ID tokens: asymmetric
// only (never "none", never an HMAC keyed with something public).
var idTokenAlgs = []jose.SignatureAlgorithm{jose.RS256, jose.RS384, jose.RS512, jose.ES256, jose.ES384, jose.ES512,
	jose.PS256, jose.PS384, jose.PS512}

// IDTokenClaims are the verified claims medrelay uses.
type IDTokenClaims struct {
	Issuer   string
	Subject  string
	Audience []string
	Expiry   time.Time
	IssuedAt time.Time
	// FHIRUser is the fhirUser claim: the URL of the FHIR resource for the
	// user (smart-2.2-client #202).
	FHIRUser string
}

// clockSkew tolerated on exp and iat.
const clockSkew = 2 * time.Minute

// maxJWT bounds a JWT we parse.
const maxJWT = 64 << 10

// ParseJWKS parses a JWK Set and keeps only usable public signing keys. It
// is the parser of outside JWKS documents (fuzzed).
func ParseJWKS(b []byte) (*jose.JSONWebKeySet, error) {
	if len(b) > maxBody {
		return nil, fmt.Errorf("%w: JWKS larger than %d bytes", ErrBadResponse, maxBody)
	}
	var raw struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("%w: JWKS is not a JSON object with keys: %v", ErrBadResponse, err)
	}
	set := &jose.JSONWebKeySet{}
	for _, r := range raw.Keys {
		var k jose.JSONWebKey
		// A key we cannot parse (another kty, an encryption key) is
		// skipped, not fatal: the set may serve other purposes too.
		if err := k.UnmarshalJSON(r); err != nil || !k.Valid() {
			continue
		}
		if k.Use != "" && k.Use != "sig" {
			continue
		}
		if !k.IsPublic() {
			k = k.Public()
			if !k.Valid() {
				continue
			}
		}
		set.Keys = append(set.Keys, k)
	}
	if len(set.Keys) == 0 {
		return nil, fmt.Errorf("%w: JWKS has no usable signing key", ErrBadResponse)
	}
	return set, nil
}

// VerifyIDToken checks an ID token's signature against keys and its claims
// per OpenID Connect Core §3.1.3.7: iss is issuer (when issuer is not
// empty), aud contains clientID (and azp is clientID when there are several
// audiences), exp has not passed, iat is not in the future. It is the parser
// of outside ID tokens (fuzzed). smart-2.2-client #201.
func VerifyIDToken(raw string, keys *jose.JSONWebKeySet, issuer, clientID string, now time.Time) (*IDTokenClaims, error) {
	if len(raw) > maxJWT {
		return nil, fmt.Errorf("%w: too long", ErrIDToken)
	}
	tok, err := jwt.ParseSigned(raw, idTokenAlgs)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrIDToken, err)
	}
	if len(tok.Headers) != 1 {
		return nil, fmt.Errorf("%w: exactly one signature expected", ErrIDToken)
	}
	if keys == nil {
		return nil, fmt.Errorf("%w: no keys", ErrIDToken)
	}
	candidates := keys.Keys
	if kid := tok.Headers[0].KeyID; kid != "" {
		candidates = keys.Key(kid)
		if len(candidates) == 0 {
			return nil, fmt.Errorf("%w: %w %q", ErrIDToken, errUnknownKID, clean(kid, 64))
		}
	}
	var std jwt.Claims
	var extra struct {
		FHIRUser any    `json:"fhirUser"`
		AZP      string `json:"azp"`
	}
	verified := false
	for _, k := range candidates {
		if err := tok.Claims(k.Key, &std, &extra); err == nil {
			verified = true
			break
		}
	}
	if !verified {
		return nil, fmt.Errorf("%w: signature does not verify", ErrIDToken)
	}
	if issuer != "" && std.Issuer != issuer {
		return nil, fmt.Errorf("%w: issuer %q is not %q", ErrIDToken, clean(std.Issuer, 200), issuer)
	}
	if std.Expiry == nil {
		return nil, fmt.Errorf("%w: no exp", ErrIDToken)
	}
	if std.IssuedAt == nil {
		return nil, fmt.Errorf("%w: no iat", ErrIDToken)
	}
	if err := std.ValidateWithLeeway(jwt.Expected{AnyAudience: jwt.Audience{clientID}, Time: now}, clockSkew); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrIDToken, err)
	}
	if len(std.Audience) > 1 && extra.AZP != clientID {
		return nil, fmt.Errorf("%w: several audiences and azp is not the client", ErrIDToken)
	}
	c := &IDTokenClaims{Issuer: std.Issuer, Subject: std.Subject, Audience: std.Audience,
		Expiry: std.Expiry.Time(), IssuedAt: std.IssuedAt.Time()}
	if s, ok := extra.FHIRUser.(string); ok {
		c.FHIRUser = s
	} else if extra.FHIRUser != nil {
		return nil, fmt.Errorf("%w: fhirUser is not a string", ErrIDToken)
	}
	return c, nil
}

var errUnknownKID = errors.New("no key with kid")

// VerifyIDToken verifies an ID token issued to this client, following
// SMART's steps (smart-2.2-client #218): read the token's issuer, GET
// {issuer}/.well-known/openid-configuration, fetch its jwks_uri, verify the
// signature, then use fhirUser. The issuer must be the server's (the
// discovered issuer, when known). Keys are cached; an unknown kid refetches
// them once.
func (c *Client) VerifyIDToken(ctx context.Context, raw string) (*IDTokenClaims, error) {
	if len(raw) > maxJWT {
		return nil, fmt.Errorf("%w: too long", ErrIDToken)
	}
	tok, err := jwt.ParseSigned(raw, idTokenAlgs)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrIDToken, err)
	}
	var unverified jwt.Claims
	if err := tok.UnsafeClaimsWithoutVerification(&unverified); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrIDToken, err)
	}
	iss := unverified.Issuer
	if want := c.cfg.Endpoints.Issuer; want != "" && iss != want {
		return nil, fmt.Errorf("%w: issuer %q is not the server's %q", ErrIDToken, clean(iss, 200), want)
	}
	if err := CheckSecureURL(iss); err != nil {
		return nil, fmt.Errorf("%w: issuer: %v", ErrIDToken, err)
	}
	keys, err := c.keys.get(ctx, iss, false)
	if err != nil {
		return nil, err
	}
	claims, err := VerifyIDToken(raw, keys, iss, c.cfg.ClientID, c.now())
	if errors.Is(err, errUnknownKID) {
		// The server may have rotated its keys since we cached them.
		if keys, err = c.keys.get(ctx, iss, true); err != nil {
			return nil, err
		}
		claims, err = VerifyIDToken(raw, keys, iss, c.cfg.ClientID, c.now())
	}
	return claims, err
}

type cachedKeys struct {
	keys    *jose.JSONWebKeySet
	fetched time.Time
}

// keyTTL is how long an issuer's keys are trusted without refetching;
// refetchMin is the least time between two fetches for the same issuer.
const (
	keyTTL     = time.Hour
	refetchMin = 30 * time.Second
)

func (kc *KeyCache) get(ctx context.Context, issuer string, force bool) (*jose.JSONWebKeySet, error) {
	kc.mu.Lock()
	ck := kc.m[issuer]
	kc.mu.Unlock()
	now := kc.now()
	if ck != nil && (now.Sub(ck.fetched) < keyTTL && !force || now.Sub(ck.fetched) < refetchMin) {
		return ck.keys, nil
	}
	keys, err := kc.fetch(ctx, issuer)
	if err != nil {
		return nil, err
	}
	kc.mu.Lock()
	kc.m[issuer] = &cachedKeys{keys: keys, fetched: now}
	kc.mu.Unlock()
	return keys, nil
}

func (kc *KeyCache) fetch(ctx context.Context, issuer string) (*jose.JSONWebKeySet, error) {
	var oidc struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	cfgURL := strings.TrimRight(issuer, "/") + "/.well-known/openid-configuration"
	b, err := getJSON(ctx, kc.hc, cfgURL)
	if err != nil {
		return nil, fmt.Errorf("%w: openid-configuration: %w", ErrIDToken, err)
	}
	if err := json.Unmarshal(b, &oidc); err != nil {
		return nil, fmt.Errorf("%w: openid-configuration is not JSON: %v", ErrIDToken, err)
	}
	// OpenID Connect Discovery §4.3: the document's issuer is the issuer.
	if oidc.Issuer != issuer {
		return nil, fmt.Errorf("%w: openid-configuration names issuer %q, not %q", ErrIDToken, clean(oidc.Issuer, 200), issuer)
	}
	if err := CheckSecureURL(oidc.JWKSURI); err != nil {
		return nil, fmt.Errorf("%w: jwks_uri: %v", ErrIDToken, err)
	}
	kb, err := getJSON(ctx, kc.hc, oidc.JWKSURI)
	if err != nil {
		return nil, fmt.Errorf("%w: jwks: %w", ErrIDToken, err)
	}
	keys, err := ParseJWKS(kb)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrIDToken, err)
	}
	return keys, nil
}

// getJSON GETs a JSON document (bounded) with an Accept header.
func getJSON(ctx context.Context, hc *http.Client, u string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		if errors.Is(err, context.Canceled) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %s: %v", ErrTransient, hostOf(u), err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrTransient, hostOf(u), err)
	}
	switch {
	case len(b) > maxBody:
		return nil, fmt.Errorf("%w: %s: larger than %d bytes", ErrBadResponse, hostOf(u), maxBody)
	case resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests:
		return nil, fmt.Errorf("%w: %s answered HTTP %d", ErrTransient, hostOf(u), resp.StatusCode)
	case resp.StatusCode != http.StatusOK:
		return nil, fmt.Errorf("%w: %s answered HTTP %d", ErrBadResponse, hostOf(u), resp.StatusCode)
	}
	return b, nil
}
