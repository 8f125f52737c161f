// Package audit owns the audit log: who called what, on which connection or
// patient, when, and how it ended. Entries are written by a background writer
// in batches so recording costs a call a channel send, not a disk write;
// Close drains everything still queued before the store closes.
package audit

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/medrelay/medrelay/internal/store"
)

// Entry is one audited call.
type Entry struct {
	ID   string    `json:"id"`
	Time time.Time `json:"time"`
	// Caller
	Kind    string `json:"kind"` // "admin" or "app"
	AppID   string `json:"app_id,omitempty"`
	AppName string `json:"app_name,omitempty"`
	UID     int    `json:"uid"`
	GID     int    `json:"gid"`
	PID     int    `json:"pid"`
	// What
	Method       string        `json:"method"`
	ConnectionID string        `json:"connection_id,omitempty"`
	PatientRef   string        `json:"patient_ref,omitempty"`
	Outcome      string        `json:"outcome"`
	Detail       string        `json:"detail,omitempty"`
	Duration     time.Duration `json:"duration"`
}

// Log is the audit log.
type Log struct {
	db    *store.DB
	table *store.Table[Entry]
	log   *slog.Logger

	in      chan Entry
	done    chan struct{}
	closeMu sync.RWMutex
	closed  bool
}

// New starts the audit writer. Call Close before closing db.
func New(db *store.DB, logger *slog.Logger) *Log {
	l := &Log{
		db:    db,
		table: store.NewTable[Entry](db, store.Audit),
		log:   logger.With("component", "audit"),
		in:    make(chan Entry, 4096),
		done:  make(chan struct{}),
	}
	go l.writer()
	return l
}

// Record queues e. It blocks only if the writer is thousands of entries
// behind: an audit entry is never dropped to keep a call fast.
func (l *Log) Record(e Entry) {
	l.closeMu.RLock()
	defer l.closeMu.RUnlock()
	if l.closed {
		l.log.Error("audit entry after close", "method", e.Method)
		return
	}
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	e.Time = e.Time.UTC()
	l.in <- e
}

func (l *Log) writer() {
	defer close(l.done)
	const maxBatch = 512
	batch := make([]Entry, 0, maxBatch)
	for e := range l.in {
		batch = append(batch[:0], e)
	more:
		for len(batch) < maxBatch {
			select {
			case e, ok := <-l.in:
				if !ok {
					break more
				}
				batch = append(batch, e)
			default:
				break more
			}
		}
		l.write(batch)
	}
}

func (l *Log) write(batch []Entry) {
	b := l.db.NewBatch()
	for i := range batch {
		seq, err := l.db.NextSeq("audit")
		if err != nil {
			l.log.Error("audit sequence", "err", err)
			b.Cancel()
			return
		}
		batch[i].ID = key(batch[i].Time, seq)
		if err := store.BatchPut(b, l.table, batch[i].ID, batch[i]); err != nil {
			l.log.Error("audit write", "err", err)
		}
	}
	if err := b.Flush(false); err != nil {
		l.log.Error("audit flush", "err", err, "entries", len(batch))
	}
}

// key orders entries by time, then by sequence for entries in the same
// nanosecond, and lets List seek straight to a time.
func key(t time.Time, seq uint64) string {
	return fmt.Sprintf("%020d-%012d", t.UnixNano(), seq)
}

// Close writes everything queued and stops the writer.
func (l *Log) Close() {
	l.closeMu.Lock()
	if l.closed {
		l.closeMu.Unlock()
		return
	}
	l.closed = true
	close(l.in)
	l.closeMu.Unlock()
	<-l.done
}

// Filter selects entries.
type Filter struct {
	Since time.Time
	AppID string
}

// List returns up to limit entries matching f in time order, after the
// cursor given (the previous page's last ID).
func (l *Log) List(ctx context.Context, f Filter, limit int, after string) ([]Entry, string, error) {
	if limit <= 0 || limit > 1000 {
		limit = 100
	}
	if after == "" && !f.Since.IsZero() {
		// Everything strictly after "since minus one nanosecond, last seq".
		after = fmt.Sprintf("%020d-%012d", f.Since.UnixNano()-1, uint64(999999999999))
	}
	var out []Entry
	next := ""
	err := l.table.Scan(ctx, store.ScanOptions{After: after}, func(_ string, e Entry) error {
		if f.AppID != "" && e.AppID != f.AppID {
			return nil
		}
		if len(out) == limit {
			next = out[len(out)-1].ID
			return store.ErrStopScan
		}
		out = append(out, e)
		return nil
	})
	return out, next, err
}
