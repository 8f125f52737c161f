package store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// Table is a typed view over one key prefix. Values are JSON-encoded unless T
// is []byte, which is stored as is (records keep the source's raw bytes).
type Table[T any] struct {
	db     *DB
	name   Name
	prefix []byte
	raw    bool
}

// NewTable returns the table called name. Tables are cheap; create them once
// at construction of the owning component.
func NewTable[T any](db *DB, name Name) *Table[T] {
	var zero T
	_, raw := any(zero).([]byte)
	return &Table[T]{db: db, name: name, prefix: name.prefix(), raw: raw}
}

func (t *Table[T]) key(k string) []byte {
	b := make([]byte, 0, len(t.prefix)+len(k))
	b = append(b, t.prefix...)
	return append(b, k...)
}

func (t *Table[T]) encode(v T) ([]byte, error) {
	if t.raw {
		return any(v).([]byte), nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("store: encode %s: %w", t.name, err)
	}
	return b, nil
}

func (t *Table[T]) decode(b []byte) (T, error) {
	var v T
	if t.raw {
		return any(bytes.Clone(b)).(T), nil
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return v, fmt.Errorf("store: decode %s: %w", t.name, err)
	}
	return v, nil
}

// WriteOption changes how a write is made.
type WriteOption func(*writeOpts)

type writeOpts struct {
	sync bool
	ttl  time.Duration
}

// Synced makes the write durable (fsync) before the call returns. Use it for
// every credential, token and anything a caller is told was saved.
func Synced() WriteOption { return func(o *writeOpts) { o.sync = true } }

// WithTTL makes the entry disappear after d (sessions, OAuth state).
func WithTTL(d time.Duration) WriteOption { return func(o *writeOpts) { o.ttl = d } }

func collect(opts []WriteOption) writeOpts {
	var o writeOpts
	for _, f := range opts {
		f(&o)
	}
	return o
}

// Get returns the value stored under key, or ErrNotFound.
func (t *Table[T]) Get(ctx context.Context, key string) (T, error) {
	var v T
	err := t.db.View(ctx, func(tx *Txn) error {
		var err error
		v, err = t.GetTx(tx, key)
		return err
	})
	return v, err
}

// Put stores v under key.
func (t *Table[T]) Put(ctx context.Context, key string, v T, opts ...WriteOption) error {
	return t.db.Update(ctx, func(tx *Txn) error { return t.PutTx(tx, key, v, opts...) }, opts...)
}

// Delete removes key. Deleting a missing key is not an error.
func (t *Table[T]) Delete(ctx context.Context, key string, opts ...WriteOption) error {
	return t.db.Update(ctx, func(tx *Txn) error { return t.DeleteTx(tx, key) }, opts...)
}

// Modify reads key, lets fn compute the new value and writes it, retrying if
// another writer got there first. fn may be called more than once; it must
// not have side effects. found reports whether key existed.
func (t *Table[T]) Modify(ctx context.Context, key string, fn func(cur T, found bool) (T, error), opts ...WriteOption) (T, error) {
	var out T
	err := t.db.Update(ctx, func(tx *Txn) error {
		cur, err := t.GetTx(tx, key)
		found := err == nil
		if err != nil && !errors.Is(err, ErrNotFound) {
			return err
		}
		next, err := fn(cur, found)
		if err != nil {
			return err
		}
		out = next
		return t.PutTx(tx, key, next, opts...)
	}, opts...)
	return out, err
}

// GetTx reads key inside a transaction.
func (t *Table[T]) GetTx(tx *Txn, key string) (T, error) {
	var zero T
	item, err := tx.btx.Get(t.key(key))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return zero, fmt.Errorf("%s %q: %w", t.name, key, ErrNotFound)
	}
	if err != nil {
		return zero, fmt.Errorf("store: get %s: %w", t.name, err)
	}
	var v T
	err = item.Value(func(b []byte) error {
		var derr error
		v, derr = t.decode(b)
		return derr
	})
	return v, err
}

// PeekTx calls fn with the stored bytes of key, valid only during the call,
// and reports whether key exists. For hot paths: unlike GetTx it neither
// copies the value nor builds an error for a missing key.
func (t *Table[T]) PeekTx(tx *Txn, key string, fn func(v []byte) error) (bool, error) {
	item, err := tx.btx.Get(t.key(key))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("store: get %s: %w", t.name, err)
	}
	return true, item.Value(fn)
}

// PutTx writes key inside a transaction. Only the TTL of opts applies here;
// durability is decided by the transaction.
func (t *Table[T]) PutTx(tx *Txn, key string, v T, opts ...WriteOption) error {
	b, err := t.encode(v)
	if err != nil {
		return err
	}
	e := badger.NewEntry(t.key(key), b)
	if o := collect(opts); o.ttl > 0 {
		e = e.WithTTL(o.ttl)
	}
	if err := tx.btx.SetEntry(e); err != nil {
		return fmt.Errorf("store: put %s: %w", t.name, err)
	}
	return nil
}

// DeleteTx removes key inside a transaction.
func (t *Table[T]) DeleteTx(tx *Txn, key string) error {
	if err := tx.btx.Delete(t.key(key)); err != nil {
		return fmt.Errorf("store: delete %s: %w", t.name, err)
	}
	return nil
}

// ScanOptions selects a range of a table in key order.
type ScanOptions struct {
	// Prefix limits the scan to keys starting with it.
	Prefix string
	// After starts the scan strictly after this key (a cursor). With
	// Reverse, strictly before it.
	After   string
	Reverse bool
	// Limit stops after this many entries (0 = all).
	Limit int
	// KeysOnly skips reading values; fn receives the zero T.
	KeysOnly bool
}

// Scan calls fn for each entry in order until fn returns an error or
// ErrStopScan (which Scan swallows).
func (t *Table[T]) Scan(ctx context.Context, o ScanOptions, fn func(key string, v T) error) error {
	return t.db.View(ctx, func(tx *Txn) error { return t.ScanTx(tx, o, fn) })
}

// ErrStopScan ends a Scan early without error.
var ErrStopScan = errors.New("stop scan")

// ScanTx is Scan inside a transaction.
func (t *Table[T]) ScanTx(tx *Txn, o ScanOptions, fn func(key string, v T) error) error {
	io := badger.DefaultIteratorOptions
	io.Reverse = o.Reverse
	io.PrefetchValues = !o.KeysOnly
	if o.Limit > 0 && o.Limit < io.PrefetchSize {
		io.PrefetchSize = o.Limit
	}
	full := t.key(o.Prefix)
	io.Prefix = full
	it := tx.btx.NewIterator(io)
	defer it.Close()

	var seek []byte
	switch {
	case o.After != "" && !o.Reverse:
		seek = append(t.key(o.After), 0)
	case o.After != "" && o.Reverse:
		seek = t.key(o.After)
	case o.Reverse:
		// Seek to the last key with this prefix.
		seek = append(bytes.Clone(full), 0xff, 0xff, 0xff, 0xff)
	default:
		seek = full
	}
	n := 0
	for it.Seek(seek); it.ValidForPrefix(full); it.Next() {
		if err := tx.ctx.Err(); err != nil {
			return err
		}
		item := it.Item()
		k := item.Key()
		if o.Reverse && o.After != "" && bytes.Equal(k, seek) {
			continue
		}
		key := string(k[len(t.prefix):])
		var v T
		if !o.KeysOnly {
			if err := item.Value(func(b []byte) error {
				var err error
				v, err = t.decode(b)
				return err
			}); err != nil {
				return err
			}
		}
		if err := fn(key, v); err != nil {
			if errors.Is(err, ErrStopScan) {
				return nil
			}
			return err
		}
		n++
		if o.Limit > 0 && n >= o.Limit {
			return nil
		}
	}
	return nil
}

// Count returns the number of entries with the given key prefix.
func (t *Table[T]) Count(ctx context.Context, prefix string) (int, error) {
	n := 0
	err := t.Scan(ctx, ScanOptions{Prefix: prefix, KeysOnly: true}, func(string, T) error { n++; return nil })
	return n, err
}

// Txn is a read or read-write transaction across tables.
type Txn struct {
	btx *badger.Txn
	ctx context.Context
}

// View runs fn in a read-only transaction.
func (d *DB) View(ctx context.Context, fn func(tx *Txn) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return d.bdb.View(func(b *badger.Txn) error { return fn(&Txn{btx: b, ctx: ctx}) })
}

// maxAttempts bounds retries of a conflicting transaction. Conflicts are
// between writers of the same keys; a hot key (a counter) under heavy
// contention needs many.
const maxAttempts = 200

// Update runs fn in a read-write transaction and commits it, retrying a few
// times when a concurrent transaction conflicts. With Synced among opts the
// commit is fsynced before Update returns.
func (d *DB) Update(ctx context.Context, fn func(tx *Txn) error, opts ...WriteOption) error {
	o := collect(opts)
	var err error
	for attempt := 0; attempt < maxAttempts; attempt++ {
		if cerr := ctx.Err(); cerr != nil {
			return cerr
		}
		err = d.bdb.Update(func(b *badger.Txn) error { return fn(&Txn{btx: b, ctx: ctx}) })
		if errors.Is(err, badger.ErrConflict) {
			// Back off a little, with jitter, so contending writers spread out.
			time.Sleep(time.Duration(rand.Int64N(int64(attempt+1) * int64(50*time.Microsecond))))
			continue
		}
		if errors.Is(err, badger.ErrTxnTooBig) {
			return fmt.Errorf("store: transaction too big (use a Batch): %w", err)
		}
		if errors.Is(err, badger.ErrDBClosed) {
			return ErrClosed
		}
		if err != nil {
			return err
		}
		if o.sync {
			if serr := d.bdb.Sync(); serr != nil {
				return fmt.Errorf("store: sync: %w", serr)
			}
		}
		return nil
	}
	return fmt.Errorf("store: %w after retries: %v", ErrConflict, err)
}
