package records

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/medrelay/medrelay/internal/store"
)

// Stores written by earlier versions. They kept a heads table (replaced by
// the key index, rebuilt from the change log) and the change index in
// Badger, one entry per resource (replaced by the change log). Open removes
// the one and moves the other, once.

// dropLegacyHeads removes the heads table an earlier version kept (the key
// index replaced it and is rebuilt from the change log).
func (s *Store) dropLegacyHeads(ctx context.Context) error {
	n, err := s.deleteBatched(ctx, s.heads, "", nil)
	if err != nil {
		return fmt.Errorf("records: remove the old heads table: %w", err)
	}
	if n > 0 {
		s.log.Info("removed the heads table of an earlier version; key indexes are rebuilt from the change index", "entries", n)
	}
	return nil
}

// convertLegacyChanges moves every connection's change entries from Badger
// to its change log.
func (s *Store) convertLegacyChanges(ctx context.Context) error {
	for {
		var conn string
		err := s.changes.Scan(ctx, store.ScanOptions{KeysOnly: true, Limit: 1}, func(k string, _ []byte) error {
			conn, _, _ = strings.Cut(k, "/")
			return nil
		})
		if err != nil {
			return fmt.Errorf("records: convert the change index: %w", err)
		}
		if conn == "" {
			return s.dropLegacyPending(ctx)
		}
		if err := s.convertLegacyConn(ctx, conn); err != nil {
			return fmt.Errorf("records: convert the change index of %s: %w", conn, err)
		}
	}
}

// convertLegacyConn writes conn's Badger change entries to its change log,
// commits it, then removes them. A crash before the commit converts again
// from the start (the file written is not committed); a crash after it
// finds the log committed and only removes what is left.
func (s *Store) convertLegacyConn(ctx context.Context, conn string) error {
	start := time.Now()
	l, err := s.changeLog(ctx, conn)
	if err != nil {
		return err
	}
	l.mu.RLock()
	done := l.total > 0
	l.mu.RUnlock()
	n, skipped := 0, 0
	if !done {
		// An interrupted batch (its pending marker names its first
		// sequence) may have left a change and the one it superseded both
		// stored: from there on, a change keeps its prev when that change
		// is still there, and the log then lists only the newer. Elsewhere
		// the superseded change was removed with the batch that replaced it.
		var pendingFirst uint64
		if v, err := s.pending.Get(ctx, conn); err == nil {
			if pendingFirst, err = parseSeqHex(string(v)); err != nil {
				return fmt.Errorf("pending batch: %w", err)
			}
		} else if !errors.Is(err, store.ErrNotFound) {
			return err
		}
		a := l.appender(false)
		var val []byte
		var c change
		err := s.db.View(ctx, func(tx *store.Txn) error {
			return s.changes.ScanTx(tx, store.ScanOptions{Prefix: conn + "/"}, func(k string, v []byte) error {
				seq, typ, err := parseChangeKey(k[len(conn)+1:])
				if err == nil {
					c, err = decodeChange(v, nil)
				}
				if err != nil {
					// One damaged entry must not keep the agent from
					// starting: it is left out (the connection's next
					// sync or pull stores the resource again) and said.
					s.log.Error("left out a damaged change entry of an earlier version", "connection", conn, "key", clip(k), "err", err)
					skipped++
					return nil
				}
				if c.prev != 0 {
					keep := false
					if pendingFirst != 0 && seq >= pendingFirst {
						keep, err = s.changes.PeekTx(tx, changeKey(conn, c.prev, typ), func([]byte) error { return nil })
						if err != nil {
							return err
						}
					}
					if !keep {
						c.prev = 0
					}
				}
				val = appendChange(val[:0], &c)
				if err := a.add(seq, val, c.prev); err != nil {
					return err
				}
				n++
				if len(a.buf) >= 1<<20 {
					return a.flush()
				}
				return nil
			})
		})
		if err == nil {
			err = a.write()
		}
		if err != nil {
			a.failed()
			return err
		}
		if _, err := a.commitAlone(); err != nil {
			return err
		}
	}
	// The pending marker goes with the last batch.
	if _, err := s.deleteBatched(ctx, s.changes, conn+"/", func(b *store.Batch) error {
		return store.BatchDelete(b, s.pending, conn)
	}); err != nil {
		return err
	}
	if n > 0 || skipped > 0 {
		s.log.Info("moved a connection's change index to its change log", "connection", conn, "changes", n, "left_out", skipped, "took", time.Since(start).Round(time.Millisecond))
	}
	return nil
}

// deleteBatched removes the keys of t under prefix, a synced batch of at
// most 100,000 at a time (a large table is more than one batch holds), and
// returns how many it removed. last, when set, adds to the final batch,
// which is then flushed even when it removes no key.
func (s *Store) deleteBatched(ctx context.Context, t *store.Table[[]byte], prefix string, last func(b *store.Batch) error) (int, error) {
	const most = 100000
	n := 0
	for {
		b := s.db.NewBatch()
		k := 0
		err := t.Scan(ctx, store.ScanOptions{Prefix: prefix, KeysOnly: true}, func(key string, _ []byte) error {
			if k >= most {
				return store.ErrStopScan
			}
			k++
			return store.BatchDelete(b, t, key)
		})
		final := k < most
		if err == nil && final && last != nil {
			err = last(b)
		}
		if err != nil || k == 0 && last == nil {
			b.Cancel()
			return n, err
		}
		if err := b.Flush(true); err != nil {
			return n, err
		}
		n += k
		if final {
			return n, nil
		}
	}
}

// dropLegacyPending removes pending markers left without change entries
// (a connection whose interrupted batch had written none of them).
func (s *Store) dropLegacyPending(ctx context.Context) error {
	b := s.db.NewBatch()
	n := 0
	err := s.pending.Scan(ctx, store.ScanOptions{KeysOnly: true}, func(k string, _ []byte) error {
		n++
		return store.BatchDelete(b, s.pending, k)
	})
	if err != nil || n == 0 {
		b.Cancel()
		return err
	}
	return b.Flush(true)
}
