// Package records owns the agent's record store: FHIR resources of each
// connection kept as the source's raw JSON bytes, keyed by (connection,
// resource type, id), with a change index that lets an app read "everything
// that changed since cursor C" in change order.
//
// Only resourceType, id, meta.versionId and meta.lastUpdated are read from a
// resource (ScanHeader); the rest is never unmarshalled.
//
// # Change index
//
// Every put or delete that changes a resource gets the next value of a
// store-wide sequence and is appended to the connection's change log
// (changelog.go) at that sequence; the change it superseded is no longer
// listed, so the index holds each resource once, at its latest change. A
// copy identical to the stored one (a re-ingested file, a resumed download)
// changes nothing. A copy whose meta.lastUpdated is older than the stored
// one's is stale and ignored, as is a put older than a tombstone's time.
//
// Commits to one connection are planned one at a time (one lock per
// connection, held from sequence allocation until the commit's place in the
// log is reserved) and published in that order (pipeline.go), so changes
// become visible in sequence order: a reader that has seen sequence n will
// never later find a change below n, and a cursor never skips anything.
//
// A resource's current change is found through the connection's key index
// (keys.go), files of (hash of type/id, sequence) pairs written
// sequentially beside the segments; its candidates are checked against the
// change log, which stays the truth.
//
// # Exactly-once ingest
//
// Writer.Commit writes and syncs the bodies, the key index entries and the
// change log's new blocks first (in parallel), then stores the change log's
// new length and the caller's progress marker in one Badger transaction.
// After a crash either both are stored or neither is: blocks past a log's
// committed length are never read, and the caller resumes from its last
// progress marker (records already stored are identical and change
// nothing). None are lost and none appear twice.
package records

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/medrelay/medrelay/internal/errdefs"
	"github.com/medrelay/medrelay/internal/store"
)

// Errors.
var (
	ErrNotFound      = errdefs.Define(errdefs.NotFound, "RECORD_NOT_FOUND", "no such record")
	ErrBadCursor     = errdefs.Define(errdefs.InvalidArgument, "RECORD_CURSOR_INVALID", "the cursor is not valid")
	ErrBadConnection = errdefs.Define(errdefs.InvalidArgument, "CONNECTION_ID_INVALID", "invalid connection id")
	ErrBadType       = errdefs.Define(errdefs.InvalidArgument, "RESOURCE_TYPE_INVALID", "invalid resource type")
	ErrBadID         = errdefs.Define(errdefs.InvalidArgument, "RESOURCE_ID_INVALID", "invalid resource id")
	// ErrDeleted: the connection's records were deleted; a writer that was
	// still running (a pull, a sync) may not bring them back.
	ErrDeleted = errdefs.Define(errdefs.FailedPrecondition, "RECORDS_DELETED", "the connection's records were deleted")
)

// Record is one stored resource (or the tombstone of a deleted one).
type Record struct {
	Type        string
	ID          string
	VersionID   string
	LastUpdated time.Time
	Deleted     bool
	// JSON is the resource exactly as the source sent it (nil for a
	// tombstone). The caller owns it.
	JSON []byte
	// Seq is the record's position in its connection's change index.
	Seq uint64
}

// Cursor is the position to continue a List after this record.
func (r Record) Cursor() string { return FormatCursor(r.Seq) }

// FormatCursor renders a change position. Cursors are opaque to apps.
func FormatCursor(seq uint64) string {
	if seq == 0 {
		return ""
	}
	return strconv.FormatUint(seq, 10)
}

// AppendCursor appends FormatCursor(seq) to b.
func AppendCursor(b []byte, seq uint64) []byte {
	if seq == 0 {
		return b
	}
	return strconv.AppendUint(b, seq, 10)
}

// ParseCursor reads a cursor; "" is the beginning.
func ParseCursor(c string) (uint64, error) {
	if c == "" {
		return 0, nil
	}
	v, err := strconv.ParseUint(c, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: %q", ErrBadCursor, clip(c))
	}
	return v, nil
}

// Store is the record store. Safe for concurrent use.
type Store struct {
	db *store.DB
	// heads, changes and pending are the tables of earlier versions, read
	// once to convert them (legacy.go).
	heads   *store.Table[[]byte]
	changes *store.Table[[]byte]
	pending *store.Table[[]byte]
	log     *slog.Logger
	// segs holds resource bodies (nil: bodies stay in Badger values).
	segs   *segments
	segDir string
	segKey []byte
	// keys finds a resource's change from its type and id (keys.go). The
	// heads table it replaced is only read to remove what an earlier
	// version left there.
	keys *keyIndexes
	// logs holds each connection's change index (changelog.go).
	logs *changeLogs

	locks sync.Map // connection id → *sync.Mutex
	pipes sync.Map // connection id → *pipeline (pipeline.go)
	// compactSoon and compactQueued: connections whose change log is a
	// quarter superseded, for RunCompactor.
	compactSoon   chan string
	compactQueued sync.Map
	// deleted holds the connections whose records were deleted while this
	// process runs: later commits to them are refused. (After a restart a
	// deleted connection is revoked, so nothing writes to it any more.)
	deleted sync.Map
}

// Option configures Open.
type Option func(*Store)

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option { return func(s *Store) { s.log = l } }

// WithSegments keeps resource bodies in segment files under dir, sealed
// with key (32 bytes, used for nothing else), instead of in the store's
// values (see segments.go for why). Without it (an in-memory store) bodies
// stay in Badger. Either way bodies written the other way are still read.
func WithSegments(dir string, key []byte) Option {
	return func(s *Store) { s.segDir, s.segKey = dir, key }
}

const seqName = "records"

// Open returns the record store kept in db, first converting what an
// earlier version stored.
func Open(ctx context.Context, db *store.DB, opts ...Option) (*Store, error) {
	s := &Store{
		db:      db,
		heads:   store.NewTable[[]byte](db, store.Records),
		changes: store.NewTable[[]byte](db, store.RecordChanges),
		pending: store.NewTable[[]byte](db, store.RecordPending),
		log:     slog.Default(),
	}
	for _, o := range opts {
		o(s)
	}
	s.log = s.log.With("component", "records")
	if s.segDir != "" {
		g, err := openSegments(db, s.segDir, s.segKey)
		if err != nil {
			return nil, err
		}
		s.segs = g
	}
	s.keys = &keyIndexes{segs: s.segs, log: s.log, byID: map[string]*connKeys{}}
	s.logs = newChangeLogs(db, s.segs)
	s.compactSoon = make(chan string, 64)
	s.logs.onDead = s.compactLater
	if err := s.dropLegacyHeads(ctx); err != nil {
		return nil, err
	}
	if err := s.convertLegacyChanges(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// SegmentBytes is the size on disk of the resources' bodies (0 when they
// are kept in the store's values). The first call walks the directory.
func (s *Store) SegmentBytes() int64 {
	if s.segs == nil {
		return 0
	}
	return s.segs.bytes()
}

// Close closes the segment and key index files. The store's writers must
// have stopped.
func (s *Store) Close() error {
	s.logs.close()
	s.keys.close()
	if s.segs != nil {
		s.segs.close()
	}
	return nil
}

// lock serialises writers of one connection.
func (s *Store) lock(conn string) *sync.Mutex {
	if m, ok := s.locks.Load(conn); ok {
		return m.(*sync.Mutex)
	}
	m, _ := s.locks.LoadOrStore(conn, &sync.Mutex{})
	return m.(*sync.Mutex)
}

func checkConn(conn string) error {
	if conn == "" || len(conn) > 256 || strings.ContainsAny(conn, "/\x00") {
		return fmt.Errorf("%w: %q", ErrBadConnection, clip(conn))
	}
	return nil
}

// changeLog returns conn's change log, loaded.
func (s *Store) changeLog(ctx context.Context, conn string) (*changeLog, error) {
	l := s.logs.get(conn)
	if err := l.ensure(ctx); err != nil {
		return nil, err
	}
	return l, nil
}

// connKeys returns conn's key index, loaded (or rebuilt from l).
func (s *Store) connKeys(ctx context.Context, l *changeLog) (*connKeys, error) {
	ck := s.keys.get(l.conn)
	if err := ck.ensure(ctx, scanChanges(l)); err != nil {
		return nil, err
	}
	return ck, nil
}

// current finds the stored change of (typ, id): its sequence and the
// change (found false when the resource was never stored). cands is
// scratch space, returned for reuse.
func (s *Store) current(ctx context.Context, l *changeLog, ck *connKeys, typ, id string, cands []uint64) (uint64, change, bool, []uint64, error) {
	for {
		// A reader (Get) reads the key index, then the log: a commit
		// published in between may have superseded (and a rewrite
		// dropped) the candidates it found. That commit added its pairs
		// to the index before it published, so a new lookup finds them.
		// (Writers hold the connection's lock: nothing is published
		// meanwhile.)
		gen := l.generation()
		cands, err := ck.lookup(typ, id, cands)
		if err != nil {
			return 0, change{}, false, cands, err
		}
		for _, seq := range cands {
			c, found, err := changeOf(ctx, l, seq, typ, id)
			if err != nil {
				return 0, c, false, cands, err
			}
			if found {
				// Newest first: the first one stored is the current one.
				return seq, c, true, cands, nil
			}
		}
		if l.generation() == gen {
			return 0, change{}, false, cands, nil
		}
		if err := ctx.Err(); err != nil {
			return 0, change{}, false, cands, err
		}
	}
}

// changeOf reads change seq of (typ, id), a key index candidate. found is
// false when the candidate is not one: a change superseded (or never
// committed: a batch a crash cut short), or another resource's with the
// same hash. c.json is the caller's.
func changeOf(ctx context.Context, l *changeLog, seq uint64, typ, id string) (change, bool, error) {
	v, found, err := l.get(ctx, seq)
	if err != nil || !found {
		return change{}, false, err
	}
	c, err := decodeChange(v, nil)
	if err != nil {
		return c, false, fmt.Errorf("records: change %d of %s: %w", seq, l.conn, err)
	}
	if c.typ != typ || c.id != id {
		return change{}, false, nil
	}
	return c, true, nil
}

// Get returns the stored record (possibly a tombstone) of one resource.
func (s *Store) Get(ctx context.Context, conn, typ, id string) (Record, error) {
	if err := checkConn(conn); err != nil {
		return Record{}, err
	}
	if !ValidType(typ) {
		return Record{}, fmt.Errorf("%w: %q", ErrBadType, clip(typ))
	}
	if !ValidID(id) {
		return Record{}, fmt.Errorf("%w: %q", ErrBadID, clip(id))
	}
	l, err := s.changeLog(ctx, conn)
	if err != nil {
		return Record{}, err
	}
	ck, err := s.connKeys(ctx, l)
	if err != nil {
		return Record{}, err
	}
	seq, c, found, _, err := s.current(ctx, l, ck, typ, id, nil)
	if err != nil {
		return Record{}, err
	}
	if !found {
		return Record{}, fmt.Errorf("%w: %s/%s", ErrNotFound, typ, id)
	}
	r := c.record(seq)
	err = s.readBodies(conn, []Record{r}, []change{c}, func(_ int, b []byte) { r.JSON = b })
	return r, s.goneIfDeleted(conn, err)
}

// recordOf decodes a stored change; a body kept in a segment is read later
// with readBodies.
func recordOf(seq uint64, v []byte, types names) (Record, change, error) {
	c, err := decodeChange(v, types)
	if err != nil {
		return Record{}, c, err
	}
	return c.record(seq), c, nil
}

// record is change seq as a Record, its JSON set when the body is inline.
func (c *change) record(seq uint64) Record {
	r := Record{Type: c.typ, ID: c.id, VersionID: c.versionID, LastUpdated: fromNanos(c.lastUpdated), Deleted: c.deleted, Seq: seq}
	if !c.deleted && !c.ext {
		r.JSON = c.json
	}
	return r
}

// readBodies reads the segment-kept bodies of recs (cs are their changes,
// in the same order) and passes each to set with its index.
func (s *Store) readBodies(conn string, recs []Record, cs []change, set func(i int, body []byte)) error {
	return s.readBodiesInto(conn, recs, cs, nil, set)
}

// readBodiesInto is readBodies reading into scratch (see segments.read).
func (s *Store) readBodiesInto(conn string, recs []Record, cs []change, scratch *[]byte, set func(i int, body []byte)) error {
	var refs []bodyRef
	for i := range cs {
		if cs[i].ext && !cs[i].deleted {
			refs = append(refs, bodyRef{loc: cs[i].loc, typ: recs[i].Type, id: recs[i].ID, idx: i})
		}
	}
	if len(refs) == 0 {
		return nil
	}
	if s.segs == nil {
		return fmt.Errorf("records: %s/%s is kept in a segment, and this store was opened without segments", refs[0].typ, refs[0].id)
	}
	return s.segs.read(conn, refs, scratch, set)
}

// goneIfDeleted says ErrDeleted for a body that went missing because the
// connection's records were deleted after its change was read.
func (s *Store) goneIfDeleted(conn string, err error) error {
	if errors.Is(err, ErrBodyMissing) {
		if _, gone := s.deleted.Load(conn); gone {
			return fmt.Errorf("%w: %s", ErrDeleted, conn)
		}
	}
	return err
}

// bodySize is a change's body size, for page limits.
func bodySize(c change) int {
	if c.ext {
		return int(c.loc.n)
	}
	return len(c.json)
}

// Query selects what List returns.
type Query struct {
	// Types limits the list to these resource types (empty: all).
	Types []string
	// After is the cursor to continue from (0: the beginning).
	After uint64
	// Limit stops after this many records in all (0: no limit).
	Limit int
	// PageRecords and PageBytes bound one page (one read transaction, one
	// call of fn). Defaults: 1000 records, 1 MiB of JSON.
	PageRecords int
	PageBytes   int
	// Reuse lets List read each page into the memory of the one before:
	// a page's records and their JSON are then valid only until fn
	// returns (fn copies what it keeps, as the API's stream does when it
	// encodes a message). It spares a large list most of its allocation.
	Reuse bool
}

// List calls fn with the records of conn changed after q.After, in change
// order, a page at a time, with the cursor that continues after the page.
// It returns the final cursor (q.After when nothing changed). Each page is
// read in its own short transaction, so a slow reader holds nothing open in
// the store. fn owns the page; it may be called with an empty page when
// only superseded entries were passed over.
func (s *Store) List(ctx context.Context, conn string, q Query, fn func(page []Record, cursor uint64) error) (uint64, error) {
	if err := checkConn(conn); err != nil {
		return q.After, err
	}
	var types []string
	for _, t := range q.Types {
		if !ValidType(t) {
			return q.After, fmt.Errorf("%w: %q", ErrBadType, clip(t))
		}
		if !slices.Contains(types, t) {
			types = append(types, t)
		}
	}
	if q.PageRecords <= 0 {
		q.PageRecords = 1000
	}
	if q.PageBytes <= 0 {
		q.PageBytes = 1 << 20
	}
	l, err := s.changeLog(ctx, conn)
	if err != nil {
		return q.After, err
	}
	cursor, total := q.After, 0
	typeNames := names{}
	want := func(total int) int {
		if q.Limit > 0 {
			return min(q.PageRecords, q.Limit-total)
		}
		return q.PageRecords
	}
	read := func(after uint64, want int, reuse *pageMem) (page, error) {
		return s.pageTypes(ctx, l, types, after, want, q.PageBytes, typeNames, reuse)
	}
	// With Reuse, the next page is read while fn handles this one, each
	// into memory of its own (two, taking turns): the API encodes a page
	// while the store reads and decrypts the next.
	var mems [2]*pageMem
	if q.Reuse {
		mems = [2]*pageMem{{}, {}}
	}
	type result struct {
		p   page
		err error
	}
	k := 0
	p, err := read(cursor, want(total), mems[k])
	for {
		if err != nil {
			return cursor, err
		}
		more := p.more && (q.Limit <= 0 || total+len(p.records) < q.Limit)
		var next chan result
		if more && q.Reuse {
			next = make(chan result, 1)
			after, w, mem := p.next, want(total+len(p.records)), mems[1-k]
			go func() {
				np, err := read(after, w, mem)
				next <- result{np, err}
			}()
		}
		if p.next > cursor {
			cursor = p.next
			if err := fn(p.records, cursor); err != nil {
				if next != nil {
					<-next
				}
				return cursor, err
			}
			total += len(p.records)
		}
		if !more {
			return cursor, nil
		}
		if next != nil {
			r := <-next
			p, err, k = r.p, r.err, 1-k
		} else {
			p, err = read(cursor, want(total), mems[k])
		}
	}
}

// page is one read of the change index: the records found, the position it
// covers through (the last sequence looked at) and whether there may be more.
type page struct {
	records []Record
	next    uint64
	more    bool
}

// pageMem is the memory a List with Query.Reuse gives each page anew.
type pageMem struct {
	records []Record
	changes []change
	bodies  []byte
}

// pageTypes reads one page of the given types (nil: all), in change order.
// A walk stops after maxKeysPerPage entries so a rare type in a large
// connection still answers in bounded pages.
func (s *Store) pageTypes(ctx context.Context, l *changeLog, types []string, after uint64, limit, maxBytes int, in names, reuse *pageMem) (page, error) {
	p := page{next: after}
	var cs []change
	var scratch *[]byte
	if reuse != nil {
		p.records, cs, scratch = reuse.records[:0], reuse.changes[:0], &reuse.bodies
	} else {
		p.records = make([]Record, 0, min(limit, 4096))
	}
	size, walked := 0, 0
	err := l.scan(ctx, after, func(seq uint64, v []byte) error {
		p.next = seq
		walked++
		if types != nil && !hasType(types, typeBytes(v)) {
			if walked >= maxKeysPerPage {
				p.more = true
				return store.ErrStopScan
			}
			return nil
		}
		r, c, err := recordOf(seq, v, in)
		if err != nil {
			return fmt.Errorf("records: change %d of %s: %w", seq, l.conn, err)
		}
		p.records = append(p.records, r)
		cs = append(cs, c)
		size += bodySize(c)
		if len(p.records) >= limit || size >= maxBytes || walked >= maxKeysPerPage {
			p.more = true
			return store.ErrStopScan
		}
		return nil
	})
	if err == nil {
		err = s.readBodiesInto(l.conn, p.records, cs, scratch, func(i int, b []byte) { p.records[i].JSON = b })
		err = s.goneIfDeleted(l.conn, err)
	}
	if reuse != nil {
		reuse.records, reuse.changes = p.records, cs
	}
	return p, err
}

func hasType(types []string, t []byte) bool {
	for _, x := range types {
		if x == string(t) {
			return true
		}
	}
	return false
}

// maxKeysPerPage bounds the keys one page of a type-filtered list walks
// (a variable for tests).
var maxKeysPerPage = 50000

// Count returns how many resources of conn are stored (tombstones included).
func (s *Store) Count(ctx context.Context, conn string) (int, error) {
	if err := checkConn(conn); err != nil {
		return 0, err
	}
	l, err := s.changeLog(ctx, conn)
	if err != nil {
		return 0, err
	}
	return l.count(), nil
}

// DeleteConnection removes every record of conn, tombstones and change index
// included. Writers of conn wait; one still running after this starts the
// connection afresh, so stop a connection's jobs before deleting it.
func (s *Store) DeleteConnection(ctx context.Context, conn string) error {
	if err := checkConn(conn); err != nil {
		return err
	}
	mu := s.lock(conn)
	mu.Lock()
	defer mu.Unlock()
	s.pipe(conn).idle() // commits planned before have ended
	b := s.db.NewBatch()
	prefix := conn + "/"
	for _, t := range []*store.Table[[]byte]{s.heads, s.changes, s.logs.lengths, s.logs.blocks} {
		err := t.Scan(ctx, store.ScanOptions{Prefix: prefix, KeysOnly: true}, func(k string, _ []byte) error {
			return store.BatchDelete(b, t, k)
		})
		if err != nil {
			b.Cancel()
			return fmt.Errorf("records: delete %s: %w", conn, err)
		}
	}
	if err := store.BatchDelete(b, s.pending, conn); err != nil {
		b.Cancel()
		return err
	}
	if err := b.Flush(true); err != nil {
		return fmt.Errorf("records: delete %s: %w", conn, err)
	}
	// Marked first: a reader that read changes before the files go and
	// then finds a body missing is told the records were deleted.
	s.deleted.Store(conn, true)
	// The log and key index first: their files are closed (and the key
	// index's merge has ended) before the directory holding them goes.
	gone := fmt.Errorf("%w: %s", ErrDeleted, conn)
	s.logs.drop(conn, gone)
	s.keys.drop(conn)
	if s.segs != nil {
		// After the index: a crash in between leaves files nothing points
		// at, never entries without their bodies.
		if err := s.segs.drop(conn); err != nil {
			return fmt.Errorf("records: delete %s: %w", conn, err)
		}
	}
	s.log.Info("deleted the records of a connection", "connection", conn)
	return nil
}
