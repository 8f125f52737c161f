package records

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/medrelay/medrelay/internal/store"
)

// Resource bodies live outside Badger, in append-only segment files, one
// directory per connection; the change log (changelog.go) keeps only the
// small change entries (header, and where the body is). Why: with
// encryption on, Badger builds a fresh AES cipher for every entry it
// writes, and writes values through memory-mapped logs whose pages count
// against the agent's resident memory; measured on the bench machine, Badger took large values at about
// 260 MB/s and a 1M-resource bulk sync peaked at 1.4 GB of RSS, most of it
// the mapped value log. A segment is written once with write(2), each body
// sealed on its own with AES-256-GCM, so a record can be read without its
// neighbours.
//
// A body's nonce is its segment id and offset. Segment ids come from a store
// sequence (never reused, a crash included) and a segment is only ever
// appended to by the process that created it; offsets only grow. So no
// nonce is used twice under the key. The connection, type and id are the
// additional data: a body cannot be passed off as another record's.
//
// Superseded bodies stay in their segment until compaction (compact.go)
// copies the live ones out of a mostly dead segment and removes it, or the
// connection's records are deleted (the whole directory goes then).
type segments struct {
	dir  string
	aead cipher.AEAD
	db   *store.DB

	mu      sync.Mutex
	writing map[string]*segFile // connection → segment being appended
	readers map[string]*reader  // path → open file for reads

	// size is the bytes of every segment: counted on first use (a walk),
	// then kept up to date by writes and removals (a write during the walk
	// may be counted twice or not at all: a status figure).
	sizeOnce sync.Once
	size     atomic.Int64

	// written: connections whose segments grew since the compactor last
	// looked (under mu).
	written       map[string]bool
	compactedOnce atomic.Bool
}

// maxSegment is the size at which a connection starts a new segment (a
// variable for tests).
var maxSegment int64 = 256 << 20

// maxOpenReaders bounds the files kept open for reads.
const maxOpenReaders = 64

const segSeq = "record_segments"

type segFile struct {
	id   uint64
	path string
	f    *os.File
	// next is where the next body goes: past every body reserved, written
	// or not (under the connection's lock).
	next int64
	// users: appenders that reserved space and have not written it yet
	// (under segments.mu). A retired segment is closed once none is left.
	users   int
	retired bool
	gs      groupSync
}

type reader struct {
	f    *os.File
	refs int
	gone bool // evicted or deleted: close when the last reader is done
}

// loc is where a body is: segment, offset and sealed length.
type loc struct {
	seg, off, n uint64
}

func openSegments(db *store.DB, dir string, key []byte) (*segments, error) {
	if len(key) != 32 {
		return nil, fmt.Errorf("records: segment key must be 32 bytes, got %d", len(key))
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("records: segment directory: %w", err)
	}
	return &segments{dir: dir, aead: aead, db: db, writing: map[string]*segFile{}, readers: map[string]*reader{}, written: map[string]bool{}}, nil
}

// connDir names a connection's directory by a hash of its id: ids are
// checked for "/" but may be "..", and need not be valid file names anywhere.
func (g *segments) connDir(conn string) string {
	h := sha256.Sum256([]byte(conn))
	return filepath.Join(g.dir, hex.EncodeToString(h[:16]))
}

func (g *segments) segPath(conn string, id uint64) string {
	return filepath.Join(g.connDir(conn), seqHex(id)+".seg")
}

func nonceOf(seg uint64, off uint64) [12]byte {
	var n [12]byte
	binary.BigEndian.PutUint64(n[:8], seg)
	binary.BigEndian.PutUint32(n[8:], uint32(off))
	return n
}

func bodyAD(b []byte, conn, typ, id string) []byte {
	b = append(b[:0], conn...)
	b = append(b, 0)
	b = append(b, typ...)
	b = append(b, 0)
	return append(b, id...)
}

// appender is one commit's view of a connection's segment. add reserves
// each body's place (its offset, half its nonce) under the connection's
// lock; write seals them there and writes them, outside it, while later
// commits reserve the places after.
type appender struct {
	g    *segments
	conn string
	seg  *segFile
	base int64 // where this commit's bodies start in seg
	size int64 // their sealed bytes
	refs []sealRef
	buf  []byte
	ad   []byte
}

// sealRef is a body to seal at its reserved place.
type sealRef struct {
	typ, id string
	body    []byte // the writer's, until its commit ends
	off     uint64
}

func (g *segments) appender(conn string, buf []byte) *appender {
	return &appender{g: g, conn: conn, buf: buf[:0]}
}

// open finds conn's segment, starting a new one when there is none or the
// current one is full.
func (a *appender) open() error {
	g := a.g
	g.mu.Lock()
	sf := g.writing[a.conn]
	if sf != nil && sf.next < maxSegment {
		sf.users++
		g.mu.Unlock()
		a.seg, a.base = sf, sf.next
		return nil
	}
	g.mu.Unlock()
	if sf != nil {
		g.retire(a.conn, sf) // full; closed once the commits writing to it are done
	}
	id, err := g.db.NextSeq(segSeq)
	if err != nil {
		return err
	}
	if err := g.makeConnDir(a.conn); err != nil {
		return err
	}
	p := g.segPath(a.conn, id)
	f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("records: new segment: %w", err)
	}
	a.seg, a.base = &segFile{id: id, path: p, f: f, users: 1}, 0
	g.mu.Lock()
	g.writing[a.conn] = a.seg
	g.mu.Unlock()
	return nil
}

// add reserves body's place and returns it. Callers hold the connection's
// lock; body must stay unchanged until write returns.
func (a *appender) add(typ, id string, body []byte) (loc, error) {
	if a.seg == nil {
		if err := a.open(); err != nil {
			return loc{}, err
		}
	}
	off := uint64(a.base + a.size)
	n := uint64(len(body) + a.g.aead.Overhead())
	if off+n > 1<<32 {
		return loc{}, fmt.Errorf("records: a %d-byte resource does not fit a segment", len(body))
	}
	a.refs = append(a.refs, sealRef{typ: typ, id: id, body: body, off: off})
	a.size += int64(n)
	// The next commit's bodies go after these.
	a.seg.next = a.base + a.size
	return loc{seg: a.seg.id, off: off, n: n}, nil
}

// write seals the bodies at their places and writes them (fsyncing the
// segment when sync is set; the Writer always does) before the index
// entries that point into them are committed. A failed write retires the
// segment: bytes may have reached it, and its offsets (nonces) must not be
// used again.
func (a *appender) write(sync bool) error {
	defer a.release()
	if len(a.refs) == 0 {
		return nil
	}
	// Seal grows its destination to the exact size; size it once here
	// instead, or a batch's buffer is copied once per body.
	a.buf = slices.Grow(a.buf[:0], int(a.size))
	for _, r := range a.refs {
		nonce := nonceOf(a.seg.id, r.off)
		a.ad = bodyAD(a.ad, a.conn, r.typ, r.id)
		a.buf = a.g.aead.Seal(a.buf, nonce[:], r.body, a.ad)
	}
	_, err := a.seg.f.WriteAt(a.buf, a.base)
	if err == nil && sync {
		err = a.seg.gs.sync(a.seg.f)
	}
	if err != nil {
		a.g.retire(a.conn, a.seg)
		return fmt.Errorf("records: write segment: %w", err)
	}
	a.g.size.Add(int64(len(a.buf)))
	a.g.mu.Lock()
	a.g.written[a.conn] = true
	a.g.mu.Unlock()
	return nil
}

// release ends the appender's use of its segment (write does; call it
// when an appender is dropped unwritten).
func (a *appender) release() {
	if a.seg == nil {
		return
	}
	g := a.g
	g.mu.Lock()
	defer g.mu.Unlock()
	a.seg.users--
	if a.seg.retired && a.seg.users == 0 {
		a.seg.f.Close()
	}
	a.seg = nil
}

// takeWritten returns and forgets the connections written since the last
// call.
func (g *segments) takeWritten() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make([]string, 0, len(g.written))
	for c := range g.written {
		out = append(out, c)
	}
	clear(g.written)
	return out
}

// bytes is the size of every segment on disk.
func (g *segments) bytes() int64 {
	g.sizeOnce.Do(func() {
		var n int64
		_ = filepath.WalkDir(g.dir, func(p string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() && strings.HasSuffix(p, ".seg") {
				if fi, err := d.Info(); err == nil {
					n += fi.Size()
				}
			}
			return nil
		})
		g.size.Store(n)
	})
	return g.size.Load()
}

// removed counts a segment file gone.
func (g *segments) removed(n int64) { g.size.Add(-n) }

// retire stops appending to sf; it is closed now or when the last
// appender that reserved space in it is done.
func (g *segments) retire(conn string, sf *segFile) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.writing[conn] == sf {
		delete(g.writing, conn)
	}
	if !sf.retired {
		sf.retired = true
		if sf.users == 0 {
			sf.f.Close()
		}
	}
}

// ErrBodyMissing means an index entry points at bytes its segment does not
// hold: the store lost data (a power cut with unsynced writes, or files
// removed by hand).
var ErrBodyMissing = errors.New("records: a stored resource's body is missing from its segment")

// acquire returns an open file for reading a segment.
func (g *segments) acquire(path string) (*reader, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if r, ok := g.readers[path]; ok {
		r.refs++
		return r, nil
	}
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w (%s)", ErrBodyMissing, filepath.Base(path))
		}
		return nil, err
	}
	if len(g.readers) >= maxOpenReaders {
		for p := range g.readers {
			g.dropReaderLocked(p)
			break
		}
	}
	r := &reader{f: f, refs: 1}
	g.readers[path] = r
	return r, nil
}

func (g *segments) release(r *reader) {
	g.mu.Lock()
	defer g.mu.Unlock()
	r.refs--
	if r.refs == 0 && r.gone {
		r.f.Close()
	}
}

// bodyRef is one body to read: where it is and whose it is.
type bodyRef struct {
	loc     loc
	typ, id string
	idx     int // the caller's
}

// read opens the bodies of refs (all of conn) and passes each to set with
// its ref's idx. Bodies next to each other in a segment — the usual case, as
// a list walks changes in the order they were written — are read with one
// pread. With scratch, bodies are read into *scratch (grown when too small)
// and are valid until it is used again; without, each run gets a buffer of
// its own.
func (g *segments) read(conn string, refs []bodyRef, scratch *[]byte, set func(idx int, body []byte)) error {
	var pool []byte
	if scratch != nil {
		total := 0
		for _, r := range refs {
			total += int(r.loc.n)
		}
		if cap(*scratch) < total {
			*scratch = make([]byte, total)
		}
		pool = (*scratch)[:total]
	}
	var ad []byte
	for i := 0; i < len(refs); {
		// A run of bodies contiguous in one segment.
		first := refs[i].loc
		j, end := i+1, first.off+first.n
		for j < len(refs) && refs[j].loc.seg == first.seg && refs[j].loc.off == end && end-first.off < 4<<20 {
			end += refs[j].loc.n
			j++
		}
		path := g.segPath(conn, first.seg)
		r, err := g.acquire(path)
		if err != nil {
			return err
		}
		var buf []byte
		if size := int(end - first.off); pool != nil {
			buf, pool = pool[:size:size], pool[size:]
		} else {
			buf = make([]byte, size)
		}
		n, err := r.f.ReadAt(buf, int64(first.off))
		g.release(r)
		if n < len(buf) {
			return fmt.Errorf("%w (%s at %d: %v)", ErrBodyMissing, filepath.Base(path), first.off+uint64(n), err)
		}
		for k := i; k < j; k++ {
			l := refs[k].loc
			at := l.off - first.off
			sealed := buf[at : at+l.n : at+l.n]
			nonce := nonceOf(l.seg, l.off)
			ad = bodyAD(ad, conn, refs[k].typ, refs[k].id)
			plain, err := g.aead.Open(sealed[:0], nonce[:], sealed, ad)
			if err != nil {
				return fmt.Errorf("records: %s/%s does not open (wrong key or corrupted segment %s)", refs[k].typ, refs[k].id, filepath.Base(path))
			}
			set(refs[k].idx, plain)
		}
		i = j
	}
	return nil
}

// makeConnDir creates conn's directory with the file naming its owner.
func (g *segments) makeConnDir(conn string) error {
	dir := g.connDir(conn)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("records: segment directory: %w", err)
	}
	p := filepath.Join(dir, connIDFile)
	if _, err := os.Stat(p); err == nil {
		return nil
	}
	if err := os.WriteFile(p, []byte(conn), 0o600); err != nil {
		return fmt.Errorf("records: segment directory: %w", err)
	}
	return nil
}

// files lists conn's segments and their sizes.
func (g *segments) files(conn string) (map[uint64]int64, error) {
	ents, err := os.ReadDir(g.connDir(conn))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	out := map[uint64]int64{}
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".seg")
		if !ok {
			continue
		}
		id, err := parseSeqHex(name)
		if err != nil {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			return nil, err
		}
		out[id] = fi.Size()
	}
	return out, nil
}

// current is the id of the segment conn appends to (0: none).
func (g *segments) current(conn string) uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	if sf := g.writing[conn]; sf != nil {
		return sf.id
	}
	return 0
}

// forget closes the cached read handle of a removed segment.
func (g *segments) forget(path string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.dropReaderLocked(path)
}

// dropReaderLocked forgets path's read handle; it is closed now, or by the
// last reader still using it. Callers hold g.mu.
func (g *segments) dropReaderLocked(path string) {
	r, ok := g.readers[path]
	if !ok {
		return
	}
	delete(g.readers, path)
	r.gone = true
	if r.refs == 0 {
		r.f.Close()
	}
}

// drop closes and removes conn's segments.
func (g *segments) drop(conn string) error {
	g.mu.Lock()
	if sf := g.writing[conn]; sf != nil {
		delete(g.writing, conn)
		sf.f.Close()
	}
	dir := g.connDir(conn) + string(filepath.Separator)
	for p := range g.readers {
		if strings.HasPrefix(p, dir) {
			g.dropReaderLocked(p)
		}
	}
	g.mu.Unlock()
	if sizes, err := g.files(conn); err == nil {
		for _, n := range sizes {
			g.removed(n)
		}
	}
	return os.RemoveAll(g.connDir(conn))
}

// close closes every open file.
func (g *segments) close() {
	g.mu.Lock()
	defer g.mu.Unlock()
	for c, sf := range g.writing {
		sf.f.Close()
		delete(g.writing, c)
	}
	for p := range g.readers {
		g.dropReaderLocked(p)
	}
}
