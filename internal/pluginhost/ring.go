package pluginhost

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// The download ring (CAPABILITY_DOWNLOAD_RING, BulkDownloadRequest.sink_ring)
// is the sink's fastest form: the agent hands the plugin a shared-memory
// file of slots over the sink connection, the plugin reads the source's
// bytes straight into a free slot and says "slot i holds n bytes", and the
// agent gives that memory to its writer without copying it, then returns
// the slot. On two cores the raw sink's two extra copies (into the socket,
// out of it) were a third of the cost of a download.
//
// A plugin runs as the agent's user, so the shared memory gives it nothing
// it could not reach anyway; the checks below are against bugs, and every
// one of them ends the download with an error that says what was wrong.
// The agent maps the ring read-only and seals its size, so a plugin can
// neither make the agent write into it nor shrink it under the agent's
// mapping (a read past the end of a memfd is SIGBUS, not an error).

// Ring wire format (see source.proto's sink_ring): a 16-byte hello from
// the agent with the memfd, then 16-byte messages both ways.
const (
	ringMagic   = "MRR1"
	ringMsgSize = 16

	ringFilled  = 1 // plugin: slot holds n bytes
	ringEnd     = 2 // plugin: clean end of the file, n bytes in all
	ringDecline = 3 // plugin: cannot map the ring; raw bytes follow
	ringFree    = 4 // agent: slot is the plugin's again
)

// Ring geometry: enough slots that the plugin keeps reading while the
// writer works on earlier ones; 1 MiB matches what a download reads at a
// time everywhere else. Four, not eight: the agent maps every slot it reads,
// so a bulk sync's 8 parallel files held 64 MiB of shared memory in the
// agent's resident set with 8; with 4 the 1M-resource sync ran as fast
// (5.1-5.7 s against 5.1-5.8 s), peaked at 192-195 MB instead of 228-236,
// and pluginhost.bulkdownload (goal >= 0.7) measured 0.60-1.65 in runs
// interleaved with 8 slots, which measured 0.66-0.95: no difference shows
// through that bench's noise. Variables so that tests can make small rings.
var (
	ringSlots    = 4
	ringSlotSize = 1 << 20
)

// A plugin's rings are kept between its downloads (ringPool): a fresh
// ring costs the plugin a page fault, a page allocation and a zeroed page
// for every 4 KiB it fills, about 5 ms for 8 MiB on two cores (a tenth of a
// 128 MiB download); a reused one costs none of that.
var (
	ringPoolMax = 2
	ringIdle    = 30 * time.Second
)

// errRing marks a plugin's violation of the ring protocol.
var errRing = errors.New("download ring protocol")

func ringErrorf(format string, a ...any) error {
	return fmt.Errorf("%w: %s", errRing, fmt.Sprintf(format, a...))
}

// writeError is the agent's own writer failing (not the plugin's doing).
type writeError struct{ err error }

func (e *writeError) Error() string { return e.err.Error() }
func (e *writeError) Unwrap() error { return e.err }

// ringResult is how a ring download ended.
type ringResult struct {
	n int64
	// complete: the plugin sent END (and END's total matched).
	complete bool
	// declined: the plugin could not map the ring and sent raw bytes.
	declined bool
	// cause is why the connection ended before END (for messages only).
	cause error
	err   error
}

func putRingMsg(b []byte, kind, slot uint32, n uint64) {
	binary.LittleEndian.PutUint32(b[0:], kind)
	binary.LittleEndian.PutUint32(b[4:], slot)
	binary.LittleEndian.PutUint64(b[8:], n)
}

func ringHello(slots, slotSize int) [ringMsgSize]byte {
	var h [ringMsgSize]byte
	copy(h[:], ringMagic)
	binary.LittleEndian.PutUint32(h[4:], uint32(slots))
	binary.LittleEndian.PutUint32(h[8:], uint32(slotSize))
	return h
}

// serveRing hands the ring to the plugin on c and writes every slot the
// plugin fills to w, in order, until the plugin's END or the connection
// ends. It runs in one goroutine (a hand-off between goroutines per slot
// costs more wake-ups than the copy it saves on two cores) and writes
// nothing after returning: the caller may unmap the ring then.
func serveRing(c net.Conn, r *ring, w io.Writer) ringResult {
	if err := r.handOver(c); err != nil {
		return ringResult{err: fmt.Errorf("handing the download ring to the plugin: %w", err)}
	}
	return ringLoop(c, r, w)
}

// ringLoop is the agent's side of the protocol once the plugin has the
// ring: c carries the plugin's messages in and the credits out.
func ringLoop(c io.ReadWriter, r *ring, w io.Writer) ringResult {
	var res ringResult
	// held[i]: the agent has slot i (announced, not yet freed). Every
	// message already received is checked before any slot is written, so
	// a slot announced twice in a row is caught.
	held := make([]bool, r.slots)
	br := bufio.NewReaderSize(c, ringMsgSize*(r.slots+2))
	msg := make([]byte, ringMsgSize)
	frees := make([]byte, 0, ringMsgSize*r.slots)
	var pending []int // slots to write, in order, with their sizes in sizes
	sizes := make([]int, r.slots)
	var announced int64
	first := true
	for !res.complete && !res.declined && res.err == nil {
		if _, err := io.ReadFull(br, msg); err != nil {
			res.cause = err
			break
		}
		pending = pending[:0]
		for {
			res.err = res.take(r, msg, held, first, &announced)
			first = false
			if res.err != nil || res.complete || res.declined {
				break
			}
			slot := binary.LittleEndian.Uint32(msg[4:])
			pending = append(pending, int(slot))
			sizes[slot] = int(binary.LittleEndian.Uint64(msg[8:]))
			if br.Buffered() < ringMsgSize {
				break
			}
			_, _ = io.ReadFull(br, msg) // buffered: cannot fail
		}
		if res.err != nil {
			break // what the batch held before the bad message is not written either: the offset stays exact
		}
		frees = frees[:0]
		for _, slot := range pending {
			off, n := slot*r.slotSize, sizes[slot]
			k, err := w.Write(r.mem[off : off+n : off+n])
			res.n += int64(k)
			if err == nil && k < n {
				err = io.ErrShortWrite
			}
			if err != nil {
				res.err = &writeError{err}
				break
			}
			held[slot] = false
			frees = frees[:len(frees)+ringMsgSize]
			putRingMsg(frees[len(frees)-ringMsgSize:], ringFree, uint32(slot), 0)
		}
		if len(frees) > 0 {
			// A plugin that already sent END may have closed its end: a
			// lost credit is no loss then, and a plugin that died early
			// shows at the next read.
			_, _ = c.Write(frees)
		}
	}
	if res.err != nil && res.complete {
		res.complete = false
	}
	if res.declined && res.err == nil {
		// The plugin could not map the ring (limits, a missing fd): the
		// file follows as raw bytes, as without sink_ring.
		n, err := copyLarge(w, br)
		res.n += n
		res.err = err
	}
	return res
}

// take checks one message from the plugin. A FILLED slot becomes the
// agent's; END and DECLINE set res.complete and res.declined.
func (res *ringResult) take(r *ring, msg []byte, held []bool, first bool, announced *int64) error {
	kind := binary.LittleEndian.Uint32(msg[0:])
	slot := binary.LittleEndian.Uint32(msg[4:])
	n := binary.LittleEndian.Uint64(msg[8:])
	switch kind {
	case ringFilled:
		switch {
		case slot >= uint32(r.slots):
			return ringErrorf("slot %d is out of range (the ring has %d slots)", slot, r.slots)
		case n > uint64(r.slotSize):
			return ringErrorf("slot %d holds %d bytes, more than a slot's %d", slot, n, r.slotSize)
		case held[slot]:
			return ringErrorf("slot %d is not the plugin's: the agent holds it and has not freed it", slot)
		}
		held[slot] = true
		*announced += int64(n)
		return nil
	case ringEnd:
		if n != uint64(*announced) {
			return ringErrorf("end of file after %d bytes, but the slots held %d", n, *announced)
		}
		res.complete = true
		return nil
	case ringDecline:
		if !first {
			return ringErrorf("declined the ring after using it")
		}
		res.declined = true
		return nil
	}
	return ringErrorf("unknown message kind %d", kind)
}

// ringPool holds one plugin's idle rings. A ring only ever goes back to
// the plugin that used it, and only after a download that ended cleanly;
// idle rings are released after ringIdle, and all of them when the plugin
// crashes or stops.
type ringPool struct {
	mu     sync.Mutex
	idle   []*ring
	timer  *time.Timer
	closed bool
}

// get returns an idle ring of the current geometry, or a new one.
func (rp *ringPool) get() (*ring, error) {
	rp.mu.Lock()
	for len(rp.idle) > 0 {
		r := rp.idle[len(rp.idle)-1]
		rp.idle = rp.idle[:len(rp.idle)-1]
		if r.slots == ringSlots && r.slotSize == ringSlotSize {
			rp.mu.Unlock()
			return r, nil
		}
		r.release()
	}
	rp.mu.Unlock()
	return newRing(ringSlots, ringSlotSize)
}

// put keeps r for the plugin's next download, or releases it.
func (rp *ringPool) put(r *ring) {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	if rp.closed || len(rp.idle) >= ringPoolMax {
		r.release()
		return
	}
	rp.idle = append(rp.idle, r)
	if rp.timer == nil {
		rp.timer = time.AfterFunc(ringIdle, rp.drain)
	} else {
		rp.timer.Reset(ringIdle)
	}
}

// drain releases the idle rings.
func (rp *ringPool) drain() {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	for _, r := range rp.idle {
		r.release()
	}
	rp.idle = nil
	if rp.timer != nil {
		rp.timer.Stop()
	}
}

// close drains the pool for good: rings in use are released when their
// downloads end.
func (rp *ringPool) close() {
	rp.drain()
	rp.mu.Lock()
	rp.closed = true
	rp.mu.Unlock()
}
