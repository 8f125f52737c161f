// Package store owns the agent's embedded database (Badger v4). It is the only
// package that imports Badger: everything else sees typed tables (Table[T])
// whose key prefixes are allocated here, so no two components can collide and
// nobody scans another component's keys by accident.
//
// The store is always encrypted at rest. Values that are secret (credentials,
// tokens) are written with Synced so they survive a power cut, not only a
// process crash.
package store

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
)

// Sentinel errors callers test with errors.Is.
var (
	ErrNotFound = errors.New("not found")
	// ErrConflict is returned by Update when a concurrent transaction changed
	// the same key; callers usually retry.
	ErrConflict = errors.New("concurrent update")
	ErrClosed   = errors.New("store closed")
	// ErrLocked means another process has the store open. Badger allows one.
	ErrLocked = errors.New("store is in use by another process")
)

// Options configures Open. Dir and Key are required.
type Options struct {
	Dir string
	// Key encrypts the store (AES, 16, 24 or 32 bytes). It is derived from the
	// master key by package secrets; store never sees the master key itself.
	Key    []byte
	Logger *slog.Logger
	// InMemory keeps everything in RAM (tests and benchmarks only).
	InMemory bool
	// GCInterval is how often the value-log garbage collector runs. Badger
	// never reclaims value-log space unless asked. Zero means 10 minutes;
	// negative disables the loop.
	GCInterval time.Duration
	// CacheBytes sizes Badger's block and index caches together. The defaults
	// Badger ships are sized for servers; a sidecar wants a few tens of MB.
	CacheBytes int64
}

// DB is an open store. It is safe for concurrent use.
type DB struct {
	bdb    *badger.DB
	log    *slog.Logger
	dir    string
	stopGC context.CancelFunc
	gcDone chan struct{}

	mu     sync.Mutex
	seqs   map[string]*sequence
	closed bool
}

// Open opens (creating if needed) the encrypted store in opts.Dir.
func Open(ctx context.Context, opts Options) (*DB, error) {
	if len(opts.Key) != 16 && len(opts.Key) != 24 && len(opts.Key) != 32 {
		return nil, fmt.Errorf("store: encryption key must be 16, 24 or 32 bytes, got %d", len(opts.Key))
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("component", "store")
	cache := opts.CacheBytes
	if cache <= 0 {
		cache = 32 << 20
	}
	dir := opts.Dir
	if opts.InMemory {
		dir = ""
	} else {
		if dir == "" {
			return nil, errors.New("store: no directory given")
		}
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("store: create %s: %w", dir, err)
		}
	}
	bo := badger.DefaultOptions(dir).
		WithInMemory(opts.InMemory).
		WithEncryptionKey(opts.Key).
		// Rotating data keys monthly bounds how much is encrypted under one key.
		WithEncryptionKeyRotationDuration(30 * 24 * time.Hour).
		// Encryption requires a non-zero index cache or Badger panics.
		WithIndexCacheSize(cache / 2).
		WithBlockCacheSize(cache / 2).
		// 8 MiB memtables: records keep their change index in files of
		// their own (package records), so Badger holds small metadata
		// and a memtable's arena is resident for nothing; with 16 MiB a
		// 1M-resource sync peaked at 192-195 MB, with 8 at 174-178.
		WithMemTableSize(8 << 20).
		WithNumMemtables(2).
		WithNumLevelZeroTables(3).
		WithNumLevelZeroTablesStall(8).
		// Small tables keep compaction's table builders small (Badger pools
		// up to 8 of them, each grown to about twice the table size):
		// ingesting 1M resources peaked at 199 MB of live heap instead of
		// 309 MB with 8 MiB tables.
		WithBaseTableSize(2 << 20).
		WithValueLogFileSize(64 << 20).
		WithValueThreshold(valueThreshold(opts.InMemory)).
		WithNumCompactors(2).
		WithCompression(options.Snappy).
		WithSyncWrites(false).
		WithLogger(badgerLogger{log})
	// Every level's tables the same small size: Badger builds a
	// compaction's output tables in parallel, each builder holding about
	// twice its table in memory (and pooling its buffers afterwards), so
	// tables doubling per level made memory grow with the store: a
	// 5M-resource sync peaked at 1.7 GB RSS with the default multiplier
	// of 2, 1.3 GB with 1 (no change at 1M resources).
	bo.TableSizeMultiplier = 1
	bdb, err := badger.Open(bo)
	if err != nil {
		if strings.Contains(err.Error(), "Cannot acquire directory lock") {
			return nil, fmt.Errorf("%w: %s", ErrLocked, dir)
		}
		if strings.Contains(err.Error(), "Encryption key mismatch") {
			return nil, fmt.Errorf("store: %s was written with a different master key: %w", dir, err)
		}
		return nil, fmt.Errorf("store: open %s: %w", dir, err)
	}
	d := &DB{bdb: bdb, log: log, dir: dir, seqs: map[string]*sequence{}, gcDone: make(chan struct{})}
	gcCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	d.stopGC = cancel
	interval := opts.GCInterval
	if interval == 0 {
		interval = 10 * time.Minute
	}
	if interval > 0 && !opts.InMemory {
		go d.gcLoop(gcCtx, interval)
	} else {
		close(d.gcDone)
	}
	return d, nil
}

// valueThreshold: values above 256 bytes (FHIR resources, mostly) live in
// the value log, so compactions rewrite keys and pointers, not resources:
// measured on 300k synthetic resources, ingest ran 3x faster with a fifth of
// the peak heap, and listing them was no slower. An in-memory store has no
// value log, and Badger refuses values above the threshold there, so it
// keeps everything inline (up to Badger's 1 MiB maximum).
func valueThreshold(inMemory bool) int64 {
	if inMemory {
		return 1 << 20
	}
	return 256
}

// gcLoop reclaims value-log space. RunValueLogGC rewrites at most one file per
// call, so we call it until it reports there is nothing worth rewriting.
func (d *DB) gcLoop(ctx context.Context, every time.Duration) {
	defer close(d.gcDone)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for n := 0; n < 16 && ctx.Err() == nil; n++ {
			if err := d.bdb.RunValueLogGC(0.5); err != nil {
				if !errors.Is(err, badger.ErrNoRewrite) && !errors.Is(err, badger.ErrRejected) {
					d.log.Warn("value log gc", "err", err)
				}
				break
			}
		}
	}
}

// Close stops background work and closes the store. Safe to call twice.
func (d *DB) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	// Give back the unused part of each lease (closing makes it durable),
	// so that a cleanly restarted agent continues its sequences without a
	// gap.
	for name, sq := range d.seqs {
		if sq.leased == 0 {
			continue
		}
		var buf [8]byte
		binary.BigEndian.PutUint64(buf[:], sq.next)
		if err := d.bdb.Update(func(txn *badger.Txn) error { return txn.Set(seqKey(name), buf[:]) }); err != nil {
			d.log.Warn("release sequence", "name", name, "err", err)
		}
	}
	d.mu.Unlock()
	d.stopGC()
	<-d.gcDone
	return d.bdb.Close()
}

// Sync flushes everything written so far to disk.
func (d *DB) Sync() error { return d.bdb.Sync() }

// Dir is the directory holding the store files ("" when in memory).
func (d *DB) Dir() string { return d.dir }

// Size reports the on-disk size of the LSM tree and the value log.
func (d *DB) Size() (lsm, vlog int64) { return d.bdb.Size() }

// NextSeq returns the next value of a named, persistent, monotonically
// increasing sequence (event ids, change cursors, file ids that are part of
// nonces). Values start at 1. Gaps are possible after a restart; repeats are
// not, a power cut included: values are handed out from a lease stored and
// fsynced before the first of them is used. (Badger's own Sequence stores
// its lease unsynced, so after a power cut it could hand out again ids that
// named files still on disk, or nonces already used under a key.)
func (d *DB) NextSeq(name string) (uint64, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return 0, ErrClosed
	}
	s := d.seqs[name]
	if s == nil {
		s = &sequence{}
		d.seqs[name] = s
	}
	if s.next >= s.leased {
		if err := d.renewLease(name, s); err != nil {
			return 0, fmt.Errorf("store: sequence %s: %w", name, err)
		}
		if err := d.bdb.Sync(); err != nil {
			s.leased = s.next // not durable: renew again next time
			return 0, fmt.Errorf("store: sequence %s: sync: %w", name, err)
		}
	}
	v := s.next
	s.next++
	return v, nil
}

// seqLease is how many values one synced write of a sequence's lease
// covers: a 1M-resource sync draws a million change sequences, so a lease of
// 256 (Badger's usual) would cost thousands of fsyncs.
const seqLease = 1 << 16

type sequence struct{ next, leased uint64 }

// renewLease extends s's lease and syncs it. The stored value is the lease's
// end, big-endian, as Badger's Sequence stores it: a store written by an
// earlier version continues above what it handed out. Callers hold d.mu.
func (d *DB) renewLease(name string, s *sequence) error {
	key := seqKey(name)
	return d.bdb.Update(func(txn *badger.Txn) error {
		var stored uint64
		item, err := txn.Get(key)
		switch {
		case err == nil:
			if err := item.Value(func(v []byte) error {
				if len(v) != 8 {
					return fmt.Errorf("stored lease is %d bytes", len(v))
				}
				stored = binary.BigEndian.Uint64(v)
				return nil
			}); err != nil {
				return err
			}
		case errors.Is(err, badger.ErrKeyNotFound):
		default:
			return err
		}
		if s.leased == 0 { // first use since open: start above everything leased before
			s.next = max(stored, 1)
		}
		lease := max(stored, s.next) + seqLease
		var buf [8]byte
		binary.BigEndian.PutUint64(buf[:], lease)
		if err := txn.Set(key, buf[:]); err != nil {
			return err
		}
		s.leased = lease
		return nil
	})
}

func seqKey(name string) []byte { return append([]byte{sysPrefix, 's', '/'}, name...) }

// badgerLogger routes Badger's printf-style logging into slog. Badger's info
// lines are chatty (every compaction); they go to debug.
type badgerLogger struct{ l *slog.Logger }

func (b badgerLogger) Errorf(f string, a ...any) { b.l.Error(strings.TrimSpace(fmt.Sprintf(f, a...))) }
func (b badgerLogger) Warningf(f string, a ...any) {
	b.l.Warn(strings.TrimSpace(fmt.Sprintf(f, a...)))
}
func (b badgerLogger) Infof(f string, a ...any)  { b.l.Debug(strings.TrimSpace(fmt.Sprintf(f, a...))) }
func (b badgerLogger) Debugf(f string, a ...any) { b.l.Debug(strings.TrimSpace(fmt.Sprintf(f, a...))) }
