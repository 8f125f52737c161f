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
	w := &Writer{s: s, conn: conn, sync: true, names: map[string]string{}}
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
// Commits to a connection are planned one at a time, under the
// connection's lock, and committed in that order (pipeline.go); their
// writes overlap. Readers see changes in sequence order.
func (w *Writer) Commit(ctx context.Context, marker Marker) (Counts, error) {
	if len(w.items) == 0 && marker == nil {
		return Counts{}, nil
	}
	defer w.reset()
	c, b, err := w.ready(ctx, marker)
	if c == nil {
		return Counts{}, fmt.Errorf("records: commit %s: %w", w.conn, err)
	}
	if err == nil {
		// Committed first, synced after: once the transaction is in
		// Badger its entries are the log's, whether or not the sync then
		// fails, and must be visible to the next plan.
		err = b.Flush(false)
	}
	err = c.finish(err)
	if err == nil && w.sync {
		err = w.s.db.Sync()
	}
	if err != nil {
		return Counts{}, fmt.Errorf("records: commit %s: %w", w.conn, err)
	}
	return c.n, nil
}

// commit is one Commit in the pipeline: planned, then written, then
// committed in its turn.
type commit struct {
	w      *Writer
	p      *pipeline
	ticket uint64
	la     *logAppend
	app    *appender
	jsync  *jnlSync // the key index journal's record, to sync
	n      Counts
}

// prepare plans the commit under the connection's lock, reserving where
// its bodies and log blocks go, and journals its key index entries. A nil
// commit failed before it had a place in the pipeline; otherwise an error
// is the commit's (finish ends it).
func (w *Writer) prepare(ctx context.Context) (*commit, error) {
	s := w.s
	mu := s.lock(w.conn)
	mu.Lock()
	defer mu.Unlock()
	if _, gone := s.deleted.Load(w.conn); gone {
		return nil, fmt.Errorf("%w: %s", ErrDeleted, w.conn)
	}
	l, err := s.changeLog(ctx, w.conn)
	if err != nil {
		return nil, err
	}
	ck, err := s.connKeys(ctx, l)
	if err != nil {
		return nil, err
	}
	p := s.pipe(w.conn)
	c := &commit{w: w, p: p, ticket: p.begin(), la: l.appender(false)}
	if s.segs != nil {
		c.app = s.segs.appender(w.conn, w.seal)
	}
	c.n, err = w.plan(ctx, l, ck, p, c.ticket, c.la, c.app)
	if err == nil {
		err = c.la.reserve()
	}
	// The key index entries are journaled (and synced, by write) before
	// the changes they point at can be committed: a change the index cannot
	// find would be stored again as a new one. Appended here, under the
	// lock, as the journal is read in order.
	if err == nil {
		c.jsync, err = ck.journal(w.pairs)
	}
	if err == nil {
		err = ck.add(w.pairs)
	}
	return c, err
}

// write seals and writes the bodies and writes the log blocks, both synced,
// before the transaction that commits them: an entry that outlived its body
// after a power cut would read as stored (and unchanged on the next sync)
// while the body is gone. The bodies are synced even for a writer
// WithoutSync (measured: no slower).
func (c *commit) write() error {
	lerr, jerr := make(chan error, 1), make(chan error, 1)
	go func() { lerr <- c.la.write() }()
	go func() { jerr <- c.jsync.sync() }()
	var err error
	if c.app != nil {
		err = c.app.write(true)
		c.w.seal = c.app.buf
	}
	return errors.Join(err, <-lerr, <-jerr)
}

// stage waits for the commit's turn and returns the batch that commits it
// (with the caller's marker), unless it or an earlier commit failed.
func (c *commit) stage(err error, marker Marker) (*store.Batch, error) {
	if werr := c.p.await(c.ticket); err == nil {
		err = werr
	}
	if err != nil {
		return nil, err
	}
	b := c.w.s.db.NewAtomicBatch()
	err = c.la.commit(b)
	if err == nil && marker != nil {
		err = marker(b, c.n)
	}
	if err != nil {
		b.Cancel()
		return nil, err
	}
	return b, nil
}

// finish publishes the commit once its batch is stored (err nil) or fails
// it, and ends its turn.
func (c *commit) finish(err error) error {
	if err == nil {
		c.la.publish()
	} else {
		c.la.failed()
	}
	if c.app != nil {
		c.app.release() // when write did not run
	}
	c.jsync.release() // likewise
	c.p.end(err)
	return err
}

// ready prepares and writes the commit and returns the batch that commits
// it, in its turn. A nil commit failed before it had a place in the
// pipeline; otherwise the caller ends it with finish.
func (w *Writer) ready(ctx context.Context, marker Marker) (*commit, *store.Batch, error) {
	c, err := w.prepare(ctx)
	if c == nil {
		return nil, nil, err
	}
	if err == nil {
		err = c.write()
	}
	b, err := c.stage(err, marker)
	return c, b, err
}

// send is Commit up to the transaction, which it returns unstored (tests:
// a crash between the writes and the transaction).
func (w *Writer) send(ctx context.Context, marker Marker) (*store.Batch, *logAppend, Counts, error) {
	c, b, err := w.ready(ctx, marker)
	if c == nil {
		return nil, nil, Counts{}, err
	}
	return b, c.la, c.n, err
}

// plan decides what each buffered change does and adds the new changes to
// la (and their bodies to app, when the store keeps them in segments) and
// their key index entries to w.pairs. It returns the counts. Callers hold
// the connection's lock.
func (w *Writer) plan(ctx context.Context, l *changeLog, ck *connKeys, p *pipeline, ticket uint64, la *logAppend, app *appender) (Counts, error) {
	var n Counts
	s := w.s
	w.pairs = w.pairs[:0]
	for i := range w.items {
		it := &w.items[i]
		key := keyOf(it.typ, it.id)
		cur, found := p.head(key, it.typ, it.id)
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
		w.pairs = append(w.pairs, keyPair{key, seq})
		p.plan(ticket, key, it.typ, it.id, c.head(seq))
		if it.deleted {
			n.Deleted++
		} else {
			n.Written++
		}
	}
	return n, nil
}
