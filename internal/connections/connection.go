// Package connections owns connections: the authorized links between an app
// and a source, their lifecycle (pending → active → refresh_failed/expired/
// revoked, or failed), and the custody of their tokens.
//
// Custody rules (docs/design.md §4): one owner per connection; refresh is
// single-flight; the store is re-read under the connection's lock before a
// refresh; a rotated refresh token is written (fsynced) before any caller
// sees the new access token; after invalid_grant the store is re-read and
// compared before the connection becomes refresh_failed; refresh starts early
// (80% of the token's life by default) and a keep-alive touches long-lived
// connections daily; the refresher never deletes a connection.
package connections

import (
	"fmt"
	"time"

	"github.com/medrelay/medrelay/internal/errdefs"
	"github.com/medrelay/medrelay/internal/secrets"
)

// State of a connection.
type State string

// States. Apps match on these strings; never rename one.
const (
	Pending       State = "pending"        // authorization under way
	Active        State = "active"         // usable
	Failed        State = "failed"         // authorization did not complete
	RefreshFailed State = "refresh_failed" // worked before; refreshing stopped working
	Expired       State = "expired"        // the grant's end has passed
	Revoked       State = "revoked"        // removed by the app or the source
)

// Terminal states never change again.
func (s State) Terminal() bool { return s == Failed || s == Expired || s == Revoked }

// Pattern is who authorized the connection.
type Pattern string

// Patterns.
const (
	PatientAccess Pattern = "patient"
	Backend       Pattern = "backend"
	Clinician     Pattern = "clinician"
	Network       Pattern = "network"
)

// Connection is one authorized link to a source. It holds no secret: tokens
// live in their own table, read only by custody code.
type Connection struct {
	ID       string  `json:"id"`
	AppID    string  `json:"app_id"`
	Pattern  Pattern `json:"pattern"`
	SourceID string  `json:"source_id"`
	Vendor   string  `json:"vendor,omitempty"`
	// Plugin that serves data calls for this connection.
	Plugin   string `json:"plugin,omitempty"`
	FHIRBase string `json:"fhir_base"`
	// PatientRef is the app's own reference for the patient.
	PatientRef string `json:"patient_ref,omitempty"`
	SessionID  string `json:"session_id,omitempty"`
	// PatientID is the patient's id at the source (from the token response).
	PatientID    string            `json:"patient_id,omitempty"`
	FHIRUser     string            `json:"fhir_user,omitempty"`
	Scopes       []string          `json:"scopes,omitempty"`
	CredentialID string            `json:"credential_id,omitempty"`
	Settings     map[string]string `json:"settings,omitempty"`

	State          State     `json:"state"`
	Reason         string    `json:"reason,omitempty"`
	StateChangedAt time.Time `json:"state_changed_at"`
	CreatedAt      time.Time `json:"created_at"`

	// AccessExpiry is when the current access token expires.
	AccessExpiry time.Time `json:"access_expiry,omitempty"`
	// GrantExpiry is when the whole grant ends, when the source says
	// (access_grant_expiration, a known refresh-token lifetime).
	GrantExpiry     time.Time `json:"grant_expiry,omitempty"`
	HasRefreshToken bool      `json:"has_refresh_token"`
	LastRefreshAt   time.Time `json:"last_refresh_at,omitempty"`
	NextRefreshAt   time.Time `json:"next_refresh_at,omitempty"`
	// RefreshFailures counts transient failures since the last success.
	RefreshFailures int    `json:"refresh_failures,omitempty"`
	LastError       string `json:"last_error,omitempty"`
}

// Transition is one state change, kept for the connection's history.
type Transition struct {
	Time   time.Time `json:"time"`
	From   State     `json:"from"`
	To     State     `json:"to"`
	Reason string    `json:"reason,omitempty"`
}

// Grant is what an authorization server gave: the tokens and what they say.
type Grant struct {
	AccessToken  secrets.Value `json:"access_token"`
	RefreshToken secrets.Value `json:"refresh_token,omitempty"`
	IDToken      secrets.Value `json:"id_token,omitempty"`
	TokenType    string        `json:"token_type,omitempty"`
	Expiry       time.Time     `json:"expiry"`
	Scopes       []string      `json:"scopes,omitempty"`
	PatientID    string        `json:"patient_id,omitempty"`
	FHIRUser     string        `json:"fhir_user,omitempty"`
	// GrantExpiry: the end of the grant, when the source reports it.
	GrantExpiry time.Time `json:"grant_expiry,omitempty"`
}

// tokens is the stored custody record of a connection. Version increases
// with every write so a re-read can tell whether someone else refreshed.
type tokens struct {
	Access    secrets.Value `json:"access"`
	Refresh   secrets.Value `json:"refresh,omitempty"`
	IDToken   secrets.Value `json:"id_token,omitempty"`
	TokenType string        `json:"token_type,omitempty"`
	Expiry    time.Time     `json:"expiry"`
	IssuedAt  time.Time     `json:"issued_at"`
	Version   uint64        `json:"version"`
}

// Errors.
var (
	ErrNotFound     = errdefs.Define(errdefs.NotFound, "CONNECTION_NOT_FOUND", "no such connection")
	ErrNotUsable    = errdefs.Define(errdefs.FailedPrecondition, "CONNECTION_NOT_ACTIVE", "the connection is not active")
	ErrBadState     = errdefs.Define(errdefs.FailedPrecondition, "CONNECTION_STATE", "the connection is not in a state that allows this")
	ErrUnavailable  = errdefs.Define(errdefs.Unavailable, "SOURCE_UNAVAILABLE", "the source's token endpoint is unavailable; try again later")
	ErrRefreshLater = errdefs.Define(errdefs.Unavailable, "REFRESH_BACKING_OFF", "refresh failed recently; backing off")
)

// RetryAfterError is what a TokenEndpoint returns for a transient failure
// when the source said when to ask again (HTTP Retry-After with a 429 or
// 503): custody holds refreshes back at least that long, within its caps
// (RefreshPolicy.OnDemandMaxBackoff for callers, MaxBackoff for the
// background refresher).
type RetryAfterError struct {
	Err   error
	After time.Duration
}

func (e *RetryAfterError) Error() string {
	return fmt.Sprintf("%v (the source asks to retry after %s)", e.Err, e.After)
}

func (e *RetryAfterError) Unwrap() error { return e.Err }

// ErrGrantInvalid is what a TokenEndpoint returns (wrapped) when the source
// says the grant is gone (OAuth invalid_grant).
var ErrGrantInvalid = errdefs.Define(errdefs.FailedPrecondition, "GRANT_INVALID", "the source no longer accepts this grant")
