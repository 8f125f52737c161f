package sdk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// The ring follows the sink: declared wherever CapDownloadSink is (here,
// on Linux), never on its own.
func TestRingCapability(t *testing.T) {
	if got := withTransports([]Capability{CapRead, CapDownloadSink}); !slices.Equal(got, []Capability{CapRead, CapDownloadSink, CapDownloadRing}) {
		t.Errorf("with the sink: %v", got)
	}
	if got := withTransports([]Capability{CapRead, CapDownloadRing}); !slices.Equal(got, []Capability{CapRead}) {
		t.Errorf("without the sink: %v", got)
	}
	s := newServer(&SMART{Name: "x", Profile: Profile{Bulk: true}}, slog.New(slog.DiscardHandler))
	if err := s.start(t.Context()); err != nil {
		t.Fatal(err)
	}
	if caps := s.capabilities(); !slices.Contains(caps, CapDownloadRing) {
		t.Errorf("SMART with bulk: %v", caps)
	}
}

// testAgent plays the agent's side of a ring by hand: a socket pair, and a
// memfd of slots x size sent with the hello.
type testAgent struct {
	t           *testing.T
	c           *net.UnixConn // the agent's end
	plugin      *net.UnixConn // the plugin's end
	mem         []byte
	slots, size int
}

// newTestAgent offers a ring sealed against shrinking, as the agent does;
// flaws leaves the seal off ("unsealed") or the fd out ("no fd").
func newTestAgent(t *testing.T, slots, size int, flaws ...string) *testAgent {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "sock")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c.(*net.UnixConn)
	}
	a := &testAgent{t: t, c: conn(fds[0]), plugin: conn(fds[1]), slots: slots, size: size}
	fd, err := unix.MemfdCreate("test-ring", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Ftruncate(fd, int64(slots*size)); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(flaws, "unsealed") {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW); err != nil {
			t.Fatal(err)
		}
	}
	if a.mem, err = unix.Mmap(fd, 0, slots*size, unix.PROT_READ, unix.MAP_SHARED); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(a.mem) })
	defer unix.Close(fd)
	if slices.Contains(flaws, "no fd") {
		fd = -1
	}
	a.hello(fd)
	return a
}

func (a *testAgent) hello(fd int) {
	h := make([]byte, ringMsgSize)
	copy(h, ringMagic)
	binary.LittleEndian.PutUint32(h[4:], uint32(a.slots))
	binary.LittleEndian.PutUint32(h[8:], uint32(a.size))
	var oob []byte
	if fd >= 0 {
		oob = unix.UnixRights(fd)
	}
	if _, _, err := a.c.WriteMsgUnix(h, oob, nil); err != nil {
		a.t.Fatal(err)
	}
}

func (a *testAgent) read() (kind, slot uint32, n uint64, err error) {
	b := make([]byte, ringMsgSize)
	if _, err := io.ReadFull(a.c, b); err != nil {
		return 0, 0, 0, err
	}
	return binary.LittleEndian.Uint32(b), binary.LittleEndian.Uint32(b[4:]), binary.LittleEndian.Uint64(b[8:]), nil
}

func (a *testAgent) free(slot uint32) {
	b := make([]byte, ringMsgSize)
	putRingMsg(b, ringFree, slot, 0)
	// A plugin that sent its last slot may be gone: as for the agent, a
	// lost credit is no loss.
	_, _ = a.c.Write(b)
}

type ringRun struct {
	n   int64
	err error
}

func (a *testAgent) run(body io.Reader) chan ringRun {
	done := make(chan ringRun, 1)
	go func() {
		n, err := sendToRing(a.plugin, body, slog.New(slog.DiscardHandler))
		a.plugin.Close()
		done <- ringRun{n, err}
	}()
	return done
}

// The file goes through the ring slot by slot, each full but the last,
// slots reused after their credit, and a clean end is END with the total.
func TestRingFill(t *testing.T) {
	a := newTestAgent(t, 3, 4096)
	file := bytes.Repeat([]byte("abcdefghij"), 2000) // 20000 bytes: 5 slots' worth
	done := a.run(iotestHalfReader{bytes.NewReader(file)})
	var got []byte
	for {
		kind, slot, n, err := a.read()
		if err != nil {
			t.Fatal(err)
		}
		if kind == ringEnd {
			if n != uint64(len(file)) {
				t.Fatalf("END says %d", n)
			}
			break
		}
		if kind != ringFilled || slot >= 3 || n > 4096 || (n < 4096 && len(got)+int(n) != len(file)) {
			t.Fatalf("message %d %d %d", kind, slot, n)
		}
		got = append(got, a.mem[int(slot)*4096:int(slot)*4096+int(n)]...)
		a.free(slot)
	}
	if r := <-done; r.err != nil || r.n != int64(len(file)) || !bytes.Equal(got, file) {
		t.Fatalf("n=%d err=%v, same bytes %v", r.n, r.err, bytes.Equal(got, file))
	}
}

// iotestHalfReader returns at most half of what is asked: slots are filled
// by several reads.
type iotestHalfReader struct{ r io.Reader }

func (h iotestHalfReader) Read(b []byte) (int, error) {
	return h.r.Read(b[:(len(b)+1)/2])
}

// A body cut short is not an end: the bytes read are announced, no END
// follows, and the error comes back for the stream to report.
func TestRingCutBody(t *testing.T) {
	a := newTestAgent(t, 2, 4096)
	done := a.run(io.MultiReader(strings.NewReader(strings.Repeat("x", 5000)), errReader{io.ErrUnexpectedEOF}))
	var total uint64
	for {
		kind, slot, n, err := a.read()
		if err != nil {
			break // EOF, or a reset: the plugin closed with credits unread
		}
		if kind != ringFilled {
			t.Fatalf("message kind %d", kind)
		}
		total += n
		a.free(slot)
	}
	if r := <-done; !errors.Is(r.err, io.ErrUnexpectedEOF) || r.n != 5000 || total != 5000 {
		t.Fatalf("n=%d err=%v announced=%d", r.n, r.err, total)
	}
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

// An agent that frees what it does not hold, or sends something else, is
// an error that says so, not a panic or a write outside the ring.
func TestRingAgentViolations(t *testing.T) {
	for _, c := range []struct {
		name string
		send func(a *testAgent)
		want string
	}{
		{"double free", func(a *testAgent) {
			b := make([]byte, 2*ringMsgSize)
			putRingMsg(b, ringFree, 0, 0)
			putRingMsg(b[ringMsgSize:], ringFree, 0, 0)
			a.c.Write(b) // one write: the plugin reads both before filling
		}, "freed slot 0, which it does not hold"},
		{"free out of range", func(a *testAgent) { a.free(7) }, "freed slot 7, which it does not hold"},
		{"other message", func(a *testAgent) {
			b := make([]byte, ringMsgSize)
			putRingMsg(b, ringFilled, 0, 1)
			a.c.Write(b)
		}, "unexpected message kind 1"},
	} {
		t.Run(c.name, func(t *testing.T) {
			a := newTestAgent(t, 2, 4096)
			done := a.run(bytes.NewReader(make([]byte, 100000)))
			// Take both slots, free none: the plugin waits for credit.
			for range 2 {
				if kind, _, _, err := a.read(); err != nil || kind != ringFilled {
					t.Fatal(kind, err)
				}
			}
			c.send(a)
			r := <-done
			if !errors.Is(r.err, errRingProtocol) || !strings.Contains(r.err.Error(), c.want) || r.n != 8192 {
				t.Fatalf("n=%d err=%v, want %q", r.n, r.err, c.want)
			}
		})
	}
}

// A ring that cannot be used safely (no fd came, or the file is not sealed
// against shrinking) is declined: DECLINE, then the raw bytes, as without
// the ring.
func TestRingDeclined(t *testing.T) {
	for _, flaw := range []string{"unsealed", "no fd"} {
		t.Run(flaw, func(t *testing.T) {
			a := newTestAgent(t, 2, 4096, flaw)
			done := a.run(strings.NewReader("raw file bytes"))
			kind, _, _, err := a.read()
			if err != nil || kind != ringDecline {
				t.Fatalf("first message %d %v", kind, err)
			}
			raw, _ := io.ReadAll(a.c)
			if r := <-done; r.err != nil || string(raw) != "raw file bytes" {
				t.Fatalf("err=%v raw=%q", r.err, raw)
			}
		})
	}
}

// A hello that is not one is an error (the agent speaks something else).
func TestRingBadHello(t *testing.T) {
	if _, _, err := parseRingHello([]byte("HTTP/1.1 200 OK\r\n")); !errors.Is(err, errRingProtocol) {
		t.Fatalf("err = %v", err)
	}
	h := make([]byte, ringMsgSize)
	copy(h, ringMagic)
	binary.LittleEndian.PutUint32(h[4:], 1<<20)
	binary.LittleEndian.PutUint32(h[8:], 1<<20)
	if _, _, err := parseRingHello(h); !errors.Is(err, errRingDeclined) {
		t.Fatalf("a 1 TiB ring: %v", err)
	}
}

// A sink that is not a unix socket cannot carry the memfd: the hello is
// read and the ring declined, and the raw bytes follow.
func TestRingDeclinedOffUnixSocket(t *testing.T) {
	agent, plugin := net.Pipe()
	defer agent.Close()
	go func() {
		h := make([]byte, ringMsgSize)
		copy(h, ringMagic)
		binary.LittleEndian.PutUint32(h[4:], 2)
		binary.LittleEndian.PutUint32(h[8:], 4096)
		agent.Write(h)
	}()
	done := make(chan ringRun, 1)
	go func() {
		n, err := sendToRing(plugin, strings.NewReader("raw file bytes"), slog.New(slog.DiscardHandler))
		plugin.Close()
		done <- ringRun{n, err}
	}()
	got, _ := io.ReadAll(agent)
	if r := <-done; r.err != nil || len(got) < ringMsgSize || binary.LittleEndian.Uint32(got) != ringDecline || string(got[ringMsgSize:]) != "raw file bytes" {
		t.Fatalf("err=%v sent %q", r.err, got)
	}
}
