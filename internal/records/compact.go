package records

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/medrelay/medrelay/internal/store"
)

// Segment compaction. A new version of a resource leaves the old body in
// its segment, unreferenced. Compact copies the bodies still referenced out
// of segments that are mostly garbage into the connection's current
// segment, points their change entries at the copies, and deletes a segment
// at the next run once nothing refers to it: a reader that read a change
// entry just before the move still finds the old file in between (a page
// reads its bodies right after its entries; runs are minutes apart).
//
// A crash part-way leaves some entries pointing at copies and the rest at
// the old segment, all readable; the next run finishes.

// compactBelow is the share of a segment's bytes still referenced under
// which it is rewritten.
const compactBelow = 0.5

// connIDFile names a connection's directory's owner (directory names are
// hashes), so that the compactor can walk every connection.
const connIDFile = "connection"

// CompactStats is what a Compact run did.
type CompactStats struct {
	Rewritten int   // segments copied out of
	Moved     int   // bodies copied
	Removed   int   // segment files deleted
	Reclaimed int64 // bytes of files deleted
}

// Compact reclaims the space of replaced bodies in conn's segments.
// Writers of conn wait while a segment is copied.
func (s *Store) Compact(ctx context.Context, conn string) (CompactStats, error) {
	var st CompactStats
	if s.segs == nil {
		return st, nil
	}
	if err := checkConn(conn); err != nil {
		return st, err
	}
	mu := s.lock(conn)
	mu.Lock()
	defer mu.Unlock()
	if _, gone := s.deleted.Load(conn); gone {
		return st, nil
	}
	if err := s.repairIfPending(ctx, conn); err != nil {
		return st, err
	}
	files, err := s.segs.files(conn)
	if err != nil || len(files) == 0 {
		return st, err
	}
	live := map[uint64]int64{}
	err = s.changes.Scan(ctx, store.ScanOptions{Prefix: conn + "/"}, func(k string, v []byte) error {
		c, err := decodeChange(v, nil)
		if err != nil {
			return fmt.Errorf("change %s: %w", k, err)
		}
		if c.ext {
			live[c.loc.seg] += int64(c.loc.n)
		}
		return nil
	})
	if err != nil {
		return st, fmt.Errorf("records: compact %s: %w", conn, err)
	}
	current := s.segs.current(conn)
	// A process appends to a segment of its own, so a connection written
	// after every restart gathers small segments: past manySegments, the
	// small ones are merged too.
	many := len(files) > manySegments
	move := map[uint64]bool{}
	for id, size := range files {
		switch {
		case id == current:
		case live[id] == 0:
			if err := os.Remove(s.segs.segPath(conn, id)); err != nil && !errors.Is(err, os.ErrNotExist) {
				return st, err
			}
			s.segs.forget(s.segs.segPath(conn, id))
			s.segs.removed(size)
			st.Removed++
			st.Reclaimed += size
		case float64(live[id]) < compactBelow*float64(size), many && size < smallSegment:
			move[id] = true
		}
	}
	if len(move) > 0 {
		n, err := s.moveOut(ctx, conn, move)
		if err != nil {
			return st, fmt.Errorf("records: compact %s: %w", conn, err)
		}
		st.Rewritten += len(move)
		st.Moved += n
	}
	return st, nil
}

// manySegments and smallSegment: a connection with more segments than
// manySegments has those under smallSegment merged.
const (
	manySegments = 8
	smallSegment = 4 << 20
)

// moveOut copies the referenced bodies of the segments in segs to the
// current segment and repoints their change entries, a batch at a time.
// Callers hold the connection's lock.
func (s *Store) moveOut(ctx context.Context, conn string, segs map[uint64]bool) (int, error) {
	moved := 0
	after := ""
	for {
		var keys []string
		var recs []Record
		var cs []change
		size := 0
		err := s.changes.Scan(ctx, store.ScanOptions{Prefix: conn + "/", After: after}, func(k string, v []byte) error {
			after = k
			c, err := decodeChange(v, nil)
			if err != nil {
				return fmt.Errorf("change %s: %w", k, err)
			}
			if !c.ext || !segs[c.loc.seg] {
				return nil
			}
			keys, recs, cs = append(keys, k), append(recs, Record{Type: c.typ, ID: c.id}), append(cs, c)
			if size += int(c.loc.n); size >= 4<<20 || len(keys) >= 5000 {
				return store.ErrStopScan
			}
			return nil
		})
		if err != nil {
			return moved, err
		}
		if len(keys) == 0 {
			return moved, nil
		}
		bodies := make([][]byte, len(keys))
		if err := s.readBodies(conn, recs, cs, func(i int, b []byte) { bodies[i] = b }); err != nil {
			return moved, err
		}
		// As in Writer.send: the copies are written and synced before
		// any entry pointing at them goes to the store.
		app := s.segs.appender(conn, nil)
		var ops opList
		var vals []byte
		for i := range cs {
			c := cs[i]
			if c.loc, err = app.add(c.typ, c.id, bodies[i]); err != nil {
				return moved, err
			}
			start := len(vals)
			vals = c.appendHeader(vals)
			ops.put(s.changes, keys[i], vals[start:len(vals):len(vals)])
		}
		if err := app.write(true); err != nil {
			return moved, err
		}
		b := s.db.NewBatch()
		if err := ops.apply(b); err != nil {
			b.Cancel()
			return moved, err
		}
		if err := b.Flush(true); err != nil {
			return moved, err
		}
		moved += len(keys)
	}
}

// RunCompactor compacts every connection's segments every interval until
// ctx ends.
func (s *Store) RunCompactor(ctx context.Context, every time.Duration) {
	if s.segs == nil || every <= 0 {
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.CompactAll(ctx)
	}
}

// CompactAll runs Compact for the connections that may have something to
// reclaim, logging what it reclaimed and what failed: every connection with
// segments at its first run in this process, then those written since the
// previous run (garbage and new segments only come from writes). A large
// connection is scanned whole by Compact, under its lock, so untouched ones
// are not rescanned every hour. It returns how many connections it looked at.
func (s *Store) CompactAll(ctx context.Context) int {
	if s.segs == nil {
		return 0
	}
	var conns []string
	if !s.segs.compactedOnce.Swap(true) {
		s.segs.takeWritten() // all of them, below
		dirs, err := os.ReadDir(s.segs.dir)
		if err != nil {
			s.log.Warn("segment compaction: list connections", "err", err)
			return 0
		}
		for _, d := range dirs {
			b, err := os.ReadFile(filepath.Join(s.segs.dir, d.Name(), connIDFile))
			if err != nil {
				continue // being created, or not ours
			}
			if conn := string(b); s.segs.connDir(conn) == filepath.Join(s.segs.dir, d.Name()) {
				conns = append(conns, conn)
			}
		}
	} else {
		conns = s.segs.takeWritten()
	}
	for i, conn := range conns {
		if ctx.Err() != nil {
			return i
		}
		st, err := s.Compact(ctx, conn)
		if err != nil {
			s.log.Warn("segment compaction", "connection", conn, "err", err)
			continue
		}
		if st.Removed > 0 || st.Rewritten > 0 {
			s.log.Info("segment compaction", "connection", conn, "rewritten", st.Rewritten, "moved", st.Moved, "removed", st.Removed, "reclaimed_bytes", st.Reclaimed)
		}
	}
	return len(conns)
}
