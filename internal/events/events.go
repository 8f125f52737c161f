// Package events owns the agent's durable, ordered event log: connection state
// changes, completed sessions, finished pulls and syncs, disabled webhooks.
// Every event has a global sequence number (its cursor); each app reads only
// its own events, from any retained cursor, and then live.
//
// Appends are synced to disk before Append returns: an app that was told
// "connection active" through the stream must find it so after a crash.
package events

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"sync"
	"time"

	"github.com/medrelay/medrelay/internal/errdefs"
	"github.com/medrelay/medrelay/internal/store"
)

// Event types. Apps match on these strings; never rename one.
const (
	SessionCompleted       = "session.completed"
	ConnectionStateChanged = "connection.state_changed"
	RecordsPullCompleted   = "records.pull.completed"
	RecordsPullFailed      = "records.pull.failed"
	RecordsSyncCompleted   = "records.sync.completed"
	RecordsSyncFailed      = "records.sync.failed"
	WebhookEndpointDisable = "webhook.endpoint_disabled"
)

// Errors.
var (
	ErrCursorExpired = errdefs.Define(errdefs.OutOfRange, "CURSOR_EXPIRED", "the cursor is older than the events the agent retains")
	ErrBadCursor     = errdefs.Define(errdefs.InvalidArgument, "CURSOR_INVALID", "the cursor is not valid")
)

// Event is one thing that happened.
type Event struct {
	// Seq orders all events of the agent; its decimal form is the cursor.
	Seq  uint64    `json:"seq"`
	Type string    `json:"type"`
	Time time.Time `json:"time"`
	// AppID is the app the event belongs to ("" for agent-wide events,
	// which only administrators see).
	AppID        string `json:"app_id,omitempty"`
	ConnectionID string `json:"connection_id,omitempty"`
	SessionID    string `json:"session_id,omitempty"`
	PatientRef   string `json:"patient_ref,omitempty"`
	// Data is the type-specific payload (JSON object).
	Data json.RawMessage `json:"data,omitempty"`
}

// Cursor is the event's position, to resume after it.
func (e Event) Cursor() string { return strconv.FormatUint(e.Seq, 10) }

// ParseCursor reads a cursor; "" means "from the oldest retained event".
func ParseCursor(c string) (uint64, error) {
	if c == "" {
		return 0, nil
	}
	v, err := strconv.ParseUint(c, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: %q", ErrBadCursor, c)
	}
	return v, nil
}

// StateChange is the Data of ConnectionStateChanged.
type StateChange struct {
	From   string `json:"from"`
	To     string `json:"to"`
	Reason string `json:"reason,omitempty"`
	// Recovered is true when a refresh_failed connection works again.
	Recovered bool `json:"recovered,omitempty"`
}

// Log is the event log.
type Log struct {
	db        *store.DB
	events    *store.Table[Event]
	byApp     *store.Table[[]byte]
	meta      *store.Table[uint64]
	log       *slog.Logger
	retention time.Duration

	mu      sync.Mutex
	changed chan struct{} // closed and replaced at every append
	taps    []func(Event)
	// inflight holds sequences given to appends not yet committed, and
	// assigned the highest sequence given out by this process. Readers see
	// only events below both: concurrent appends commit out of order, and
	// a follower that saw seq 6 before seq 5 committed would skip 5.
	inflight map[uint64]struct{}
	assigned uint64
	// headKnown: assigned has been raised to the newest stored event.
	headKnown bool
}

// Option configures a Log.
type Option func(*Log)

// WithRetention keeps events this long (default 30 days).
func WithRetention(d time.Duration) Option { return func(l *Log) { l.retention = d } }

// Retention is how long events are kept; records that describe events
// (webhook attempts) are kept as long.
func (l *Log) Retention() time.Duration { return l.retention }

// New opens the event log kept in db.
func New(db *store.DB, logger *slog.Logger, opts ...Option) *Log {
	l := &Log{
		db:        db,
		events:    store.NewTable[Event](db, store.Events),
		byApp:     store.NewTable[[]byte](db, store.EventsByApp),
		meta:      store.NewTable[uint64](db, store.Meta),
		log:       logger.With("component", "events"),
		retention: 30 * 24 * time.Hour,
		changed:   make(chan struct{}),
		inflight:  map[uint64]struct{}{},
	}
	for _, o := range opts {
		o(l)
	}
	return l
}

func seqKey(seq uint64) string { return fmt.Sprintf("%020d", seq) }

// Tap registers f to be called (synchronously, after the event is durable)
// for every appended event. Webhooks use it to learn of new events without
// polling; f must not block.
func (l *Log) Tap(f func(Event)) {
	l.mu.Lock()
	l.taps = append(l.taps, f)
	l.mu.Unlock()
}

// Append stores e durably, giving it the next sequence number and, if unset,
// the current time. data, when not nil, is marshalled into e.Data.
func (l *Log) Append(ctx context.Context, e Event, data any) (Event, error) {
	if data != nil {
		b, err := json.Marshal(data)
		if err != nil {
			return e, fmt.Errorf("events: %s data: %w", e.Type, err)
		}
		e.Data = b
	}
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	e.Time = e.Time.UTC()
	l.mu.Lock()
	seq, err := l.db.NextSeq("events")
	if err == nil {
		l.inflight[seq] = struct{}{}
		l.assigned = max(l.assigned, seq)
	}
	l.mu.Unlock()
	if err != nil {
		return e, err
	}
	e.Seq = seq
	err = l.db.Update(ctx, func(tx *store.Txn) error {
		if err := l.events.PutTx(tx, seqKey(seq), e); err != nil {
			return err
		}
		return l.byApp.PutTx(tx, e.AppID+"/"+seqKey(seq), nil)
	}, store.Synced())
	l.mu.Lock()
	delete(l.inflight, seq)
	// Wake readers even after a failure: they may be holding back later
	// events until this sequence was settled.
	close(l.changed)
	l.changed = make(chan struct{})
	taps := l.taps
	l.mu.Unlock()
	if err != nil {
		return e, fmt.Errorf("events: append %s: %w", e.Type, err)
	}
	l.log.Debug("event", "type", e.Type, "seq", e.Seq, "app", e.AppID, "connection", e.ConnectionID)
	for _, f := range taps {
		f(e)
	}
	return e, nil
}

// visibleBelow is the first sequence a reader must not return yet: the
// lowest one still being appended, or the next one to be given out.
func (l *Log) visibleBelow(ctx context.Context) (uint64, error) {
	l.mu.Lock()
	known := l.headKnown
	l.mu.Unlock()
	if !known {
		// Sequences given out before this process started are all stored
		// (or lost in a crash); the newest stored one bounds them.
		last, err := l.lastStored(ctx, math.MaxUint64)
		if err != nil {
			return 0, err
		}
		l.mu.Lock()
		l.assigned = max(l.assigned, last)
		l.headKnown = true
		l.mu.Unlock()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	low := l.assigned + 1
	for s := range l.inflight {
		low = min(low, s)
	}
	return low, nil
}

// lastStored returns the newest stored sequence below `below` (0 if none).
func (l *Log) lastStored(ctx context.Context, below uint64) (uint64, error) {
	var last uint64
	err := l.events.Scan(ctx, store.ScanOptions{Reverse: true, KeysOnly: true}, func(k string, _ Event) error {
		seq, err := strconv.ParseUint(k, 10, 64)
		if err != nil {
			return fmt.Errorf("events: bad key %q: %w", k, err)
		}
		if seq < below {
			last = seq
			return store.ErrStopScan
		}
		return nil
	})
	return last, err
}

// Head returns the cursor of the newest event readers can see: a reader
// starting there receives only events appended afterwards ("from now").
func (l *Log) Head(ctx context.Context) (uint64, error) {
	below, err := l.visibleBelow(ctx)
	if err != nil {
		return 0, err
	}
	return l.lastStored(ctx, below)
}

// Changed returns a channel closed at the next append.
func (l *Log) Changed() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.changed
}

// Filter selects events. AppID "" with All false means agent-wide events
// only; All (administrators) reads every app's events.
type Filter struct {
	AppID string
	All   bool
	Types map[string]bool
}

func (f Filter) match(e Event) bool {
	return len(f.Types) == 0 || f.Types[e.Type]
}

// Read returns up to limit events after the cursor seq `after`, oldest first.
func (l *Log) Read(ctx context.Context, f Filter, after uint64, limit int) ([]Event, error) {
	if limit <= 0 {
		limit = 500
	}
	below, err := l.visibleBelow(ctx)
	if err != nil {
		return nil, err
	}
	var out []Event
	err = l.db.View(ctx, func(tx *store.Txn) error {
		if f.All {
			return l.events.ScanTx(tx, store.ScanOptions{After: seqKey(after)}, func(_ string, e Event) error {
				if e.Seq >= below {
					return store.ErrStopScan
				}
				if f.match(e) {
					out = append(out, e)
				}
				if len(out) >= limit {
					return store.ErrStopScan
				}
				return nil
			})
		}
		prefix := f.AppID + "/"
		return l.byApp.ScanTx(tx, store.ScanOptions{Prefix: prefix, After: prefix + seqKey(after), KeysOnly: true}, func(k string, _ []byte) error {
			if seq, _ := strconv.ParseUint(k[len(prefix):], 10, 64); seq >= below {
				return store.ErrStopScan
			}
			e, err := l.events.GetTx(tx, k[len(prefix):])
			if errors.Is(err, store.ErrNotFound) {
				return nil // expired between index and event
			}
			if err != nil {
				return err
			}
			if f.match(e) {
				out = append(out, e)
			}
			if len(out) >= limit {
				return store.ErrStopScan
			}
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	if after > 0 {
		// Events after the cursor may have been pruned: tell the app it
		// missed some rather than skip them silently.
		pruned, err := l.PrunedThrough(ctx, f)
		if err != nil {
			return nil, err
		}
		if pruned > after {
			return nil, fmt.Errorf("%w: cursor %d, events through %d were pruned", ErrCursorExpired, after, pruned)
		}
	}
	return out, nil
}

// PrunedThrough returns the sequence of the newest pruned event f's reader
// could have seen (0 if none): an app is compared with the last of its own
// events pruned (of f's types, when given), so a quiet app whose cursor is
// old has not "missed" other apps' events. Read from cursor 0 means "from
// the oldest retained" and is never refused; a reader for whom 0 means
// "nothing seen yet" (a webhook endpoint created on an empty log) checks
// this itself.
func (l *Log) PrunedThrough(ctx context.Context, f Filter) (uint64, error) {
	marks := []string{prunedMark(f.All, f.AppID, "")}
	if len(f.Types) > 0 {
		marks = marks[:0]
		for t := range f.Types {
			marks = append(marks, prunedMark(f.All, f.AppID, t))
		}
	}
	var pruned uint64
	for _, m := range marks {
		v, err := l.meta.Get(ctx, m)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return 0, err
		}
		pruned = max(pruned, v)
	}
	return pruned, nil
}

// prunedMark names the meta key holding the newest pruned sequence of every
// app (all) or of one, of every type ("") or of one.
func prunedMark(all bool, app, typ string) string {
	k := "events_pruned_through"
	if !all {
		k += "/" + app
	}
	if typ != "" {
		k += "#" + typ
	}
	return k
}

// Prune deletes events older than the retention and records the last pruned
// sequence, so a cursor pointing before it is refused as expired. The agent
// runs it hourly.
func (l *Log) Prune(ctx context.Context, now time.Time) (int, error) {
	cutoff := now.Add(-l.retention)
	var keys, apps, types []string
	err := l.events.Scan(ctx, store.ScanOptions{}, func(k string, e Event) error {
		if !e.Time.Before(cutoff) {
			return store.ErrStopScan
		}
		keys, apps, types = append(keys, k), append(apps, e.AppID), append(types, e.Type)
		return nil
	})
	if err != nil || len(keys) == 0 {
		return 0, err
	}
	// The watermarks are durable before anything is deleted: a crash in
	// between leaves events that are refused as expired, never a silent gap.
	err = l.db.Update(ctx, func(tx *store.Txn) error {
		lastOf := map[string]uint64{}
		for i, k := range keys {
			seq, _ := strconv.ParseUint(k, 10, 64)
			for _, m := range []string{
				prunedMark(true, "", ""), prunedMark(true, "", types[i]),
				prunedMark(false, apps[i], ""), prunedMark(false, apps[i], types[i]),
			} {
				lastOf[m] = max(lastOf[m], seq)
			}
		}
		for m, seq := range lastOf {
			if err := l.meta.PutTx(tx, m, seq); err != nil {
				return err
			}
		}
		return nil
	}, store.Synced())
	if err != nil {
		return 0, err
	}
	b := l.db.NewBatch()
	for i, k := range keys {
		if err := store.BatchDelete(b, l.events, k); err != nil {
			b.Cancel()
			return 0, err
		}
		if err := store.BatchDelete(b, l.byApp, apps[i]+"/"+k); err != nil {
			b.Cancel()
			return 0, err
		}
	}
	return len(keys), b.Flush(false)
}

// Follow calls fn for every event matching f after `after`, then for every
// new one as it is appended, until ctx ends or fn returns an error. It is
// what EventService.Subscribe and webhook delivery are built on.
func (l *Log) Follow(ctx context.Context, f Filter, after uint64, fn func(Event) error) error {
	for {
		changed := l.Changed()
		batch, err := l.Read(ctx, f, after, 500)
		if err != nil {
			return err
		}
		for _, e := range batch {
			if err := fn(e); err != nil {
				return err
			}
			after = e.Seq
		}
		if len(batch) == 500 {
			continue
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		}
	}
}
