// Package sessions owns patient sessions: one patient-access attempt started
// by an app, the pages the patient sees (the hosted picker at
// {public_url}/connect/{session}), the OAuth callback at
// {public_url}/oauth/callback, and the return to the app's return_url with
// the outcome.
//
// The protocol steps (authorize URL, code exchange) belong to an Authorizer;
// connection state to package connections. This package sequences them and
// speaks to the patient.
package sessions

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"github.com/medrelay/medrelay/internal/connections"
	"github.com/medrelay/medrelay/internal/errdefs"
	"github.com/medrelay/medrelay/internal/events"
	"github.com/medrelay/medrelay/internal/store"
)

// State of a session.
type State string

// Session states.
const (
	Open     State = "open"
	Complete State = "complete"
	Expired  State = "expired"
)

// Session is one patient-access attempt.
type Session struct {
	ID         string            `json:"id"`
	AppID      string            `json:"app_id"`
	PatientRef string            `json:"patient_ref"`
	ReturnURL  string            `json:"return_url"`
	SourceID   string            `json:"source_id,omitempty"` // direct mode
	Recommend  []string          `json:"recommended_source_ids,omitempty"`
	Metadata   map[string]string `json:"metadata,omitempty"`
	State      State             `json:"state"`
	CreatedAt  time.Time         `json:"created_at"`
	ExpiresAt  time.Time         `json:"expires_at"`
	// Outcome, once complete.
	ConnectionID     string    `json:"connection_id,omitempty"`
	Success          bool      `json:"success"`
	Error            string    `json:"error,omitempty"`
	ErrorDescription string    `json:"error_description,omitempty"`
	CompletedAt      time.Time `json:"completed_at,omitempty"`
}

// EffectiveState is the session's state now (an open session past its
// expiry is expired even before anyone looks).
func (s Session) EffectiveState(now time.Time) State {
	if s.State == Open && !now.Before(s.ExpiresAt) {
		return Expired
	}
	return s.State
}

// Errors.
var (
	ErrNotFound   = errdefs.Define(errdefs.NotFound, "SESSION_NOT_FOUND", "no such session")
	ErrInvalid    = errdefs.Define(errdefs.InvalidArgument, "SESSION_INVALID", "invalid session request")
	ErrNotOpen    = errdefs.Define(errdefs.FailedPrecondition, "SESSION_NOT_OPEN", "the session is complete or expired")
	ErrUnknownSrc = errdefs.Define(errdefs.NotFound, "SOURCE_NOT_FOUND", "no such source")
)

// Source is what the picker shows of a directory entry and what a
// connection needs to start.
type Source struct {
	ID, Name, PortalName, City, State, Vendor, Logo string
	FHIRBase                                        string
	Active                                          bool
}

// Directory is the part of the directory sessions use.
type Directory interface {
	Source(ctx context.Context, id string) (Source, error)
	Search(ctx context.Context, query string, limit int) ([]Source, error)
}

// BeginRequest asks an authorizer for an authorization URL.
type BeginRequest struct {
	Connection connections.Connection
	Source     Source
}

// Begun is the authorizer's answer: where to send the patient, and what the
// connection record should note (plugin, credential).
type Begun struct {
	URL          string
	Plugin       string
	CredentialID string
	Scopes       []string
}

// Callback is the outcome of an authorization the authorizer recognised.
type Callback struct {
	ConnectionID string
	// Grant when the authorization succeeded.
	Grant *connections.Grant
	// Error/Description when the server or the patient said no, or the
	// exchange failed.
	Error, Description string
}

// Authorizer runs the OAuth steps for a source.
type Authorizer interface {
	Begin(ctx context.Context, r BeginRequest) (Begun, error)
	// Complete validates the callback parameters (state, iss, error) and
	// exchanges the code. It returns ErrBadCallback (wrapped) when the
	// callback cannot be tied to an authorization it started.
	Complete(ctx context.Context, params url.Values) (Callback, error)
}

// ErrBadCallback: missing, unknown, reused or expired state, or a code
// presented for another source.
var ErrBadCallback = errdefs.Define(errdefs.InvalidArgument, "CALLBACK_INVALID", "this sign-in link is not valid")

// Manager owns sessions.
type Manager struct {
	db        *store.DB
	table     *store.Table[Session]
	conns     *connections.Manager
	events    *events.Log
	dir       Directory
	auth      Authorizer
	log       *slog.Logger
	publicURL string
	ttl       time.Duration
	now       func() time.Time
}

// Options of New.
type Options struct {
	PublicURL string
	// TTL of a session (default 30 minutes: long enough to find a portal
	// password, short enough that a forgotten link dies).
	TTL time.Duration
	Now func() time.Time
}

// New returns the session manager.
func New(db *store.DB, conns *connections.Manager, ev *events.Log, dir Directory, auth Authorizer, logger *slog.Logger, o Options) *Manager {
	if o.TTL <= 0 {
		o.TTL = 30 * time.Minute
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Manager{
		db: db, table: store.NewTable[Session](db, store.Sessions), conns: conns, events: ev,
		dir: dir, auth: auth, log: logger.With("component", "sessions"),
		publicURL: strings.TrimRight(o.PublicURL, "/"), ttl: o.TTL, now: o.Now,
	}
}

// CreateRequest is SessionService.Create.
type CreateRequest struct {
	AppID      string
	PatientRef string
	ReturnURL  string
	SourceID   string
	Recommend  []string
	Metadata   map[string]string
}

func newID() string {
	b := make([]byte, 18) // 144 bits: the session id is a capability in a URL
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return "ses_" + base64.RawURLEncoding.EncodeToString(b)
}

// Create starts a session and returns it with the URL to send the patient to.
func (m *Manager) Create(ctx context.Context, r CreateRequest) (Session, string, error) {
	if strings.TrimSpace(r.PatientRef) == "" || len(r.PatientRef) > 256 {
		return Session{}, "", fmt.Errorf("%w: patient_ref is required (at most 256 characters)", ErrInvalid)
	}
	if err := validReturnURL(r.ReturnURL); err != nil {
		return Session{}, "", err
	}
	if r.SourceID != "" && len(r.Recommend) > 0 {
		return Session{}, "", fmt.Errorf("%w: give source_id (direct) or recommended_source_ids (picker), not both", ErrInvalid)
	}
	if len(r.Metadata) > 32 {
		return Session{}, "", fmt.Errorf("%w: at most 32 metadata entries", ErrInvalid)
	}
	for _, id := range append([]string{r.SourceID}, r.Recommend...) {
		if id == "" {
			continue
		}
		if _, err := m.dir.Source(ctx, id); err != nil {
			return Session{}, "", fmt.Errorf("%w: %s: %v", ErrUnknownSrc, id, err)
		}
	}
	now := m.now().UTC()
	s := Session{
		ID: newID(), AppID: r.AppID, PatientRef: r.PatientRef, ReturnURL: r.ReturnURL,
		SourceID: r.SourceID, Recommend: r.Recommend, Metadata: r.Metadata,
		State: Open, CreatedAt: now, ExpiresAt: now.Add(m.ttl),
	}
	// Kept a week after expiry so the app can still read the outcome.
	if err := m.table.Put(ctx, s.ID, s, store.WithTTL(m.ttl+7*24*time.Hour), store.Synced()); err != nil {
		return Session{}, "", err
	}
	return s, m.URL(s.ID), nil
}

// URL is where the patient goes for session id.
func (m *Manager) URL(id string) string { return m.publicURL + "/connect/" + id }

// validReturnURL: the app gives it over the authenticated socket, but it is
// still checked, so the agent never redirects a patient to a javascript: or
// relative URL.
func validReturnURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") || u.User != nil {
		return fmt.Errorf("%w: return_url %q must be an absolute http(s) URL without credentials", ErrInvalid, raw)
	}
	return nil
}

// Get returns a session of appID ("" for administrators).
func (m *Manager) Get(ctx context.Context, appID, id string) (Session, error) {
	s, err := m.table.Get(ctx, id)
	if errors.Is(err, store.ErrNotFound) || (err == nil && appID != "" && s.AppID != appID) {
		return Session{}, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if err != nil {
		return Session{}, err
	}
	s.State = s.EffectiveState(m.now())
	return s, nil
}

// begin starts the authorization for source in session s and returns where
// to send the patient.
func (m *Manager) begin(ctx context.Context, s Session, sourceID string) (string, error) {
	src, err := m.dir.Source(ctx, sourceID)
	if err != nil {
		return "", fmt.Errorf("%w: %s", ErrUnknownSrc, sourceID)
	}
	c, err := m.conns.CreatePending(ctx, connections.Connection{
		AppID: s.AppID, Pattern: connections.PatientAccess, SourceID: src.ID, Vendor: src.Vendor,
		FHIRBase: src.FHIRBase, PatientRef: s.PatientRef, SessionID: s.ID, Reason: "authorization started",
	})
	if err != nil {
		return "", err
	}
	begun, err := m.auth.Begin(ctx, BeginRequest{Connection: c, Source: src})
	if err != nil {
		if _, ferr := m.conns.Fail(ctx, c.ID, "could not start authorization: "+err.Error()); ferr != nil {
			m.log.Error("fail connection", "connection", c.ID, "err", ferr)
		}
		return "", err
	}
	if err := m.conns.Annotate(ctx, c.ID, begun.Plugin, begun.CredentialID, begun.Scopes); err != nil {
		return "", err
	}
	_, err = m.table.Modify(ctx, s.ID, func(cur Session, found bool) (Session, error) {
		if !found {
			return cur, ErrNotFound
		}
		cur.ConnectionID = c.ID
		return cur, nil
	}, store.WithTTL(s.ExpiresAt.Sub(m.now())+7*24*time.Hour))
	if err != nil {
		return "", err
	}
	m.log.Info("authorization started", "session", s.ID, "connection", c.ID, "source", src.ID)
	return begun.URL, nil
}

// complete records a session's outcome, emits session.completed and returns
// the URL to send the patient back to.
func (m *Manager) complete(ctx context.Context, sessionID, connID string, success bool, code, desc string) (string, error) {
	now := m.now().UTC()
	s, err := m.table.Modify(ctx, sessionID, func(cur Session, found bool) (Session, error) {
		if !found {
			return cur, fmt.Errorf("%w: %s", ErrNotFound, sessionID)
		}
		if cur.State == Complete {
			return cur, fmt.Errorf("%w: %s", ErrNotOpen, sessionID)
		}
		cur.State, cur.CompletedAt = Complete, now
		cur.ConnectionID, cur.Success, cur.Error, cur.ErrorDescription = connID, success, code, desc
		return cur, nil
	}, store.Synced(), store.WithTTL(7*24*time.Hour))
	if err != nil {
		return "", err
	}
	if _, err := m.events.Append(ctx, events.Event{
		Type: events.SessionCompleted, AppID: s.AppID, SessionID: s.ID, ConnectionID: connID, PatientRef: s.PatientRef,
	}, map[string]any{"success": success, "error": code, "error_description": desc, "metadata": s.Metadata}); err != nil {
		m.log.Error("session event", "session", s.ID, "err", err)
	}
	return returnURL(s), nil
}

// returnURL adds the outcome to the app's return URL, keeping its own query.
func returnURL(s Session) string {
	u, _ := url.Parse(s.ReturnURL)
	q := u.Query()
	q.Set("patient_ref", s.PatientRef)
	q.Set("session_id", s.ID)
	q.Set("success", fmt.Sprint(s.Success))
	if s.ConnectionID != "" {
		q.Set("connection_id", s.ConnectionID)
	}
	if s.Error != "" {
		q.Set("error", s.Error)
		q.Set("error_description", s.ErrorDescription)
	}
	u.RawQuery = q.Encode()
	return u.String()
}
