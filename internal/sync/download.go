package sync

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
	stdsync "sync"
	"sync/atomic"
	"time"

	"github.com/medrelay/medrelay/internal/connections"
	"github.com/medrelay/medrelay/internal/pluginhost"
	"github.com/medrelay/medrelay/internal/records"
	"github.com/medrelay/medrelay/internal/store"
	pluginv1 "github.com/medrelay/medrelay/proto/gen/medrelay/plugin/v1"
)

// live is the progress of a running job, for views and Watch: each file's
// committed progress, kept up to date by the ingest checkpoints.
type live struct {
	now func() time.Time

	mu        stdsync.Mutex
	files     []FileProgress
	started   time.Time // when this process began downloading
	startRes  int64     // resources already stored then
	waiting   string
	inFlight  atomic.Int64 // bytes received but not yet committed
	downloads int
}

func newLive(now func() time.Time) *live { return &live{now: now} }

func (l *live) init(files []FileProgress, downloads int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.files, l.downloads = files, downloads
	l.started = l.now()
	var t Totals
	for _, p := range files {
		t.add(p)
	}
	l.startRes = t.Resources()
}

func (l *live) set(idx int, p FileProgress) {
	l.mu.Lock()
	if idx < len(l.files) {
		l.files[idx] = p
	}
	l.mu.Unlock()
}

func (l *live) file(idx int) FileProgress {
	l.mu.Lock()
	defer l.mu.Unlock()
	if idx < len(l.files) {
		return l.files[idx]
	}
	return FileProgress{}
}

func (l *live) snapshot() ([]FileProgress, Totals) {
	l.mu.Lock()
	defer l.mu.Unlock()
	files := append([]FileProgress(nil), l.files...)
	t := Totals{FilesTotal: len(files)}
	for _, p := range files {
		t.add(p)
	}
	if !l.started.IsZero() {
		t.Rate = l.rateLocked(t.Resources())
	}
	return files, t
}

func (l *live) rate(total int64) float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.rateLocked(total)
}

func (l *live) rateLocked(total int64) float64 {
	if l.started.IsZero() {
		return 0
	}
	el := l.now().Sub(l.started).Seconds()
	if el <= 0 {
		return 0
	}
	return float64(total-l.startRes) / el
}

func (l *live) waitingMsg() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.waiting
}

// downloads is how many files a job downloads at once: the plugin's
// concurrency limit for its source (Describe rate_limit), else the default.
func (e *Engine) downloads(plugin string) int {
	n := e.o.DefaultDownloads
	if in, err := e.plugins.Info(plugin); err == nil && in.Describe != nil {
		if c := int(in.Describe.GetRateLimit().GetMaxConcurrency()); c > 0 {
			n = c
		}
	}
	return min(n, e.o.MaxDownloads)
}

// storedProgress reads the committed progress of every file of j's
// manifest (zero for a file not started).
func (e *Engine) storedProgress(ctx context.Context, j *Job) ([]FileProgress, error) {
	progress := make([]FileProgress, len(j.Manifest.Files))
	err := e.files.Scan(ctx, store.ScanOptions{Prefix: j.ID + "/"}, func(k string, p FileProgress) error {
		var idx int
		if _, err := fmt.Sscanf(k[len(j.ID)+1:], "%d", &idx); err == nil && idx >= 0 && idx < len(progress) {
			progress[idx] = p
		}
		return nil
	})
	return progress, err
}

// download stores every file not stored yet, several at once. It reports
// whether any file moved forward, and the first error.
func (e *Engine) download(ctx context.Context, j *Job, c connections.Connection, lv *live) (bool, error) {
	progress, err := e.storedProgress(ctx, j)
	if err != nil {
		return false, err
	}
	var todo []int
	for i, p := range progress {
		if !p.Done {
			todo = append(todo, i)
		}
	}
	// Output files first, then deletions (a tombstone is dated and wins
	// over an older copy either way), then the error files.
	n := min(e.downloads(j.Plugin), max(len(todo), 1))
	lv.init(progress, n)
	if len(todo) == 0 {
		return false, nil
	}
	dctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var (
		wg         stdsync.WaitGroup
		mu         stdsync.Mutex
		firstErr   error
		progressed bool
		next       = make(chan int)
	)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for idx := range next {
				moved, err := e.downloadFile(dctx, j, c, idx, lv)
				mu.Lock()
				progressed = progressed || moved
				if err != nil && firstErr == nil {
					firstErr = err
					cancel(err)
				}
				mu.Unlock()
			}
		}()
	}
feed:
	for _, idx := range todo {
		select {
		case next <- idx:
		case <-dctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	if firstErr == nil && ctx.Err() != nil {
		firstErr = ctx.Err()
	}
	return progressed, firstErr
}

// fileName names a file in reports: its last path segment.
func fileName(f File) string {
	u := f.URL
	if i := strings.IndexAny(u, "?#"); i >= 0 {
		u = u[:i]
	}
	return f.Kind + ":" + path.Base(u)
}

// maxKeptIssues bounds the malformed lines and error-file entries stored
// per file (all are counted).
const maxKeptIssues = 1000

// downloadFile stores one file, continuing from its committed progress. An
// interrupted transfer that made progress is resumed at once (with Range);
// one that made none is reported to the job, which backs off.
func (e *Engine) downloadFile(ctx context.Context, j *Job, c connections.Connection, idx int, lv *live) (bool, error) {
	f := j.Manifest.Files[idx]
	progressed := false
	for {
		fp := lv.file(idx)
		if fp.Done {
			return progressed, nil
		}
		var err error
		if f.Kind == KindError {
			err = e.storeErrors(ctx, j, c, idx, lv)
		} else {
			err = e.ingest(ctx, j, c, idx, fp, lv)
		}
		after := lv.file(idx)
		if after.Offset > fp.Offset || after.Done {
			progressed = true
		}
		var se *pluginhost.SourceError
		if err != nil && errors.As(err, &se) && se.Reason == "SOURCE_HTTP_416" && fp.Offset > 0 {
			// Range not satisfiable at our offset: everything before it
			// is stored (a crash came after the last line and before the
			// file was marked done).
			err = e.markDone(ctx, j, idx, lv)
		}
		if err == nil {
			if !lv.file(idx).Done {
				err = e.markDone(ctx, j, idx, lv)
			}
			if err == nil {
				return true, nil
			}
		}
		if ctx.Err() != nil {
			return progressed, ctx.Err()
		}
		if after.Offset > fp.Offset && !errors.Is(err, pluginhost.ErrSourceGone) {
			e.log.Info("download interrupted; resuming", "sync", j.ID, "file", fileName(f), "offset", after.Offset, "err", err)
			continue
		}
		return progressed, fmt.Errorf("%s: %w", fileName(f), err)
	}
}

func (e *Engine) markDone(ctx context.Context, j *Job, idx int, lv *live) error {
	fp := lv.file(idx)
	fp.Done = true
	if err := e.files.Put(ctx, fileKey(j.ID, idx), fp); err != nil {
		return err
	}
	lv.set(idx, fp)
	e.notify()
	return nil
}

// stream runs the plugin's download of a file from offset into a pipe and
// returns the reading end and a function that stops the download and
// returns its error.
func (e *Engine) stream(ctx context.Context, j *Job, c connections.Connection, f File, offset int64, lv *live) (io.Reader, func() error) {
	pr, pw := io.Pipe()
	dctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		_, err := e.plugins.BulkDownload(dctx, j.Plugin, &pluginv1.BulkDownloadRequest{
			Connection: e.pconn(c), Url: f.URL, Offset: offset,
			// The manifest decides whether the token goes with the
			// download (bulkdata-2.0-client #201).
			RequiresAccessToken: j.Manifest.RequiresAccessToken,
		}, pw)
		pw.CloseWithError(err)
		done <- err
	}()
	return pr, func() error {
		cancel()
		pr.CloseWithError(errStopped)
		return <-done
	}
}

var errStopped = errors.New("download stopped")

// ingest streams one output or deleted file from its committed position
// into the record store; every batch commits the file's progress with it.
func (e *Engine) ingest(ctx context.Context, j *Job, c connections.Connection, idx int, fp FileProgress, lv *live) error {
	f := j.Manifest.Files[idx]
	key := fileKey(j.ID, idx)
	base := fp
	var malformed int64
	name := fileName(f)
	r, stop := e.stream(ctx, j, c, f, fp.Offset, lv)
	_, err := e.records.IngestNDJSON(ctx, j.ConnectionID, r, records.IngestOptions{
		File:  name,
		Start: fp.position(),
		Checkpoint: func(b *store.Batch, p records.Progress) error {
			n := base
			n.Offset, n.Line = p.Position.Offset, p.Position.Line
			if f.Kind == KindDeleted {
				// Resources counts what output files held; a tombstone
				// already stored is not news.
				n.Deleted += int64(p.Counts.Deleted)
			} else {
				n.Written += int64(p.Counts.Written)
				n.Unchanged += int64(p.Counts.Unchanged)
				n.Stale += int64(p.Counts.Stale)
			}
			for _, m := range p.Malformed {
				if base.Malformed+malformed < maxKeptIssues {
					if err := store.BatchPut(b, e.malformed, fmt.Sprintf("%s/%012d", key, m.Line), m); err != nil {
						return err
					}
				}
				malformed++
			}
			n.Malformed = base.Malformed + malformed
			if err := store.BatchPut(b, e.files, key, n); err != nil {
				return err
			}
			lv.set(idx, n)
			return nil
		},
		Deleted:      f.Kind == KindDeleted,
		DeletedAt:    j.Manifest.TransactionTime,
		BatchBytes:   e.o.BatchBytes,
		BatchRecords: e.o.BatchRecords,
		NoSync:       !e.o.SyncBatches,
	})
	derr := stop()
	if err == nil && derr != nil && !errors.Is(derr, errStopped) && !errors.Is(derr, context.Canceled) {
		err = derr
	}
	e.notify()
	return err
}

// storeErrors keeps an error file's OperationOutcomes (the first
// maxKeptIssues) and counts them. The file is small and read whole; an
// interrupted read starts it again (entries are keyed by line).
func (e *Engine) storeErrors(ctx context.Context, j *Job, c connections.Connection, idx int, lv *live) error {
	f := j.Manifest.Files[idx]
	r, stop := e.stream(ctx, j, c, f, 0, lv)
	b := e.db.NewBatch()
	var fp FileProgress
	br := bufio.NewReaderSize(r, 64<<10)
	var err error
	for {
		line, rerr := br.ReadBytes('\n')
		if len(line) > 0 && (rerr == nil || rerr == io.EOF) {
			fp.Offset += int64(len(line))
			fp.Line++
			line = bytes.TrimSpace(line)
			if len(line) > 0 {
				if fp.Errors < maxKeptIssues {
					if len(line) > 64<<10 {
						line = line[:64<<10]
					}
					if err = store.BatchPut(b, e.errs, fmt.Sprintf("%s/%012d", fileKey(j.ID, idx), fp.Line), bytes.Clone(line)); err != nil {
						break
					}
				}
				fp.Errors++
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			err = rerr
			break
		}
	}
	derr := stop()
	if err == nil && derr != nil && !errors.Is(derr, errStopped) {
		err = derr
	}
	if err == nil {
		fp.Done = true
		err = store.BatchPut(b, e.files, fileKey(j.ID, idx), fp)
	}
	if err != nil {
		b.Cancel()
		return err
	}
	if err := b.Flush(e.o.SyncBatches); err != nil {
		return err
	}
	lv.set(idx, fp)
	e.notify()
	return nil
}
