package connections

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/medrelay/medrelay/internal/store"
)

// The index table holds, per connection, the few fields List filters on and
// the scheduler orders by, in a compact binary form written in the same
// transaction as the connection. Start-up reads it instead of decoding every
// connection's JSON (100,000 connections: a third of the time).

const indexFormat = 1

func encodeIndex(c Connection) []byte {
	b := make([]byte, 0, 16+len(c.AppID)+len(c.PatientRef)+len(c.SourceID)+len(c.State)+len(c.Pattern))
	b = append(b, indexFormat)
	var next int64
	if !c.NextRefreshAt.IsZero() {
		next = c.NextRefreshAt.UnixNano()
	}
	b = binary.AppendVarint(b, next)
	for _, s := range []string{string(c.State), string(c.Pattern), c.AppID, c.PatientRef, c.SourceID} {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	return b
}

var errIndexRecord = errors.New("connections: bad index record")

func decodeIndex(b []byte) (indexEntry, time.Time, error) {
	var e indexEntry
	if len(b) == 0 || b[0] != indexFormat {
		return e, time.Time{}, errIndexRecord
	}
	b = b[1:]
	next, n := binary.Varint(b)
	if n <= 0 {
		return e, time.Time{}, errIndexRecord
	}
	b = b[n:]
	var fields [5]string
	for i := range fields {
		l, n := binary.Uvarint(b)
		if n <= 0 || uint64(len(b)-n) < l {
			return e, time.Time{}, errIndexRecord
		}
		fields[i] = string(b[n : n+int(l)])
		b = b[n+int(l):]
	}
	e = indexEntry{state: State(fields[0]), pattern: Pattern(fields[1]), appID: fields[2], patientRef: fields[3], sourceID: fields[4]}
	var at time.Time
	if next != 0 {
		at = time.Unix(0, next)
	}
	return e, at, nil
}

// putIndexTx writes c's index record in the caller's transaction.
func (m *Manager) putIndexTx(tx *store.Txn, c Connection) error {
	return m.idx.PutTx(tx, c.ID, encodeIndex(c))
}

// loadIndex fills the in-memory index and the refresh schedule from the
// index table, first rebuilding the table from the connections themselves
// when it is missing or was written by another format.
func (m *Manager) loadIndex(ctx context.Context) error {
	meta := store.NewTable[int](m.db, store.Meta)
	v, err := meta.Get(ctx, "connection_index_format")
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	if v != indexFormat {
		if err := m.rebuildIndex(ctx); err != nil {
			return fmt.Errorf("rebuild connection index: %w", err)
		}
		if err := meta.Put(ctx, "connection_index_format", indexFormat, store.Synced()); err != nil {
			return err
		}
	}
	return m.idx.Scan(ctx, store.ScanOptions{}, func(id string, b []byte) error {
		e, next, err := decodeIndex(b)
		if err != nil {
			return fmt.Errorf("%w: %s", err, id)
		}
		m.index[id] = e
		m.sched.consider(Connection{ID: id, State: e.state, NextRefreshAt: next})
		return nil
	})
}

func (m *Manager) rebuildIndex(ctx context.Context) error {
	b := m.db.NewBatch()
	n := 0
	err := m.conns.Scan(ctx, store.ScanOptions{}, func(id string, c Connection) error {
		n++
		return store.BatchPut(b, m.idx, id, encodeIndex(c))
	})
	if err != nil {
		b.Cancel()
		return err
	}
	m.log.Info("connection index rebuilt", "connections", n)
	return b.Flush(true)
}
