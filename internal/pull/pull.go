// Package pull keeps patient connections' records in the store: a pull
// right after a connection becomes active, then one every Interval, each
// incremental (only what changed since the last successful pull began),
// through the vendor plugin's Everything (Patient/$everything where the
// source has it, one search per resource type otherwise).
//
// A pull in progress is recorded in the store; after a crash it is run
// again from the same starting point. Re-ingesting what was already stored
// changes nothing (records are keyed by type, id and version), so a resumed
// pull neither loses nor duplicates a record.
package pull

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/medrelay/medrelay/internal/connections"
	"github.com/medrelay/medrelay/internal/events"
	"github.com/medrelay/medrelay/internal/records"
	"github.com/medrelay/medrelay/internal/store"
	pluginv1 "github.com/medrelay/medrelay/proto/gen/medrelay/plugin/v1"
)

// Plugins is the part of the plugin host a pull uses.
type Plugins interface {
	Everything(ctx context.Context, plugin string, req *pluginv1.EverythingRequest, fn func(*pluginv1.EverythingResponse) error) error
	Read(ctx context.Context, plugin string, req *pluginv1.ReadRequest) (*pluginv1.Resource, error)
}

// State is a connection's pull bookkeeping.
type State struct {
	ConnectionID string `json:"connection_id"`
	// Running is set while a pull is under way (cleared when it ends); a
	// crash leaves it set and the pull is run again at start.
	Running   bool      `json:"running,omitempty"`
	StartedAt time.Time `json:"started_at,omitempty"`
	// Since is what the running pull asked for (zero: everything).
	Since time.Time `json:"since,omitempty"`
	// LastSuccessStart is the start of the last pull that completed: the
	// next pull asks for changes since then (minus Overlap).
	LastSuccessStart time.Time `json:"last_success_start,omitempty"`
	LastSuccessEnd   time.Time `json:"last_success_end,omitempty"`
	LastError        string    `json:"last_error,omitempty"`
	LastFailure      time.Time `json:"last_failure,omitempty"`
	Failures         int       `json:"failures,omitempty"`
	NextAt           time.Time `json:"next_at,omitempty"`
}

// Result of one pull.
type Result struct {
	Resources int            `json:"resources"`
	Written   int            `json:"written"`
	Unchanged int            `json:"unchanged"`
	ByType    map[string]int `json:"by_type,omitempty"`
	Since     *time.Time     `json:"since,omitempty"`
	Duration  string         `json:"duration"`
}

// Options of New.
type Options struct {
	// Interval between pulls of an active connection (default 6h).
	Interval time.Duration
	// Overlap is subtracted from since, against clock skew between us and
	// the source (default 5 minutes).
	Overlap time.Duration
	// Workers pulling at once (default 4).
	Workers int
	// BatchSize resources per commit (default 500).
	BatchSize int
	Now       func() time.Time
}

// Puller runs pulls.
type Puller struct {
	states  *store.Table[State]
	conns   *connections.Manager
	records *records.Store
	plugins Plugins
	events  *events.Log
	log     *slog.Logger
	o       Options

	queue   chan string
	mu      sync.Mutex
	queued  map[string]bool
	running map[string]bool
	// nextAt is when each connection is next due (from the store at start,
	// then kept by Pull); loaded says whether it has been read.
	nextAt map[string]time.Time
	loaded bool
}

// New returns a puller. Call Run to start it.
func New(db *store.DB, conns *connections.Manager, recs *records.Store, plugins Plugins, ev *events.Log, logger *slog.Logger, o Options) *Puller {
	if o.Interval <= 0 {
		o.Interval = 6 * time.Hour
	}
	if o.Overlap <= 0 {
		o.Overlap = 5 * time.Minute
	}
	if o.Workers <= 0 {
		o.Workers = 4
	}
	if o.BatchSize <= 0 {
		o.BatchSize = 500
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	p := &Puller{
		states: store.NewTable[State](db, store.PullStates), conns: conns, records: recs,
		plugins: plugins, events: ev, log: logger.With("component", "pull"), o: o,
		queue: make(chan string, 4096), queued: map[string]bool{}, running: map[string]bool{}, nextAt: map[string]time.Time{},
	}
	conns.OnStateChange(func(c connections.Connection, from connections.State) {
		if c.Pattern == connections.PatientAccess && c.State == connections.Active && from != connections.Active {
			p.Enqueue(c.ID)
		}
	})
	return p
}

// Enqueue asks for a pull of the connection soon. A connection already
// queued or running is not queued twice.
func (p *Puller) Enqueue(id string) {
	p.mu.Lock()
	if p.queued[id] {
		p.mu.Unlock()
		return
	}
	p.queued[id] = true
	p.mu.Unlock()
	select {
	case p.queue <- id:
	default:
		// The queue is full: the periodic scan picks it up.
		p.mu.Lock()
		delete(p.queued, id)
		p.mu.Unlock()
	}
}

// State returns a connection's pull state.
func (p *Puller) State(ctx context.Context, id string) (State, error) {
	return p.states.Get(ctx, id)
}

// Run pulls until ctx ends: first the pulls a crash interrupted, then new
// activations and the periodic schedule.
func (p *Puller) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for range p.o.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-ctx.Done():
					return
				case id := <-p.queue:
					p.mu.Lock()
					delete(p.queued, id)
					busy := p.running[id]
					p.running[id] = true
					p.mu.Unlock()
					if !busy {
						if _, err := p.Pull(ctx, id); err != nil && ctx.Err() == nil {
							p.log.Warn("pull failed", "connection", id, "err", err)
						}
						p.mu.Lock()
						delete(p.running, id)
						p.mu.Unlock()
					}
				}
			}
		}()
	}
	// Look for due pulls a few times per interval, at most once a minute.
	t := time.NewTicker(min(time.Minute, max(p.o.Interval/4, 100*time.Millisecond)))
	defer t.Stop()
	for {
		p.scan(ctx)
		select {
		case <-ctx.Done():
			wg.Wait()
			return
		case <-t.C:
		}
	}
}

// scan queues interrupted pulls and active patient connections whose next
// pull is due. It works from memory: the connections' index and the pull
// schedule loaded once at start, so a minute's tick costs microseconds per
// connection, not a store read.
func (p *Puller) scan(ctx context.Context) {
	if !p.loaded {
		if err := p.load(ctx); err != nil {
			p.log.Warn("load pull states", "err", err)
			return
		}
	}
	now := p.o.Now()
	for _, id := range p.conns.IDs(connections.Filter{States: []connections.State{connections.Active}, Pattern: connections.PatientAccess}) {
		p.mu.Lock()
		next, known := p.nextAt[id]
		p.mu.Unlock()
		if !known || !now.Before(next) {
			p.Enqueue(id)
		}
	}
}

// load reads every pull state once: an interrupted pull is due at once.
func (p *Puller) load(ctx context.Context) error {
	next := map[string]time.Time{}
	err := p.states.Scan(ctx, store.ScanOptions{}, func(id string, st State) error {
		if st.Running {
			next[id] = time.Time{}
		} else {
			next[id] = st.NextAt
		}
		return nil
	})
	if err != nil {
		return err
	}
	p.mu.Lock()
	p.nextAt, p.loaded = next, true
	p.mu.Unlock()
	return nil
}

// Pull pulls one connection now and waits for it.
func (p *Puller) Pull(ctx context.Context, id string) (Result, error) {
	c, err := p.conns.Get(ctx, id)
	if err != nil {
		return Result{}, err
	}
	if c.State != connections.Active {
		return Result{}, fmt.Errorf("%w: %s is %s", connections.ErrNotUsable, id, c.State)
	}
	if c.Plugin == "" {
		p.mu.Lock()
		p.nextAt[id] = p.o.Now().Add(p.o.Interval) // not before someone fixes it
		p.mu.Unlock()
		return Result{}, fmt.Errorf("pull %s: no plugin serves this connection", id)
	}
	start := p.o.Now().UTC()
	st, err := p.states.Get(ctx, id)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return Result{}, err
	}
	st.ConnectionID = id
	if !st.Running {
		// A fresh pull: changes since the last successful one began.
		st.Since = time.Time{}
		if !st.LastSuccessStart.IsZero() {
			st.Since = st.LastSuccessStart.Add(-p.o.Overlap)
		}
	}
	// else: resuming after a crash, with the interrupted pull's Since.
	st.Running, st.StartedAt = true, start
	if err := p.states.Put(ctx, id, st, store.Synced()); err != nil {
		return Result{}, err
	}

	res, perr := p.run(ctx, c, st.Since)
	res.Duration = p.o.Now().Sub(start).Round(time.Millisecond).String()
	if !st.Since.IsZero() {
		s := st.Since
		res.Since = &s
	}
	if ctx.Err() != nil {
		// Shutting down: leave Running set so the next start resumes.
		return res, ctx.Err()
	}
	now := p.o.Now().UTC()
	st.Running = false
	ev := events.Event{AppID: c.AppID, ConnectionID: c.ID, PatientRef: c.PatientRef, SessionID: c.SessionID}
	if perr != nil {
		st.LastError, st.LastFailure = perr.Error(), now
		st.Failures++
		st.NextAt = now.Add(min(time.Duration(1<<min(st.Failures, 8))*time.Minute, p.o.Interval))
		ev.Type = events.RecordsPullFailed
		_, _ = p.events.Append(ctx, ev, map[string]any{"error": perr.Error(), "resources": res.Resources})
	} else {
		st.LastSuccessStart, st.LastSuccessEnd = start, now
		st.LastError, st.Failures = "", 0
		st.NextAt = now.Add(p.o.Interval)
		ev.Type = events.RecordsPullCompleted
		_, _ = p.events.Append(ctx, ev, res)
	}
	if err := p.states.Put(ctx, id, st, store.Synced()); err != nil {
		return res, err
	}
	p.mu.Lock()
	p.nextAt[id] = st.NextAt
	p.mu.Unlock()
	p.log.Info("pull finished", "connection", id, "resources", res.Resources, "written", res.Written, "err", perr)
	return res, perr
}

func (p *Puller) run(ctx context.Context, c connections.Connection, since time.Time) (Result, error) {
	res := Result{ByType: map[string]int{}}
	w, err := p.records.NewWriter(c.ID)
	if err != nil {
		return res, err
	}
	defer w.Discard()
	commit := func() error {
		n, err := w.Commit(ctx, nil)
		res.Written += n.Written
		res.Unchanged += n.Unchanged
		return err
	}
	req := &pluginv1.EverythingRequest{
		Connection: &pluginv1.Connection{Id: c.ID, FhirBaseUrl: c.FHIRBase, PatientId: c.PatientID, Settings: c.Settings},
		PatientId:  c.PatientID,
	}
	if !since.IsZero() {
		req.Since = timestamppb.New(since)
	}
	err = p.plugins.Everything(ctx, c.Plugin, req, func(r *pluginv1.EverythingResponse) error {
		for _, rs := range r.GetResources() {
			if rs.GetSearchMode() == "outcome" {
				continue
			}
			h, err := w.Put(rs.GetJson())
			if err != nil {
				p.log.Warn("resource skipped", "connection", c.ID, "type", rs.GetType(), "id", rs.GetId(), "err", err)
				continue
			}
			res.Resources++
			res.ByType[h.Type]++
			if w.Len() >= p.o.BatchSize {
				if err := commit(); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return res, err
	}
	// smart-2.2-client #202: the user the grant was made for (fhirUser: the
	// patient, or a RelatedPerson acting for them) is read and stored too,
	// when the pull did not already bring it.
	if typ, id, ok := fhirUserRef(c.FHIRUser, c.FHIRBase); ok && !(typ == "Patient" && id == c.PatientID) {
		r, err := p.plugins.Read(ctx, c.Plugin, &pluginv1.ReadRequest{Connection: req.Connection, ResourceType: typ, Id: id})
		if err != nil {
			p.log.Warn("fhirUser not read", "connection", c.ID, "fhir_user", c.FHIRUser, "err", err)
		} else if h, err := w.Put(r.GetJson()); err == nil {
			res.Resources++
			res.ByType[h.Type]++
		}
	}
	return res, commit()
}

// fhirUserRef turns a fhirUser claim (absolute on this server, or relative)
// into a type and id; a user on another server is not read.
func fhirUserRef(fhirUser, base string) (typ, id string, ok bool) {
	ref := fhirUser
	if strings.Contains(ref, "://") {
		b := strings.TrimRight(base, "/") + "/"
		if !strings.HasPrefix(ref, b) {
			return "", "", false
		}
		ref = ref[len(b):]
	}
	typ, id, ok = strings.Cut(ref, "/")
	if !ok || !records.ValidType(typ) || !records.ValidID(id) {
		return "", "", false
	}
	return typ, id, true
}
