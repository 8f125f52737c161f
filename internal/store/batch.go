package store

import (
	"errors"
	"fmt"

	"github.com/dgraph-io/badger/v4"
)

// Batch writes many entries without the size limit of a transaction (bulk
// imports, record ingest). Writes are not visible until Flush returns, and
// a batch is not atomic: after a crash some of it may be stored. Callers
// that need exactly-once record their own progress in the same batch, after
// the data it covers.
type Batch struct {
	wb *badger.WriteBatch
	tx *badger.Txn // an atomic batch (NewAtomicBatch)
	db *DB
}

// ErrTooBig: an atomic batch grew past what one transaction holds.
var ErrTooBig = errors.New("store: too much for one atomic batch")

// NewAtomicBatch starts a batch that is stored whole or not at all, even
// across a crash (one Badger transaction): small commits of metadata that
// must move together. Adding more than a transaction holds fails with
// ErrTooBig. Call Flush (or Cancel) exactly once.
func (d *DB) NewAtomicBatch() *Batch {
	return &Batch{tx: d.bdb.NewTransaction(true), db: d}
}

func (b *Batch) set(k, v []byte) error {
	if b.tx != nil {
		err := b.tx.Set(k, v)
		if errors.Is(err, badger.ErrTxnTooBig) {
			err = ErrTooBig
		}
		return err
	}
	return b.wb.Set(k, v)
}

func (b *Batch) del(k []byte) error {
	if b.tx != nil {
		err := b.tx.Delete(k)
		if errors.Is(err, badger.ErrTxnTooBig) {
			err = ErrTooBig
		}
		return err
	}
	return b.wb.Delete(k)
}

// NewBatch starts a batch. Call Flush (or Cancel) exactly once.
func (d *DB) NewBatch() *Batch {
	return &Batch{wb: d.bdb.NewWriteBatch(), db: d}
}

// BatchPut adds a put of v under key of table t.
func BatchPut[T any](b *Batch, t *Table[T], key string, v T) error {
	enc, err := t.encode(v)
	if err != nil {
		return err
	}
	if err := b.set(t.key(key), enc); err != nil {
		return fmt.Errorf("store: batch put %s: %w", t.name, err)
	}
	return nil
}

// BatchDelete adds a delete of key of table t.
func BatchDelete[T any](b *Batch, t *Table[T], key string) error {
	if err := b.del(t.key(key)); err != nil {
		return fmt.Errorf("store: batch delete %s: %w", t.name, err)
	}
	return nil
}

// Flush writes everything added and waits for it. With sync true it also
// fsyncs.
func (b *Batch) Flush(sync bool) error {
	if b.tx != nil {
		if err := b.tx.Commit(); err != nil {
			return fmt.Errorf("store: batch commit: %w", err)
		}
	} else if err := b.wb.Flush(); err != nil {
		return fmt.Errorf("store: batch flush: %w", err)
	}
	if sync {
		if err := b.db.bdb.Sync(); err != nil {
			return fmt.Errorf("store: sync: %w", err)
		}
	}
	return nil
}

// Cancel discards the batch.
func (b *Batch) Cancel() {
	if b.tx != nil {
		b.tx.Discard()
		return
	}
	b.wb.Cancel()
}
