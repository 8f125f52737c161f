package pluginhost

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	pluginv1 "github.com/medrelay/medrelay/proto/gen/medrelay/plugin/v1"
)

// ringPeer plays a plugin on a sink that offers the ring, speaking the
// wire protocol by hand, so that tests can send what no SDK would.
type ringPeer struct {
	t           *testing.T
	c           *net.UnixConn
	mem         []byte
	slots, size int
}

// smallRing makes the agent's rings 4 slots of 4 KiB for one test.
func smallRing(t *testing.T) {
	slots, size := ringSlots, ringSlotSize
	ringSlots, ringSlotSize = 4, 4096
	t.Cleanup(func() { ringSlots, ringSlotSize = slots, size })
}

func ringSink(t *testing.T, w io.Writer) *sink {
	t.Helper()
	o, _ := testOptions(t, "", nil)
	h := New(o)
	pool := &ringPool{}
	s, err := h.openSink(w, pool)
	if err != nil {
		t.Fatal(err)
	}
	if s.ring == nil {
		t.Fatal("the sink has no ring")
	}
	t.Cleanup(func() {
		s.finish(true)
		pool.close()
	})
	return s
}

func dialRingPeer(t *testing.T, s *sink) *ringPeer {
	t.Helper()
	c, err := net.Dial("unix", s.address())
	if err != nil {
		t.Fatal(err)
	}
	uc := c.(*net.UnixConn)
	t.Cleanup(func() { uc.Close() })
	if _, err := uc.Write(s.token); err != nil {
		t.Fatal(err)
	}
	hello := make([]byte, ringMsgSize)
	oob := make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := uc.ReadMsgUnix(hello, oob)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(uc, hello[n:]); err != nil {
		t.Fatal(err)
	}
	if string(hello[:4]) != ringMagic {
		t.Fatalf("hello %q", hello)
	}
	cmsgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(cmsgs) != 1 {
		t.Fatalf("control messages: %v %v", cmsgs, err)
	}
	fds, err := unix.ParseUnixRights(&cmsgs[0])
	if err != nil || len(fds) != 1 {
		t.Fatalf("rights: %v %v", fds, err)
	}
	p := &ringPeer{t: t, c: uc, slots: int(binary.LittleEndian.Uint32(hello[4:])), size: int(binary.LittleEndian.Uint32(hello[8:]))}
	p.mem, err = unix.Mmap(fds[0], 0, p.slots*p.size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	unix.Close(fds[0])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(p.mem) })
	return p
}

type ringMsg struct {
	kind, slot uint32
	n          uint64
}

// send writes the messages in one write: the agent reads them together.
func (p *ringPeer) send(msgs ...ringMsg) {
	b := make([]byte, ringMsgSize*len(msgs))
	for i, m := range msgs {
		putRingMsg(b[i*ringMsgSize:], m.kind, m.slot, m.n)
	}
	if _, err := p.c.Write(b); err != nil {
		p.t.Fatal(err)
	}
}

// fill puts b in slot and announces it.
func (p *ringPeer) fill(slot int, b []byte) {
	copy(p.mem[slot*p.size:(slot+1)*p.size], b)
	p.send(ringMsg{ringFilled, uint32(slot), uint64(len(b))})
}

// free waits for the agent's credit.
func (p *ringPeer) free() uint32 {
	b := make([]byte, ringMsgSize)
	if _, err := io.ReadFull(p.c, b); err != nil {
		p.t.Fatal(err)
	}
	if k := binary.LittleEndian.Uint32(b); k != ringFree {
		p.t.Fatalf("message kind %d from the agent", k)
	}
	return binary.LittleEndian.Uint32(b[4:])
}

func TestRingDeliversSlotsInOrder(t *testing.T) {
	smallRing(t)
	var out bytes.Buffer
	s := ringSink(t, &out)
	p := dialRingPeer(t, s)
	var want bytes.Buffer
	// 10 slots' worth through a ring of 4: slots are reused after their
	// credit, the last one is short.
	for i := range 10 {
		slot := i % p.slots
		if i >= p.slots {
			if got := p.free(); got != uint32(slot) {
				t.Fatalf("credit for slot %d, want %d", got, slot)
			}
		}
		b := bytes.Repeat([]byte{byte('a' + i)}, p.size-i*100)
		want.Write(b)
		p.fill(slot, b)
	}
	p.send(ringMsg{ringEnd, 0, uint64(want.Len())})
	r := s.finish(false)
	if r.err != nil || !r.used || r.unended || r.path != "ring" || r.n != int64(want.Len()) {
		t.Fatalf("result %+v", r)
	}
	if !bytes.Equal(out.Bytes(), want.Bytes()) {
		t.Fatal("the writer got other bytes")
	}
}

// A plugin that breaks the protocol ends the download with an error that
// says what it did; the agent neither panics nor reads outside the ring,
// and what it wrote before is counted exactly.
func TestRingProtocolViolations(t *testing.T) {
	smallRing(t)
	cases := []struct {
		name string
		msgs []ringMsg
		want string
	}{
		{"slot out of range", []ringMsg{{ringFilled, 4, 10}}, "slot 4 is out of range (the ring has 4 slots)"},
		{"huge slot", []ringMsg{{ringFilled, 1 << 31, 10}}, "slot 2147483648 is out of range"},
		{"too many bytes", []ringMsg{{ringFilled, 1, 4097}}, "slot 1 holds 4097 bytes, more than a slot's 4096"},
		{"huge count", []ringMsg{{ringFilled, 1, 1 << 63}}, "slot 1 holds 9223372036854775808 bytes"},
		{"slot not the plugin's", []ringMsg{{ringFilled, 2, 10}, {ringFilled, 2, 10}}, "slot 2 is not the plugin's: the agent holds it"},
		{"unknown kind", []ringMsg{{9, 0, 0}}, "unknown message kind 9"},
		{"credit from the plugin", []ringMsg{{ringFree, 0, 0}}, "unknown message kind 4"},
		{"end with the wrong total", []ringMsg{{ringFilled, 0, 100}, {ringEnd, 0, 99}}, "end of file after 99 bytes, but the slots held 110"},
		{"decline after use", []ringMsg{{ringFilled, 0, 100}, {ringDecline, 0, 0}}, "declined the ring after using it"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var out bytes.Buffer
			s := ringSink(t, &out)
			p := dialRingPeer(t, s)
			// One good slot first: its bytes stay counted.
			p.fill(3, []byte("good bytes"))
			if p.free() != 3 {
				t.Fatal("credit for another slot")
			}
			p.send(c.msgs...)
			r := s.finish(false)
			if !errors.Is(r.err, errRing) || !strings.Contains(r.err.Error(), c.want) {
				t.Fatalf("err = %v, want %q", r.err, c.want)
			}
			if r.n != 10 || out.String() != "good bytes" {
				t.Fatalf("n=%d wrote %q", r.n, out.String())
			}
			// The plugin learns at once: its connection is closed.
			if _, err := io.ReadAll(p.c); err != nil {
				t.Fatalf("reading after the violation: %v", err)
			}
		})
	}
}

// A connection that ends without END (the plugin died, or its source cut
// the body) keeps the bytes of every slot announced, and is not complete.
func TestRingEndingWithoutEndIsIncomplete(t *testing.T) {
	smallRing(t)
	var out bytes.Buffer
	s := ringSink(t, &out)
	p := dialRingPeer(t, s)
	p.fill(0, []byte("first "))
	p.fill(1, []byte("second"))
	copy(p.mem[2*p.size:], "never announced")
	p.c.Close()
	r := s.finish(false)
	if r.err != nil || !r.unended || r.n != 12 || out.String() != "first second" {
		t.Fatalf("result %+v, wrote %q", r, out.String())
	}
}

// A plugin that cannot map the ring says so and sends raw bytes.
func TestRingDeclined(t *testing.T) {
	smallRing(t)
	var out bytes.Buffer
	s := ringSink(t, &out)
	p := dialRingPeer(t, s)
	p.send(ringMsg{ringDecline, 0, 0})
	io.WriteString(p.c, "raw bytes instead")
	p.c.Close()
	r := s.finish(false)
	if r.err != nil || r.unended || r.path != "sink" || r.n != 17 || out.String() != "raw bytes instead" {
		t.Fatalf("result %+v, wrote %q", r, out.String())
	}
}

// The writer has the slot to itself until its Write returns: the credit
// that lets the plugin refill it comes after, never before.
func TestRingCreditAfterWrite(t *testing.T) {
	smallRing(t)
	w := &blockingWriter{entered: make(chan struct{}), release: make(chan struct{})}
	s := ringSink(t, w)
	p := dialRingPeer(t, s)
	p.fill(0, []byte("slot zero"))
	<-w.entered
	// The agent is inside Write; a credit sent before it would be waiting
	// in the socket now. Filling other slots works meanwhile.
	p.fill(1, []byte("slot one"))
	if n := p.pending(); n != 0 {
		t.Fatalf("%d bytes of credits while the slot's Write was running", n)
	}
	close(w.release)
	if c := p.free(); c != 0 {
		t.Fatalf("first credit for slot %d", c)
	}
	p.send(ringMsg{ringEnd, 0, 17})
	r := s.finish(false)
	if r.err != nil || w.got.String() != "slot zeroslot one" {
		t.Fatalf("result %+v, wrote %q", r, w.got.String())
	}
}

// pending peeks at how many bytes the agent has sent that were not read.
func (p *ringPeer) pending() int {
	rc, err := p.c.SyscallConn()
	if err != nil {
		p.t.Fatal(err)
	}
	b := make([]byte, 64)
	n := 0
	rc.Read(func(fd uintptr) bool {
		n, _, err = unix.Recvfrom(int(fd), b, unix.MSG_PEEK|unix.MSG_DONTWAIT)
		return true
	})
	if errors.Is(err, unix.EAGAIN) {
		return 0
	}
	if err != nil {
		p.t.Fatal(err)
	}
	return n
}

// blockingWriter holds its first Write until released.
type blockingWriter struct {
	entered, release chan struct{}
	once             sync.Once
	got              bytes.Buffer
}

func (w *blockingWriter) Write(b []byte) (int, error) {
	w.once.Do(func() {
		close(w.entered)
		<-w.release
	})
	w.got.Write(b)
	return len(b), nil
}

// The agent's writer failing ends the ring, and its error is the call's.
func TestRingWriterErrorEndsDownload(t *testing.T) {
	smallRing(t)
	boom := errors.New("disk full")
	s := ringSink(t, failingWriter{boom})
	p := dialRingPeer(t, s)
	p.fill(0, []byte("x"))
	r := s.finish(false)
	if !errors.Is(r.err, boom) {
		t.Fatalf("err = %v", r.err)
	}
	if _, err := io.ReadAll(p.c); err != nil {
		t.Fatalf("the plugin's connection: %v", err)
	}
}

type failingWriter struct{ err error }

func (f failingWriter) Write([]byte) (int, error) { return 0, f.err }

// openFDs counts the test process's open fds, and ringMaps its mappings
// of download rings.
func openFDs(t *testing.T) (fds, rings int) {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents), strings.Count(string(maps), "memfd:medrelay-ring")
}

// waitFDs waits until the fd count is back to want (a connection closed by
// the other side is closed here a moment later), failing if it never is.
func waitFDs(t *testing.T, want int, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		fds, rings := openFDs(t)
		if rings != 0 {
			t.Fatalf("%s: %d ring mappings left", what, rings)
		}
		if fds <= want {
			return
		}
		if time.Now().After(deadline) {
			out, _ := os.ReadDir("/proc/self/fd")
			var links []string
			for _, e := range out {
				l, _ := os.Readlink("/proc/self/fd/" + e.Name())
				links = append(links, l)
			}
			t.Fatalf("%s: %d fds open, %d before: %v", what, fds, want, links)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Every way a ring download ends (done, plugin killed mid-file, agent
// cancelled, protocol violation, writer error) closes and unmaps what it
// opened: the fd count comes back to where it was and no ring stays mapped.
// On the way: a plugin killed mid-file fails Unavailable with the offset of
// the bytes the writer got (every slot announced, none of the one being
// filled), and the file resumes from there; an agent that cancels stops the
// plugin's download.
func TestRingCleanupOnEveryPath(t *testing.T) {
	file := bytes.Repeat([]byte("0123456789abcdef\n"), 200000) // 3.4 MB
	const cut = 3<<20 + 1000                                   // the hanging request stops after this
	release := make(chan struct{})
	gone := make(chan struct{}, 10)
	src := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Query().Get("mode") {
		case "hang": // a part, then nothing until released
			w.Header().Set("Content-Length", fmt.Sprint(len(file)))
			w.Write(file[:cut])
			w.(http.Flusher).Flush()
			select {
			case <-release:
			case <-r.Context().Done():
			}
		case "endless": // until the client goes away
			w.(http.Flusher).Flush()
			for r.Context().Err() == nil {
				if _, err := w.Write(file[:64<<10]); err != nil {
					break
				}
			}
			gone <- struct{}{}
		default:
			http.ServeContent(w, r, "f.ndjson", time.Time{}, bytes.NewReader(file))
		}
	}))
	defer src.Close()
	defer close(release)
	src.Config.SetKeepAlivesEnabled(false)
	o, _ := testOptions(t, installDir(t, "smart"), staticTokens("t"))
	o.BackoffInitial = 10 * time.Millisecond
	h := startHost(t, o)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn := &pluginv1.Connection{Id: "c", FhirBaseUrl: src.URL + "/fhir"}
	download := func(ctx context.Context, query string, offset int64, w io.Writer) (int64, error) {
		return h.BulkDownload(ctx, "smart", &pluginv1.BulkDownloadRequest{Connection: conn, Url: src.URL + "/f.ndjson" + query, Offset: offset}, w)
	}
	// Warm up: the plugin's connections exist before we count.
	var buf bytes.Buffer
	if n, err := download(ctx, "", 0, &buf); err != nil || n != int64(len(file)) || !bytes.Equal(buf.Bytes(), file) {
		t.Fatalf("download: n=%d err=%v", n, err)
	}
	// Idle rings are kept for the plugin's next download: the counts are
	// taken without them (the pool has its own test).
	p, err := h.plugin("smart")
	if err != nil {
		t.Fatal(err)
	}
	p.rings.drain()
	before, _ := openFDs(t)

	// Done, several times.
	for range 3 {
		buf.Reset()
		if n, err := download(ctx, "", 0, &buf); err != nil || n != int64(len(file)) || !bytes.Equal(buf.Bytes(), file) {
			t.Fatalf("download: n=%d err=%v", n, err)
		}
	}
	p.rings.drain()
	waitFDs(t, before, "after complete downloads")

	// Plugin killed mid-file: 3 full slots of 1 MiB were announced, the
	// fourth was being filled.
	pw := &signalWriter{at: 3 << 20, reached: make(chan struct{})}
	errc := make(chan error, 1)
	var n int64
	go func() {
		var err error
		n, err = download(ctx, "?mode=hang", 0, pw)
		errc <- err
	}()
	<-pw.reached
	i, _ := h.Info("smart")
	if err := syscall.Kill(i.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	err = <-errc
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("after SIGKILL: %v", err)
	}
	if n != 3<<20 || !bytes.Equal(pw.buf.Bytes(), file[:3<<20]) {
		t.Fatalf("after SIGKILL: offset %d, %d bytes written", n, pw.buf.Len())
	}
	for {
		if i2, _ := h.Info("smart"); i2.State == StateRunning && i2.PID != i.PID {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("the plugin did not come back")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Resume from the offset returned.
	if n2, err := download(ctx, "", n, &pw.buf); err != nil || n2 != int64(len(file)) || !bytes.Equal(pw.buf.Bytes(), file) {
		t.Fatalf("resume: n=%d err=%v", n2, err)
	}

	// A restarted plugin has new connections: count again after one
	// more complete download.
	buf.Reset()
	if _, err := download(ctx, "", 0, &buf); err != nil {
		t.Fatal(err)
	}
	p.rings.drain()
	before, _ = openFDs(t)

	// Agent cancels: the call ends, and the plugin stops (its request to
	// the source goes away).
	cctx, ccancel := context.WithCancel(ctx)
	cw := &signalWriter{at: 2 << 20, reached: make(chan struct{})}
	go func() {
		_, err := download(cctx, "?mode=endless", 0, cw)
		errc <- err
	}()
	<-cw.reached
	ccancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled download: %v", err)
	}
	<-gone // the plugin dropped its request to the source
	buf.Reset()
	if n, err := download(ctx, "", 0, &buf); err != nil || n != int64(len(file)) {
		t.Fatalf("download after a cancel: n=%d err=%v", n, err)
	}
	p.rings.drain()
	waitFDs(t, before, "after a cancelled download")

	// The writer fails.
	boom := errors.New("disk full")
	if _, err := download(ctx, "", 0, failingWriter{boom}); !errors.Is(err, boom) {
		t.Fatalf("writer error: %v", err)
	}
	p.rings.drain()
	waitFDs(t, before, "after a writer error")

	// Protocol violations (from the hand-written peer).
	smallRing(t)
	for range 3 {
		s, _ := h.openSink(io.Discard, &ringPool{})
		p := dialRingPeer(t, s)
		p.send(ringMsg{ringFilled, 7, 1})
		if r := s.finish(false); !errors.Is(r.err, errRing) {
			t.Fatalf("violation: %+v", r)
		}
		unix.Munmap(p.mem)
		p.mem = nil
		p.c.Close()
	}
	waitFDs(t, before, "after protocol violations")
}

// signalWriter collects bytes and signals once it has at.
type signalWriter struct {
	buf     bytes.Buffer
	at      int
	reached chan struct{}
	once    sync.Once
}

func (w *signalWriter) Write(b []byte) (int, error) {
	w.buf.Write(b)
	if w.buf.Len() >= w.at {
		w.once.Do(func() { close(w.reached) })
	}
	return len(b), nil
}

// A plugin's ring is reused for its next download (the pages the plugin
// faulted in stay), at most ringPoolMax are kept, and stopping the host
// releases every one.
func TestRingPool(t *testing.T) {
	file := bytes.Repeat([]byte("0123456789abcdef\n"), 100000)
	src := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "f.ndjson", time.Time{}, bytes.NewReader(file))
	}))
	defer src.Close()
	src.Config.SetKeepAlivesEnabled(false)
	_, rings0 := openFDs(t)
	fds0 := memfds(t)
	o, _ := testOptions(t, installDir(t, "smart"), staticTokens("t"))
	h := New(o)
	if err := h.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	req := &pluginv1.BulkDownloadRequest{Connection: &pluginv1.Connection{Id: "c", FhirBaseUrl: src.URL + "/fhir"}, Url: src.URL + "/f.ndjson"}
	for range 3 {
		var buf bytes.Buffer
		if n, err := h.BulkDownload(context.Background(), "smart", req, &buf); err != nil || !bytes.Equal(buf.Bytes(), file) {
			t.Fatalf("n=%d err=%v", n, err)
		}
		if _, rings := openFDs(t); rings != rings0+1 || memfds(t) != fds0+1 {
			t.Fatalf("after a download: %d ring mappings, %d ring fds; want one of each", rings-rings0, memfds(t)-fds0)
		}
	}
	// Concurrent downloads take a ring each; the pool keeps ringPoolMax.
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			if _, err := h.BulkDownload(context.Background(), "smart", req, io.Discard); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if _, rings := openFDs(t); rings-rings0 > ringPoolMax || memfds(t)-fds0 > ringPoolMax {
		t.Fatalf("after concurrent downloads: %d ring mappings, %d ring fds kept", rings-rings0, memfds(t)-fds0)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := h.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if _, rings := openFDs(t); rings != rings0 || memfds(t) != fds0 {
		t.Fatalf("after stop: %d ring mappings, %d ring fds", rings-rings0, memfds(t)-fds0)
	}
}

// memfds counts the process's open ring fds.
func memfds(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if l, _ := os.Readlink("/proc/self/fd/" + e.Name()); strings.HasPrefix(l, "/memfd:medrelay-ring") {
			n++
		}
	}
	return n
}
