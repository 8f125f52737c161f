package records

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/medrelay/medrelay/internal/store"
)

// Position is a place in an NDJSON file: the byte offset just after the last
// line consumed and the number of lines consumed. Resuming a file means
// reading it again from Offset (an HTTP Range request) with Start set to the
// Position stored by the last checkpoint.
type Position struct {
	Offset int64 `json:"offset"`
	Line   int64 `json:"line"`
}

// Malformed is a line that was skipped.
type Malformed struct {
	File string `json:"file,omitempty"`
	// Line is 1-based; Offset is where the line starts.
	Line   int64  `json:"line"`
	Offset int64  `json:"offset"`
	Reason string `json:"reason"`
}

func (m Malformed) String() string {
	return fmt.Sprintf("%s line %d: %s", m.File, m.Line, m.Reason)
}

// Progress is what one checkpoint of an ingest covers.
type Progress struct {
	// Position is how far the file is committed.
	Position Position
	// Counts since the ingest call started.
	Counts Counts
	// Malformed lines skipped since the previous checkpoint of this call
	// (store them with the position and each is reported exactly once).
	Malformed []Malformed
}

// IngestOptions configure IngestNDJSON.
type IngestOptions struct {
	// File names the input in malformed-line reports.
	File string
	// Start is where the reader begins in the file (a resumed download).
	Start Position
	// Checkpoint, when set, adds the caller's progress marker to every
	// batch, after the records it covers (see Writer.Commit).
	Checkpoint func(b *store.Batch, p Progress) error
	// Deleted says the lines are Bulk Data "deleted" entries: Bundles whose
	// entries have request.method DELETE and request.url Type/id.
	Deleted bool
	// DeletedAt is when those deletions happened at the latest (the
	// export's transactionTime), so that an older copy ingested after the
	// tombstone does not bring the resource back.
	DeletedAt time.Time
	// Batch bounds (defaults 4 MiB and 5,000 resources); MaxLineBytes caps
	// one resource (default 64 MiB; longer lines are reported and skipped).
	BatchBytes   int
	BatchRecords int
	MaxLineBytes int
	// NoSync skips the fsync after each batch (see WithoutSync).
	NoSync bool
}

// IngestResult is what IngestNDJSON did.
type IngestResult struct {
	// Position is how far the input is committed (what the last
	// checkpoint stored).
	Position  Position
	Counts    Counts
	Lines     int64 // lines read by this call, blank and malformed included
	Malformed int64
}

// errLineTooLong marks a line longer than MaxLineBytes.
var errLineTooLong = errors.New("line too long")

// maxMalformedPerBatch forces a checkpoint so a file of garbage does not
// pile up reports in memory.
const maxMalformedPerBatch = 1000

// IngestNDJSON stores the resources of an NDJSON stream in conn, in batches
// of bounded size (memory stays flat whatever the stream's length). A
// malformed line is reported in the next checkpoint and skipped, never
// failing the stream. When r fails (a download cut mid-way), what was read up
// to the last complete line is committed and the error returned; resume from
// the result's Position. A final line without a newline is taken as complete
// only at a clean EOF.
func (s *Store) IngestNDJSON(ctx context.Context, conn string, r io.Reader, o IngestOptions) (IngestResult, error) {
	res := IngestResult{Position: o.Start}
	var wopts []WriterOption
	if o.NoSync {
		wopts = append(wopts, WithoutSync())
	}
	// Two writers: one fills while the other commits (its flush and fsync
	// overlap the parsing of the next batch). Commits still happen one
	// after the other, in file order.
	var ws [2]*Writer
	for i := range ws {
		w, err := s.NewWriter(conn, wopts...)
		if err != nil {
			return res, err
		}
		ws[i] = w
	}
	if o.BatchBytes <= 0 {
		o.BatchBytes = 4 << 20
	}
	if o.BatchRecords <= 0 {
		o.BatchRecords = 5000
	}
	if o.MaxLineBytes <= 0 {
		o.MaxLineBytes = 64 << 20
	}
	pos := o.Start // how far lines are read (res.Position: how far committed)
	var malformed []Malformed
	type done struct {
		n   Counts
		pos Position
		err error
	}
	var inflight chan done
	// wait collects the commit in flight, if any.
	wait := func() error {
		if inflight == nil {
			return nil
		}
		d := <-inflight
		inflight = nil
		if d.err != nil {
			return d.err
		}
		res.Counts.Add(d.n)
		res.Position = d.pos
		return nil
	}
	cur := 0
	// commit starts committing the current writer with the progress so far
	// and switches to the other one; sync also waits for it.
	commit := func(ctx context.Context, sync bool) error {
		if err := wait(); err != nil {
			return err
		}
		w, p := ws[cur], Progress{Position: pos, Counts: res.Counts, Malformed: malformed}
		malformed = nil
		cur ^= 1
		var marker Marker
		if o.Checkpoint != nil {
			marker = func(b *store.Batch, n Counts) error {
				p.Counts.Add(n)
				return o.Checkpoint(b, p)
			}
		}
		ch := make(chan done, 1)
		go func() {
			n, err := w.Commit(ctx, marker)
			ch <- done{n, p.Position, err}
		}()
		inflight = ch
		if sync {
			return wait()
		}
		return nil
	}
	// finish commits what is left; a cancelled ctx still lets the work
	// already read be stored.
	finish := func(cause error) (IngestResult, error) {
		err := commit(context.WithoutCancel(ctx), true)
		if cause != nil {
			return res, errors.Join(cause, err)
		}
		return res, err
	}
	defer func() {
		if inflight != nil {
			<-inflight
		}
		for _, w := range ws {
			w.Discard()
		}
	}()
	lr := newLineReader(r, o.MaxLineBytes, o.Start.Line == 0 && o.Start.Offset == 0)
	for {
		if res.Lines&1023 == 0 {
			if err := ctx.Err(); err != nil {
				return finish(err)
			}
		}
		line, consumed, rerr := lr.next()
		if rerr != nil && !errors.Is(rerr, errLineTooLong) {
			if errors.Is(rerr, io.EOF) {
				return finish(nil)
			}
			return finish(fmt.Errorf("records: read %s after line %d: %w", o.File, pos.Line, rerr))
		}
		lineNo, lineStart := pos.Line+1, pos.Offset
		pos.Offset += int64(consumed)
		pos.Line++
		res.Lines++
		w := ws[cur]
		var bad error
		switch {
		case rerr != nil:
			bad = fmt.Errorf("longer than %d bytes", o.MaxLineBytes)
		case len(line) == 0:
		case o.Deleted:
			bad = deleteBundle(w, line, o.DeletedAt)
		default:
			_, bad = w.Put(line)
		}
		if bad != nil {
			res.Malformed++
			reason := strings.TrimPrefix(bad.Error(), ErrMalformed.Error()+": ")
			malformed = append(malformed, Malformed{File: o.File, Line: lineNo, Offset: lineStart, Reason: reason})
		}
		if w.Len() >= o.BatchRecords || w.Size() >= o.BatchBytes || len(malformed) >= maxMalformedPerBatch {
			if err := commit(ctx, false); err != nil {
				return res, err
			}
		}
	}
}

// lineReader splits a stream into lines without holding more than one line
// (and the read buffer) in memory.
type lineReader struct {
	br    *bufio.Reader
	buf   []byte
	max   int
	first bool // strip a byte-order mark
}

// newLineReader reads lines through a 256 KiB buffer (longer lines are
// gathered in buf): a bulk sync reads 8 files at once, and with 1 MiB
// buffers they were a tenth of the agent's heap.
func newLineReader(r io.Reader, max int, first bool) *lineReader {
	return &lineReader{br: bufio.NewReaderSize(r, 256<<10), max: max, first: first}
}

// next returns the next line without its end-of-line and surrounding blanks
// (valid until the next call) and how many bytes it took in the stream. A
// line longer than max is consumed and reported as errLineTooLong. A
// partial line before a read error is not consumed.
func (l *lineReader) next() ([]byte, int, error) {
	l.buf = l.buf[:0]
	consumed := 0
	tooLong := false
	for {
		frag, err := l.br.ReadSlice('\n')
		consumed += len(frag)
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
			if !tooLong && len(l.buf)+len(frag) > l.max {
				tooLong, l.buf = true, l.buf[:0]
			}
			if !tooLong {
				l.buf = append(l.buf, frag...)
			}
			continue
		case err == nil, errors.Is(err, io.EOF) && consumed > 0:
			if tooLong || len(l.buf)+len(frag) > l.max {
				l.buf = l.buf[:0]
				return nil, consumed, errLineTooLong
			}
			line := frag
			if len(l.buf) > 0 {
				l.buf = append(l.buf, frag...)
				line = l.buf
			}
			if l.first {
				line = bytes.TrimPrefix(line, []byte("\xEF\xBB\xBF"))
				l.first = false
			}
			return bytes.TrimSpace(line), consumed, nil
		default:
			// io.EOF with nothing read, or a read error: a partial
			// line is dropped (resume re-reads it).
			return nil, 0, err
		}
	}
}

// deleteBundle buffers the deletions of one Bulk Data "deleted" line.
func deleteBundle(w *Writer, line []byte, at time.Time) error {
	var b struct {
		ResourceType string `json:"resourceType"`
		Entry        []struct {
			Request struct {
				Method string `json:"method"`
				URL    string `json:"url"`
			} `json:"request"`
		} `json:"entry"`
	}
	if err := json.Unmarshal(line, &b); err != nil {
		return fmt.Errorf("deleted entry: %w", err)
	}
	if b.ResourceType != "Bundle" {
		return fmt.Errorf("deleted entry is a %q, not a Bundle", clip(b.ResourceType))
	}
	type ref struct{ typ, id string }
	var refs []ref
	for i, e := range b.Entry {
		if !strings.EqualFold(e.Request.Method, "DELETE") {
			continue
		}
		typ, id, ok := splitRef(e.Request.URL)
		if !ok {
			return fmt.Errorf("deleted entry %d: request.url %q is not Type/id", i, clip(e.Request.URL))
		}
		refs = append(refs, ref{typ, id})
	}
	if len(refs) == 0 {
		return errors.New("deleted entry has no DELETE request")
	}
	for _, r := range refs {
		if err := w.Delete(r.typ, r.id, at); err != nil {
			return err
		}
	}
	return nil
}

// splitRef reads "Type/id", also as the tail of an absolute URL or followed
// by /_history/version.
func splitRef(u string) (typ, id string, ok bool) {
	if i := strings.IndexAny(u, "?#"); i >= 0 {
		u = u[:i]
	}
	parts := strings.Split(strings.TrimRight(u, "/"), "/")
	if n := len(parts); n >= 4 && parts[n-2] == "_history" {
		parts = parts[:n-2]
	}
	n := len(parts)
	if n < 2 {
		return "", "", false
	}
	typ, id = parts[n-2], parts[n-1]
	return typ, id, ValidType(typ) && ValidID(id)
}
