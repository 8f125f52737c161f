package connections

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/medrelay/medrelay/internal/secrets"
	"github.com/medrelay/medrelay/internal/store"
)

// cachedToken lets AccessToken answer without touching the store while the
// token is fresh. The store stays the truth: the cache is dropped on every
// custody change and re-filled from the store under the lock.
type cachedToken struct {
	token   secrets.Value
	expiry  time.Time
	version uint64
}

// refreshTimeout bounds one refresh. A refresh is never cancelled by the
// caller that triggered it: once the request is sent, the source may have
// rotated the refresh token, and dropping the response would lose it. The
// callers themselves need not wait that long (see underLock).
const refreshTimeout = 30 * time.Second

// heldBack records a transient refresh failure: until the window ends,
// calls that need a new token get err again instead of asking the source.
// It lives in memory only: a restart costs at most one more request.
type heldBack struct {
	until time.Time
	err   error
}

// rejectGrace: when a plugin reports the token rejected, a token issued this
// recently is assumed to be a newer one than the plugin used.
const rejectGrace = 5 * time.Second

// AccessToken returns a usable access token for the connection, refreshing
// it first when it is about to expire or the source rejected it. Many
// concurrent callers cause at most one refresh.
func (m *Manager) AccessToken(ctx context.Context, id string, rejected bool) (secrets.Value, time.Time, error) {
	now := m.now()
	if !rejected {
		if v, ok := m.cache.Load(id); ok {
			ct := v.(cachedToken)
			if ct.expiry.IsZero() || ct.expiry.Sub(now) > m.policy.Skew {
				return ct.token, ct.expiry, nil
			}
		}
	}
	return m.underLock(ctx, id, func(ctx context.Context) (secrets.Value, time.Time, error) {
		return m.tokenLocked(ctx, id, rejected, false)
	})
}

// underLock runs f under the connection's lock. The caller waits for the
// lock and for f only as long as its context lasts: f runs on without it
// (a refresh once sent is never abandoned, since the source may have rotated
// the refresh token) and its result, stored, serves the callers that stay.
// The lock is released when f ends, not when the caller leaves.
func (m *Manager) underLock(ctx context.Context, id string, f func(context.Context) (secrets.Value, time.Time, error)) (secrets.Value, time.Time, error) {
	release, err := m.acquire(ctx, id)
	if err != nil {
		return "", time.Time{}, err
	}
	if ctx.Done() == nil {
		// A context that never ends: nothing to leave early for.
		defer release()
		return f(ctx)
	}
	type result struct {
		tok secrets.Value
		exp time.Time
		err error
	}
	done := make(chan result, 1)
	m.detached.add()
	go func() {
		defer m.detached.done()
		defer release()
		tok, exp, err := f(context.WithoutCancel(ctx))
		done <- result{tok, exp, err}
	}()
	select {
	case r := <-done:
		return r.tok, r.exp, r.err
	case <-ctx.Done():
		select {
		case r := <-done: // finished meanwhile: the result is better than an error
			return r.tok, r.exp, r.err
		default:
			return "", time.Time{}, ctx.Err()
		}
	}
}

// inFlight counts goroutines, like a sync.WaitGroup that may be added to
// while it is waited for.
type inFlight struct {
	mu   sync.Mutex
	n    int
	idle chan struct{} // closed when n drops to 0; nil while n is 0
}

func (w *inFlight) add() {
	w.mu.Lock()
	if w.n == 0 {
		w.idle = make(chan struct{})
	}
	w.n++
	w.mu.Unlock()
}

func (w *inFlight) done() {
	w.mu.Lock()
	w.n--
	if w.n == 0 {
		close(w.idle)
		w.idle = nil
	}
	w.mu.Unlock()
}

// wait returns once none are left.
func (w *inFlight) wait() {
	w.mu.Lock()
	idle := w.idle
	w.mu.Unlock()
	if idle != nil {
		<-idle
	}
}

// errReplaced: the source refused the refresh token because another writer
// stored a newer grant while the refresh was in flight. It never leaves
// tokenLocked, which decides again from the newer grant.
var errReplaced = errors.New("connections: tokens replaced while refreshing")

// tokenLocked is the custody decision, made under the connection's lock
// from what the store says now.
func (m *Manager) tokenLocked(ctx context.Context, id string, rejected, early bool) (secrets.Value, time.Time, error) {
	tok, exp, err := m.decideLocked(ctx, id, rejected, early)
	if !errors.Is(err, errReplaced) {
		return tok, exp, err
	}
	// The newer grant is what the caller gets: its access token when it
	// is fresh (it was stored moments ago; the token a plugin reported as
	// rejected belonged to the old grant, and the new one is what an early
	// refresh would have obtained), else a refresh with its refresh token.
	tok, exp, err = m.decideLocked(ctx, id, false, false)
	if errors.Is(err, errReplaced) {
		// Replaced again during the second refresh: give up for now
		// rather than chase a writer; the next call starts afresh.
		return "", time.Time{}, fmt.Errorf("%w: %s: its tokens were replaced twice while refreshing; try again", ErrRefreshLater, id)
	}
	return tok, exp, err
}

func (m *Manager) decideLocked(ctx context.Context, id string, rejected, early bool) (secrets.Value, time.Time, error) {
	c, err := m.Get(ctx, id)
	if err != nil {
		return "", time.Time{}, err
	}
	if c.State != Active && c.State != RefreshFailed {
		return "", time.Time{}, fmt.Errorf("%w: %s is %s", ErrNotUsable, id, c.State)
	}
	tok, err := m.toks.Get(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return "", time.Time{}, fmt.Errorf("%w: %s has no tokens", ErrNotUsable, id)
	}
	if err != nil {
		return "", time.Time{}, err
	}
	now := m.now()
	fresh := tok.Expiry.IsZero() || tok.Expiry.Sub(now) > m.policy.Skew
	recentlyIssued := now.Sub(tok.IssuedAt) < rejectGrace
	if c.State == Active && fresh && !early && (!rejected || recentlyIssued) {
		m.cache.Store(id, cachedToken{token: tok.Access, expiry: tok.Expiry, version: tok.Version})
		return tok.Access, tok.Expiry, nil
	}
	if !c.GrantExpiry.IsZero() && !now.Before(c.GrantExpiry) {
		return "", time.Time{}, m.expire(ctx, c, "the grant ended at "+c.GrantExpiry.UTC().Format(time.RFC3339))
	}
	if tok.Refresh.IsZero() && c.Pattern != Backend {
		if fresh && !rejected {
			return tok.Access, tok.Expiry, nil
		}
		return "", time.Time{}, m.expire(ctx, c, "the access token expired and the source issued no refresh token")
	}
	if c.State == RefreshFailed && !early && now.Before(c.NextRefreshAt) {
		return "", time.Time{}, fmt.Errorf("%w: %s: %s", ErrRefreshLater, id, c.Reason)
	}
	if v, ok := m.held.Load(id); ok && !early {
		// The source failed moments ago: every caller during an outage
		// asking again would be a storm, and would fail the same way.
		if h := v.(heldBack); now.Before(h.until) {
			return "", time.Time{}, fmt.Errorf("%w (backing off: the source is asked again after %s)", h.err, h.until.UTC().Format(time.RFC3339))
		}
	}
	return m.refreshLocked(ctx, c, tok)
}

func (m *Manager) expire(ctx context.Context, c Connection, reason string) error {
	m.cache.Delete(c.ID)
	if _, err := m.transitionLocked(ctx, c.ID, Expired, reason, nil, func(c *Connection) { c.NextRefreshAt = time.Time{} }); err != nil {
		return err
	}
	return fmt.Errorf("%w: %s expired: %s", ErrNotUsable, c.ID, reason)
}

// refreshLocked asks the source for a new grant and stores it before anyone
// sees the new access token.
func (m *Manager) refreshLocked(ctx context.Context, c Connection, tok tokens) (secrets.Value, time.Time, error) {
	m.cache.Delete(c.ID)
	// From here on the caller's context is not consulted: the store
	// refuses a write with an ended context, and the grant the source
	// returns (a rotated refresh token) must be stored whatever became of
	// the caller (the background refresher at shutdown).
	ctx = context.WithoutCancel(ctx)
	rctx, cancel := context.WithTimeout(ctx, refreshTimeout)
	defer cancel()
	g, err := m.endpoint.Refresh(rctx, c, tok.Refresh)
	now := m.now().UTC()
	if err != nil {
		return "", time.Time{}, m.refreshFailed(ctx, c, tok, err, now)
	}
	if g.RefreshToken.IsZero() {
		// No rotation: the old refresh token stays valid.
		g.RefreshToken = tok.Refresh
	}
	if g.IDToken.IsZero() {
		g.IDToken = tok.IDToken
	}
	nt := tokensOf(g, now)
	reason := "refreshed"
	if c.State == RefreshFailed {
		reason = "recovered: refresh works again"
	}
	updated, err := m.transitionLocked(ctx, c.ID, Active, reason, &nt, func(c *Connection) {
		if len(g.Scopes) > 0 {
			c.Scopes = g.Scopes
		}
		m.applyGrant(c, g, now)
	})
	if err != nil {
		// The source may have rotated the refresh token and we could not
		// store the new one. The new access token is not handed out (custody
		// hands out only what is stored); log loudly.
		m.log.Error("refreshed token not stored", "connection", c.ID, "err", err)
		return "", time.Time{}, err
	}
	m.held.Delete(c.ID)
	m.cache.Store(c.ID, cachedToken{token: g.AccessToken, expiry: g.Expiry, version: nt.Version})
	m.log.Debug("token refreshed", "connection", c.ID, "expires", g.Expiry, "next", updated.NextRefreshAt)
	return g.AccessToken, g.Expiry, nil
}

// refreshFailed decides what a failed refresh means for the connection.
func (m *Manager) refreshFailed(ctx context.Context, c Connection, used tokens, cause error, now time.Time) error {
	if errors.Is(cause, ErrGrantInvalid) {
		// Before declaring the grant lost, look again: another writer may
		// have stored a newer grant since we read (a refresh that finished
		// just before a restart, a new authorization of this connection).
		cur, err := m.toks.Get(ctx, c.ID)
		if err == nil && cur.Version != used.Version {
			m.log.Info("refresh token changed while refreshing; using the newer one", "connection", c.ID)
			m.held.Delete(c.ID)
			return errReplaced
		}
		reason := "the source refused the refresh token: " + cause.Error()
		_, terr := m.transitionLocked(ctx, c.ID, RefreshFailed, reason, nil, func(c *Connection) {
			c.LastError = cause.Error()
			c.RefreshFailures++
			// Try again later in case the source recovers (a grant
			// restored, a fault fixed); never delete.
			c.NextRefreshAt = now.Add(m.policy.MaxBackoff)
		})
		if terr != nil {
			return terr
		}
		return fmt.Errorf("%w: %s: %v", ErrNotUsable, c.ID, cause)
	}
	// Transient: keep the state, back off.
	failures := c.RefreshFailures + 1
	backoff := m.policy.Backoff << min(failures-1, 16)
	if backoff > m.policy.MaxBackoff || backoff <= 0 {
		backoff = m.policy.MaxBackoff
	}
	window := m.policy.OnDemandBackoff << min(failures-1, 16)
	if window > m.policy.OnDemandMaxBackoff || window <= 0 {
		window = m.policy.OnDemandMaxBackoff
	}
	if ra := (*RetryAfterError)(nil); errors.As(cause, &ra) && ra.After > 0 {
		// The source said when to come back: asking sooner would be
		// refused again, and a throttling source may throttle us longer.
		backoff = max(backoff, min(ra.After, m.policy.MaxBackoff))
		window = max(window, min(ra.After, m.policy.OnDemandMaxBackoff))
	}
	_, terr := m.transitionLocked(ctx, c.ID, c.State, c.Reason, nil, func(c *Connection) {
		c.RefreshFailures = failures
		c.LastError = cause.Error()
		c.NextRefreshAt = now.Add(backoff)
	})
	if terr != nil {
		m.log.Error("record refresh failure", "connection", c.ID, "err", terr)
	}
	m.log.Warn("token refresh failed; will retry", "connection", c.ID, "failures", failures, "retry_in", backoff, "err", cause)
	err := fmt.Errorf("%w: %s: %v", ErrUnavailable, c.ID, cause)
	m.held.Store(c.ID, heldBack{until: now.Add(window), err: err})
	return err
}

// refreshNow is the background refresher's entry: refresh early, or mark
// the connection expired when its grant has ended.
func (m *Manager) refreshNow(ctx context.Context, id string) {
	release, err := m.acquire(ctx, id)
	if err != nil {
		return // shutting down
	}
	defer release()
	c, err := m.Get(ctx, id)
	if err != nil || (c.State != Active && c.State != RefreshFailed) {
		return
	}
	if c.NextRefreshAt.IsZero() || m.now().Before(c.NextRefreshAt) {
		m.sched.consider(c) // rescheduled since queued
		return
	}
	if _, _, err := m.tokenLocked(ctx, id, false, true); err != nil {
		m.log.Debug("background refresh", "connection", id, "err", err)
	}
}

// Refresh refreshes the connection's tokens now (ConnectionService.Refresh,
// `medrelay connections refresh`): a refresh_failed connection gets another
// try at once. It returns the connection as it is afterwards.
func (m *Manager) Refresh(ctx context.Context, id string) (Connection, error) {
	_, _, err := m.underLock(ctx, id, func(ctx context.Context) (secrets.Value, time.Time, error) {
		return m.tokenLocked(ctx, id, false, true)
	})
	c, gerr := m.Get(ctx, id)
	if gerr != nil {
		return c, gerr
	}
	return c, err
}
