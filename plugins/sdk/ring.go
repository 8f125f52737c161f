package sdk

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
)

// The download ring (CapDownloadRing; the agent sets sink_ring): the agent
// answers the sink token with a shared-memory file of slots; the plugin
// reads the source's bytes straight into a free slot and tells the agent
// "slot i holds n bytes", and the agent hands that memory to its writer
// without a copy and gives the slot back. The raw sink copies every byte
// twice more (into the socket, out of it). The wire format is documented
// on BulkDownloadRequest.sink_ring in source.proto; it is repeated here
// because the SDK imports nothing of the agent.
const (
	ringMagic   = "MRR1"
	ringMsgSize = 16

	ringFilled  = 1
	ringEnd     = 2
	ringDecline = 3
	ringFree    = 4

	// Bounds on the geometry the agent may ask for.
	ringMaxSlots    = 1024
	ringMinSlotSize = 4 << 10
	ringMaxSlotSize = 64 << 20
	ringMaxSize     = 1 << 30
)

var (
	// errRingDeclined: the ring cannot be used here (no fd arrived, it
	// cannot be mapped, ...); the plugin says so and sends raw bytes.
	errRingDeclined = errors.New("download ring unusable")
	// errRingProtocol: the agent broke the ring protocol.
	errRingProtocol = errors.New("download ring protocol")
)

// ringMap is the plugin's mapping of the agent's ring.
type ringMap struct {
	mem             []byte
	slots, slotSize int
	release         func()
	// prefault, when set, maps a slot's pages in before its first fill:
	// one call instead of a page fault per 4 KiB inside the body's reads.
	prefault func([]byte)
}

func putRingMsg(b []byte, kind, slot uint32, n uint64) {
	binary.LittleEndian.PutUint32(b[0:], kind)
	binary.LittleEndian.PutUint32(b[4:], slot)
	binary.LittleEndian.PutUint64(b[8:], n)
}

// parseRingHello checks the agent's hello and returns the geometry.
func parseRingHello(h []byte) (slots, slotSize int, err error) {
	if string(h[:4]) != ringMagic {
		return 0, 0, fmt.Errorf("%w: the agent's hello starts %q, not %q", errRingProtocol, h[:4], ringMagic)
	}
	s := binary.LittleEndian.Uint32(h[4:])
	z := binary.LittleEndian.Uint32(h[8:])
	if s < 1 || s > ringMaxSlots || z < ringMinSlotSize || z > ringMaxSlotSize || uint64(s)*uint64(z) > ringMaxSize {
		return 0, 0, fmt.Errorf("%w: a ring of %d slots of %d bytes is out of bounds", errRingDeclined, s, z)
	}
	return int(s), int(z), nil
}

// declineHello reads the agent's hello on a sink that cannot carry or map
// the ring and returns errRingDeclined with why (after errRingProtocol
// when the hello is not one).
func declineHello(c io.Reader, why string) error {
	var hello [ringMsgSize]byte
	if _, err := io.ReadFull(c, hello[:]); err != nil {
		return err
	}
	if _, _, err := parseRingHello(hello[:]); err != nil {
		return err
	}
	return fmt.Errorf("%w: %s", errRingDeclined, why)
}

// sendToRing takes the ring the agent offers on sink and fills it from
// body until body ends. A clean end (io.EOF) is sent as END and returns a
// nil error; any other error of body (a cut body is io.ErrUnexpectedEOF)
// is returned with the bytes already handed over, so that the agent
// resumes after them.
func sendToRing(sink net.Conn, body io.Reader, log *slog.Logger) (int64, error) {
	rm, err := openRing(sink)
	if errors.Is(err, errRingDeclined) {
		log.Warn("download ring unusable; writing raw bytes to the sink", "err", err.Error())
		var msg [ringMsgSize]byte
		putRingMsg(msg[:], ringDecline, 0, 0)
		if _, err := sink.Write(msg[:]); err != nil {
			return 0, err
		}
		return copyLarge(sink, body)
	}
	if err != nil {
		return 0, err
	}
	defer rm.release()
	return fillRing(sink, rm, body)
}

// fillRing is the plugin's side of the ring protocol over a mapped ring.
// Credits are read only when no slot is free, and then all that arrived:
// a plugin that never waits for the agent never wakes up for it either.
func fillRing(sink io.ReadWriter, rm *ringMap, body io.Reader) (int64, error) {
	// Every slot starts as the plugin's; held[i] is true while the agent
	// has slot i.
	free := make([]int, 0, rm.slots)
	for i := rm.slots - 1; i >= 0; i-- {
		free = append(free, i)
	}
	held := make([]bool, rm.slots)
	used := make([]bool, rm.slots)
	credits := bufio.NewReaderSize(sink, ringMsgSize*rm.slots)
	var msg [ringMsgSize]byte
	var n int64
	for {
		if len(free) == 0 {
			for len(free) == 0 || credits.Buffered() >= ringMsgSize {
				if _, err := io.ReadFull(credits, msg[:]); err != nil {
					return n, fmt.Errorf("waiting for the agent to free a slot: %w", err)
				}
				kind := binary.LittleEndian.Uint32(msg[0:])
				slot := binary.LittleEndian.Uint32(msg[4:])
				switch {
				case kind != ringFree:
					return n, fmt.Errorf("%w: unexpected message kind %d from the agent", errRingProtocol, kind)
				case slot >= uint32(rm.slots) || !held[slot]:
					return n, fmt.Errorf("%w: the agent freed slot %d, which it does not hold", errRingProtocol, slot)
				}
				held[slot] = false
				free = append(free, int(slot))
			}
		}
		i := free[len(free)-1]
		free = free[:len(free)-1]
		off := i * rm.slotSize
		slot := rm.mem[off : off+rm.slotSize : off+rm.slotSize]
		if !used[i] && rm.prefault != nil {
			rm.prefault(slot)
		}
		used[i] = true
		k, rerr := fill(body, slot)
		if k > 0 {
			putRingMsg(msg[:], ringFilled, uint32(i), uint64(k))
			if _, err := sink.Write(msg[:]); err != nil {
				return n, err
			}
			held[i] = true
			n += int64(k)
		} else {
			free = append(free, i)
		}
		if rerr == io.EOF {
			putRingMsg(msg[:], ringEnd, 0, uint64(n))
			_, err := sink.Write(msg[:])
			return n, err
		}
		if rerr != nil {
			return n, rerr
		}
	}
}
