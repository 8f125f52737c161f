package records

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/medrelay/medrelay/internal/store"
)

// Writer buffers changes to one connection's records and writes them in
// batches with Commit. Puts and deletes are applied in the order given. A
// Writer is not safe for concurrent use; several Writers (one per file of a
// bulk export, say) may write the same connection at once.
type Writer struct {
	s     *Store
	conn  string
	sync  bool
	items []item
	arena []byte            // JSON of buffered puts
	vals  []byte            // a change's value, built by plan (reused)
	seal  []byte            // sealed bodies for the segment (reused)
	names map[string]string // interned type names
	heads map[string]head   // heads as changed by the commit in progress
	pairs []keyPair         // the commit's new key index entries
	cands []uint64          // scratch for key index lookups
}

type item struct {
	typ, id, version string
	lastUpdated      int64
	hash             uint64
	off, n           int // JSON in arena
	deleted          bool
}

// WriterOption configures a Writer.
type WriterOption func(*Writer)

// WithoutSync makes Commit return before its batch is fsynced. A process
// crash still loses nothing committed; a power cut may lose the last
// batches (and, as with any crash, the caller then resumes from an earlier
// progress marker).
func WithoutSync() WriterOption { return func(w *Writer) { w.sync = false } }

// NewWriter starts a writer for conn.
func (s *Store) NewWriter(conn string, opts ...WriterOption) (*Writer, error) {
	if err := checkConn(conn); err != nil {
		return nil, err
	}
	w := &Writer{s: s, conn: conn, sync: true, names: map[string]string{}, heads: map[string]head{}}
	for _, o := range opts {
		o(w)
	}
	return w, nil
}

// Len is the number of buffered changes; Size their bytes of JSON.
func (w *Writer) Len() int  { return len(w.items) }
func (w *Writer) Size() int { return len(w.arena) }

// Put buffers one resource, given as its JSON. It returns the resource's
// header, or an error wrapping ErrMalformed (nothing is buffered then).
func (w *Writer) Put(raw []byte) (Header, error) {
	h, err := ScanHeader(raw)
	if err != nil {
		return h, err
	}
	off := len(w.arena)
	w.arena = append(w.arena, raw...)
	w.items = append(w.items, item{
		typ: w.intern(h.Type), id: h.ID, version: h.VersionID,
		lastUpdated: unixNanos(h.LastUpdated), hash: xxhash.Sum64(raw),
		off: off, n: len(raw),
	})
	return h, nil
}

// Delete buffers the deletion of a resource, leaving a tombstone so readers
// of the change index learn of it. at is when the source deleted it, when
// known (zero otherwise): a put whose meta.lastUpdated is not after it is
// then stale, and the tombstone is stale if the stored copy is newer.
func (w *Writer) Delete(typ, id string, at time.Time) error {
	if !ValidType(typ) {
		return fmt.Errorf("%w: %q", ErrBadType, clip(typ))
	}
	if !ValidID(id) {
		return fmt.Errorf("%w: %q", ErrBadID, clip(id))
	}
	w.items = append(w.items, item{typ: w.intern(typ), id: id, lastUpdated: unixNanos(at), deleted: true})
	return nil
}

func (w *Writer) intern(t string) string {
	if s, ok := w.names[t]; ok {
		return s
	}
	w.names[t] = t
	return t
}

// Discard drops what is buffered.
func (w *Writer) Discard() { w.reset() }

func (w *Writer) reset() {
	w.items = w.items[:0]
	w.arena = w.arena[:0]
	w.vals = w.vals[:0]
	clear(w.heads)
	// One huge resource must not pin its buffer for the writer's life.
	if cap(w.arena) > 64<<20 {
		w.arena = nil
	}
	if cap(w.vals) > 64<<20 {
		w.vals = nil
	}
	if cap(w.seal) > 64<<20 {
		w.seal = nil
	}
}

// Counts says what a Commit did.
type Counts struct {
	Written   int // new or changed resources
	Deleted   int // tombstones written
	Unchanged int // identical to the stored copy (e.g. a re-ingested line)
	Stale     int // older than the stored copy or its tombstone
}

func (c *Counts) Add(o Counts) {
	c.Written += o.Written
	c.Deleted += o.Deleted
	c.Unchanged += o.Unchanged
	c.Stale += o.Stale
}

// Marker adds the caller's progress to the batch being committed, in
// tables the caller owns (store.BatchPut); n is what this batch does. It is
// written after the records it covers: once it is stored, so are they.
type Marker func(b *store.Batch, n Counts) error

type verdict int

const (
	apply verdict = iota
	unchanged
	stale
)

func decide(cur head, found bool, it *item) verdict {
	if !found {
		return apply
	}
	known := cur.lastUpdated != 0 && it.lastUpdated != 0
	if it.deleted {
		switch {
		case cur.deleted:
			return unchanged
		case known && cur.lastUpdated > it.lastUpdated:
			return stale // re-created after the deletion
		}
		return apply
	}
	switch {
	case cur.deleted:
		if known && it.lastUpdated <= cur.lastUpdated {
			return stale // a copy from before the deletion
		}
	case cur.hash == it.hash:
		return unchanged
	case it.version != "" && it.version == cur.versionID && it.lastUpdated == cur.lastUpdated:
		return unchanged // same version, served differently
	case known && it.lastUpdated < cur.lastUpdated:
		return stale
	}
	return apply
}

// Commit writes what is buffered, then marker (may be nil), as one batch,
// and empties the writer. Changes that alter nothing are not written and do
// not move in the change index.
//
// The connection's lock is held until the batch is stored, so that the
// next batch decides against this one's heads, and readers see changes in
// sequence order.
func (w *Writer) Commit(ctx context.Context, marker Marker) (Counts, error) {
	if len(w.items) == 0 && marker == nil {
		return Counts{}, nil
	}
	defer w.reset()
	s := w.s
	mu := s.lock(w.conn)
	mu.Lock()
	defer mu.Unlock()
	b, la, n, err := w.send(ctx, marker)
	if err == nil {
		// Committed first, synced after: once the transaction is in
		// Badger its entries are the log's, whether or not the sync then
		// fails, and must be visible to the next plan.
		if err = b.Flush(false); err != nil {
			la.failed()
		} else {
			la.publish()
			if w.sync {
				err = s.db.Sync()
			}
		}
	}
	if err != nil {
		return Counts{}, fmt.Errorf("records: commit %s: %w", w.conn, err)
	}
	return n, nil
}

// send plans the batch, writes its bodies, key index entries and change
// log blocks, and fills the store batch that commits them, ready to flush.
// Callers hold the connection's lock.
func (w *Writer) send(ctx context.Context, marker Marker) (*store.Batch, *logAppend, Counts, error) {
	s := w.s
	if _, gone := s.deleted.Load(w.conn); gone {
		return nil, nil, Counts{}, fmt.Errorf("%w: %s", ErrDeleted, w.conn)
	}
	l, err := s.changeLog(ctx, w.conn)
	if err != nil {
		return nil, nil, Counts{}, err
	}
	ck, err := s.connKeys(ctx, l)
	if err != nil {
		return nil, nil, Counts{}, err
	}
	var app *appender
	if s.segs != nil {
		app = s.segs.appender(w.conn, w.seal)
	}
	la := l.appender(false)
	n, err := w.plan(ctx, l, ck, la, app)
	if err != nil {
		la.failed()
		return nil, nil, n, err
	}
	// Bodies, key index entries and log blocks are written and synced at
	// once, all before the transaction that commits them: an entry that
	// outlived its body after a power cut would read as stored (and
	// unchanged on the next sync) while the body is gone, and a change the
	// key index cannot find would be stored again as a new one. The bodies
	// are synced even for a writer WithoutSync (measured: no slower).
	jerr, lerr := make(chan error, 1), make(chan error, 1)
	go func() { jerr <- ck.journal(w.pairs) }()
	go func() { lerr <- la.write() }()
	if app != nil {
		err = app.write(true)
		w.seal = app.buf
	}
	if err = errors.Join(err, <-jerr, <-lerr); err != nil {
		la.failed()
		return nil, nil, n, err
	}
	if err := ck.add(w.pairs); err != nil {
		la.failed()
		return nil, nil, n, err
	}
	b := s.db.NewAtomicBatch()
	err = la.commit(b)
	if err == nil && marker != nil {
		err = marker(b, n)
	}
	if err != nil {
		b.Cancel()
		la.failed()
		return nil, nil, n, err
	}
	return b, la, n, nil
}

// plan decides what each buffered change does and adds the new changes to
// la (and their bodies to app, when the store keeps them in segments) and
// their key index entries to w.pairs. It returns the counts. Callers hold
// the connection's lock.
func (w *Writer) plan(ctx context.Context, l *changeLog, ck *connKeys, la *logAppend, app *appender) (Counts, error) {
	var n Counts
	s := w.s
	w.pairs = w.pairs[:0]
	for i := range w.items {
		it := &w.items[i]
		hk := headKey(w.conn, it.typ, it.id)
		cur, found := w.heads[hk]
		if !found {
			seq, c, ok, cands, err := s.current(ctx, l, ck, it.typ, it.id, w.cands)
			w.cands = cands
			if err != nil {
				return n, err
			}
			if ok {
				cur, found = c.head(seq), true
			}
		}
		switch decide(cur, found, it) {
		case unchanged:
			n.Unchanged++
			continue
		case stale:
			n.Stale++
			continue
		}
		seq, err := s.db.NextSeq(seqName)
		if err != nil {
			return n, err
		}
		c := change{deleted: it.deleted, lastUpdated: it.lastUpdated, hash: it.hash, typ: it.typ, id: it.id, versionID: it.version}
		if found {
			c.prev = cur.seq
		}
		body := w.arena[it.off : it.off+it.n]
		if app != nil && !it.deleted {
			if c.loc, err = app.add(it.typ, it.id, body); err != nil {
				return n, err
			}
			c.ext = true
		} else if !it.deleted {
			c.json = body
		}
		w.vals = appendChange(w.vals[:0], &c)
		if err := la.add(seq, w.vals, c.prev); err != nil {
			return n, err
		}
		w.pairs = append(w.pairs, keyPair{keyOf(it.typ, it.id), seq})
		w.heads[hk] = c.head(seq)
		if it.deleted {
			n.Deleted++
		} else {
			n.Written++
		}
	}
	return n, nil
}
