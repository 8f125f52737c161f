// Package authorize runs OAuth against a source on behalf of the agent: it
// puts together, for one source, the endpoints the directory discovered, the
// workspace's own credential, and the vendor plugin's auth profile, and uses
// package oauth for the protocol. It keeps the pending authorizations (state,
// PKCE verifier) between the authorize redirect and the callback.
//
// Sessions use it to begin and complete patient authorizations; connections
// use it (as their TokenEndpoint) to refresh.
package authorize

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"time"

	"github.com/medrelay/medrelay/internal/connections"
	"github.com/medrelay/medrelay/internal/errdefs"
	"github.com/medrelay/medrelay/internal/oauth"
	"github.com/medrelay/medrelay/internal/secrets"
	"github.com/medrelay/medrelay/internal/sessions"
	"github.com/medrelay/medrelay/internal/store"
)

// Source is what the authorizer needs to know of a directory entry, with
// its endpoints discovered.
type Source struct {
	ID        string
	Vendor    string
	FHIRBase  string
	Endpoints oauth.Endpoints
	Settings  map[string]string
}

// Audience is who an authorization is for: a patient (patient-facing
// endpoints first) or a backend service (provider-facing endpoints first).
type Audience int

// Audiences.
const (
	ForPatient Audience = iota
	ForBackend
)

// Sources resolves a source id to its discovered endpoints (package
// directory, through the agent's wiring), choosing the endpoint that suits
// the audience.
type Sources interface {
	Resolve(ctx context.Context, sourceID string, aud Audience) (Source, error)
}

// Credential is the workspace's registration with a source or vendor.
type Credential struct {
	ID       string
	ClientID string
	Auth     oauth.ClientAuth
	Scopes   []string
}

// Credentials finds the credential for a source (source-specific first,
// then the vendor's) or by id.
type Credentials interface {
	Resolve(ctx context.Context, sourceID, vendor string) (Credential, error)
	ByID(ctx context.Context, id string) (Credential, error)
}

// Vendor is a vendor plugin's view of authorization.
type Vendor struct {
	Plugin        string
	Profile       oauth.Profile
	ResourceTypes []string
}

// Vendors gives the profile of a vendor (from its plugin's Describe). An
// unknown vendor gets the generic SMART profile.
type Vendors interface {
	Vendor(ctx context.Context, vendor string) (Vendor, error)
}

// Errors.
var (
	ErrNoCredential = errdefs.Define(errdefs.FailedPrecondition, "CREDENTIAL_MISSING", "no credential is set for this source or its vendor")
)

// pending is an authorization between redirect and callback. It holds the
// PKCE verifier, so it lives only in the (encrypted) store, never in a URL.
type pending struct {
	ConnectionID string        `json:"connection_id"`
	SourceID     string        `json:"source_id"`
	CredentialID string        `json:"credential_id"`
	Verifier     secrets.Value `json:"verifier"`
	Scopes       []string      `json:"scopes"`
	ExpiresAt    time.Time     `json:"expires_at"`
}

// Authorizer begins and completes authorizations and refreshes grants.
type Authorizer struct {
	db          *store.DB
	pending     *store.Table[pending]
	sources     Sources
	creds       Credentials
	vendors     Vendors
	redirectURI string
	hc          *http.Client
	// idKeys: issuers' ID-token keys, shared by the OAuth clients built
	// per call (each would otherwise fetch them again on every exchange
	// and refresh).
	idKeys *oauth.KeyCache
	log    *slog.Logger
	ttl    time.Duration
	now    func() time.Time
}

// Options of New.
type Options struct {
	// RedirectURI is {public_url}/oauth/callback.
	RedirectURI string
	// HTTPClient for token requests (nil: oauth's default).
	HTTPClient *http.Client
	// StateTTL bounds how long a patient may take at the portal (default
	// 15 minutes).
	StateTTL time.Duration
	Now      func() time.Time
}

// New returns an authorizer.
func New(db *store.DB, src Sources, creds Credentials, vendors Vendors, logger *slog.Logger, o Options) *Authorizer {
	if o.StateTTL <= 0 {
		o.StateTTL = 15 * time.Minute
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Authorizer{
		db: db, pending: store.NewTable[pending](db, store.PendingAuthorizations),
		sources: src, creds: creds, vendors: vendors, redirectURI: o.RedirectURI, hc: o.HTTPClient,
		idKeys: oauth.NewKeyCache(o.HTTPClient, o.Now),
		log:    logger.With("component", "authorize"), ttl: o.StateTTL, now: o.Now,
	}
}

// client builds the OAuth client for a source with a credential.
func (a *Authorizer) client(ctx context.Context, sourceID, credentialID string, aud Audience) (*oauth.Client, Source, Credential, Vendor, error) {
	src, err := a.sources.Resolve(ctx, sourceID, aud)
	if err != nil {
		return nil, src, Credential{}, Vendor{}, err
	}
	v, err := a.vendors.Vendor(ctx, src.Vendor)
	if err != nil {
		return nil, src, Credential{}, v, err
	}
	var cred Credential
	if credentialID != "" {
		cred, err = a.creds.ByID(ctx, credentialID)
	} else {
		cred, err = a.creds.Resolve(ctx, src.ID, src.Vendor)
	}
	if err != nil {
		return nil, src, cred, v, err
	}
	c, err := oauth.New(oauth.ClientConfig{
		Endpoints: src.Endpoints, FHIRBase: src.FHIRBase, ClientID: cred.ClientID, Auth: cred.Auth,
		RedirectURI: a.redirectURI, Profile: v.Profile, HTTPClient: a.hc, Now: a.now, IDTokenKeys: a.idKeys,
	})
	return c, src, cred, v, err
}

// Begin starts a patient authorization for r.Connection at r.Source.
func (a *Authorizer) Begin(ctx context.Context, r sessions.BeginRequest) (sessions.Begun, error) {
	c, src, cred, v, err := a.client(ctx, r.Source.ID, "", ForPatient)
	if err != nil {
		return sessions.Begun{}, err
	}
	var scopes []string
	if len(cred.Scopes) > 0 {
		scopes = cred.Scopes
	} else {
		scopes = oauth.DefaultScopes(v.Profile, src.Endpoints, v.ResourceTypes)
	}
	ar, err := c.AuthorizeURL(scopes, nil)
	if err != nil {
		return sessions.Begun{}, err
	}
	p := pending{
		ConnectionID: r.Connection.ID, SourceID: src.ID, CredentialID: cred.ID,
		Verifier: secrets.Value(ar.Verifier), Scopes: ar.Scopes, ExpiresAt: a.now().Add(a.ttl),
	}
	if err := a.pending.Put(ctx, ar.State, p, store.WithTTL(a.ttl), store.Synced()); err != nil {
		return sessions.Begun{}, err
	}
	return sessions.Begun{URL: ar.URL, Plugin: v.Plugin, CredentialID: cred.ID, Scopes: ar.Scopes}, nil
}

// take removes and returns the pending authorization of state: a state is
// good for one callback only, whatever happens next.
func (a *Authorizer) take(ctx context.Context, state string) (pending, error) {
	var p pending
	err := a.db.Update(ctx, func(tx *store.Txn) error {
		var err error
		p, err = a.pending.GetTx(tx, state)
		if err != nil {
			return err
		}
		return a.pending.DeleteTx(tx, state)
	}, store.Synced())
	return p, err
}

// Complete handles the callback's parameters (smart-2.2-client #4: the
// state is validated on every request to the redirect URL).
func (a *Authorizer) Complete(ctx context.Context, params url.Values) (sessions.Callback, error) {
	cb, perr := oauth.ParseCallback(params)
	var oerr *oauth.Error
	if !validState(cb.State) {
		return sessions.Callback{}, fmt.Errorf("%w: missing or malformed state", sessions.ErrBadCallback)
	}
	p, err := a.take(ctx, cb.State)
	if errors.Is(err, store.ErrNotFound) {
		return sessions.Callback{}, fmt.Errorf("%w: unknown, used or expired state", sessions.ErrBadCallback)
	}
	if err != nil {
		return sessions.Callback{}, err
	}
	if !a.now().Before(p.ExpiresAt) {
		return sessions.Callback{}, fmt.Errorf("%w: expired state", sessions.ErrBadCallback)
	}
	fail := func(code, desc string) (sessions.Callback, error) {
		return sessions.Callback{ConnectionID: p.ConnectionID, Error: clip(code, 64), Description: clip(desc, 512)}, nil
	}
	if perr != nil && !errors.As(perr, &oerr) {
		// The state was ours, the rest of the response was not usable.
		return fail("invalid_request", perr.Error())
	}
	c, _, _, _, err := a.client(ctx, p.SourceID, p.CredentialID, ForPatient)
	if err != nil {
		return fail("server_error", "the source is not configured: "+err.Error())
	}
	// RFC 9207: the response must come from the server we sent the patient
	// to; otherwise the code may be meant for another source (mix-up).
	if err := c.CheckIssuer(cb.Iss); err != nil {
		a.log.Warn("callback from another issuer refused", "connection", p.ConnectionID, "err", err)
		return fail("invalid_request", err.Error())
	}
	if cb.Error != "" {
		return fail(cb.Error, cb.ErrorDescription)
	}
	tok, err := c.Exchange(context.WithoutCancel(ctx), cb.Code.Reveal(), p.Verifier.Reveal())
	if err != nil {
		code, desc := "token_exchange_failed", err.Error()
		if errors.As(err, &oerr) {
			code, desc = oerr.Code, oerr.Description
		}
		return fail(code, desc)
	}
	if tok.Patient == "" {
		return fail("invalid_grant", "the source granted access without naming the patient (launch/patient was not honoured)")
	}
	g := grantOf(tok)
	if len(g.Scopes) == 0 {
		g.Scopes = p.Scopes // RFC 6749 §5.1: omitted scope means as requested
	}
	return sessions.Callback{ConnectionID: p.ConnectionID, Grant: &g}, nil
}

// validState: a state we could have issued (base64url, bounded length).
func validState(s string) bool {
	if len(s) == 0 || len(s) > 512 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

func grantOf(t *oauth.Token) connections.Grant {
	return connections.Grant{
		AccessToken: t.AccessToken, RefreshToken: t.RefreshToken, IDToken: t.IDToken, TokenType: t.TokenType,
		Expiry: t.Expiry, Scopes: t.Scopes, PatientID: t.Patient, FHIRUser: t.FHIRUser, GrantExpiry: t.GrantExpiry,
	}
}

// audienceOf: a backend connection uses the source's provider-facing
// endpoints; every other pattern, the patient-facing ones.
func audienceOf(conn connections.Connection) Audience {
	if conn.Pattern == connections.Backend {
		return ForBackend
	}
	return ForPatient
}

// RevokeGrant implements connections.GrantRevoker: revoking the refresh
// token ends a patient's grant (RFC 7009 §2.1); a backend connection (or
// one without a refresh token) has its access token revoked. A source
// without a revocation endpoint: nothing to do.
func (a *Authorizer) RevokeGrant(ctx context.Context, conn connections.Connection, refresh, access secrets.Value) error {
	c, _, _, _, err := a.client(ctx, conn.SourceID, conn.CredentialID, audienceOf(conn))
	if err != nil {
		return err
	}
	if !refresh.IsZero() {
		return c.Revoke(ctx, refresh, "refresh_token")
	}
	return c.Revoke(ctx, access, "access_token")
}

// Refresh implements connections.TokenEndpoint: a refresh_token grant for
// patient connections, client_credentials for backend ones.
func (a *Authorizer) Refresh(ctx context.Context, conn connections.Connection, refresh secrets.Value) (connections.Grant, error) {
	c, src, _, v, err := a.client(ctx, conn.SourceID, conn.CredentialID, audienceOf(conn))
	if err != nil {
		return connections.Grant{}, err
	}
	var tok *oauth.Token
	if conn.Pattern == connections.Backend {
		scopes := conn.Scopes
		if len(scopes) == 0 {
			scopes = oauth.BackendScopes(v.Profile, src.Endpoints)
		}
		tok, err = c.ClientCredentials(ctx, scopes)
	} else {
		tok, err = c.Refresh(ctx, refresh, nil)
	}
	if err != nil {
		if errors.Is(err, oauth.ErrInvalidGrant) {
			return connections.Grant{}, fmt.Errorf("%w: %v", connections.ErrGrantInvalid, err)
		}
		var oe *oauth.Error
		if errors.Is(err, oauth.ErrTransient) && errors.As(err, &oe) && oe.RetryAfter > 0 {
			return connections.Grant{}, &connections.RetryAfterError{Err: err, After: oe.RetryAfter}
		}
		return connections.Grant{}, err
	}
	g := grantOf(tok)
	if !tok.RefreshRotated {
		g.RefreshToken = "" // custody keeps the one it has
	}
	return g, nil
}
