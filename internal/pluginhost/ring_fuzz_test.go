//go:build unix

package pluginhost

import (
	"bytes"
	"io"
	"testing"
)

// The plugin's side of a download ring is outside input: whatever it
// sends, the agent writes only whole announced slots of its own ring, and
// counts exactly what it wrote.
func FuzzRingLoop(f *testing.F) {
	msgs := func(ms ...[3]uint64) []byte {
		b := make([]byte, ringMsgSize*len(ms))
		for i, m := range ms {
			putRingMsg(b[i*ringMsgSize:], uint32(m[0]), uint32(m[1]), m[2])
		}
		return b
	}
	f.Add(msgs([3]uint64{ringFilled, 0, 8}, [3]uint64{ringFilled, 1, 3}, [3]uint64{ringEnd, 0, 11}))
	f.Add(msgs([3]uint64{ringFilled, 0, 8}, [3]uint64{ringFilled, 0, 8}))
	f.Add(msgs([3]uint64{ringFilled, 3, 9}))
	f.Add(msgs([3]uint64{ringFilled, 4, 1}))
	f.Add(append(msgs([3]uint64{ringDecline, 0, 0}), "raw bytes"...))
	f.Add(append(msgs([3]uint64{ringFilled, 2, 8}), 1, 0, 0))
	f.Add([]byte("MRR1 not a message"))
	f.Fuzz(func(t *testing.T, in []byte) {
		const slots, size = 4, 8
		mem := make([]byte, slots*size)
		for i := range mem {
			mem[i] = byte(i)
		}
		var out bytes.Buffer
		rw := struct {
			io.Reader
			io.Writer
		}{bytes.NewReader(in), io.Discard}
		res := ringLoop(rw, &ring{mem: mem, slots: slots, slotSize: size}, &out)
		if res.n != int64(out.Len()) {
			t.Fatalf("counted %d, wrote %d", res.n, out.Len())
		}
		if res.complete && (res.err != nil || res.declined) {
			t.Fatalf("complete with %+v", res)
		}
		if !res.declined && out.Len() > len(in)/ringMsgSize*size {
			t.Fatalf("wrote %d bytes from %d messages", out.Len(), len(in)/ringMsgSize)
		}
	})
}
