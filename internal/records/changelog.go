package records

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/medrelay/medrelay/internal/store"
)

// The change log. A connection's change index is a log of (sequence,
// change) entries in sequence order, in append-only files of our own under
// records/<conn>/changes/; Badger keeps only each file's committed length.
// Why not Badger: one Badger entry per resource made the agent's memory grow
// with the export (memtables, table builders, mapped tables: a
// 5M-resource sync peaked above 1 GB), while the log is written once, in
// order, and read in order, which is all a change index needs.
//
// Entries are grouped in blocks of about 4 KiB. A block is a 16-byte header
// (payload length, entry count, first sequence) and its payload, sealed
// with AES-256-GCM under the segments' key: the nonce is the file id and
// the block's offset (file ids come from the store sequence that names
// segments and key runs, offsets only grow, and a file is only appended to
// by the process that created it, until a write fails), the header and
// connection are the additional data. Only each block's first sequence and
// place stay in memory (24 bytes per ~50 resources).
//
// A change superseded by a later one is not rewritten: the later change
// names it (prev), and the log loads the set of superseded sequences when
// first used. Compaction (compact.go) rewrites a log without them, which
// keeps that set small.
//
// Exactly once: a commit appends and fsyncs its blocks beyond the file's
// committed length, then stores the new length and the caller's progress
// marker in one Badger transaction. Bytes past the committed length (a
// crash between the two) are never read, and the file is not appended to
// again.
//
// Without a records directory (an in-memory store, tests) blocks are kept
// in Badger, unsealed (the store encrypts them).

const (
	logDirName = "changes"
	// logBlockTarget and logBlockEntries: a block is closed once its payload
	// reaches either.
	logBlockTarget  = 4 << 10
	logBlockEntries = 128
	logHeaderSize   = 16
)

// maxLogFile is the size past which appends go to a new file (nonces hold
// 32 bits of offset). A variable for tests.
var maxLogFile int64 = 1 << 30

// logBlock is where one block is.
type logBlock struct {
	first uint64 // its first entry's sequence
	off   int64  // its header's offset in the file
	size  int64  // header and payload
}

type logFile struct {
	id     uint64
	size   int64 // committed length
	blocks []logBlock
	f      *os.File // nil when the blocks are in Badger
	// mine: created by this process, which may append to it.
	mine bool
	// next is where the next append starts: past every block reserved,
	// committed or not (mine only; under the log's mu).
	next int64
	gs   groupSync
}

// changeLogs holds the log of every connection used since start.
type changeLogs struct {
	segs    *segments // nil: blocks in Badger
	db      *store.DB
	lengths *store.Table[[]byte]
	blocks  *store.Table[[]byte]

	mu   sync.Mutex
	byID map[string]*changeLog
	// onDead is told when a connection's log is a quarter superseded
	// (and at least minDeadCompact changes): time to compact it.
	onDead func(conn string)
}

// minDeadCompact: fewer superseded changes than this wait for the
// compactor's regular run. A variable for tests.
var minDeadCompact = 1 << 16

func newChangeLogs(db *store.DB, segs *segments) *changeLogs {
	return &changeLogs{
		segs: segs, db: db,
		lengths: store.NewTable[[]byte](db, store.RecordLogs),
		blocks:  store.NewTable[[]byte](db, store.RecordBlocks),
		byID:    map[string]*changeLog{},
	}
}

// changeLog is one connection's log. Appends are serialised by the
// connection's commit lock; mu guards what readers see.
type changeLog struct {
	ls   *changeLogs
	conn string
	dir  string // "" : blocks in Badger

	mu     sync.RWMutex
	loaded bool
	gone   error
	files  []*logFile // in sequence order (which is file id order)
	w      *logFile   // appended to; nil until the first append or after a failed one
	dead   deadSet
	total  int // committed entries, superseded ones included
	// gen counts publishes (readers that look a change up in two steps
	// check that none came in between).
	gen atomic.Uint64
}

// generation is the number of appends published so far.
func (l *changeLog) generation() uint64 { return l.gen.Load() }

func (ls *changeLogs) get(conn string) *changeLog {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	l := ls.byID[conn]
	if l == nil {
		l = &changeLog{ls: ls, conn: conn}
		if ls.segs != nil {
			l.dir = filepath.Join(ls.segs.connDir(conn), logDirName)
		}
		ls.byID[conn] = l
	}
	return l
}

// drop forgets conn's log and closes its files (the caller removes them).
func (ls *changeLogs) drop(conn string, why error) {
	ls.mu.Lock()
	l := ls.byID[conn]
	delete(ls.byID, conn)
	ls.mu.Unlock()
	if l != nil {
		l.shut(why)
	}
}

func (ls *changeLogs) close() {
	ls.mu.Lock()
	all := ls.byID
	ls.byID = map[string]*changeLog{}
	ls.mu.Unlock()
	for _, l := range all {
		l.shut(errors.New("records: the store is closed"))
	}
}

func (l *changeLog) shut(why error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.gone = why
	l.closeLocked()
}

func (l *changeLog) closeLocked() {
	for _, f := range l.files {
		if f.f != nil {
			f.f.Close()
		}
	}
	l.files, l.w, l.dead, l.total, l.loaded = nil, nil, deadSet{}, 0, false
}

func (l *changeLog) filePath(id uint64) string {
	return filepath.Join(l.dir, seqHex(id)+".log")
}

func (l *changeLog) lengthKey(id uint64) string { return l.conn + "/" + seqHex(id) }

func blockKey(conn string, id uint64, off int64) string {
	return conn + "/" + seqHex(id) + "/" + seqHex(uint64(off))
}

func (l *changeLog) ad(hdr []byte) []byte {
	b := make([]byte, 0, 8+len(l.conn)+len(hdr))
	b = append(b, "changes\x00"...)
	b = append(b, l.conn...)
	b = append(b, 0)
	return append(b, hdr...)
}

// ensure loads the log: the committed files, their blocks and the set of
// superseded changes. Files no length names (a crash before their first
// commit, or a compaction's output not yet committed) are removed.
func (l *changeLog) ensure(ctx context.Context) error {
	l.mu.RLock()
	loaded, gone := l.loaded, l.gone
	l.mu.RUnlock()
	if loaded {
		return nil
	}
	if gone != nil {
		return gone
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.loaded {
		return nil
	}
	if l.gone != nil {
		return l.gone
	}
	if err := l.loadLocked(ctx); err != nil {
		l.closeLocked()
		return fmt.Errorf("records: change log of %s: %w", l.conn, err)
	}
	l.loaded = true
	return nil
}

func (l *changeLog) loadLocked(ctx context.Context) error {
	lengths := map[uint64]int64{}
	err := l.ls.lengths.Scan(ctx, store.ScanOptions{Prefix: l.conn + "/"}, func(k string, v []byte) error {
		id, err := parseSeqHex(k[len(l.conn)+1:])
		if err != nil || len(v) != 8 {
			return fmt.Errorf("bad length entry %q", k)
		}
		lengths[id] = int64(binary.BigEndian.Uint64(v))
		return nil
	})
	if err != nil {
		return err
	}
	l.dead = deadSet{}
	l.total = 0
	if l.dir != "" {
		if err := l.removeOrphans(lengths); err != nil {
			return err
		}
	}
	ids := make([]uint64, 0, len(lengths))
	for id := range lengths {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		f := &logFile{id: id, size: lengths[id]}
		l.files = append(l.files, f)
		if err := l.readFile(ctx, f, func(_ uint64, v []byte) error {
			l.total++
			if p := prevOf(v); p != 0 {
				l.dead.add(p)
			}
			return nil
		}); err != nil {
			return err
		}
	}
	return nil
}

// removeOrphans removes the log files no committed length names.
func (l *changeLog) removeOrphans(lengths map[uint64]int64) error {
	ents, err := os.ReadDir(l.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".log")
		if !ok {
			continue
		}
		if id, err := parseSeqHex(name); err == nil {
			if _, ok := lengths[id]; !ok {
				if err := os.Remove(filepath.Join(l.dir, e.Name())); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// readFile reads f's committed blocks in order (recording where each is)
// and calls fn with every entry. Used at load, when blocks is empty.
func (l *changeLog) readFile(ctx context.Context, f *logFile, fn func(seq uint64, v []byte) error) error {
	if l.dir == "" {
		// Blocks follow each other: an entry at an offset inside the block
		// before it is the leftover of a failed append (an earlier version
		// appended to the same file again), never read.
		var next int64
		err := l.ls.blocks.Scan(ctx, store.ScanOptions{Prefix: l.conn + "/" + seqHex(f.id) + "/"}, func(k string, v []byte) error {
			u, err := parseSeqHex(k[len(k)-16:])
			if err != nil {
				return err
			}
			off := int64(u)
			switch {
			case off >= f.size:
				return store.ErrStopScan
			case off < next:
				return nil
			case off > next:
				return l.damaged(f, next, errors.New("no block there"))
			}
			first, payload, err := l.openBlock(f.id, off, v)
			if err != nil {
				return err
			}
			f.blocks = append(f.blocks, logBlock{first: first, off: off, size: int64(len(v))})
			next = off + int64(len(v))
			if err := eachEntry(first, payload, fn); err != nil {
				return fmt.Errorf("change log block %s at %d: %w", blockKey(l.conn, f.id, off), off, err)
			}
			return nil
		})
		if err == nil && next < f.size {
			err = l.damaged(f, next, io.ErrUnexpectedEOF)
		}
		return err
	}
	fh, err := os.Open(l.filePath(f.id))
	if err != nil {
		return fmt.Errorf("%w (a committed change log file is gone: %v; %s)", ErrBodyMissing, err, logWayOut)
	}
	f.f = fh
	r := bufio.NewReaderSize(io.NewSectionReader(fh, 0, f.size), 1<<20)
	var buf []byte
	for off := int64(0); off < f.size; {
		hdr, err := r.Peek(logHeaderSize)
		if err != nil {
			return l.damaged(f, off, err)
		}
		size := logHeaderSize + int64(binary.BigEndian.Uint32(hdr))
		if off+size > f.size {
			return l.damaged(f, off, io.ErrUnexpectedEOF)
		}
		buf = slices.Grow(buf[:0], int(size))[:size]
		if _, err := io.ReadFull(r, buf); err != nil {
			return l.damaged(f, off, err)
		}
		first, payload, err := l.openBlock(f.id, off, buf)
		if err != nil {
			return err
		}
		f.blocks = append(f.blocks, logBlock{first: first, off: off, size: size})
		if err := eachEntry(first, payload, fn); err != nil {
			return fmt.Errorf("change log %s block at %d: %w", l.filePath(f.id), off, err)
		}
		off += size
	}
	return nil
}

func (l *changeLog) damaged(f *logFile, off int64, err error) error {
	return fmt.Errorf("%w (change log %s is shorter than its committed length at %d: %v; %s)", ErrBodyMissing, l.filePath(f.id), off, err, logWayOut)
}

// logWayOut ends the errors of a change log that does not read: it is the
// connection's only index of its records, and nothing rebuilds it.
const logWayOut = "restore the records directory from a backup, or delete the connection and sync it again"

// openBlock checks and opens one stored block (header and payload) in
// place, returning its first sequence and plain payload.
func (l *changeLog) openBlock(id uint64, off int64, b []byte) (uint64, []byte, error) {
	if len(b) < logHeaderSize || int(binary.BigEndian.Uint32(b)) != len(b)-logHeaderSize {
		return 0, nil, fmt.Errorf("change log block %d/%d: %w", id, off, errCorrupt)
	}
	first := binary.BigEndian.Uint64(b[8:16])
	if l.dir == "" {
		return first, b[logHeaderSize:], nil
	}
	aead := l.ls.segs.aead
	nonce := nonceOf(id, uint64(off))
	payload, err := aead.Open(b[logHeaderSize:logHeaderSize], nonce[:], b[logHeaderSize:], l.ad(b[:logHeaderSize]))
	if err != nil {
		return 0, nil, fmt.Errorf("records: change log %s does not open at %d: a wrong key (the records directory must be opened with the store that wrote it) or a damaged file (%s)", l.filePath(id), off, logWayOut)
	}
	return first, payload, nil
}

// eachEntry calls fn with each entry of a block's payload: its sequence and
// value (a slice of payload).
func eachEntry(first uint64, p []byte, fn func(seq uint64, v []byte) error) error {
	seq := first
	for i := 0; len(p) > 0; i++ {
		d, n := binary.Uvarint(p)
		if n <= 0 || (i > 0 && d == 0) {
			return errCorrupt
		}
		p = p[n:]
		seq += d
		vl, n := binary.Uvarint(p)
		if n <= 0 || uint64(len(p)-n) < vl {
			return errCorrupt
		}
		v := p[n : n+int(vl) : n+int(vl)]
		p = p[n+int(vl):]
		if err := fn(seq, v); err != nil {
			return err
		}
	}
	return nil
}

// prevOf reads the superseded change named by a stored change (0: none or
// unreadable; decodeChange reports the latter where it matters).
func prevOf(v []byte) uint64 {
	if len(v) < 3 || v[0] != formatV1 {
		return 0
	}
	p, n := binary.Uvarint(v[2:])
	if n <= 0 {
		return 0
	}
	return p
}

// readBlock returns the plain payload of block b of f. Callers hold mu
// (shared at least).
func (l *changeLog) readBlock(ctx context.Context, f *logFile, b logBlock) ([]byte, error) {
	if f.f == nil {
		v, err := l.ls.blocks.Get(ctx, blockKey(l.conn, f.id, b.off))
		if err != nil {
			return nil, fmt.Errorf("records: change log block of %s: %w", l.conn, err)
		}
		_, p, err := l.openBlock(f.id, b.off, v)
		return p, err
	}
	buf := make([]byte, b.size)
	if n, err := f.f.ReadAt(buf, b.off); n < len(buf) {
		return nil, l.damaged(f, b.off+int64(n), err)
	}
	_, p, err := l.openBlock(f.id, b.off, buf)
	return p, err
}

// locate finds the block that holds seq if any does: file index, block
// index (ok false: seq is before every block).
func (l *changeLog) locate(seq uint64) (int, int, bool) {
	fi := sort.Search(len(l.files), func(i int) bool {
		f := l.files[i]
		return len(f.blocks) > 0 && f.blocks[0].first > seq
	}) - 1
	// Empty files (never committed a block) sort nowhere; skip back past them.
	for fi >= 0 && len(l.files[fi].blocks) == 0 {
		fi--
	}
	if fi < 0 {
		return 0, 0, false
	}
	bs := l.files[fi].blocks
	bi := sort.Search(len(bs), func(i int) bool { return bs[i].first > seq }) - 1
	return fi, bi, bi >= 0
}

// get returns the value of change seq (a copy) when it is in the log and
// not superseded.
func (l *changeLog) get(ctx context.Context, seq uint64) ([]byte, bool, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.gone != nil {
		return nil, false, l.gone
	}
	if l.dead.has(seq) {
		return nil, false, nil
	}
	fi, bi, ok := l.locate(seq)
	if !ok {
		return nil, false, nil
	}
	f := l.files[fi]
	p, err := l.readBlock(ctx, f, f.blocks[bi])
	if err != nil {
		return nil, false, err
	}
	var out []byte
	err = eachEntry(f.blocks[bi].first, p, func(s uint64, v []byte) error {
		if s == seq {
			out = v
			return store.ErrStopScan
		}
		if s > seq {
			return store.ErrStopScan
		}
		return nil
	})
	if err != nil && !errors.Is(err, store.ErrStopScan) {
		return nil, false, fmt.Errorf("records: change log of %s: %w", l.conn, err)
	}
	return out, out != nil, nil
}

// scan calls fn with every live entry after seq after, in sequence order,
// until fn returns store.ErrStopScan (scan then returns nil) or an error.
// v is valid until scan returns (each block is read into its own buffer).
// fn runs under the log's read lock: it must not commit to this log.
func (l *changeLog) scan(ctx context.Context, after uint64, fn func(seq uint64, v []byte) error) error {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.gone != nil {
		return l.gone
	}
	fi, bi, ok := l.locate(after + 1)
	if !ok {
		fi, bi = 0, 0
	}
	for ; fi < len(l.files); fi, bi = fi+1, 0 {
		f := l.files[fi]
		for ; bi < len(f.blocks); bi++ {
			if err := ctx.Err(); err != nil {
				return err
			}
			p, err := l.readBlock(ctx, f, f.blocks[bi])
			if err != nil {
				return err
			}
			err = eachEntry(f.blocks[bi].first, p, func(seq uint64, v []byte) error {
				if seq <= after {
					return nil
				}
				if l.dead.has(seq) {
					return nil
				}
				return fn(seq, v)
			})
			if errors.Is(err, store.ErrStopScan) {
				return nil
			}
			if errors.Is(err, errCorrupt) {
				return fmt.Errorf("records: change log %s block at %d: %w", l.filePath(f.id), f.blocks[bi].off, err)
			}
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// count is the number of live entries (tombstones included).
func (l *changeLog) count() int {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.total - l.dead.len()
}

// deadSet is the set of superseded changes still in a log, 8 bytes each
// in a sorted slice, the newest additions in a map merged in once it holds
// an eighth as many (a map alone took 30-36 bytes an entry: 150 MB for a
// sync that replaced 5M resources).
type deadSet struct {
	sorted []uint64
	recent map[uint64]struct{}
}

func (d *deadSet) has(seq uint64) bool {
	if _, ok := d.recent[seq]; ok {
		return true
	}
	_, ok := slices.BinarySearch(d.sorted, seq)
	return ok
}

func (d *deadSet) add(seq uint64) {
	if d.has(seq) {
		return
	}
	if d.recent == nil {
		d.recent = map[uint64]struct{}{}
	}
	d.recent[seq] = struct{}{}
	if len(d.recent) >= max(4096, len(d.sorted)/8) {
		d.merge()
	}
}

func (d *deadSet) merge() {
	add := make([]uint64, 0, len(d.recent))
	for s := range d.recent {
		add = append(add, s)
	}
	slices.Sort(add)
	out := make([]uint64, 0, len(d.sorted)+len(add))
	i, j := 0, 0
	for i < len(d.sorted) || j < len(add) {
		if j == len(add) || (i < len(d.sorted) && d.sorted[i] < add[j]) {
			out = append(out, d.sorted[i])
			i++
		} else {
			out = append(out, add[j])
			j++
		}
	}
	d.sorted = out
	clear(d.recent)
}

func (d *deadSet) len() int { return len(d.sorted) + len(d.recent) }

// logAppend is one commit's (or one rewrite's) addition to a log: blocks
// built in memory, written beyond the file's committed length, then
// committed with the length in a Badger transaction and published.
// Callers hold the connection's commit lock throughout.
//
// An append rolls over to a new file once its file reaches maxLogFile
// (before the next block, whose offset is half its nonce): a rewrite or a
// conversion of a large log spreads over several files, each committed
// with the rest.
type logAppend struct {
	l    *changeLog
	f    *logFile // nil until the first write
	base int64    // f's committed length when this append started
	// fresh: f is a new file, for a rewrite (it replaces every other).
	fresh bool
	// done: the files this append filled before f, written and synced.
	done []logPart

	buf     []byte // encoded blocks not yet written to the file
	written int64  // bytes written to the file past base
	touched bool   // a write to the file was attempted
	blocks  []logBlock
	entries int
	prevs   []uint64

	cur      []byte // the open block's plain payload
	curFirst uint64
	curLast  uint64
	curN     int
	kv       []logKV // blocks for Badger (no records directory)
}

// logPart is what an append wrote to one file it then left for another.
type logPart struct {
	f             *logFile
	base, written int64
	blocks        []logBlock
}

type logKV struct {
	key string
	val []byte
}

func (l *changeLog) appender(fresh bool) *logAppend { return &logAppend{l: l, fresh: fresh} }

// add appends one entry; seqs must grow. prev is the change it supersedes
// (0: none).
func (a *logAppend) add(seq uint64, v []byte, prev uint64) error {
	if a.f == nil {
		// A block's offset (its nonce) needs the file.
		if err := a.start(a.fresh); err != nil {
			return err
		}
	}
	if a.curN == 0 {
		if a.base+a.written+int64(len(a.buf)) >= maxLogFile {
			if err := a.roll(); err != nil {
				return err
			}
		}
		a.curFirst = seq
		a.cur = binary.AppendUvarint(a.cur[:0], 0)
	} else {
		a.cur = binary.AppendUvarint(a.cur, seq-a.curLast)
	}
	a.cur = binary.AppendUvarint(a.cur, uint64(len(v)))
	a.cur = append(a.cur, v...)
	a.curLast = seq
	a.curN++
	a.entries++
	if prev != 0 {
		a.prevs = append(a.prevs, prev)
	}
	if len(a.cur) >= logBlockTarget || a.curN >= logBlockEntries {
		return a.closeBlock()
	}
	return nil
}

// roll finishes the file appended to (written and synced, to be committed
// with the rest) and goes on in a new one.
func (a *logAppend) roll() error {
	if err := a.flush(); err != nil {
		return err
	}
	if a.l.dir != "" {
		if err := a.f.gs.sync(a.f.f); err != nil {
			a.failed()
			return fmt.Errorf("records: sync change log: %w", err)
		}
	}
	a.done = append(a.done, logPart{f: a.f, base: a.base, written: a.written, blocks: a.blocks})
	a.blocks, a.written = nil, 0
	return a.start(true)
}

// empty says whether nothing was added.
func (a *logAppend) empty() bool { return a.entries == 0 }

// start picks the file to append to: the log's own, or (fresh) a new one.
func (a *logAppend) start(fresh bool) error {
	l := a.l
	l.mu.RLock()
	w, next := l.w, int64(0)
	if w != nil {
		next = w.next
	}
	l.mu.RUnlock()
	if !fresh && w != nil && next < maxLogFile {
		// After the blocks reserved by the commits in flight.
		a.f, a.base = w, next
		return nil
	}
	id, err := l.ls.db.NextSeq(segSeq)
	if err != nil {
		return err
	}
	f := &logFile{id: id, mine: true}
	// failed removes a new file nothing commits.
	a.touched = true
	if l.dir != "" {
		if err := l.ls.segs.makeConnDir(l.conn); err != nil {
			return err
		}
		if err := os.MkdirAll(l.dir, 0o700); err != nil {
			return fmt.Errorf("records: change log directory: %w", err)
		}
		fh, err := os.OpenFile(l.filePath(id), os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o600)
		if err != nil {
			return fmt.Errorf("records: new change log file: %w", err)
		}
		if err := syncDir(l.dir); err != nil {
			fh.Close()
			return err
		}
		f.f = fh
	}
	a.f, a.base = f, 0
	return nil
}

// reserve closes the open block and takes the file's space up to the end
// of this append's blocks, which the next append (planned before this one
// is written) starts after. From here on a failure retires the file: the
// next append would start past space never written. Callers hold the
// connection's lock.
func (a *logAppend) reserve() error {
	if a.empty() {
		return nil
	}
	if err := a.closeBlock(); err != nil {
		return err
	}
	a.touched = true
	l := a.l
	l.mu.Lock()
	defer l.mu.Unlock()
	a.f.next = a.base + a.written + int64(len(a.buf))
	if l.gone == nil {
		l.w = a.f
	}
	return nil
}

// maxLogOffset: a block's offset is 32 bits of its nonce.
const maxLogOffset = 1 << 32

func (a *logAppend) closeBlock() error {
	if a.curN == 0 {
		return nil
	}
	off := a.base + a.written + int64(len(a.buf))
	if off >= maxLogOffset {
		// Unreachable while maxLogFile is far below it (add rolls over
		// first); checked before sealing, as a nonce must never repeat.
		a.failed()
		return errors.New("records: change log file past 4 GiB")
	}
	var hdr [logHeaderSize]byte
	n := len(a.cur)
	if a.l.dir != "" {
		n += a.l.ls.segs.aead.Overhead()
	}
	binary.BigEndian.PutUint32(hdr[0:4], uint32(n))
	binary.BigEndian.PutUint32(hdr[4:8], uint32(a.curN))
	binary.BigEndian.PutUint64(hdr[8:16], a.curFirst)
	start := len(a.buf)
	a.buf = append(a.buf, hdr[:]...)
	if a.l.dir != "" {
		nonce := nonceOf(a.f.id, uint64(off))
		a.buf = slices.Grow(a.buf, n)
		a.buf = a.l.ls.segs.aead.Seal(a.buf, nonce[:], a.cur, a.l.ad(hdr[:]))
	} else {
		a.buf = append(a.buf, a.cur...)
		a.kv = append(a.kv, logKV{blockKey(a.l.conn, a.f.id, off), slices.Clone(a.buf[start:])})
	}
	a.blocks = append(a.blocks, logBlock{first: a.curFirst, off: off, size: int64(len(a.buf) - start)})
	a.curN = 0
	return nil
}

// flush writes the blocks built so far to the file (not synced): a long
// rewrite need not hold its whole output in memory.
func (a *logAppend) flush() error {
	if len(a.buf) == 0 {
		return nil
	}
	if a.l.dir != "" {
		a.touched = true
		if _, err := a.f.f.WriteAt(a.buf, a.base+a.written); err != nil {
			a.failed()
			return fmt.Errorf("records: write change log: %w", err)
		}
	}
	a.written += int64(len(a.buf))
	a.buf = a.buf[:0]
	return nil
}

// write closes the open block, then writes and syncs everything not yet
// written (without a records directory, the blocks go to Badger in a batch
// of their own, before the commit's).
func (a *logAppend) write() error {
	if a.empty() {
		return nil
	}
	if err := a.closeBlock(); err != nil {
		return err
	}
	if err := a.flush(); err != nil {
		return err
	}
	if a.l.dir == "" {
		// Stored blocks past the file's committed length: as with a file,
		// the file is not appended to again if this append fails (its
		// blocks stay under keys the next append would not all replace).
		a.touched = true
		b := a.l.ls.db.NewBatch()
		for _, kv := range a.kv {
			if err := store.BatchPut(b, a.l.ls.blocks, kv.key, kv.val); err != nil {
				b.Cancel()
				a.failed()
				return err
			}
		}
		if err := b.Flush(false); err != nil {
			a.failed()
			return err
		}
		return nil
	}
	if err := a.f.gs.sync(a.f.f); err != nil {
		a.failed()
		return fmt.Errorf("records: sync change log: %w", err)
	}
	return nil
}

// parts is every file this append wrote to, in order, the current one last.
func (a *logAppend) parts() []logPart {
	return append(slices.Clip(a.done), logPart{f: a.f, base: a.base, written: a.written, blocks: a.blocks})
}

// commit adds the new committed lengths to b (the commit's atomic batch);
// a rewrite also removes the lengths of the files it replaces.
func (a *logAppend) commit(b *store.Batch) error {
	if a.empty() {
		return nil
	}
	if a.fresh {
		for _, f := range a.l.files {
			if err := store.BatchDelete(b, a.l.ls.lengths, a.l.lengthKey(f.id)); err != nil {
				return err
			}
		}
	}
	for _, p := range a.parts() {
		var v [8]byte
		binary.BigEndian.PutUint64(v[:], uint64(p.base+p.written))
		if err := store.BatchPut(b, a.l.ls.lengths, a.l.lengthKey(p.f.id), v[:]); err != nil {
			return err
		}
	}
	return nil
}

// commitAlone commits the append in a transaction of its own, publishes it
// and syncs the store (as Writer.Commit does: published once committed,
// synced after). It returns the files a rewrite replaced (see publish).
func (a *logAppend) commitAlone() ([]*logFile, error) {
	db := a.l.ls.db
	b := db.NewAtomicBatch()
	if err := a.commit(b); err != nil {
		b.Cancel()
		a.failed()
		return nil, err
	}
	if err := b.Flush(false); err != nil {
		a.failed()
		return nil, err
	}
	old := a.publish()
	return old, db.Sync()
}

// publish makes the committed entries visible, once b was stored. A
// rewrite returns the files it replaced, closed: the caller removes them
// (retire) once the transaction that dropped them is synced.
func (a *logAppend) publish() []*logFile {
	if a.empty() {
		return nil
	}
	l := a.l
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.gone != nil {
		return nil
	}
	var old []*logFile
	if a.fresh {
		old = l.files
		for _, f := range old {
			if f.f != nil {
				f.f.Close()
			}
		}
		l.w = nil
		l.files, l.dead, l.total = nil, deadSet{}, 0
	}
	for _, p := range a.parts() {
		f := p.f
		if len(l.files) == 0 || l.files[len(l.files)-1] != f {
			l.files = append(l.files, f)
		}
		f.blocks = append(f.blocks, p.blocks...)
		f.size = p.base + p.written
		f.next = max(f.next, f.size)
	}
	if a.fresh && a.f.mine {
		// Appends to a connection's log continue in its rewrite. (A
		// commit's own file was taken by reserve, and a later commit may
		// already have moved on to another.)
		l.w = a.f
	}
	l.total += a.entries
	for _, p := range a.prevs {
		l.dead.add(p)
	}
	if d := l.dead.len(); d >= minDeadCompact && 4*d >= l.total && l.ls.onDead != nil {
		// Compaction would rewrite it at its next run; a sync replacing
		// most of a large connection should not wait an hour with the
		// set in memory.
		l.ls.onDead(l.conn)
	}
	l.gen.Add(1)
	return old
}

// retire removes the files a rewrite replaced (publish closed them).
// Callers remove them only once the transaction that dropped their lengths
// is synced: a power cut before would find those lengths and no files.
func (l *changeLog) retire(old []*logFile) {
	if l.dir == "" {
		return
	}
	for _, f := range old {
		_ = os.Remove(l.filePath(f.id))
	}
}

// failed ends an append that will not be committed. When bytes may have
// reached a file past its committed length, appends to it stop: their
// offsets (nonces) must not be used again.
func (a *logAppend) failed() {
	if !a.touched || a.f == nil {
		return
	}
	l := a.l
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, p := range a.parts() {
		if l.w == p.f {
			l.w = nil
		}
		// A new file nothing committed is removed (its id is never handed
		// out again; a crash before this leaves it to the next load).
		if p.f.f != nil && !slices.Contains(l.files, p.f) {
			p.f.f.Close()
			_ = os.Remove(l.filePath(p.f.id))
		}
	}
}
