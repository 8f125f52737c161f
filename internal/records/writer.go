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
	vals  []byte            // values built by Commit (reused)
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
// sequence order. (Handing the batch over under the lock and waiting
// outside it, with the heads of batches in flight kept aside for the next
// plan, was tried: a 1M-resource sync was no faster, the machine's two
// cores being busy with Badger's writes and compactions already.)
func (w *Writer) Commit(ctx context.Context, marker Marker) (Counts, error) {
	if len(w.items) == 0 && marker == nil {
		return Counts{}, nil
	}
	defer w.reset()
	s := w.s
	mu := s.lock(w.conn)
	mu.Lock()
	defer mu.Unlock()
	b, n, err := w.send(ctx, marker)
	if err == nil {
		err = b.Flush(w.sync)
	}
	if err != nil {
		return Counts{}, fmt.Errorf("records: commit %s: %w", w.conn, err)
	}
	return n, nil
}

// send plans the batch, writes its bodies and fills a store batch, ready
// to flush. Callers hold the connection's lock.
func (w *Writer) send(ctx context.Context, marker Marker) (*store.Batch, Counts, error) {
	s := w.s
	if _, gone := s.deleted.Load(w.conn); gone {
		return nil, Counts{}, fmt.Errorf("%w: %s", ErrDeleted, w.conn)
	}
	if err := s.repairIfPending(ctx, w.conn); err != nil {
		return nil, Counts{}, err
	}
	var app *appender
	if s.segs != nil {
		app = s.segs.appender(w.conn, w.seal)
	}
	// The writes are collected first: the bodies must be stored before
	// any entry pointing at them reaches the store, and a Badger
	// WriteBatch commits parts of a large batch while it is filled.
	ck, err := s.connKeys(ctx, w.conn)
	if err != nil {
		return nil, Counts{}, err
	}
	var ops opList
	n, first, err := w.plan(ctx, ck, &ops, app)
	if err != nil {
		return nil, n, err
	}
	// The key index entries are journaled (and synced) at the same time,
	// for the same reason: a change the index cannot find would be stored
	// again as a new one.
	jerr := make(chan error, 1)
	go func() { jerr <- ck.journal(w.pairs) }()
	if app != nil {
		// Written and synced before the entries that point at them, even
		// for a writer WithoutSync: Badger's unsynced writes and ours
		// reach the disk in no particular order, and an entry that
		// outlived its body after a power cut would read as stored (and
		// unchanged on the next sync) while the body is gone. Measured:
		// no slower (a 1M-resource sync took 15.3s against 18-20s without
		// the sync).
		err = app.write(true)
		w.seal = app.buf
	}
	if err = errors.Join(err, <-jerr); err != nil {
		return nil, n, err
	}
	if err := ck.add(w.pairs); err != nil {
		return nil, n, err
	}
	b := s.db.NewBatch()
	err = ops.apply(b)
	if err == nil && marker != nil {
		err = marker(b, n)
	}
	if err == nil && first != 0 {
		err = store.BatchDelete(b, s.pending, w.conn)
	}
	if err != nil {
		b.Cancel()
		return nil, n, err
	}
	return b, n, nil
}

// opList collects a commit's writes to apply them later, in order.
type opList []op

type op struct {
	t   *store.Table[[]byte]
	key string
	val []byte
	del bool
}

func (l *opList) put(t *store.Table[[]byte], key string, v []byte) {
	*l = append(*l, op{t: t, key: key, val: v})
}

func (l *opList) del(t *store.Table[[]byte], key string) {
	*l = append(*l, op{t: t, key: key, del: true})
}

func (l opList) apply(b *store.Batch) error {
	for _, o := range l {
		var err error
		if o.del {
			err = store.BatchDelete(b, o.t, o.key)
		} else {
			err = store.BatchPut(b, o.t, o.key, o.val)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// plan decides what each buffered change does and sends the writes to out
// (and the bodies to app, when the store keeps them in segments):
// the pending marker first (if anything is written), then per change the
// new change entry and the removal of the superseded change
// (readers and repair rely on that order). It returns the counts and the first sequence used (0:
// nothing written). ck is the connection's key index, loaded by the caller.
// Callers hold the connection's lock.
func (w *Writer) plan(ctx context.Context, ck *connKeys, out *opList, app *appender) (Counts, uint64, error) {
	var n Counts
	var first uint64
	s := w.s
	w.pairs = w.pairs[:0]
	err := s.db.View(ctx, func(tx *store.Txn) error {
		for i := range w.items {
			it := &w.items[i]
			hk := headKey(w.conn, it.typ, it.id)
			cur, found := w.heads[hk]
			if !found {
				seq, c, ok, cands, err := s.current(tx, ck, it.typ, it.id, w.cands)
				w.cands = cands
				if err != nil {
					return err
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
				return err
			}
			if first == 0 {
				// First in the batch: if any of it is stored, so is this.
				first = seq
				out.put(s.pending, w.conn, encodePending(seq))
			}
			c := change{deleted: it.deleted, lastUpdated: it.lastUpdated, hash: it.hash, typ: it.typ, id: it.id, versionID: it.version}
			if found {
				c.prev = cur.seq
			}
			body := w.arena[it.off : it.off+it.n]
			if app != nil && !it.deleted {
				if c.loc, err = app.add(it.typ, it.id, body); err != nil {
					return err
				}
				c.ext = true
			}
			start := len(w.vals)
			w.vals = c.appendHeader(w.vals)
			if !c.ext {
				w.vals = append(w.vals, body...)
			}
			// Full slice expression: later appends must never write into
			// a value the batch still holds.
			val := w.vals[start:len(w.vals):len(w.vals)]
			out.put(s.changes, changeKey(w.conn, seq, it.typ), val)
			h := c.head(seq)
			w.pairs = append(w.pairs, keyPair{keyOf(it.typ, it.id), seq})
			if found {
				out.del(s.changes, changeKey(w.conn, cur.seq, it.typ))
			}
			w.heads[hk] = h
			if it.deleted {
				n.Deleted++
			} else {
				n.Written++
			}
		}
		return nil
	})
	return n, first, err
}
