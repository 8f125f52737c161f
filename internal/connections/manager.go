package connections

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/base32"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/medrelay/medrelay/internal/events"
	"github.com/medrelay/medrelay/internal/secrets"
	"github.com/medrelay/medrelay/internal/store"
)

// TokenEndpoint obtains a fresh grant for a connection: a refresh_token
// grant for patient connections, client_credentials for backend ones. It
// wraps ErrGrantInvalid when the source says the grant is gone and returns
// other errors for transient failures.
type TokenEndpoint interface {
	Refresh(ctx context.Context, c Connection, refresh secrets.Value) (Grant, error)
}

// GrantRevoker ends a connection's grant at its source (RFC 7009 token
// revocation). A TokenEndpoint that implements it is asked to when a
// connection is deleted.
type GrantRevoker interface {
	RevokeGrant(ctx context.Context, c Connection, refresh, access secrets.Value) error
}

// revokeTimeout bounds how long deleting a connection waits for its source.
const revokeTimeout = 5 * time.Second

// Manager owns every connection of the agent.
type Manager struct {
	db      *store.DB
	conns   *store.Table[Connection]
	idx     *store.Table[[]byte]
	toks    *store.Table[tokens]
	history *store.Table[Transition]
	events  *events.Log
	log     *slog.Logger
	now     func() time.Time

	endpoint TokenEndpoint
	policy   RefreshPolicy

	locks sync.Map // id → connLock: the connection's owner lock
	// detached counts custody work whose caller left before it ended; Run
	// waits for it so the store outlives it.
	detached inFlight

	mu    sync.RWMutex
	index map[string]indexEntry

	cache   sync.Map // id → cachedToken
	held    sync.Map // id → heldBack: on-demand refreshes held back after a transient failure
	sched   *scheduler
	onState []func(Connection, State)
}

// indexEntry is what List filters on, kept in memory for every connection
// so that listing does not decode every record.
type indexEntry struct {
	appID, patientRef, sourceID string
	state                       State
	pattern                     Pattern
}

// RefreshPolicy says when tokens are refreshed.
type RefreshPolicy struct {
	// At is the fraction of an access token's life after which it is
	// refreshed in the background (default 0.8).
	At float64
	// KeepAlive: a connection with a refresh token is refreshed at least
	// this often, so long-lived grants stay alive (default 24h).
	KeepAlive time.Duration
	// Skew: a token this close to expiry is not handed out (default 30s).
	Skew time.Duration
	// Workers refreshing in the background at once (default 8).
	Workers int
	// Backoff after a transient failure: Backoff × 2^failures, capped at
	// MaxBackoff (defaults 30s, 1h).
	Backoff, MaxBackoff time.Duration
	// OnDemandBackoff: after a transient failure, callers that need a new
	// token fail at once with that failure's error for this long instead of
	// each asking the source again (a source briefly down would otherwise
	// get one request per caller). The window doubles with each further
	// failure up to OnDemandMaxBackoff and ends with a success; an explicit
	// Refresh and the background refresher are not held back (defaults 1s,
	// 30s).
	OnDemandBackoff, OnDemandMaxBackoff time.Duration
}

func (p *RefreshPolicy) defaults() {
	if p.At <= 0 || p.At >= 1 {
		p.At = 0.8
	}
	if p.KeepAlive <= 0 {
		p.KeepAlive = 24 * time.Hour
	}
	if p.Skew <= 0 {
		p.Skew = 30 * time.Second
	}
	if p.Workers <= 0 {
		p.Workers = 8
	}
	if p.Backoff <= 0 {
		p.Backoff = 30 * time.Second
	}
	if p.MaxBackoff <= 0 {
		p.MaxBackoff = time.Hour
	}
	if p.OnDemandBackoff <= 0 {
		p.OnDemandBackoff = time.Second
	}
	if p.OnDemandMaxBackoff <= 0 {
		p.OnDemandMaxBackoff = 30 * time.Second
	}
	p.OnDemandMaxBackoff = max(p.OnDemandMaxBackoff, p.OnDemandBackoff)
}

// Option configures a Manager.
type Option func(*Manager)

// WithClock replaces time.Now (tests).
func WithClock(now func() time.Time) Option { return func(m *Manager) { m.now = now } }

// WithRefreshPolicy sets when tokens are refreshed.
func WithRefreshPolicy(p RefreshPolicy) Option { return func(m *Manager) { m.policy = p } }

// New loads every connection's index entry from the store. Call Start to
// begin background refreshing.
func New(ctx context.Context, db *store.DB, ev *events.Log, ep TokenEndpoint, logger *slog.Logger, opts ...Option) (*Manager, error) {
	m := &Manager{
		db:       db,
		conns:    store.NewTable[Connection](db, store.Connections),
		idx:      store.NewTable[[]byte](db, store.ConnectionIndex),
		toks:     store.NewTable[tokens](db, store.ConnectionTokens),
		history:  store.NewTable[Transition](db, store.ConnectionHistory),
		events:   ev,
		log:      logger.With("component", "connections"),
		now:      time.Now,
		endpoint: ep,
		index:    map[string]indexEntry{},
	}
	for _, o := range opts {
		o(m)
	}
	m.policy.defaults()
	m.sched = newScheduler()
	if err := m.loadIndex(ctx); err != nil {
		return nil, fmt.Errorf("connections: load: %w", err)
	}
	return m, nil
}

func entryOf(c Connection) indexEntry {
	return indexEntry{appID: c.AppID, patientRef: c.PatientRef, sourceID: c.SourceID, state: c.State, pattern: c.Pattern}
}

// OnStateChange registers f, called after every committed transition (the
// record pull starts when a connection becomes active). f must not block.
func (m *Manager) OnStateChange(f func(c Connection, from State)) {
	m.onState = append(m.onState, f)
}

// Count returns the number of connections, by state.
func (m *Manager) Count() map[State]int {
	m.mu.RLock()
	defer m.mu.RUnlock()
	out := map[State]int{}
	for _, e := range m.index {
		out[e.state]++
	}
	return out
}

// connLock is a connection's owner lock: a channel rather than a
// sync.Mutex so that a caller can stop waiting when its context ends (a
// refresh that hangs holds the lock for up to refreshTimeout).
type connLock chan struct{}

func (m *Manager) lock(id string) connLock {
	if l, ok := m.locks.Load(id); ok {
		return l.(connLock)
	}
	l, _ := m.locks.LoadOrStore(id, make(connLock, 1))
	return l.(connLock)
}

// acquire takes the connection's lock, or returns ctx's error when ctx ends
// first. The caller runs the returned release when done.
func (m *Manager) acquire(ctx context.Context, id string) (release func(), err error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	l := m.lock(id)
	select {
	case l <- struct{}{}:
		return func() { <-l }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// newID makes a connection id that sorts by creation time.
func newID(now time.Time) string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	enc := base32.StdEncoding.WithPadding(base32.NoPadding)
	ts := fmt.Sprintf("%011x", now.UnixMilli())
	return "conn_" + ts + strings.ToLower(enc.EncodeToString(b[:]))
}

// CreatePending records a connection whose authorization is starting.
func (m *Manager) CreatePending(ctx context.Context, c Connection) (Connection, error) {
	now := m.now().UTC()
	c.ID = newID(now)
	c.State, c.StateChangedAt, c.CreatedAt = Pending, now, now
	hk, err := m.histKey(c.ID)
	if err != nil {
		return Connection{}, err
	}
	err = m.db.Update(ctx, func(tx *store.Txn) error {
		if err := m.conns.PutTx(tx, c.ID, c); err != nil {
			return err
		}
		if err := m.putIndexTx(tx, c); err != nil {
			return err
		}
		return m.history.PutTx(tx, hk, Transition{Time: now, To: Pending, Reason: c.Reason})
	}, store.Synced())
	if err != nil {
		return Connection{}, err
	}
	m.mu.Lock()
	m.index[c.ID] = entryOf(c)
	m.mu.Unlock()
	return c, nil
}

// histKey orders a connection's transitions by a global sequence (times
// can repeat; sequences cannot).
func (m *Manager) histKey(id string) (string, error) {
	seq, err := m.db.NextSeq("connection_history")
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%s/%020d", id, seq), nil
}

// Get returns a connection.
func (m *Manager) Get(ctx context.Context, id string) (Connection, error) {
	c, err := m.conns.Get(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return Connection{}, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	return c, err
}

// GetForApp returns a connection only if it belongs to appID; to another
// app it does not exist (no hint that the id is valid).
func (m *Manager) GetForApp(ctx context.Context, appID, id string) (Connection, error) {
	c, err := m.Get(ctx, id)
	if err != nil {
		return c, err
	}
	if appID != "" && c.AppID != appID {
		return Connection{}, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	return c, nil
}

// History returns the connection's transitions, oldest first.
func (m *Manager) History(ctx context.Context, id string) ([]Transition, error) {
	var out []Transition
	err := m.history.Scan(ctx, store.ScanOptions{Prefix: id + "/"}, func(_ string, t Transition) error {
		out = append(out, t)
		return nil
	})
	return out, err
}

// Filter selects connections. Empty fields match everything; AppID "" is
// for administrators only (the API layer sets it for apps).
type Filter struct {
	AppID      string
	PatientRef string
	SourceID   string
	States     []State
	Pattern    Pattern
}

func (f Filter) match(e indexEntry) bool {
	return (f.AppID == "" || e.appID == f.AppID) &&
		(f.PatientRef == "" || e.patientRef == f.PatientRef) &&
		(f.SourceID == "" || e.sourceID == f.SourceID) &&
		(len(f.States) == 0 || slices.Contains(f.States, e.state)) &&
		(f.Pattern == "" || e.pattern == f.Pattern)
}

// List returns up to limit connections matching f in creation order,
// after the cursor (the previous page's last id).
func (m *Manager) List(ctx context.Context, f Filter, limit int, after string) ([]Connection, string, error) {
	if limit <= 0 || limit > 1000 {
		limit = 100
	}
	m.mu.RLock()
	ids := make([]string, 0, 64)
	for id, e := range m.index {
		if id > after && f.match(e) {
			ids = append(ids, id)
		}
	}
	m.mu.RUnlock()
	slices.Sort(ids)
	next := ""
	if len(ids) > limit {
		ids = ids[:limit]
		next = ids[limit-1]
	}
	out := make([]Connection, 0, len(ids))
	err := m.db.View(ctx, func(tx *store.Txn) error {
		for _, id := range ids {
			c, err := m.conns.GetTx(tx, id)
			if errors.Is(err, store.ErrNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			out = append(out, c)
		}
		return nil
	})
	return out, next, err
}

// transition changes a connection's state under its lock, storing the
// connection, its history entry (and tokens, when given) in one synced
// transaction, then appends the event. mutate may adjust the record; it runs
// after the state check.
func (m *Manager) transition(ctx context.Context, id string, to State, reason string, tok *tokens, mutate func(*Connection)) (Connection, error) {
	release, err := m.acquire(ctx, id)
	if err != nil {
		return Connection{}, err
	}
	defer release()
	return m.transitionLocked(ctx, id, to, reason, tok, mutate)
}

func (m *Manager) transitionLocked(ctx context.Context, id string, to State, reason string, tok *tokens, mutate func(*Connection)) (Connection, error) {
	c, err := m.Get(ctx, id)
	if err != nil {
		return c, err
	}
	from := c.State
	if !allowed(from, to) {
		return c, fmt.Errorf("%w: %s is %s, cannot become %s", ErrBadState, id, from, to)
	}
	now := m.now().UTC()
	if mutate != nil {
		mutate(&c)
	}
	changed := from != to
	hk := ""
	if changed {
		c.State, c.Reason, c.StateChangedAt = to, reason, now
		if hk, err = m.histKey(id); err != nil {
			return c, err
		}
	}
	err = m.db.Update(ctx, func(tx *store.Txn) error {
		if tok != nil {
			cur, err := m.toks.GetTx(tx, id)
			if err != nil && !errors.Is(err, store.ErrNotFound) {
				return err
			}
			tok.Version = cur.Version + 1
			if err := m.toks.PutTx(tx, id, *tok); err != nil {
				return err
			}
		}
		if changed {
			if err := m.history.PutTx(tx, hk, Transition{Time: now, From: from, To: to, Reason: reason}); err != nil {
				return err
			}
		}
		if err := m.putIndexTx(tx, c); err != nil {
			return err
		}
		return m.conns.PutTx(tx, id, c)
	}, store.Synced())
	if err != nil {
		return c, err
	}
	m.mu.Lock()
	m.index[id] = entryOf(c)
	m.mu.Unlock()
	m.sched.consider(c)
	if changed {
		m.emit(ctx, c, from, reason)
	}
	return c, nil
}

func (m *Manager) emit(ctx context.Context, c Connection, from State, reason string) {
	_, err := m.events.Append(context.WithoutCancel(ctx), events.Event{
		Type: events.ConnectionStateChanged, AppID: c.AppID, ConnectionID: c.ID,
		SessionID: c.SessionID, PatientRef: c.PatientRef,
	}, events.StateChange{From: string(from), To: string(c.State), Reason: reason, Recovered: from == RefreshFailed && c.State == Active})
	if err != nil {
		m.log.Error("connection event not recorded", "connection", c.ID, "to", c.State, "err", err)
	}
	m.log.Info("connection state", "connection", c.ID, "app", c.AppID, "from", from, "to", c.State, "reason", reason)
	for _, f := range m.onState {
		f(c, from)
	}
}

func allowed(from, to State) bool {
	switch from {
	case Pending:
		return to == Active || to == Failed || to == Revoked || to == Pending
	case Active:
		return to == Active || to == RefreshFailed || to == Expired || to == Revoked
	case RefreshFailed:
		return to == Active || to == RefreshFailed || to == Expired || to == Revoked
	}
	return false
}

// Activate stores the grant a completed authorization produced and makes
// the connection active.
func (m *Manager) Activate(ctx context.Context, id string, g Grant) (Connection, error) {
	now := m.now().UTC()
	tok := tokensOf(g, now)
	c, err := m.transition(ctx, id, Active, "authorized", &tok, func(c *Connection) {
		c.PatientID = cmp.Or(g.PatientID, c.PatientID)
		c.FHIRUser = cmp.Or(g.FHIRUser, c.FHIRUser)
		if len(g.Scopes) > 0 {
			c.Scopes = g.Scopes
		}
		m.applyGrant(c, g, now)
	})
	if err == nil {
		m.cache.Store(id, cachedToken{token: g.AccessToken, expiry: g.Expiry, version: tok.Version})
	}
	return c, err
}

func tokensOf(g Grant, now time.Time) tokens {
	return tokens{Access: g.AccessToken, Refresh: g.RefreshToken, IDToken: g.IDToken, TokenType: g.TokenType, Expiry: g.Expiry, IssuedAt: now}
}

// applyGrant sets the timing fields of c from a fresh grant.
func (m *Manager) applyGrant(c *Connection, g Grant, now time.Time) {
	c.AccessExpiry = g.Expiry
	if !g.GrantExpiry.IsZero() {
		c.GrantExpiry = g.GrantExpiry
	}
	c.HasRefreshToken = !g.RefreshToken.IsZero() || c.Pattern == Backend
	c.LastRefreshAt = now
	c.RefreshFailures = 0
	c.LastError = ""
	c.NextRefreshAt = m.nextRefresh(*c, now)
}

// nextRefresh is when the background refresher should next touch c.
func (m *Manager) nextRefresh(c Connection, now time.Time) time.Time {
	if !c.HasRefreshToken {
		// Nothing to refresh with: check again when the token expires, to
		// mark the connection expired.
		return c.AccessExpiry
	}
	next := now.Add(m.policy.KeepAlive)
	if !c.AccessExpiry.IsZero() {
		life := c.AccessExpiry.Sub(now)
		if early := now.Add(time.Duration(float64(life) * m.policy.At)); early.Before(next) {
			next = early
		}
	}
	return next
}

// Fail marks a pending connection failed (authorization did not complete).
func (m *Manager) Fail(ctx context.Context, id, reason string) (Connection, error) {
	return m.transition(ctx, id, Failed, reason, nil, nil)
}

// Delete revokes a connection for its app: its tokens are destroyed at once
// and it becomes revoked (it stays listed, with its history). Then, best
// effort, the grant is revoked at the source (when the token endpoint can):
// a source that is down or has no revocation endpoint leaves the grant to
// expire there, which is logged, and the deletion stands.
func (m *Manager) Delete(ctx context.Context, id, reason string) (Connection, error) {
	c, t, err := m.deleteLocal(ctx, id, reason)
	if err != nil {
		return c, err
	}
	if r, ok := m.endpoint.(GrantRevoker); ok && (!t.Refresh.IsZero() || !t.Access.IsZero()) {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), revokeTimeout)
		defer cancel()
		if err := r.RevokeGrant(rctx, c, t.Refresh, t.Access); err != nil {
			m.log.Warn("could not revoke the grant at the source; it ends when it expires there",
				"connection", id, "source", c.SourceID, "err", err)
		} else {
			m.log.Info("grant revoked at the source", "connection", id, "source", c.SourceID)
		}
	}
	return c, nil
}

func (m *Manager) deleteLocal(ctx context.Context, id, reason string) (Connection, tokens, error) {
	release, err := m.acquire(ctx, id)
	if err != nil {
		return Connection{}, tokens{}, err
	}
	defer release()
	c, err := m.Get(ctx, id)
	if err != nil {
		return c, tokens{}, err
	}
	// Read before they are destroyed: revoking at the source needs them.
	t, terr := m.toks.Get(ctx, id)
	if terr != nil && !errors.Is(terr, store.ErrNotFound) {
		return c, tokens{}, terr
	}
	if !c.State.Terminal() {
		c, err = m.transitionLocked(ctx, id, Revoked, cmp.Or(reason, "deleted by the app"), nil, func(c *Connection) {
			c.HasRefreshToken, c.NextRefreshAt = false, time.Time{}
		})
		if err != nil {
			return c, tokens{}, err
		}
	}
	m.cache.Delete(id)
	m.held.Delete(id)
	if err := m.toks.Delete(ctx, id, store.Synced()); err != nil {
		return c, tokens{}, err
	}
	m.sched.forget(id)
	return c, t, nil
}

// Annotate records, on a pending connection, what its authorization uses:
// the plugin that will serve it, the credential, the scopes asked for.
func (m *Manager) Annotate(ctx context.Context, id, plugin, credentialID string, scopes []string) error {
	release, err := m.acquire(ctx, id)
	if err != nil {
		return err
	}
	defer release()
	_, err = m.conns.Modify(ctx, id, func(c Connection, found bool) (Connection, error) {
		if !found {
			return c, fmt.Errorf("%w: %s", ErrNotFound, id)
		}
		c.Plugin, c.CredentialID = plugin, credentialID
		if len(scopes) > 0 {
			c.Scopes = scopes
		}
		return c, nil
	}, store.Synced())
	return err
}

// IDs returns the ids of the connections matching f, from memory (no store
// reads): for background loops that walk every connection.
func (m *Manager) IDs(f Filter) []string {
	m.mu.RLock()
	defer m.mu.RUnlock()
	ids := make([]string, 0, len(m.index))
	for id, e := range m.index {
		if f.match(e) {
			ids = append(ids, id)
		}
	}
	return ids
}
