package authorize

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/medrelay/medrelay/internal/connections"
	"github.com/medrelay/medrelay/internal/errdefs"
	"github.com/medrelay/medrelay/internal/oauth"
)

// ErrBackendRefused: the source's token endpoint refused the agent's
// client_credentials request; the message carries the source's reason.
var ErrBackendRefused = errdefs.Define(errdefs.FailedPrecondition, "BACKEND_AUTHORIZATION_REFUSED", "the source refused the backend authorization")

// BackendTarget is what a backend connection to a source uses: the source's
// FHIR server, the plugin serving its vendor, the credential and the scopes
// to ask for. PrepareBackend finds it without asking the source for a token,
// so that a misconfigured source fails before any connection is recorded.
type BackendTarget struct {
	SourceID     string
	Vendor       string
	FHIRBase     string
	Plugin       string
	CredentialID string
	Scopes       []string
}

// PrepareBackend resolves a source for a backend connection. Scopes, when
// empty, are the credential's system/ scopes, else the vendor's backend
// scopes (oauth.BackendScopes).
func (a *Authorizer) PrepareBackend(ctx context.Context, sourceID string, scopes []string) (BackendTarget, error) {
	c, src, cred, v, err := a.client(ctx, sourceID, "", ForBackend)
	if err != nil {
		return BackendTarget{}, err
	}
	if c.Config().Auth.Method == oauth.AuthNone {
		return BackendTarget{}, fmt.Errorf("%w: the credential %s of %s has no key or secret; backend services need a confidential client (credentials set %s --generate-key ES384)",
			ErrNoCredential, cred.ID, sourceID, sourceID)
	}
	if len(scopes) == 0 {
		for _, s := range cred.Scopes {
			if strings.HasPrefix(s, "system/") {
				scopes = append(scopes, s)
			}
		}
	}
	if len(scopes) == 0 {
		scopes = oauth.BackendScopes(v.Profile, src.Endpoints)
	}
	return BackendTarget{
		SourceID: src.ID, Vendor: src.Vendor, FHIRBase: src.FHIRBase, Plugin: v.Plugin,
		CredentialID: cred.ID, Scopes: slices.Clone(scopes),
	}, nil
}

// Backend obtains an access token for t with the client_credentials grant
// (SMART Backend Services: private_key_jwt with a fresh jti and a short
// exp, signed by the credential's key; smart-2.2-client #229-#239). No
// refresh token is expected: custody asks again before the token expires.
// A refusal by the source wraps ErrBackendRefused with its reason.
func (a *Authorizer) Backend(ctx context.Context, t BackendTarget) (connections.Grant, error) {
	c, _, _, _, err := a.client(ctx, t.SourceID, t.CredentialID, ForBackend)
	if err != nil {
		return connections.Grant{}, err
	}
	tok, err := c.ClientCredentials(ctx, t.Scopes)
	// A token endpoint that is briefly unavailable gets two more tries
	// before the connection is declared failed.
	for attempt := 1; attempt < 3 && errors.Is(err, oauth.ErrTransient); attempt++ {
		wait := time.Duration(attempt) * 500 * time.Millisecond
		var oe *oauth.Error
		if errors.As(err, &oe) && oe.RetryAfter > wait && oe.RetryAfter <= 5*time.Second {
			wait = oe.RetryAfter
		}
		select {
		case <-ctx.Done():
			return connections.Grant{}, ctx.Err()
		case <-time.After(wait):
		}
		tok, err = c.ClientCredentials(ctx, t.Scopes)
	}
	if err != nil {
		var oe *oauth.Error
		if errors.As(err, &oe) {
			reason := oe.Code
			if oe.Description != "" {
				reason += ": " + oe.Description
			}
			return connections.Grant{}, fmt.Errorf("%w: %s", ErrBackendRefused, reason)
		}
		return connections.Grant{}, err
	}
	g := grantOf(tok)
	g.RefreshToken = ""
	if len(g.Scopes) == 0 {
		g.Scopes = slices.Clone(t.Scopes) // RFC 6749 §5.1: omitted scope means as requested
	}
	return g, nil
}
