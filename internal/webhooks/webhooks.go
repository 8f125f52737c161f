// Package webhooks delivers an app's events to HTTP endpoints the app
// registers: the same events as EventService.Subscribe, as CloudEvents 1.0
// JSON, signed with a per-endpoint secret, at least once and in order per
// endpoint, retried on a fixed schedule for about three and a half days,
// recorded attempt by attempt, redeliverable by hand, and never dropped in
// silence: an endpoint that keeps failing (or that fell behind the events
// the agent retains) is disabled with a reason, and a
// webhook.endpoint_disabled event goes to the app's stream and the log.
//
// Each enabled endpoint has one worker goroutine that follows the event log
// from its own persisted cursor. Appending an event never waits on HTTP (the
// log's tap only wakes the workers of that app), and a slow endpoint only
// delays itself.
package webhooks

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/medrelay/medrelay/internal/errdefs"
	"github.com/medrelay/medrelay/internal/events"
	"github.com/medrelay/medrelay/internal/secrets"
	"github.com/medrelay/medrelay/internal/store"
)

// Endpoint states.
const (
	Enabled  = "enabled"
	Disabled = "disabled"
)

// Reasons an endpoint was disabled (DisabledReason starts with one).
const (
	ReasonDeliveryFailed = "delivery_failed" // the retry schedule ran out
	ReasonEventsExpired  = "events_expired"  // events it had not received were pruned
	ReasonByRequest      = "by_request"      // an app or administrator disabled it
	ReasonAppRevoked     = "app_revoked"     // the app that owns it was revoked
)

// MaxEndpointsPerApp bounds the workers one app can start.
const MaxEndpointsPerApp = 20

// Errors.
var (
	ErrNotFound      = errdefs.Define(errdefs.NotFound, "WEBHOOK_NOT_FOUND", "no such webhook endpoint")
	ErrBadURL        = errdefs.Define(errdefs.InvalidArgument, "WEBHOOK_URL_INVALID", "webhook URL is not valid")
	ErrInsecureURL   = errdefs.Define(errdefs.InvalidArgument, "WEBHOOK_URL_INSECURE", "webhook URL must use https")
	ErrBadEventType  = errdefs.Define(errdefs.InvalidArgument, "WEBHOOK_EVENT_TYPE_INVALID", "event type is not valid")
	ErrNoApp         = errdefs.Define(errdefs.FailedPrecondition, "WEBHOOK_NEEDS_APP", "webhook endpoints belong to an app: call as the app (--app-token)")
	ErrTooMany       = errdefs.Define(errdefs.ResourceExhausted, "WEBHOOK_LIMIT", "too many webhook endpoints for this app")
	ErrEventNotFound = errdefs.Define(errdefs.NotFound, "EVENT_NOT_FOUND", "no such event (it may have been pruned)")
	ErrEventsExpired = errdefs.Define(errdefs.FailedPrecondition, "WEBHOOK_EVENTS_EXPIRED", "events this endpoint has not received were pruned")
	ErrWrongApp      = errdefs.Define(errdefs.InvalidArgument, "WEBHOOK_EVENT_OTHER_APP", "the event belongs to another app than the endpoint")
)

// Endpoint is a registered webhook receiver. It holds no secret.
type Endpoint struct {
	ID          string `json:"id"`
	AppID       string `json:"app_id"`
	URL         string `json:"url"`
	Description string `json:"description,omitempty"`
	// Types are the event types delivered; empty means every type.
	Types          []string  `json:"types,omitempty"`
	State          string    `json:"state"`
	CreatedAt      time.Time `json:"created_at"`
	DisabledAt     time.Time `json:"disabled_at,omitzero"`
	DisabledReason string    `json:"disabled_reason,omitempty"`
	// SecretRotatedAt is the last rotation; until PreviousSecretUntil the
	// previous secret signs alongside the current one.
	SecretRotatedAt     time.Time `json:"secret_rotated_at,omitzero"`
	PreviousSecretUntil time.Time `json:"previous_secret_until,omitzero"`
}

// Wants reports whether the endpoint receives events of type t.
func (e Endpoint) Wants(t string) bool { return len(e.Types) == 0 || slices.Contains(e.Types, t) }

// Progress is where an endpoint's delivery stands.
type Progress struct {
	// Cursor: every event of the app up to this sequence is handled.
	Cursor uint64 `json:"cursor"`
	// Pending is the event being retried, if any.
	Pending       *Pending  `json:"pending,omitempty"`
	Delivered     uint64    `json:"delivered"`
	LastSuccessAt time.Time `json:"last_success_at,omitzero"`
	LastFailureAt time.Time `json:"last_failure_at,omitzero"`
	LastError     string    `json:"last_error,omitempty"`
}

// Pending is an event whose delivery failed and will be tried again.
type Pending struct {
	Seq      uint64    `json:"seq"`
	Type     string    `json:"type"`
	Attempts int       `json:"attempts"`
	NextAt   time.Time `json:"next_at"`
	// FirstAt is the first attempt's time, where the retry window starts
	// (zero in progress saved by earlier versions: the window then starts
	// at the next attempt).
	FirstAt time.Time `json:"first_at,omitzero"`
}

// Attempt is one HTTP request to an endpoint, kept for the retention of
// events.
type Attempt struct {
	EndpointID string `json:"endpoint_id"`
	EventSeq   uint64 `json:"event_seq"`
	EventType  string `json:"event_type"`
	// Number counts the scheduled attempts of this event (1 = first);
	// manual redeliveries are numbered 0.
	Number int  `json:"number"`
	Manual bool `json:"manual,omitempty"`
	// Time the request started, by the manager's clock.
	Time    time.Time     `json:"time"`
	Latency time.Duration `json:"latency"`
	// Status is the HTTP status, 0 when none came back.
	Status int `json:"status,omitempty"`
	// Error says why there was no status (timeout, refused, ...).
	Error string `json:"error,omitempty"`
	// Response is the start of the response body.
	Response string `json:"response,omitempty"`
	OK       bool   `json:"ok"`
	// NextAt is when the next attempt is due after this failed one (zero
	// when none: success, manual, or the schedule ran out).
	NextAt time.Time `json:"next_at,omitzero"`
}

// secretSet is the endpoint's signing secrets, kept apart from the
// endpoint so that nothing that lists or logs endpoints can touch them.
type secretSet struct {
	Current       secrets.Value `json:"current"`
	Previous      secrets.Value `json:"previous,omitempty"`
	PreviousUntil time.Time     `json:"previous_until,omitzero"`
}

// keys are the secrets that sign at now, current first.
func (s secretSet) keys(now time.Time) []secrets.Value {
	if s.Previous.IsZero() || !now.Before(s.PreviousUntil) {
		return []secrets.Value{s.Current}
	}
	return []secrets.Value{s.Current, s.Previous}
}

// Access is who asks: an app (its own endpoints only) or an administrator
// (every endpoint).
type Access struct {
	AppID string
	All   bool
}

func (a Access) sees(ep Endpoint) bool { return a.All || (a.AppID != "" && a.AppID == ep.AppID) }

// Clock is the time source of the retry schedule and signatures. Tests
// replace it; production uses the wall clock.
type Clock interface {
	Now() time.Time
	// After returns a channel that receives once d has passed.
	After(d time.Duration) <-chan time.Time
}

type wallClock struct{}

func (wallClock) Now() time.Time                         { return time.Now() }
func (wallClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// DefaultSchedule is how long to wait after each failed attempt before the
// next: the first retry at once, the last about three and a half days after
// the first attempt (retryWindow). After the last attempt fails the
// endpoint is disabled, and so it is when an attempt fails after the window
// has passed (the agent was stopped in the middle of the schedule).
var DefaultSchedule = []time.Duration{
	0, time.Minute, 5 * time.Minute, 30 * time.Minute, 2 * time.Hour,
	12 * time.Hour, 24 * time.Hour, 24 * time.Hour, 24 * time.Hour,
}

// retryWindow is how long after its first attempt an event is retried: the
// whole schedule.
func retryWindow() time.Duration {
	var w time.Duration
	for _, d := range DefaultSchedule {
		w += d
	}
	return w
}

// Option configures a Manager.
type Option func(*Manager)

// WithClock replaces the wall clock (tests).
func WithClock(c Clock) Option { return func(m *Manager) { m.clock = c } }

// WithTimeout sets the per-attempt timeout (default 5s).
func WithTimeout(d time.Duration) Option { return func(m *Manager) { m.timeout = d } }

// WithAllowPublicHTTP allows plain-http URLs that reach public addresses.
func WithAllowPublicHTTP(allow bool) Option { return func(m *Manager) { m.allowPublicHTTP = allow } }

// WithSource sets the CloudEvents source attribute (default "medrelay").
func WithSource(s string) Option { return func(m *Manager) { m.source = s } }

// WithUserAgent sets the User-Agent of deliveries.
func WithUserAgent(ua string) Option { return func(m *Manager) { m.userAgent = ua } }

// WithAppCheck tells the manager whether an app may still receive events;
// the endpoints of an app that may not (revoked) are disabled instead of
// delivering.
func WithAppCheck(active func(ctx context.Context, appID string) bool) Option {
	return func(m *Manager) { m.appActive = active }
}

// Manager owns the endpoints and their delivery workers.
type Manager struct {
	appActive func(ctx context.Context, appID string) bool
	db        *store.DB
	events    *events.Log
	log       *slog.Logger
	endpoints *store.Table[Endpoint]
	secrets   *store.Table[secretSet]
	progress  *store.Table[Progress]
	attempts  *store.Table[Attempt]

	clock           Clock
	timeout         time.Duration
	allowPublicHTTP bool
	source          string
	userAgent       string

	httpsClient, httpClient *http.Client

	// opMu serialises changes of endpoints by callers (create, enable,
	// disable, delete, rotate). Workers never take it.
	opMu sync.Mutex

	mu      sync.Mutex
	ctx     context.Context // parent of every worker; nil before Start
	stop    context.CancelFunc
	workers map[string]*worker // enabled endpoints by id
	// saves feeds the saver goroutine (nil before Start); saverClosed once
	// Stop closed it. Both under saveMu.
	saveMu      sync.RWMutex
	saves       chan saveReq
	saverDone   chan struct{}
	saverClosed bool
	byApp       map[string][]*worker   // the same, by app
	live        map[string]*liveConfig // every endpoint's current config
	wg          sync.WaitGroup
	stopped     bool
}

// liveConfig is what a worker needs at each attempt; replaced on rotation.
type liveConfig struct {
	ep  Endpoint
	sec secretSet
}

// New returns the manager of the webhooks kept in db, delivering events of
// log. Call Start to start delivering and Stop before closing the store.
func New(db *store.DB, log *events.Log, logger *slog.Logger, opts ...Option) *Manager {
	m := &Manager{
		db:        db,
		events:    log,
		log:       logger.With("component", "webhooks"),
		endpoints: store.NewTable[Endpoint](db, store.Webhooks),
		secrets:   store.NewTable[secretSet](db, store.WebhookSecrets),
		progress:  store.NewTable[Progress](db, store.WebhookProgress),
		attempts:  store.NewTable[Attempt](db, store.WebhookAttempts),
		clock:     wallClock{},
		timeout:   5 * time.Second,
		source:    "medrelay",
		userAgent: "medrelay-webhooks",
		workers:   map[string]*worker{},
		byApp:     map[string][]*worker{},
		live:      map[string]*liveConfig{},
	}
	for _, o := range opts {
		o(m)
	}
	m.httpsClient = newClient(m.timeout, false, m.allowPublicHTTP)
	m.httpClient = newClient(m.timeout, true, m.allowPublicHTTP)
	log.Tap(m.wake)
	return m
}

// Start loads the endpoints and starts a worker for each enabled one;
// deliveries that were pending before a restart resume on their schedule.
func (m *Manager) Start(ctx context.Context) error {
	m.mu.Lock()
	if m.ctx != nil {
		m.mu.Unlock()
		return errors.New("webhooks: already started")
	}
	m.ctx, m.stop = context.WithCancel(context.WithoutCancel(ctx))
	m.mu.Unlock()
	m.saveMu.Lock()
	m.saves, m.saverDone = make(chan saveReq, 256), make(chan struct{})
	m.saveMu.Unlock()
	go m.saver()
	var eps []Endpoint
	if err := m.endpoints.Scan(ctx, store.ScanOptions{}, func(_ string, ep Endpoint) error {
		eps = append(eps, ep)
		return nil
	}); err != nil {
		return fmt.Errorf("webhooks: load endpoints: %w", err)
	}
	for _, ep := range eps {
		sec, err := m.secrets.Get(ctx, ep.ID)
		if err != nil {
			return fmt.Errorf("webhooks: load secret of %s: %w", ep.ID, err)
		}
		m.setLive(ep, sec)
		if ep.State == Enabled {
			m.startWorker(ep)
		}
	}
	m.mu.Lock()
	enabled := len(m.workers)
	m.mu.Unlock()
	m.log.Info("webhooks started", "endpoints", len(eps), "enabled", enabled)
	return nil
}

// Stop stops every worker and waits for them; a delivery in flight is cut
// and will be retried (at-least-once) after the next start.
func (m *Manager) Stop() {
	m.mu.Lock()
	m.stopped = true
	if m.stop != nil {
		m.stop()
	}
	m.mu.Unlock()
	m.wg.Wait()
	// The workers' last writes are queued; the saver makes them and ends.
	m.saveMu.Lock()
	saves, closed := m.saves, m.saverClosed
	m.saverClosed = true
	if saves != nil && !closed {
		close(saves)
	}
	m.saveMu.Unlock()
	if saves != nil && !closed {
		<-m.saverDone
	}
}

func (m *Manager) setLive(ep Endpoint, sec secretSet) {
	m.mu.Lock()
	m.live[ep.ID] = &liveConfig{ep: ep, sec: sec}
	m.mu.Unlock()
}

func (m *Manager) liveConfig(id string) (*liveConfig, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	c, ok := m.live[id]
	return c, ok
}

// wake is the event log's tap: it runs inside Append, so it only nudges the
// workers of the event's app and never blocks.
func (m *Manager) wake(e events.Event) {
	m.mu.Lock()
	ws := m.byApp[e.AppID]
	m.mu.Unlock()
	for _, w := range ws {
		for {
			n := w.notified.Load()
			if n >= e.Seq || w.notified.CompareAndSwap(n, e.Seq) {
				break
			}
		}
		select {
		case w.wake <- struct{}{}:
		default:
		}
	}
}

var typeName = regexp.MustCompile(`^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$`)

// CreateRequest registers an endpoint.
type CreateRequest struct {
	URL         string
	Description string
	// Types to deliver; empty means every event type.
	Types []string
}

// Create registers an endpoint for the app and returns it with its signing
// secret, which is never shown again. The endpoint receives the events
// appended from now on.
func (m *Manager) Create(ctx context.Context, appID string, req CreateRequest) (Endpoint, secrets.Value, error) {
	if appID == "" {
		return Endpoint{}, "", ErrNoApp
	}
	u, err := validateURL(ctx, strings.TrimSpace(req.URL), m.allowPublicHTTP, net.DefaultResolver)
	if err != nil {
		return Endpoint{}, "", err
	}
	types, err := cleanTypes(req.Types)
	if err != nil {
		return Endpoint{}, "", err
	}
	if len(req.Description) > 500 {
		return Endpoint{}, "", fmt.Errorf("%w: description longer than 500 characters", ErrBadURL)
	}
	// Counting and storing under one lock: registrations arriving together
	// would otherwise each count below the limit and all be stored.
	m.opMu.Lock()
	defer m.opMu.Unlock()
	n := 0
	if err := m.endpoints.Scan(ctx, store.ScanOptions{}, func(_ string, ep Endpoint) error {
		if ep.AppID == appID {
			n++
		}
		return nil
	}); err != nil {
		return Endpoint{}, "", err
	}
	if n >= MaxEndpointsPerApp {
		return Endpoint{}, "", fmt.Errorf("%w: %d is the most", ErrTooMany, MaxEndpointsPerApp)
	}
	head, err := m.events.Head(ctx)
	if err != nil {
		return Endpoint{}, "", err
	}
	ep := Endpoint{
		ID:          newID(),
		AppID:       appID,
		URL:         u.String(),
		Description: req.Description,
		Types:       types,
		State:       Enabled,
		CreatedAt:   m.clock.Now().UTC(),
	}
	sec := secretSet{Current: newSecret()}
	err = m.db.Update(ctx, func(tx *store.Txn) error {
		if err := m.endpoints.PutTx(tx, ep.ID, ep); err != nil {
			return err
		}
		if err := m.secrets.PutTx(tx, ep.ID, sec); err != nil {
			return err
		}
		return m.progress.PutTx(tx, ep.ID, Progress{Cursor: head})
	}, store.Synced())
	if err != nil {
		return Endpoint{}, "", fmt.Errorf("webhooks: create: %w", err)
	}
	m.setLive(ep, sec)
	m.startWorker(ep)
	m.log.Info("webhook endpoint created", "endpoint", ep.ID, "app", appID, "url", redactURL(ep.URL), "types", ep.Types)
	return ep, sec.Current, nil
}

func cleanTypes(in []string) ([]string, error) {
	var out []string
	for _, t := range in {
		t = strings.TrimSpace(t)
		if t == "" {
			continue
		}
		if !typeName.MatchString(t) || len(t) > 100 {
			return nil, fmt.Errorf("%w: %q (event types look like connection.state_changed)", ErrBadEventType, t)
		}
		if !slices.Contains(out, t) {
			out = append(out, t)
		}
	}
	sort.Strings(out)
	return out, nil
}

var idEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

func newID() string {
	b := make([]byte, 10)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return "wh_" + idEncoding.EncodeToString(b)
}

// Status is an endpoint with where its delivery stands.
type Status struct {
	Endpoint
	Progress Progress
}

// Get returns one endpoint the caller may see.
func (m *Manager) Get(ctx context.Context, a Access, id string) (Status, error) {
	ep, err := m.get(ctx, a, id)
	if err != nil {
		return Status{}, err
	}
	p, err := m.progress.Get(ctx, id)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return Status{}, err
	}
	return Status{Endpoint: ep, Progress: p}, nil
}

func (m *Manager) get(ctx context.Context, a Access, id string) (Endpoint, error) {
	ep, err := m.endpoints.Get(ctx, id)
	if errors.Is(err, store.ErrNotFound) || (err == nil && !a.sees(ep)) {
		// Another app's endpoint is "not found", not "forbidden": its
		// existence is not the caller's business.
		return Endpoint{}, fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	return ep, err
}

// List returns the endpoints the caller may see, oldest first.
func (m *Manager) List(ctx context.Context, a Access) ([]Status, error) {
	var out []Status
	err := m.db.View(ctx, func(tx *store.Txn) error {
		return m.endpoints.ScanTx(tx, store.ScanOptions{}, func(id string, ep Endpoint) error {
			if !a.sees(ep) {
				return nil
			}
			p, err := m.progress.GetTx(tx, id)
			if err != nil && !errors.Is(err, store.ErrNotFound) {
				return err
			}
			out = append(out, Status{Endpoint: ep, Progress: p})
			return nil
		})
	})
	sort.Slice(out, func(i, j int) bool {
		if !out[i].CreatedAt.Equal(out[j].CreatedAt) {
			return out[i].CreatedAt.Before(out[j].CreatedAt)
		}
		return out[i].ID < out[j].ID
	})
	return out, err
}

// Delete removes an endpoint, its secret and its attempts. A delivery in
// flight is cut.
func (m *Manager) Delete(ctx context.Context, a Access, id string) (Endpoint, error) {
	m.opMu.Lock()
	defer m.opMu.Unlock()
	ep, err := m.get(ctx, a, id)
	if err != nil {
		return ep, err
	}
	m.stopWorker(id)
	m.barrier()
	m.mu.Lock()
	delete(m.live, id)
	m.mu.Unlock()
	err = m.db.Update(ctx, func(tx *store.Txn) error {
		if err := m.endpoints.DeleteTx(tx, id); err != nil {
			return err
		}
		if err := m.secrets.DeleteTx(tx, id); err != nil {
			return err
		}
		return m.progress.DeleteTx(tx, id)
	}, store.Synced())
	if err != nil {
		return ep, err
	}
	if err := m.deleteAttempts(ctx, id); err != nil {
		m.log.Warn("delete attempts of removed endpoint", "endpoint", id, "err", err)
	}
	m.log.Info("webhook endpoint removed", "endpoint", id, "app", ep.AppID)
	return ep, nil
}

func (m *Manager) deleteAttempts(ctx context.Context, id string) error {
	var keys []string
	if err := m.attempts.Scan(ctx, store.ScanOptions{Prefix: id + "/", KeysOnly: true}, func(k string, _ Attempt) error {
		keys = append(keys, k)
		return nil
	}); err != nil {
		return err
	}
	b := m.db.NewBatch()
	for _, k := range keys {
		if err := store.BatchDelete(b, m.attempts, k); err != nil {
			b.Cancel()
			return err
		}
	}
	return b.Flush(false)
}

// RotateSecret gives the endpoint a new secret, returned once. The previous
// one keeps signing alongside it for 24 hours, so a receiver can switch
// without losing a delivery.
func (m *Manager) RotateSecret(ctx context.Context, a Access, id string) (Endpoint, secrets.Value, error) {
	m.opMu.Lock()
	defer m.opMu.Unlock()
	ep, err := m.get(ctx, a, id)
	if err != nil {
		return ep, "", err
	}
	now := m.clock.Now().UTC()
	var sec secretSet
	err = m.db.Update(ctx, func(tx *store.Txn) error {
		old, err := m.secrets.GetTx(tx, id)
		if err != nil {
			return err
		}
		sec = secretSet{Current: newSecret(), Previous: old.Current, PreviousUntil: now.Add(24 * time.Hour)}
		ep, err = m.endpoints.GetTx(tx, id)
		if err != nil {
			return err
		}
		ep.SecretRotatedAt, ep.PreviousSecretUntil = now, sec.PreviousUntil
		if err := m.endpoints.PutTx(tx, id, ep); err != nil {
			return err
		}
		return m.secrets.PutTx(tx, id, sec)
	}, store.Synced())
	if err != nil {
		return ep, "", err
	}
	m.setLive(ep, sec)
	m.log.Info("webhook secret rotated", "endpoint", id, "app", ep.AppID, "previous_valid_until", sec.PreviousUntil)
	return ep, sec.Current, nil
}

// EnableFrom says where a re-enabled endpoint resumes.
type EnableFrom int

// Where to resume.
const (
	// ResumeUndelivered resumes with the first event not delivered (the one
	// that failed), with a fresh retry schedule. Refused with
	// ErrEventsExpired when some of those events were pruned.
	ResumeUndelivered EnableFrom = iota
	// ResumeOldestRetained accepts the loss of pruned events and resumes
	// with the oldest event still retained.
	ResumeOldestRetained
	// ResumeNow skips everything not delivered and resumes with the next
	// new event.
	ResumeNow
)

// Enable re-enables an endpoint.
func (m *Manager) Enable(ctx context.Context, a Access, id string, from EnableFrom) (Endpoint, error) {
	m.opMu.Lock()
	defer m.opMu.Unlock()
	ep, err := m.get(ctx, a, id)
	if err != nil {
		return ep, err
	}
	if ep.State == Enabled {
		m.startWorker(ep) // no-op when running
		return ep, nil
	}
	m.stopWorker(id) // a worker that just disabled it may still be finishing
	m.barrier()
	p, err := m.progress.Get(ctx, id)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return ep, err
	}
	p.Pending = nil
	switch from {
	case ResumeNow:
		head, err := m.events.Head(ctx)
		if err != nil {
			return ep, err
		}
		p.Cursor = max(p.Cursor, head)
	case ResumeUndelivered, ResumeOldestRetained:
		missed, through, err := m.gap(ctx, ep, p.Cursor)
		if err != nil {
			return ep, err
		}
		if missed && from == ResumeUndelivered {
			return ep, fmt.Errorf("%w: events after %d; enable with the choice to resume from the oldest retained event or from now", ErrEventsExpired, p.Cursor)
		}
		// Past what was pruned: the oldest retained event comes next.
		p.Cursor = max(p.Cursor, through)
	}
	err = m.db.Update(ctx, func(tx *store.Txn) error {
		cur, err := m.endpoints.GetTx(tx, id)
		if err != nil {
			return err
		}
		cur.State, cur.DisabledAt, cur.DisabledReason = Enabled, time.Time{}, ""
		ep = cur
		if err := m.endpoints.PutTx(tx, id, cur); err != nil {
			return err
		}
		return m.progress.PutTx(tx, id, p)
	}, store.Synced())
	if err != nil {
		return ep, err
	}
	if c, ok := m.liveConfig(id); ok {
		m.setLive(ep, c.sec)
	}
	m.startWorker(ep)
	m.log.Info("webhook endpoint enabled", "endpoint", id, "app", ep.AppID, "cursor", p.Cursor)
	return ep, nil
}

// Disable stops deliveries to an endpoint until it is enabled again. Events
// keep accumulating for it (within the retention).
func (m *Manager) Disable(ctx context.Context, a Access, id string) (Endpoint, error) {
	m.opMu.Lock()
	defer m.opMu.Unlock()
	ep, err := m.get(ctx, a, id)
	if err != nil {
		return ep, err
	}
	m.stopWorker(id)
	ep, _, err = m.markDisabled(ctx, id, ReasonByRequest)
	return ep, err
}

// markDisabled records the endpoint as disabled (if it was enabled).
func (m *Manager) markDisabled(ctx context.Context, id, reason string) (Endpoint, bool, error) {
	changed := false
	ep, err := m.endpoints.Modify(ctx, id, func(cur Endpoint, found bool) (Endpoint, error) {
		if !found {
			return cur, store.ErrNotFound
		}
		changed = false
		if cur.State == Enabled {
			cur.State, cur.DisabledAt, cur.DisabledReason = Disabled, m.clock.Now().UTC(), reason
			changed = true
		}
		return cur, nil
	}, store.Synced())
	if err != nil {
		return ep, false, err
	}
	if c, ok := m.liveConfig(id); ok {
		m.setLive(ep, c.sec)
	}
	return ep, changed, nil
}

// Attempts lists an endpoint's recorded attempts, newest first; seq, when
// not zero, keeps only those of that event. after is the page token of the
// previous page.
func (m *Manager) Attempts(ctx context.Context, a Access, id string, seq uint64, limit int, after string) ([]Attempt, string, error) {
	if _, err := m.get(ctx, a, id); err != nil {
		return nil, "", err
	}
	if limit <= 0 || limit > 1000 {
		limit = 100
	}
	prefix := id + "/"
	if seq != 0 {
		prefix += seqKey(seq) + "/"
	}
	if after != "" && !strings.HasPrefix(after, prefix) {
		return nil, "", fmt.Errorf("%w: page token of another listing", errdefs.InvalidArgument)
	}
	var out []Attempt
	var last string
	err := m.attempts.Scan(ctx, store.ScanOptions{Prefix: prefix, After: after, Reverse: true, Limit: limit}, func(k string, at Attempt) error {
		out, last = append(out, at), k
		return nil
	})
	if len(out) < limit {
		last = ""
	}
	return out, last, err
}

func seqKey(seq uint64) string { return fmt.Sprintf("%020d", seq) }

// Event returns the event with the given sequence if the caller may see it.
func (m *Manager) Event(ctx context.Context, a Access, seq uint64) (events.Event, error) {
	f := events.Filter{AppID: a.AppID, All: a.All}
	if seq == 0 {
		return events.Event{}, ErrEventNotFound
	}
	got, err := m.events.Read(ctx, f, seq-1, 1)
	if errors.Is(err, events.ErrCursorExpired) {
		return events.Event{}, fmt.Errorf("%w: event %d", ErrEventNotFound, seq)
	}
	if err != nil {
		return events.Event{}, err
	}
	if len(got) == 0 || got[0].Seq != seq {
		return events.Event{}, fmt.Errorf("%w: event %d", ErrEventNotFound, seq)
	}
	return got[0], nil
}

// Redeliver sends an event again, once, now, outside the endpoint's order:
// to endpointID when given (whatever its state and types), else to every
// enabled endpoint of the event's app that takes its type. It waits for the
// attempts and returns them; they are recorded like any other.
func (m *Manager) Redeliver(ctx context.Context, a Access, seq uint64, endpointID string) ([]Attempt, error) {
	e, err := m.Event(ctx, a, seq)
	if err != nil {
		return nil, err
	}
	var targets []*liveConfig
	if endpointID != "" {
		ep, err := m.get(ctx, a, endpointID)
		if err != nil {
			return nil, err
		}
		if ep.AppID != e.AppID {
			return nil, fmt.Errorf("%w: event %d, endpoint %s", ErrWrongApp, seq, endpointID)
		}
		if c, ok := m.liveConfig(endpointID); ok {
			targets = append(targets, c)
		}
	} else {
		m.mu.Lock()
		for _, c := range m.live {
			if c.ep.AppID == e.AppID && c.ep.State == Enabled && c.ep.Wants(e.Type) {
				targets = append(targets, c)
			}
		}
		m.mu.Unlock()
	}
	out := make([]Attempt, len(targets))
	var wg sync.WaitGroup
	for i, c := range targets {
		wg.Go(func() {
			at := m.send(ctx, c, e, 0)
			err := m.db.Update(ctx, func(tx *store.Txn) error { return m.putAttemptTx(tx, at) })
			if err != nil {
				m.log.Warn("record redelivery", "endpoint", c.ep.ID, "err", err)
			}
			out[i] = at
		})
	}
	wg.Wait()
	sort.Slice(out, func(i, j int) bool { return out[i].EndpointID < out[j].EndpointID })
	return out, ctx.Err()
}
