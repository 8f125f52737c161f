package records

import (
	"bufio"
	"cmp"
	"context"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"math"
	"math/bits"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"
)

// The key index finds a resource's change from its type and id. It used to
// be a Badger table of heads keyed by connection/type/id; those keys arrive
// in random order during a bulk sync, and Badger compacted them level after
// level with table builders that grew with the store (a 1M-resource sync
// peaked at ~260 MB of live heap, 5M at over 1 GB of RSS, and the head
// lookup and write were half of the ingest's CPU).
//
// The key index is written sequentially instead: per connection, pairs of
// (hash of type/id, change sequence). New pairs go to an append-only
// journal (fsynced before the changes they point at reach Badger) and to a
// map in memory; every keyRunPairs pairs the map is sorted and written as a
// run, a sealed file of sorted pairs with a Bloom filter and the first hash
// of each block kept in memory. Runs are merged in the background so a
// lookup checks a handful of filters. A lookup returns every sequence ever
// paired with the hash, newest first; the caller takes the first whose
// change entry still exists and has the same type and id. So the index may
// hold more than the truth (pairs of superseded changes, of a batch a crash
// cut short, of another key with the same hash) but never less, and it
// needs no transaction with Badger.
//
// The index is derived data: a connection without one (a store written by
// an earlier version, an in-memory store, a directory that lost its
// keys/VERSION file) gets it rebuilt from its change entries on first use.
//
// Files are sealed with the segments' key; their ids come from the same
// store sequence as the segments' and a file is never appended to after a
// restart, so nonces (file id, offset) are never reused.

// keyRunPairs is how many pairs the in-memory part holds before it is
// written as a run (a variable for tests). 128k pairs are about 6 MB of map.
var keyRunPairs = 128 << 10

// keyRunMaxPairs is the most pairs a run may hold: a block's nonce holds
// its offset in 32 bits, so every block must start below 4 GiB (about 267M
// pairs; a variable for tests). Merges stop short of it.
var keyRunMaxPairs = (math.MaxUint32 - keyRunHeader) / keyBlockLen * keyBlockPairs

const (
	keyBlockPairs = 256 // pairs per sealed block of a run
	keyPairSize   = 16
	keyBlockPlain = keyBlockPairs * keyPairSize
	keyBlockLen   = 4 + keyBlockPlain + 16 // length prefix, sealed block (GCM tag)
	keyBloomBits  = 10                     // bits per pair
	keyRunMagic   = "MRKEYS1\n"
	keyVersion    = "VERSION"
	keysDirName   = "keys"
)

var errKeysCorrupt = errors.New("key index file is damaged")

// keyFault, when set (tests only), is called before the named step of
// writing the key index ("run": writing a run, "merge": a background merge
// starting); an error it returns fails the step as a full disk would, and
// leaves the files a crash at that point would leave.
var keyFault func(step string) error

func fault(step string) error {
	if keyFault == nil {
		return nil
	}
	return keyFault(step)
}

// keyOf hashes a resource's type and id (a variable so tests can make keys
// collide).
var keyOf = xxKey

func xxKey(typ, id string) uint64 {
	var d xxhash.Digest
	d.Reset()
	d.WriteString(typ)
	d.Write([]byte{'/'})
	d.WriteString(id)
	return d.Sum64()
}

type keyPair struct{ hash, seq uint64 }

// keyIndexes holds the key index of every connection used since start.
type keyIndexes struct {
	segs   *segments // nil: in memory only
	log    *slog.Logger
	merges sync.WaitGroup
	mu     sync.Mutex
	byID   map[string]*connKeys
}

// connKeys is one connection's key index. mu guards everything; lookups
// hold it shared while they read run files.
type connKeys struct {
	ix   *keyIndexes
	conn string
	dir  string // "" in memory only

	mu     sync.RWMutex
	loaded bool
	open   map[uint64]uint64   // hash → newest sequence not yet in a run
	more   map[uint64][]uint64 // hash → older sequences not yet in a run
	nOpen  int
	// The journal being appended to (nil until the first append) and the
	// journals whose pairs are in open but not yet in a run. Guarded by mu
	// and, while the store is open, by the connection's commit lock.
	jnl    *jnlFile
	jnlID  uint64
	jnlOff int64
	olds   []string
	runs   []*keyRun
	merge  bool          // a merge is running
	merged chan struct{} // closed when the last merge started has ended
	// gone: the index was dropped (its connection deleted) or the store
	// closed; it is not loaded again, and a running merge is abandoned.
	gone error
	buf  []byte
}

func (ix *keyIndexes) get(conn string) *connKeys {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	ck := ix.byID[conn]
	if ck == nil {
		ck = &connKeys{ix: ix, conn: conn}
		if ix.segs != nil {
			ck.dir = filepath.Join(ix.segs.connDir(conn), keysDirName)
		}
		ix.byID[conn] = ck
	}
	return ck
}

// drop forgets conn's index and closes its files, and returns once a merge
// of it has ended: its directory can then be removed (nothing writes in it,
// and Windows removes no open file).
func (ix *keyIndexes) drop(conn string) {
	ix.mu.Lock()
	ck := ix.byID[conn]
	delete(ix.byID, conn)
	ix.mu.Unlock()
	if ck != nil {
		ck.shut(fmt.Errorf("%w: %s", ErrDeleted, conn))
	}
}

// close closes every file, abandoning running merges (their reads fail),
// and waits for them. Writers must have stopped.
func (ix *keyIndexes) close() {
	ix.mu.Lock()
	cks := slices.Collect(maps.Values(ix.byID))
	clear(ix.byID)
	ix.mu.Unlock()
	for _, ck := range cks {
		ck.shut(errors.New("records: the store is closed"))
	}
	ix.merges.Wait()
}

// shut closes the index for good (gone says why) and waits for its merge.
func (ck *connKeys) shut(gone error) {
	ck.mu.Lock()
	ck.gone = gone
	ck.closeLocked()
	merged := ck.merged
	ck.mu.Unlock()
	if merged != nil {
		<-merged
	}
}

// closeLocked closes the index's files and forgets what it loaded.
func (ck *connKeys) closeLocked() {
	if ck.jnl != nil {
		ck.jnl.retire()
		ck.jnl = nil
	}
	for _, r := range ck.runs {
		r.f.Close()
	}
	ck.runs, ck.olds = nil, nil
	ck.open, ck.more, ck.nOpen = map[uint64]uint64{}, map[uint64][]uint64{}, 0
	ck.loaded = false
}

func (ck *connKeys) aead() cipher.AEAD { return ck.ix.segs.aead }

func (ck *connKeys) ad() []byte { return append([]byte("keys\x00"), ck.conn...) }

// ensure loads the index, rebuilding it from the change entries with scan
// when it has none. scan calls add for every (type, id, seq) stored.
func (ck *connKeys) ensure(ctx context.Context, scan func(ctx context.Context, add func(typ, id string, seq uint64) error) error) error {
	ck.mu.RLock()
	loaded := ck.loaded
	ck.mu.RUnlock()
	if loaded {
		return nil
	}
	// ensure runs before a commit touches the journal: under mu alone.
	ck.mu.Lock()
	defer ck.mu.Unlock()
	if ck.loaded {
		return nil
	}
	if ck.gone != nil {
		return ck.gone
	}
	ck.open, ck.more, ck.nOpen = map[uint64]uint64{}, map[uint64][]uint64{}, 0
	if ck.dir != "" {
		found, err := ck.checkVersion()
		if err != nil {
			return fmt.Errorf("records: key index of %s: %w", ck.conn, err)
		}
		if found {
			if err := ck.loadFiles(); err != nil {
				ck.closeLocked() // what it opened before the error
				return fmt.Errorf("records: key index of %s: %w", ck.conn, ck.damaged(err))
			}
			ck.loaded = true
			ck.maybeMergeLocked()
			return nil
		}
	}
	if err := ck.rebuildLocked(ctx, scan); err != nil {
		ck.closeLocked()
		return fmt.Errorf("records: rebuild the key index of %s: %w", ck.conn, err)
	}
	ck.loaded = true
	ck.maybeMergeLocked()
	return nil
}

// rebuildLocked builds the index from the change entries: runs of
// keyRunPairs pairs as they come (the connection's pairs are never all in
// memory), and VERSION once every one of them is in a synced run. Until
// then a crash or an error leaves no VERSION, and the next use rebuilds
// again. Callers hold mu.
func (ck *connKeys) rebuildLocked(ctx context.Context, scan func(ctx context.Context, add func(typ, id string, seq uint64) error) error) error {
	if ck.dir != "" {
		if err := os.RemoveAll(ck.dir); err != nil {
			return err
		}
	}
	seal := func() error {
		if ck.dir == "" || ck.nOpen == 0 {
			return nil
		}
		if err := ck.makeDir(); err != nil {
			return err
		}
		return ck.sealLocked()
	}
	start, n := time.Now(), 0
	err := scan(ctx, func(typ, id string, seq uint64) error {
		ck.addLocked(keyOf(typ, id), seq)
		n++
		if ck.nOpen >= keyRunPairs {
			return seal()
		}
		return nil
	})
	if err == nil {
		err = seal()
	}
	if err == nil && len(ck.runs) > 0 {
		err = ck.writeVersion()
		if err == nil {
			// After an upgrade or a lost index: a large connection's first
			// use waits for this, so say what it was.
			ck.ix.log.Info("rebuilt a connection's key index from its change index", "connection", ck.conn, "resources", n, "took", time.Since(start).Round(time.Millisecond))
		}
	}
	return err
}

// makeDir creates the index's directory (without VERSION).
func (ck *connKeys) makeDir() error {
	if err := ck.ix.segs.makeConnDir(ck.conn); err != nil {
		return err
	}
	if err := os.MkdirAll(ck.dir, 0o700); err != nil {
		return fmt.Errorf("records: key index directory: %w", err)
	}
	return nil
}

// writeVersion writes VERSION unless it is there. It says every stored
// change of the connection is in the index: written by a rebuild once its
// runs are synced, or with the first journal of a connection whose index is
// empty.
func (ck *connKeys) writeVersion() error {
	p := filepath.Join(ck.dir, keyVersion)
	if _, err := os.Stat(p); err == nil {
		return nil
	}
	// It holds a value sealed with the key (a random nonce: written once
	// per connection) so that a wrong key is a clear error instead of an
	// empty index.
	v := make([]byte, 12, 12+len(keyVersionCheck)+16)
	if _, err := rand.Read(v); err != nil {
		return err
	}
	v = ck.aead().Seal(v, v[:12], []byte(keyVersionCheck), ck.ad())
	if err := writeSynced(p, v); err != nil {
		return fmt.Errorf("records: key index directory: %w", err)
	}
	return syncDir(ck.dir)
}

const keyVersionCheck = "medrelay key index v1"

// damaged adds the way out to an error about a damaged index file: the
// index is derived data, rebuilt from the change entries without VERSION.
func (ck *connKeys) damaged(err error) error {
	if !errors.Is(err, errKeysCorrupt) {
		return err
	}
	return fmt.Errorf("%w (remove %s and the index is rebuilt from the stored changes when it is next loaded, at the latest at the next start)", err, filepath.Join(ck.dir, keyVersion))
}

// checkVersion reads VERSION (found false: there is none).
func (ck *connKeys) checkVersion() (found bool, err error) {
	p := filepath.Join(ck.dir, keyVersion)
	v, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return true, err
	}
	bad := fmt.Errorf("%s does not open: the store's records key is not the one it was written with (wrong key), or the file is damaged", p)
	if len(v) < 12 {
		return true, bad
	}
	plain, err := ck.aead().Open(nil, v[:12], v[12:], ck.ad())
	if err != nil || string(plain) != keyVersionCheck {
		return true, bad
	}
	return true, nil
}

func writeSynced(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func (ck *connKeys) addLocked(h, seq uint64) {
	if old, ok := ck.open[h]; ok {
		if old == seq {
			return
		}
		if seq < old {
			old, seq = seq, old
		}
		ck.more[h] = append(ck.more[h], old)
	}
	ck.open[h] = seq
	ck.nOpen++
}

// loadFiles reads the runs' filters and replays the journals.
func (ck *connKeys) loadFiles() error {
	ents, err := os.ReadDir(ck.dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		name := e.Name()
		p := filepath.Join(ck.dir, name)
		switch {
		case strings.HasSuffix(name, ".run"):
			id, err := parseSeqHex(strings.TrimSuffix(name, ".run"))
			if err != nil {
				continue
			}
			r, err := openKeyRun(p, id, ck.aead(), ck.ad())
			if err != nil {
				return err
			}
			ck.runs = append(ck.runs, r)
		case strings.HasSuffix(name, ".jnl"):
			id, err := parseSeqHex(strings.TrimSuffix(name, ".jnl"))
			if err != nil {
				continue
			}
			if err := ck.replay(p, id); err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
			ck.olds = append(ck.olds, p)
		case strings.HasSuffix(name, ".tmp"):
			os.Remove(p) // a run or merge a crash cut short
		}
	}
	slices.SortFunc(ck.runs, func(a, b *keyRun) int { return cmp.Compare(a.id, b.id) })
	// Every start of the agent that writes to a connection begins a journal
	// of its own; a small connection would otherwise gather one per start,
	// all replayed at every load.
	if ck.nOpen >= keyRunPairs || len(ck.olds) >= keyMaxJournals {
		return ck.sealLocked()
	}
	return nil
}

// keyMaxJournals: this many journals left by earlier starts are written as
// a run at load (small runs are then merged like any others).
const keyMaxJournals = 4

// replay adds a journal's pairs. A last record cut short or garbled by a
// crash ends it: its batch never reached the store (the journal is synced
// first). A record that does not open before the last one is damage.
func (ck *connKeys) replay(path string, id uint64) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	aead, ad := ck.aead(), ck.ad()
	var off int64
	for len(b) >= 4 {
		n := int(binary.LittleEndian.Uint32(b))
		if n > len(b)-4 {
			break
		}
		nonce := nonceOf(id, uint64(off))
		plain, err := aead.Open(nil, nonce[:], b[4:4+n], ad)
		if err != nil {
			if 4+n == len(b) {
				break
			}
			return fmt.Errorf("%w: record at offset %d does not open", errKeysCorrupt, off)
		}
		if len(plain)%keyPairSize != 0 {
			return fmt.Errorf("%w: record at offset %d holds %d bytes, not whole pairs", errKeysCorrupt, off, len(plain))
		}
		for p := plain; len(p) > 0; p = p[keyPairSize:] {
			ck.addLocked(binary.BigEndian.Uint64(p), binary.BigEndian.Uint64(p[8:]))
		}
		b = b[4+n:]
		off += int64(4 + n)
	}
	return nil
}

// journal appends pairs to the journal; add then makes them visible. The
// returned sync (nil when nothing was written) syncs the record and must be
// called, or released, once: the commit syncs it with its other writes,
// outside the lock, before the changes the pairs point at are committed.
// Callers hold the connection's commit lock (Store.lock), which serialises
// everything that appends to the journal.
func (ck *connKeys) journal(pairs []keyPair) (*jnlSync, error) {
	if len(pairs) == 0 || ck.dir == "" {
		return nil, nil
	}
	js, err := ck.journalLocked(pairs)
	if err != nil {
		return nil, fmt.Errorf("records: key index of %s: %w", ck.conn, err)
	}
	return js, nil
}

// jnlFile is the journal being appended to: records are written in order
// under the commit lock and synced by their commits outside it, several at
// once. A retired journal is closed once no commit is left to sync it.
type jnlFile struct {
	f       *os.File
	mu      sync.Mutex
	users   int
	retired bool
	// bad: a sync failed; what the file holds is unknown, so the next
	// append retires it (under the commit lock).
	bad atomic.Bool
	gs  groupSync
}

func (j *jnlFile) retire() {
	j.mu.Lock()
	defer j.mu.Unlock()
	if !j.retired {
		j.retired = true
		if j.users == 0 {
			j.f.Close()
		}
	}
}

func (j *jnlFile) release() {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.users--
	if j.retired && j.users == 0 {
		j.f.Close()
	}
}

// jnlSync is one commit's hold on the journal until its record is synced.
type jnlSync struct {
	j    *jnlFile
	once sync.Once
}

// sync syncs the journal (and with it the commit's record) and releases it.
func (s *jnlSync) sync() error {
	if s == nil {
		return nil
	}
	err := errors.New("records: key index journal already released")
	s.once.Do(func() {
		err = s.j.gs.sync(s.j.f)
		if err != nil {
			s.j.bad.Store(true)
			err = fmt.Errorf("records: sync the key index journal: %w", err)
		}
		s.j.release()
	})
	return err
}

// release gives up the hold without syncing (the commit failed).
func (s *jnlSync) release() {
	if s != nil {
		s.once.Do(s.j.release)
	}
}

// add makes journaled pairs visible to lookups, and writes a run when the
// in-memory part is full. Callers hold the connection's commit lock.
func (ck *connKeys) add(pairs []keyPair) error {
	if len(pairs) == 0 {
		return nil
	}
	ck.mu.Lock()
	defer ck.mu.Unlock()
	for _, p := range pairs {
		ck.addLocked(p.hash, p.seq)
	}
	if ck.dir != "" && ck.nOpen >= keyRunPairs {
		if err := ck.sealLocked(); err != nil {
			return fmt.Errorf("records: key index of %s: %w", ck.conn, err)
		}
	}
	return nil
}

func (ck *connKeys) journalLocked(pairs []keyPair) (*jnlSync, error) {
	plain := ck.buf[:0]
	for _, p := range pairs {
		plain = binary.BigEndian.AppendUint64(plain, p.hash)
		plain = binary.BigEndian.AppendUint64(plain, p.seq)
	}
	ck.buf = plain
	aead := ck.aead()
	size := int64(4 + len(plain) + aead.Overhead())
	if ck.jnl != nil && (ck.jnlOff+size > 1<<32 || ck.jnl.bad.Load()) {
		// Nonces hold 32-bit offsets (runs are sealed long before); a
		// journal whose sync failed holds what it holds.
		ck.retireJournal()
	}
	if ck.jnl == nil {
		if err := ck.makeDir(); err != nil {
			return nil, err
		}
		if err := ck.writeVersion(); err != nil {
			return nil, err
		}
		id, err := ck.ix.segs.db.NextSeq(segSeq)
		if err != nil {
			return nil, err
		}
		f, err := os.OpenFile(filepath.Join(ck.dir, seqHex(id)+".jnl"), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err != nil {
			return nil, err
		}
		if err := syncDir(ck.dir); err != nil {
			f.Close()
			return nil, err
		}
		ck.jnl, ck.jnlID, ck.jnlOff = &jnlFile{f: f}, id, 0
	}
	out := make([]byte, 4, size)
	binary.LittleEndian.PutUint32(out, uint32(size-4))
	nonce := nonceOf(ck.jnlID, uint64(ck.jnlOff))
	out = aead.Seal(out, nonce[:], plain, ck.ad())
	if _, err := ck.jnl.f.Write(out); err != nil {
		// Part of the record may be in the file (a full disk): its nonce
		// is spent, and a record written after it would make the replay
		// read it as damage. The journal ends here, its last record cut
		// short as by a crash; the next commit starts a new one.
		ck.retireJournal()
		return nil, err
	}
	ck.jnlOff += size
	ck.jnl.mu.Lock()
	ck.jnl.users++
	ck.jnl.mu.Unlock()
	return &jnlSync{j: ck.jnl}, nil
}

// retireJournal stops appending to the journal; it is removed with the
// others once its pairs are in a run. Callers hold the commit lock.
func (ck *connKeys) retireJournal() {
	ck.jnl.retire()
	ck.olds = append(ck.olds, ck.jnl.f.Name())
	ck.jnl = nil
}

// sealLocked writes the in-memory pairs as a run, then drops the journals
// that held them.
func (ck *connKeys) sealLocked() error {
	pairs := make([]keyPair, 0, ck.nOpen)
	for h, s := range ck.open {
		pairs = append(pairs, keyPair{h, s})
	}
	for h, ss := range ck.more {
		for _, s := range ss {
			pairs = append(pairs, keyPair{h, s})
		}
	}
	sortPairs(pairs)
	if len(pairs) > 0 { // journals cut short before their first record hold none
		r, err := ck.newRun(len(pairs), slices.Values(pairs))
		if err != nil {
			return err
		}
		ck.runs = append(ck.runs, r)
	}
	if ck.jnl != nil {
		ck.retireJournal()
	}
	for _, p := range ck.olds {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	ck.olds = nil
	ck.open, ck.more, ck.nOpen = map[uint64]uint64{}, map[uint64][]uint64{}, 0
	ck.maybeMergeLocked()
	return nil
}

// newRun writes n pairs as a run with a new file id. An id whose file
// exists is passed over: the sequence can hand ids out again after a power
// cut lost its unsynced lease, and the run there may hold pairs of stored
// changes.
func (ck *connKeys) newRun(n int, pairs func(func(keyPair) bool)) (*keyRun, error) {
	for {
		id, err := ck.ix.segs.db.NextSeq(segSeq)
		if err != nil {
			return nil, err
		}
		r, err := writeKeyRun(ck.dir, id, ck.aead(), ck.ad(), n, pairs)
		if errors.Is(err, fs.ErrExist) {
			ck.ix.log.Warn("key index file id in use, taking another", "connection", ck.conn, "id", id)
			continue
		}
		return r, err
	}
}

func sortPairs(p []keyPair) { slices.SortFunc(p, comparePairs) }

// comparePairs orders pairs as runs hold them: by hash, newest sequence
// first.
func comparePairs(a, b keyPair) int {
	switch {
	case a.hash < b.hash || a.hash == b.hash && a.seq > b.seq:
		return -1
	case a == b:
		return 0
	}
	return 1
}

// lookup returns the sequences paired with (typ, id), newest first.
func (ck *connKeys) lookup(typ, id string, out []uint64) ([]uint64, error) {
	h := keyOf(typ, id)
	ck.mu.RLock()
	defer ck.mu.RUnlock()
	out = out[:0]
	if s, ok := ck.open[h]; ok {
		out = append(out, s)
		out = append(out, ck.more[h]...)
	}
	for _, r := range ck.runs {
		var err error
		if out, err = r.lookup(h, out); err != nil {
			return out, fmt.Errorf("records: key index of %s: %w", ck.conn, ck.damaged(err))
		}
	}
	slices.SortFunc(out, func(a, b uint64) int { return cmp.Compare(b, a) })
	return slices.Compact(out), nil
}

// maybeMergeLocked starts a background merge when the newest keyMergeRuns
// runs are of about the same size (size-tiered: runs grow geometrically, a
// pair is rewritten about log4(runs) times, and a lookup checks a few
// filters whatever the connection's size). Not before the index is loaded:
// a load or rebuild that fails discards its runs. Callers hold mu.
func (ck *connKeys) maybeMergeLocked() {
	const k = keyMergeRuns
	if !ck.loaded || ck.merge || len(ck.runs) < k {
		return
	}
	last := ck.runs[len(ck.runs)-k:]
	lo, hi, total := last[0].n, last[0].n, 0
	for _, r := range last {
		lo, hi, total = min(lo, r.n), max(hi, r.n), total+r.n
	}
	if hi > 2*lo && len(ck.runs) <= 4*k || total > keyRunMaxPairs {
		return
	}
	in := slices.Clone(last)
	ck.merge = true
	merged := make(chan struct{})
	ck.merged = merged
	ck.ix.merges.Add(1)
	go func() {
		defer ck.ix.merges.Done()
		defer close(merged)
		ck.mergeRuns(in)
	}()
}

const keyMergeRuns = 4

// mergeRuns writes the pairs of in as one run and puts it in their place.
// Readers go on using in until the swap; in are only read.
func (ck *connKeys) mergeRuns(in []*keyRun) {
	_ = fault("merge")
	n := 0
	for _, r := range in {
		n += r.n
	}
	var readErr error
	out, err := ck.newRun(n, mergePairs(in, &readErr))
	if err != nil && readErr != nil {
		err = readErr // why it found too few pairs
	}
	ck.mu.Lock()
	defer ck.mu.Unlock()
	ck.merge = false
	if ck.gone != nil || !ck.loaded {
		// Dropped meanwhile (the connection was deleted or the store
		// closed): its runs were closed under the merge, which is
		// abandoned.
		if err == nil {
			out.f.Close()
			os.Remove(out.path)
		}
		return
	}
	if err != nil {
		ck.ix.log.Warn("merging key index runs failed; the runs stay as they are", "connection", ck.conn, "error", err)
		return
	}
	at := slices.Index(ck.runs, in[0])
	if at < 0 || at+len(in) > len(ck.runs) || !slices.Equal(ck.runs[at:at+len(in)], in) {
		out.f.Close()
		os.Remove(out.path)
		return
	}
	ck.runs = slices.Replace(ck.runs, at, at+len(in), out)
	for _, r := range in {
		r.f.Close()
		os.Remove(r.path)
	}
	ck.maybeMergeLocked()
}

// mergePairs yields the pairs of runs in order. A read error ends the
// sequence early (writeKeyRun then finds too few pairs and fails) and is
// kept in *failed.
func mergePairs(runs []*keyRun, failed *error) func(func(keyPair) bool) {
	return func(yield func(keyPair) bool) {
		type cur struct {
			r     *keyRun
			block int
			buf   []keyPair // the current block's pairs not yet yielded
			raw   []byte    // read buffers, reused block after block
			ps    []keyPair
		}
		cs := make([]*cur, 0, len(runs))
		next := func(c *cur) bool {
			for len(c.buf) == 0 {
				if c.block >= c.r.blocks() {
					return false
				}
				ps, err := c.r.readBlockInto(c.block, c.raw, c.ps[:0])
				if err != nil {
					*failed = err
					return false
				}
				c.block++
				c.buf, c.ps = ps, ps
			}
			return true
		}
		for _, r := range runs {
			c := &cur{r: r, raw: make([]byte, keyBlockLen)}
			if next(c) {
				cs = append(cs, c)
			}
		}
		for len(cs) > 0 {
			best := 0
			for i := 1; i < len(cs); i++ {
				if comparePairs(cs[i].buf[0], cs[best].buf[0]) < 0 {
					best = i
				}
			}
			c := cs[best]
			if !yield(c.buf[0]) {
				return
			}
			c.buf = c.buf[1:]
			if !next(c) {
				cs = slices.Delete(cs, best, best+1)
			}
		}
	}
}

// keyRun is a sealed, sorted file of pairs. Only its filter and the first
// hash of each block are kept in memory.
type keyRun struct {
	id     uint64
	path   string
	f      *os.File
	n      int
	bloom  []uint64
	firsts []uint64
	aead   cipher.AEAD
	ad     []byte
}

const keyRunHeader = len(keyRunMagic) + 8 // magic, pair count

func (r *keyRun) blocks() int { return len(r.firsts) }

func (r *keyRun) blockOff(i int) int64 { return int64(keyRunHeader) + int64(i)*keyBlockLen }

// writeKeyRun writes n pairs (sorted) as run id in dir: a temporary file,
// synced, closed (Windows renames no open file), renamed, and opened again
// for reads.
func writeKeyRun(dir string, id uint64, aead cipher.AEAD, ad []byte, n int, pairs func(func(keyPair) bool)) (*keyRun, error) {
	if err := fault("run"); err != nil {
		return nil, err
	}
	if n > keyRunMaxPairs {
		return nil, fmt.Errorf("key run: %d pairs are more than a run may hold (%d)", n, keyRunMaxPairs)
	}
	final := filepath.Join(dir, seqHex(id)+".run")
	tmp := final + ".tmp"
	if _, err := os.Lstat(final); err == nil {
		return nil, fmt.Errorf("key run %s: %w", final, fs.ErrExist) // never replaced
	}
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, err
	}
	r := &keyRun{id: id, path: final, n: n, aead: aead, ad: ad, bloom: make([]uint64, bloomWords(n))}
	fail := func(err error) (*keyRun, error) {
		f.Close()
		os.Remove(tmp)
		return nil, err
	}
	w := bufio.NewWriterSize(f, 1<<20) // its first error sticks: Flush reports it
	hdr := append([]byte(keyRunMagic), make([]byte, 8)...)
	binary.LittleEndian.PutUint64(hdr[len(keyRunMagic):], uint64(n))
	w.Write(hdr)
	plain := make([]byte, 0, keyBlockPlain)
	sealed := make([]byte, 0, keyBlockLen)
	off := int64(len(hdr))
	flush := func() {
		if len(plain) == 0 {
			return
		}
		// Blocks are padded to their full size so block i is at a fixed offset.
		for len(plain) < keyBlockPlain {
			plain = append(plain, 0xff)
		}
		nonce := nonceOf(id, uint64(off))
		sealed = binary.LittleEndian.AppendUint32(sealed[:0], uint32(keyBlockPlain+aead.Overhead()))
		sealed = aead.Seal(sealed, nonce[:], plain, ad)
		w.Write(sealed)
		off += int64(len(sealed))
		plain = plain[:0]
	}
	got := 0
	for p := range pairs {
		if len(plain) == 0 {
			r.firsts = append(r.firsts, p.hash)
		}
		plain = binary.BigEndian.AppendUint64(plain, p.hash)
		plain = binary.BigEndian.AppendUint64(plain, p.seq)
		bloomAdd(r.bloom, p.hash)
		got++
		if len(plain) == keyBlockPlain {
			flush()
		}
	}
	flush()
	if got != n {
		return fail(fmt.Errorf("key run: %d pairs read of %d", got, n))
	}
	// The filter is not written: it is rebuilt from the blocks when the
	// run is opened (a sequential read of 16 bytes per pair).
	if err := w.Flush(); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return nil, err
	}
	if err := os.Rename(tmp, final); err != nil {
		os.Remove(tmp)
		return nil, err
	}
	if err := syncDir(dir); err != nil {
		return nil, err
	}
	if r.f, err = os.Open(final); err != nil {
		return nil, err
	}
	return r, nil
}

// openKeyRun opens a run, reading every block to rebuild its filter and
// block index (and to check it is whole).
func openKeyRun(path string, id uint64, aead cipher.AEAD, ad []byte) (*keyRun, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	hdr := make([]byte, keyRunHeader)
	if _, err := io.ReadFull(f, hdr); err != nil || string(hdr[:len(keyRunMagic)]) != keyRunMagic {
		f.Close()
		return nil, fmt.Errorf("%s: %w: no run header", path, errKeysCorrupt)
	}
	n := int(binary.LittleEndian.Uint64(hdr[len(keyRunMagic):]))
	if n < 0 || n > 1<<40 {
		f.Close()
		return nil, fmt.Errorf("%s: %w: a count of %d pairs", path, errKeysCorrupt, n)
	}
	r := &keyRun{id: id, path: path, f: f, n: n, aead: aead, ad: ad, bloom: make([]uint64, bloomWords(n))}
	nb := (n + keyBlockPairs - 1) / keyBlockPairs
	r.firsts = make([]uint64, nb)
	buf := make([]byte, keyBlockLen)
	var ps []keyPair
	for i := range nb {
		if ps, err = r.readBlockInto(i, buf, ps[:0]); err != nil {
			f.Close()
			return nil, err
		}
		r.firsts[i] = ps[0].hash
		for _, p := range ps {
			bloomAdd(r.bloom, p.hash)
		}
	}
	return r, nil
}

// readBlockInto appends block i's pairs (padding dropped) to out, reading
// through buf (keyBlockLen bytes).
func (r *keyRun) readBlockInto(i int, buf []byte, out []keyPair) ([]keyPair, error) {
	off := r.blockOff(i)
	if _, err := r.f.ReadAt(buf[:keyBlockLen], off); err != nil {
		if errors.Is(err, os.ErrClosed) {
			return out, err // the run was closed (its index dropped), not damaged
		}
		return out, fmt.Errorf("%s: %w: block %d: %v", r.path, errKeysCorrupt, i, err)
	}
	if int(binary.LittleEndian.Uint32(buf)) != keyBlockLen-4 {
		return out, fmt.Errorf("%s: %w: block %d has a wrong length", r.path, errKeysCorrupt, i)
	}
	nonce := nonceOf(r.id, uint64(off))
	plain, err := r.aead.Open(buf[4:4], nonce[:], buf[4:keyBlockLen], r.ad)
	if err != nil {
		return out, fmt.Errorf("%s: %w: block %d does not open", r.path, errKeysCorrupt, i)
	}
	count := keyBlockPairs
	if i == len(r.firsts)-1 || len(r.firsts) == 0 {
		count = r.n - i*keyBlockPairs
	}
	if count <= 0 || count > keyBlockPairs {
		return out, fmt.Errorf("%s: %w: block %d of a run of %d pairs", r.path, errKeysCorrupt, i, r.n)
	}
	for j := range count {
		p := plain[j*keyPairSize:]
		out = append(out, keyPair{binary.BigEndian.Uint64(p), binary.BigEndian.Uint64(p[8:])})
	}
	return out, nil
}

// lookup appends the sequences paired with h in this run.
func (r *keyRun) lookup(h uint64, out []uint64) ([]uint64, error) {
	if !bloomHas(r.bloom, h) {
		return out, nil
	}
	// The first block that may hold h: pairs of one hash can straddle
	// blocks, so start at the last block whose first hash is below h.
	i, _ := slices.BinarySearch(r.firsts, h)
	if i > 0 {
		i--
	}
	var buf [keyBlockLen]byte
	var ps []keyPair
	for ; i < len(r.firsts) && r.firsts[i] <= h; i++ {
		var err error
		if ps, err = r.readBlockInto(i, buf[:], ps[:0]); err != nil {
			return out, err
		}
		for _, p := range ps {
			if p.hash == h {
				out = append(out, p.seq)
			}
		}
	}
	return out, nil
}

// A blocked Bloom filter: each hash sets 6 bits in one 512-bit block, so a
// lookup touches one cache line.
func bloomWords(n int) int {
	blocks := (n*keyBloomBits + 511) / 512
	return max(blocks, 1) * 8
}

func bloomPos(f []uint64, h uint64) (block int, h2 uint64) {
	nb := uint64(len(f) / 8)
	hi, _ := bits.Mul64(h, nb)
	return int(hi) * 8, h*0x9E3779B97F4A7C15 ^ h>>29
}

func bloomAdd(f []uint64, h uint64) {
	b, h2 := bloomPos(f, h)
	for k := range 6 {
		bit := (h2 >> (k * 9)) & 511
		f[b+int(bit>>6)] |= 1 << (bit & 63)
	}
}

func bloomHas(f []uint64, h uint64) bool {
	b, h2 := bloomPos(f, h)
	for k := range 6 {
		bit := (h2 >> (k * 9)) & 511
		if f[b+int(bit>>6)]&(1<<(bit&63)) == 0 {
			return false
		}
	}
	return true
}

// scanChanges calls add for every live change of l (the rebuild of its
// key index).
func scanChanges(l *changeLog) func(ctx context.Context, add func(typ, id string, seq uint64) error) error {
	return func(ctx context.Context, add func(typ, id string, seq uint64) error) error {
		in := names{}
		return l.scan(ctx, 0, func(seq uint64, v []byte) error {
			c, err := decodeChange(v, in)
			if err != nil {
				return fmt.Errorf("change %d: %w", seq, err)
			}
			return add(c.typ, c.id, seq)
		})
	}
}
