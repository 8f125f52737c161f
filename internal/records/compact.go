package records

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/medrelay/medrelay/internal/store"
)

// Compaction. A new version of a resource leaves the old body in its
// segment, unreferenced, and the superseded change in the change log.
// Compact rewrites the change log without its superseded changes, copying
// the bodies still referenced out of segments that are mostly garbage into
// the connection's current segment on the way, and deletes a segment at
// the next run once nothing refers to it: a reader that read a change just
// before the rewrite still finds the old file in between (a page reads its
// bodies right after its changes; runs are minutes apart).
//
// The rewritten log is a new file, committed in one transaction that also
// drops the lengths of the files it replaces: a crash part-way leaves the
// old log in place and the new file unreferenced (removed at the next load).

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
	Dropped   int   // superseded changes dropped from the change log
}

// Compact reclaims the space of replaced bodies in conn's segments and of
// superseded changes in its change log. Writers of conn wait meanwhile.
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
	s.pipe(conn).idle() // commits planned before have ended
	if _, gone := s.deleted.Load(conn); gone {
		return st, nil
	}
	l, err := s.changeLog(ctx, conn)
	if err != nil {
		return st, err
	}
	files, err := s.segs.files(conn)
	if err != nil {
		return st, err
	}
	live := map[uint64]int64{}
	err = l.scan(ctx, 0, func(seq uint64, v []byte) error {
		c, err := decodeChange(v, nil)
		if err != nil {
			return fmt.Errorf("change %d: %w", seq, err)
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
	l.mu.RLock()
	dead, total, nfiles := l.dead.len(), l.total, 0
	for _, f := range l.files {
		// A rewrite fills files up to maxLogFile: only the others (a
		// file per start, or per failed append) are worth merging.
		if f.size < maxLogFile/2 {
			nfiles++
		}
	}
	l.mu.RUnlock()
	// The log is rewritten when a quarter of it is superseded (each change
	// is then rewritten a bounded number of times), when it is spread over
	// many small files (a process appends to a file of its own), and to repoint
	// moved bodies.
	if len(move) > 0 || (dead > 0 && 4*dead >= total) || dead >= maxDead || nfiles > manySegments {
		n, err := s.rewrite(ctx, l, move)
		if err != nil {
			return st, fmt.Errorf("records: compact %s: %w", conn, err)
		}
		st.Rewritten += len(move)
		st.Moved += n
		st.Dropped += dead
	}
	return st, nil
}

// manySegments and smallSegment: a connection with more segments than
// manySegments has those under smallSegment merged (and one with more small log
// files than manySegments has its log rewritten).
const (
	manySegments = 8
	smallSegment = 4 << 20
)

// maxDead: a log with this many superseded changes is rewritten whatever
// its size (their set is held in memory, about 8 bytes each).
const maxDead = 1 << 20

// rewrite writes l anew without its superseded changes, copying the bodies
// in the segments of move to the current segment. It returns how many
// bodies it copied. Callers hold the connection's lock.
func (s *Store) rewrite(ctx context.Context, l *changeLog, move map[uint64]bool) (int, error) {
	conn := l.conn
	a := l.appender(true)
	moved := 0
	var after uint64
	var seal, val []byte
	for {
		var seqs []uint64
		var recs []Record
		var cs []change
		size := 0
		err := l.scan(ctx, after, func(seq uint64, v []byte) error {
			c, err := decodeChange(v, nil)
			if err != nil {
				return fmt.Errorf("change %d: %w", seq, err)
			}
			c.json = slices.Clone(c.json)
			after = seq
			seqs, recs, cs = append(seqs, seq), append(recs, Record{Type: c.typ, ID: c.id}), append(cs, c)
			if c.ext && move[c.loc.seg] {
				size += int(c.loc.n)
			}
			if size >= 4<<20 || len(seqs) >= 5000 {
				return store.ErrStopScan
			}
			return nil
		})
		if err != nil {
			a.failed()
			return moved, err
		}
		if len(seqs) == 0 {
			break
		}
		// The bodies to copy, read in one go.
		var mrecs []Record
		var mcs []change
		var at []int
		for i, c := range cs {
			if c.ext && !c.deleted && move[c.loc.seg] {
				mrecs, mcs, at = append(mrecs, recs[i]), append(mcs, c), append(at, i)
			}
		}
		bodies := make([][]byte, len(cs))
		if err := s.readBodies(conn, mrecs, mcs, func(i int, b []byte) { bodies[at[i]] = b }); err != nil {
			a.failed()
			return moved, err
		}
		app := s.segs.appender(conn, seal)
		for i := range cs {
			c := &cs[i]
			if bodies[i] != nil {
				if c.loc, err = app.add(c.typ, c.id, bodies[i]); err != nil {
					a.failed()
					return moved, err
				}
				moved++
			}
			// Every change it superseded is left behind.
			c.prev = 0
			val = appendChange(val[:0], c)
			if err := a.add(seqs[i], val, 0); err != nil {
				a.failed()
				return moved, err
			}
		}
		// The copies are synced before the log that points at them is
		// committed (below).
		err = app.write(true)
		seal = app.buf
		if err == nil {
			err = a.flush()
		}
		if err != nil {
			a.failed()
			return moved, err
		}
	}
	if a.empty() {
		return moved, nil
	}
	if err := a.write(); err != nil {
		a.failed()
		return moved, err
	}
	// The replaced files go only once the transaction that drops them is
	// synced (if the sync fails, the next load removes them).
	old, err := a.commitAlone()
	if err != nil {
		return moved, err
	}
	l.retire(old)
	return moved, nil
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
		case conn := <-s.compactSoon:
			// A log a quarter superseded (changeLogs.onDead).
			s.compactQueued.Delete(conn)
			s.compactLogged(ctx, conn)
			continue
		case <-t.C:
		}
		s.CompactAll(ctx)
	}
}

// compactLater asks the compactor to compact conn soon (once until it
// does). It never blocks: it is called while a commit publishes.
func (s *Store) compactLater(conn string) {
	if _, queued := s.compactQueued.LoadOrStore(conn, true); queued {
		return
	}
	select {
	case s.compactSoon <- conn:
	default:
		s.compactQueued.Delete(conn) // the regular run will find it
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
		s.compactLogged(ctx, conn)
	}
	return len(conns)
}

// compactLogged runs Compact and logs what it reclaimed or why it failed.
func (s *Store) compactLogged(ctx context.Context, conn string) {
	st, err := s.Compact(ctx, conn)
	if err != nil {
		s.log.Warn("compaction", "connection", conn, "err", err)
		return
	}
	if st.Dropped > 0 || st.Removed > 0 || st.Rewritten > 0 {
		s.log.Info("compaction", "connection", conn, "dropped", st.Dropped, "rewritten", st.Rewritten, "moved", st.Moved, "removed", st.Removed, "reclaimed_bytes", st.Reclaimed)
	}
}
