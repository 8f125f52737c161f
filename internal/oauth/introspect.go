package oauth

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/medrelay/medrelay/internal/secrets"
)

// Revoke asks the server to revoke a token (RFC 7009), with the client's
// authentication. Revoking a refresh token ends the grant. hint is
// "refresh_token", "access_token" or "". A server without a revocation
// endpoint is not an error: there is nothing to do.
func (c *Client) Revoke(ctx context.Context, tok secrets.Value, hint string) error {
	if c.cfg.Endpoints.RevokeURL == "" || tok.IsZero() {
		return nil
	}
	form := url.Values{"token": {tok.Reveal()}}
	if hint != "" {
		form.Set("token_type_hint", hint)
	}
	status, body, h, sent, err := c.post(ctx, c.cfg.Endpoints.RevokeURL, form)
	if err != nil {
		return err
	}
	if status == 200 {
		return nil // RFC 7009 §2.2: 200 also for an unknown or invalid token
	}
	return parseErrorResponse(status, body, h, c.now(), append(sent, tok.Reveal()))
}

// Introspection is an RFC 7662 answer.
type Introspection struct {
	Active   bool
	Scopes   []string
	ClientID string
	Expiry   time.Time
	Patient  string
	FHIRUser string
}

// Introspect asks the server about a token (RFC 7662; smart-2.2-client
// #270). A confidential client authenticates as itself; a public client
// presents the token itself as its bearer authorization, which SMART
// servers accept.
func (c *Client) Introspect(ctx context.Context, tok secrets.Value) (*Introspection, error) {
	if c.cfg.Endpoints.IntrospectURL == "" {
		return nil, fmt.Errorf("%w: the server has no introspection endpoint", ErrConfig)
	}
	form := url.Values{"token": {tok.Reveal()}}
	var status int
	var body []byte
	var err error
	if c.cfg.Auth.Method == AuthNone {
		status, body, err = c.postBearer(ctx, c.cfg.Endpoints.IntrospectURL, form, tok)
	} else {
		status, body, _, _, err = c.post(ctx, c.cfg.Endpoints.IntrospectURL, form)
	}
	if err != nil {
		return nil, err
	}
	if status != 200 {
		return nil, parseErrorResponse(status, body, nil, c.now(), []string{tok.Reveal()})
	}
	var m struct {
		Active   bool        `json:"active"`
		Scope    string      `json:"scope"`
		ClientID string      `json:"client_id"`
		Exp      json.Number `json:"exp"`
		Patient  string      `json:"patient"`
		FHIRUser string      `json:"fhirUser"`
	}
	if err := json.Unmarshal(body, &m); err != nil {
		return nil, fmt.Errorf("%w: introspection response: %v", ErrBadResponse, err)
	}
	in := &Introspection{Active: m.Active, Scopes: strings.Fields(m.Scope), ClientID: m.ClientID, Patient: m.Patient, FHIRUser: m.FHIRUser}
	if n, err := m.Exp.Int64(); err == nil && n > 0 {
		in.Expiry = time.Unix(n, 0)
	}
	return in, nil
}

func (c *Client) postBearer(ctx context.Context, endpoint string, form url.Values, tok secrets.Value) (int, []byte, error) {
	// A public client has no credential; the request still names it.
	form.Set("client_id", c.cfg.ClientID)
	req, err := formRequest(ctx, endpoint, form)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+tok.Reveal())
	status, body, _, err := c.do(req, endpoint, []string{tok.Reveal()})
	return status, body, err
}
