package sync

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/base32"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"slices"
	"strings"
	stdsync "sync"
	"time"

	"github.com/medrelay/medrelay/internal/connections"
	"github.com/medrelay/medrelay/internal/events"
	"github.com/medrelay/medrelay/internal/pluginhost"
	"github.com/medrelay/medrelay/internal/records"
	"github.com/medrelay/medrelay/internal/store"
	pluginv1 "github.com/medrelay/medrelay/proto/gen/medrelay/plugin/v1"
)

// Connections is what the engine needs of the connections component.
type Connections interface {
	Get(ctx context.Context, id string) (connections.Connection, error)
}

// Plugins is the part of the plugin host a sync uses.
type Plugins interface {
	BulkKickoff(ctx context.Context, name string, req *pluginv1.BulkKickoffRequest) (*pluginv1.BulkKickoffResponse, error)
	BulkStatus(ctx context.Context, name string, req *pluginv1.BulkStatusRequest) (*pluginv1.BulkStatusResponse, error)
	BulkCancel(ctx context.Context, name string, req *pluginv1.BulkCancelRequest) error
	BulkDownload(ctx context.Context, name string, req *pluginv1.BulkDownloadRequest, w io.Writer) (int64, error)
	Info(name string) (pluginhost.Info, error)
}

// Options tune the engine; zero values take the defaults.
type Options struct {
	// MaxJobs running at once across connections (default 4; one per
	// connection at a time).
	MaxJobs int
	// Downloads in parallel per job when the plugin names no concurrency
	// limit (default 4); MaxDownloads caps any limit (default 16).
	DefaultDownloads int
	MaxDownloads     int
	// MaxFailures consecutive transient failures without progress fail a
	// job (default 10).
	MaxFailures int
	// Backoff after a transient failure: Backoff × 2^failures up to
	// MaxBackoff (defaults 1s and 5 minutes).
	Backoff, MaxBackoff time.Duration
	// PollInterval is the first status poll interval when the source sends
	// no Retry-After; it doubles up to MaxPollInterval (defaults 1s, 1 min).
	PollInterval, MaxPollInterval time.Duration
	// MaxRetryAfter caps a Retry-After (default 24h).
	MaxRetryAfter time.Duration
	// MaxKickoffs: exports started for one sync when files expire before
	// they are downloaded (default 3).
	MaxKickoffs int
	// MinEvery is the shortest schedule (default 1 minute).
	MinEvery time.Duration
	// Ingest batches: each file being stored holds one in memory
	// (defaults 1 MiB and 2,000 resources: commits to one connection are
	// serialised, so bigger batches cost memory and buy little). SyncBatches
	// fsyncs every batch (default: only at the end of a sync; a crash of the
	// process loses nothing either way, a power cut may cost re-reading).
	BatchBytes   int
	BatchRecords int
	SyncBatches  bool
	Now          func() time.Time
}

func (o *Options) defaults() {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	defd := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&o.MaxJobs, 4)
	def(&o.DefaultDownloads, 4)
	def(&o.MaxDownloads, 16)
	def(&o.MaxFailures, 10)
	def(&o.MaxKickoffs, 3)
	def(&o.BatchBytes, 1<<20)
	def(&o.BatchRecords, 2000)
	defd(&o.Backoff, time.Second)
	defd(&o.MaxBackoff, 5*time.Minute)
	defd(&o.PollInterval, time.Second)
	defd(&o.MaxPollInterval, time.Minute)
	defd(&o.MaxRetryAfter, 24*time.Hour)
	defd(&o.MinEvery, time.Minute)
	if o.Now == nil {
		o.Now = time.Now
	}
}

// Engine runs syncs.
type Engine struct {
	db        *store.DB
	jobs      *store.Table[Job]
	files     *store.Table[FileProgress]
	malformed *store.Table[Malformed]
	errs      *store.Table[[]byte]
	cursors   *store.Table[time.Time]
	schedules *store.Table[Schedule]

	conns   Connections
	plugins Plugins
	records *records.Store
	events  *events.Log
	log     *slog.Logger
	o       Options

	mu       stdsync.Mutex
	active   map[string]bool // non-terminal job ids
	loaded   bool
	running  map[string]*run // job id → its run
	busy     map[string]string
	changed  chan struct{}
	wake     chan struct{}
	stopping bool
}

// run is one job being worked on in this process.
type run struct {
	cancel context.CancelCauseFunc
	live   *live
}

// errCancelled is the cause of a job context cancelled by CancelSync;
// errConnectionEnded of one whose connection was revoked or expired.
var (
	errCancelled       = errors.New("cancelled")
	errConnectionEnded = errors.New("the connection ended")
)

// stateWatcher is implemented by connections.Manager: the engine stops a
// connection's sync when the connection is revoked or expires.
type stateWatcher interface {
	OnStateChange(f func(c connections.Connection, from connections.State))
}

// New returns an engine; Run starts its work.
func New(db *store.DB, conns Connections, plugins Plugins, recs *records.Store, ev *events.Log, logger *slog.Logger, o Options) *Engine {
	o.defaults()
	e := &Engine{
		db:        db,
		jobs:      store.NewTable[Job](db, store.SyncJobs),
		files:     store.NewTable[FileProgress](db, store.SyncFiles),
		malformed: store.NewTable[Malformed](db, store.SyncMalformed),
		errs:      store.NewTable[[]byte](db, store.SyncErrors),
		cursors:   store.NewTable[time.Time](db, store.SyncCursors),
		schedules: store.NewTable[Schedule](db, store.SyncSchedules),
		conns:     conns, plugins: plugins, records: recs, events: ev,
		log:     logger.With("component", "sync"),
		o:       o,
		active:  map[string]bool{},
		running: map[string]*run{},
		busy:    map[string]string{},
		changed: make(chan struct{}),
		wake:    make(chan struct{}, 1),
	}
	if w, ok := conns.(stateWatcher); ok {
		w.OnStateChange(func(c connections.Connection, _ connections.State) {
			if c.State == connections.Revoked || c.State == connections.Expired {
				e.stopConnection(c.ID)
			}
		})
	}
	return e
}

// stopConnection stops the running sync of a connection that ended (it
// fails with the connection's reason). It does not wait.
func (e *Engine) stopConnection(connID string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if id, ok := e.busy[connID]; ok {
		if r := e.running[id]; r != nil {
			r.cancel(errConnectionEnded)
		}
	}
}

func newID(prefix string, now time.Time) string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	enc := base32.StdEncoding.WithPadding(base32.NoPadding)
	return fmt.Sprintf("%s_%011x%s", prefix, now.UnixMilli(), strings.ToLower(enc.EncodeToString(b[:])))
}

func fileKey(job string, idx int) string { return fmt.Sprintf("%s/%06d", job, idx) }

func cursorKey(conn, scope string) string { return conn + "/" + scope }

// Changed returns a channel closed at the next change of any job.
func (e *Engine) Changed() <-chan struct{} {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.changed
}

func (e *Engine) notify() {
	e.mu.Lock()
	close(e.changed)
	e.changed = make(chan struct{})
	e.mu.Unlock()
}

func (e *Engine) poke() {
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

// StartRequest is what StartSync asks for.
type StartRequest struct {
	ConnectionID string
	Request
	// Full ignores the last completed sync (no automatic since).
	Full bool
	// Every schedules the connection to sync again (0: once).
	Every time.Duration
}

// Start queues a sync of a backend connection. appID scopes it ("" is an
// administrator).
func (e *Engine) Start(ctx context.Context, appID string, r StartRequest) (View, *Schedule, error) {
	c, err := e.connection(ctx, appID, r.ConnectionID)
	if err != nil {
		return View{}, nil, err
	}
	if err := e.usable(c); err != nil {
		return View{}, nil, err
	}
	req, err := normalize(r.Request)
	if err != nil {
		return View{}, nil, err
	}
	if r.Every != 0 && r.Every < e.o.MinEvery {
		return View{}, nil, fmt.Errorf("%w: every must be at least %s", ErrInvalid, e.o.MinEvery)
	}
	now := e.o.Now().UTC()
	j := Job{ID: newID("sync", now), ConnectionID: c.ID, AppID: c.AppID, Plugin: c.Plugin, Request: req,
		State: Queued, Phase: PhaseKickoff, CreatedAt: now}
	if req.Since.IsZero() && !r.Full {
		if err := e.incremental(ctx, &j); err != nil {
			return View{}, nil, err
		}
	}
	var sched *Schedule
	if r.Every > 0 {
		s, err := e.schedule(ctx, c, req, r.Every, now)
		if err != nil {
			return View{}, nil, err
		}
		s.LastSyncID = j.ID
		j.ScheduleID = s.ID
		sched = &s
	}
	err = e.db.Update(ctx, func(tx *store.Txn) error {
		if sched != nil {
			if err := e.schedules.PutTx(tx, sched.ID, *sched); err != nil {
				return err
			}
		}
		return e.jobs.PutTx(tx, j.ID, j)
	}, store.Synced())
	if err != nil {
		return View{}, nil, err
	}
	e.mu.Lock()
	e.active[j.ID] = true
	e.mu.Unlock()
	e.log.Info("sync queued", "sync", j.ID, "connection", c.ID, "level", req.Level, "types", req.Types, "since", req.Since, "every", r.Every)
	e.notify()
	e.poke()
	v, err := e.view(ctx, j, false)
	return v, sched, err
}

// incremental sets j's since from the last completed sync of its scope.
func (e *Engine) incremental(ctx context.Context, j *Job) error {
	t, err := e.cursors.Get(ctx, cursorKey(j.ConnectionID, j.Request.scope()))
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	j.Request.Since, j.Incremental = t, true
	return nil
}

// schedule returns the schedule of c for req's scope, created or with its
// interval replaced.
func (e *Engine) schedule(ctx context.Context, c connections.Connection, req Request, every time.Duration, now time.Time) (Schedule, error) {
	scope := req.scope()
	var found *Schedule
	err := e.schedules.Scan(ctx, store.ScanOptions{}, func(_ string, s Schedule) error {
		if s.ConnectionID == c.ID && s.Request.scope() == scope {
			found = &s
			return store.ErrStopScan
		}
		return nil
	})
	if err != nil {
		return Schedule{}, err
	}
	if found != nil {
		found.Every, found.NextAt = every, time.Time{}
		return *found, nil
	}
	r := req
	r.Since = time.Time{}
	return Schedule{ID: newID("sched", now), ConnectionID: c.ID, AppID: c.AppID, Request: r, Every: every, CreatedAt: now}, nil
}

// connection returns the connection if appID may use it.
func (e *Engine) connection(ctx context.Context, appID, id string) (connections.Connection, error) {
	c, err := e.conns.Get(ctx, id)
	if err != nil {
		return c, err
	}
	if appID != "" && c.AppID != appID {
		return connections.Connection{}, fmt.Errorf("%w: %s", connections.ErrNotFound, id)
	}
	return c, nil
}

func (e *Engine) usable(c connections.Connection) error {
	switch {
	case c.Pattern != connections.Backend:
		return fmt.Errorf("%w: %s is a %s connection (patient connections are pulled automatically)", ErrNotBackend, c.ID, c.Pattern)
	case c.State != connections.Active && c.State != connections.RefreshFailed:
		return fmt.Errorf("%w: %s is %s", ErrNotActive, c.ID, c.State)
	case c.Plugin == "":
		return fmt.Errorf("%w: %s", ErrNoPlugin, c.ID)
	}
	return nil
}

// normalize checks a request and fills in its level.
func normalize(r Request) (Request, error) {
	if r.Level == "" {
		r.Level = System
		if r.GroupID != "" {
			r.Level = Group
		}
	}
	switch r.Level {
	case System, Patient:
		if r.GroupID != "" {
			return r, fmt.Errorf("%w: a group id needs the group level", ErrInvalid)
		}
	case Group:
		if !validID(r.GroupID) {
			return r, fmt.Errorf("%w: the group level needs a group id (letters, digits, - and .)", ErrInvalid)
		}
	default:
		return r, fmt.Errorf("%w: level %q (system, patient or group)", ErrInvalid, r.Level)
	}
	var types []string
	for _, t := range r.Types {
		for _, p := range strings.Split(t, ",") {
			p = strings.TrimSpace(p)
			if p == "" {
				continue
			}
			if !validType(p) {
				return r, fmt.Errorf("%w: %q is not a FHIR resource type", ErrInvalid, clip(p))
			}
			if !slices.Contains(types, p) {
				types = append(types, p)
			}
		}
	}
	r.Types = types
	for _, f := range r.TypeFilters {
		typ, q, ok := strings.Cut(f, "?")
		if !ok || !validType(typ) || q == "" {
			return r, fmt.Errorf("%w: type filter %q is not Type?search-parameters", ErrInvalid, clip(f))
		}
		// Bulk Data 2.0: search result parameters are not allowed
		// (bulkdata-2.0-client #104, #114).
		for _, p := range strings.Split(q, "&") {
			name, _, _ := strings.Cut(p, "=")
			switch name {
			case "_include", "_revinclude", "_sort", "_count", "_elements", "_summary", "_total", "_contained", "_containedType":
				return r, fmt.Errorf("%w: type filter %q uses %s, which Bulk Data does not allow", ErrInvalid, clip(f), name)
			}
		}
	}
	if !r.Since.IsZero() {
		r.Since = r.Since.UTC()
	}
	return r, nil
}

// FHIR type and id rules are the record store's.
func validType(t string) bool { return records.ValidType(t) }
func validID(id string) bool  { return records.ValidID(id) }

// redactURL drops a URL's query, fragment and user info.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unreadable URL)"
	}
	u.User, u.RawQuery, u.ForceQuery, u.Fragment, u.RawFragment = nil, "", false, "", ""
	return u.String()
}

func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}

// Get returns a sync with its progress.
func (e *Engine) Get(ctx context.Context, appID, id string, withFiles bool) (View, error) {
	j, err := e.job(ctx, appID, id)
	if err != nil {
		return View{}, err
	}
	return e.view(ctx, j, withFiles)
}

func (e *Engine) job(ctx context.Context, appID, id string) (Job, error) {
	j, err := e.jobs.Get(ctx, id)
	if errors.Is(err, store.ErrNotFound) || err == nil && appID != "" && j.AppID != appID {
		return Job{}, fmt.Errorf("%w: %s", ErrNotFound, clip(id))
	}
	return j, err
}

// maxListedIssues bounds the malformed lines and error messages a view lists.
const maxListedIssues = 20

// view adds a job's progress: live counters while it runs here, its totals
// once ended, else the sum of its files.
func (e *Engine) view(ctx context.Context, j Job, withFiles bool) (View, error) {
	v := View{Job: j}
	e.mu.Lock()
	r := e.running[j.ID]
	e.mu.Unlock()
	var progress []FileProgress
	if r != nil && j.Manifest != nil {
		if progress, v.Totals = r.live.snapshot(); len(progress) > 0 {
			v.Waiting = cmp.Or(r.live.waitingMsg(), v.Waiting)
		} else {
			r = nil // not downloading yet in this process: read the store
		}
	}
	switch {
	case r != nil && j.Manifest != nil:
	case j.Totals != nil && !withFiles:
		v.Totals = *j.Totals
	case j.Manifest != nil:
		var err error
		if progress, err = e.storedProgress(ctx, &j); err != nil {
			return v, err
		}
		if j.Totals != nil {
			v.Totals = *j.Totals
		} else {
			v.Totals = Totals{FilesTotal: len(progress)}
			for _, p := range progress {
				v.Totals.add(p)
			}
		}
	}
	if withFiles && j.Manifest != nil {
		for i, f := range j.Manifest.Files {
			// A file URL may carry a signature in its query (storage
			// services' pre-signed URLs): it is not shown.
			f.URL = redactURL(f.URL)
			fv := FileView{File: f}
			if i < len(progress) {
				fv.FileProgress = progress[i]
			}
			v.Files = append(v.Files, fv)
		}
	}
	if v.Totals.Malformed > 0 {
		err := e.malformed.Scan(ctx, store.ScanOptions{Prefix: j.ID + "/", Limit: maxListedIssues}, func(_ string, m Malformed) error {
			v.Malformed = append(v.Malformed, m)
			return nil
		})
		if err != nil {
			return v, err
		}
	}
	if v.Totals.Errors > 0 {
		err := e.errs.Scan(ctx, store.ScanOptions{Prefix: j.ID + "/", Limit: maxListedIssues}, func(_ string, b []byte) error {
			v.Errors = append(v.Errors, outcomeMessage(b))
			return nil
		})
		if err != nil {
			return v, err
		}
	}
	return v, nil
}

// ListFilter selects syncs.
type ListFilter struct {
	AppID        string
	ConnectionID string
	States       []State
}

// List returns syncs, newest first, after the cursor (the previous page's
// last id).
func (e *Engine) List(ctx context.Context, f ListFilter, limit int, after string) ([]View, string, error) {
	if limit <= 0 || limit > 1000 {
		limit = 100
	}
	var ids []Job
	err := e.jobs.Scan(ctx, store.ScanOptions{}, func(_ string, j Job) error {
		if (f.AppID == "" || j.AppID == f.AppID) && (f.ConnectionID == "" || j.ConnectionID == f.ConnectionID) &&
			(len(f.States) == 0 || slices.Contains(f.States, j.State)) && (after == "" || j.ID < after) {
			ids = append(ids, j)
		}
		return nil
	})
	if err != nil {
		return nil, "", err
	}
	slices.SortFunc(ids, func(a, b Job) int { return strings.Compare(b.ID, a.ID) })
	next := ""
	if len(ids) > limit {
		ids = ids[:limit]
		next = ids[limit-1].ID
	}
	out := make([]View, 0, len(ids))
	for _, j := range ids {
		v, err := e.view(ctx, j, false)
		if err != nil {
			return nil, "", err
		}
		out = append(out, v)
	}
	return out, next, nil
}

// Schedules lists schedules of appID ("" all), of one connection or all.
func (e *Engine) Schedules(ctx context.Context, appID, connID string) ([]Schedule, error) {
	var out []Schedule
	err := e.schedules.Scan(ctx, store.ScanOptions{}, func(_ string, s Schedule) error {
		if (appID == "" || s.AppID == appID) && (connID == "" || s.ConnectionID == connID) {
			out = append(out, s)
		}
		return nil
	})
	return out, err
}

// Cancel cancels a sync (DELETE of the export at the source) and/or removes
// a schedule. A sync that already ended is returned as it is.
func (e *Engine) Cancel(ctx context.Context, appID, syncID, scheduleID string) (*View, *Schedule, error) {
	if syncID == "" && scheduleID == "" {
		return nil, nil, fmt.Errorf("%w: name a sync or a schedule", ErrInvalid)
	}
	var sched *Schedule
	if scheduleID != "" {
		s, err := e.schedules.Get(ctx, scheduleID)
		if errors.Is(err, store.ErrNotFound) || err == nil && appID != "" && s.AppID != appID {
			return nil, nil, fmt.Errorf("%w: %s", ErrScheduleAbsent, clip(scheduleID))
		}
		if err != nil {
			return nil, nil, err
		}
		if err := e.schedules.Delete(ctx, scheduleID, store.Synced()); err != nil {
			return nil, nil, err
		}
		e.log.Info("sync schedule removed", "schedule", s.ID, "connection", s.ConnectionID)
		sched = &s
	}
	if syncID == "" {
		return nil, sched, nil
	}
	j, err := e.job(ctx, appID, syncID)
	if err != nil {
		return nil, sched, err
	}
	if !j.State.Terminal() {
		j, err = e.update(ctx, j.ID, func(j *Job) { j.CancelRequested = true })
		if err != nil {
			return nil, sched, err
		}
		e.mu.Lock()
		r := e.running[j.ID]
		e.mu.Unlock()
		if r != nil {
			r.cancel(errCancelled)
			// Wait (briefly) for the runner to finish the cancellation, so
			// the caller sees the sync cancelled and the export deleted.
			deadline := time.After(30 * time.Second)
			for !j.State.Terminal() {
				ch := e.Changed()
				if j, err = e.jobs.Get(ctx, j.ID); err != nil {
					return nil, sched, err
				}
				if j.State.Terminal() {
					break
				}
				select {
				case <-ch:
				case <-deadline:
					v, err := e.view(ctx, j, false)
					return &v, sched, err
				case <-ctx.Done():
					return nil, sched, ctx.Err()
				}
			}
		} else {
			// Queued, or interrupted and not picked up yet.
			if j, err = e.finishCancelled(ctx, j); err != nil {
				return nil, sched, err
			}
		}
	}
	v, err := e.view(ctx, j, false)
	return &v, sched, err
}

// update applies fn to the stored job and stores it (synced).
func (e *Engine) update(ctx context.Context, id string, fn func(*Job)) (Job, error) {
	j, err := e.jobs.Modify(context.WithoutCancel(ctx), id, func(j Job, found bool) (Job, error) {
		if !found {
			return j, fmt.Errorf("%w: %s", ErrNotFound, id)
		}
		fn(&j)
		return j, nil
	}, store.Synced())
	if err == nil {
		e.notify()
	}
	return j, err
}
