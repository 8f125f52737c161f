package pluginhost

import (
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"
)

// A download sink is the fast path for bulk file bytes: a one-use unix
// socket in a directory only the agent's user can enter. The plugin
// connects, proves itself with a one-time token sent over the plugin's mTLS
// channel, and writes the raw bytes, which skips gRPC's 16 KiB framing and
// a TLS layer on a local socket. Errors and the end offset still travel on
// the gRPC stream.
type sink struct {
	ln    net.Listener
	token []byte
	w     io.Writer
	// ring is set when the plugin was offered the download ring
	// (sink_ring); serve gives it back to pool (or releases it) when it
	// ends.
	ring *ring
	pool *ringPool

	mu       sync.Mutex
	mode     int // sinkUndecided, sinkConnected (the plugin uses the sink) or sinkChunks
	conn     net.Conn
	done     chan struct{}
	n        int64
	err      error
	accepted chan struct{}
	// ringEnded: the plugin ended the ring with END (ring mode only).
	ringEnded bool
	// ringCause is why a ring ended before END.
	ringCause error
	// ringDeclined: the plugin could not map the ring and sent raw bytes.
	ringDeclined bool
}

const (
	sinkUndecided = iota
	sinkConnected
	sinkChunks
)

var sinkSupported = runtime.GOOS != "windows"

// sinkDir is the host's private directory for sink sockets: under the
// state directory (so that a killed agent's leftovers are swept at the next
// start), or a temporary one when that path is too long for a socket.
func (h *Host) sinkDir() (string, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.sinks != "" {
		return h.sinks, nil
	}
	if d := h.stateSinkDir(); d != "" {
		if err := os.MkdirAll(d, 0o700); err == nil && os.Chmod(d, 0o700) == nil {
			h.sinks = d
			return d, nil
		}
	}
	d, err := os.MkdirTemp("", "medrelay-sink-")
	if err != nil {
		return "", err
	}
	if err := os.Chmod(d, 0o700); err != nil {
		return "", err
	}
	h.sinks = d
	return d, nil
}

// stateSinkDir is <StateDir>/plugins/sink when a socket path there fits
// (sun_path is 104-108 bytes).
func (h *Host) stateSinkDir() string {
	if h.opts.StateDir == "" {
		return ""
	}
	d := filepath.Join(h.opts.StateDir, "plugins", "sink")
	if len(d)+len("/d0000000000.sock") >= 100 {
		return ""
	}
	return d
}

var sinkSeq struct {
	sync.Mutex
	n int
}

// openSink listens for the plugin's connection; with a pool it also
// prepares a download ring (a ring that cannot be made is logged and left
// out: the raw sink still works).
func (h *Host) openSink(w io.Writer, pool *ringPool) (*sink, error) {
	dir, err := h.sinkDir()
	if err != nil {
		return nil, err
	}
	sinkSeq.Lock()
	sinkSeq.n++
	n := sinkSeq.n
	sinkSeq.Unlock()
	path := filepath.Join(dir, fmt.Sprintf("d%d.sock", n))
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	tok := make([]byte, 32)
	_, _ = rand.Read(tok)
	s := &sink{ln: ln, token: tok, w: w, done: make(chan struct{}), accepted: make(chan struct{})}
	if pool != nil {
		if s.ring, err = pool.get(); err != nil {
			h.log.Warn("no download ring; using the raw sink", "err", err)
			s.ring = nil
		}
		s.pool = pool
	}
	go s.serve()
	return s, nil
}

func (s *sink) address() string { return s.ln.Addr().String() }

func (s *sink) serve() {
	defer close(s.done)
	reuse := true
	if s.ring != nil {
		// Every Write of the ring's memory has returned by now.
		defer func() {
			if reuse {
				s.pool.put(s.ring)
			} else {
				s.ring.release()
			}
		}()
	}
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		got := make([]byte, len(s.token))
		if _, err := io.ReadFull(c, got); err != nil || subtle.ConstantTimeCompare(got, s.token) != 1 {
			c.Close()
			continue // not our plugin: keep waiting for it
		}
		_ = c.SetReadDeadline(time.Time{})
		s.mu.Lock()
		if s.mode != sinkUndecided {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.mode, s.conn = sinkConnected, c
		s.mu.Unlock()
		close(s.accepted)
		s.ln.Close()
		var n int64
		if s.ring != nil {
			res := serveRing(c, s.ring, s.w)
			n, err = res.n, res.err
			// A ring goes back to its plugin only after a clean end: not
			// while a plugin that broke the protocol might still write.
			reuse = res.complete && res.err == nil
			s.mu.Lock()
			s.ringEnded, s.ringDeclined, s.ringCause = res.complete || res.declined, res.declined, res.cause
			s.mu.Unlock()
		} else {
			if uc, ok := c.(*net.UnixConn); ok {
				_ = uc.SetReadBuffer(4 << 20)
			}
			n, err = copyLarge(s.w, c)
		}
		c.Close()
		s.mu.Lock()
		s.n, s.err = n, err
		s.mu.Unlock()
		return
	}
}

// chunks claims the download for gRPC chunks; false when the sink already
// has it (a plugin must not use both).
func (s *sink) chunks() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mode == sinkConnected {
		return false
	}
	s.mode = sinkChunks
	return true
}

// sinkResult is what went through the sink.
type sinkResult struct {
	n int64
	// used: the plugin connected (the bytes went this way, not as chunks).
	used bool
	// path is how the bytes went: "ring", "sink" (raw bytes) or "".
	path string
	// unended: a ring that ended without the plugin's END (the download
	// is incomplete whatever the stream says); the cause, when known.
	unended bool
	cause   error
	err     error
}

// finish waits for the copy, if there was one, and returns what it wrote.
// abort closes the connection first (we give up on the download).
func (s *sink) finish(abort bool) sinkResult {
	if abort {
		s.abort()
	}
	s.ln.Close()
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	if errors.Is(s.err, net.ErrClosed) {
		s.err = nil
	}
	// The mode is read after the copy ended: the connection may have been
	// accepted after finish began.
	r := sinkResult{n: s.n, used: s.mode == sinkConnected, err: s.err}
	if r.used {
		r.path = "sink"
		if s.ring != nil && !s.ringDeclined {
			r.path = "ring"
		}
	}
	if r.used && s.ring != nil && !s.ringEnded {
		r.unended, r.cause = true, s.ringCause
	}
	return r
}

// abort closes the connection: a copy in progress ends (the agent gave up).
func (s *sink) abort() {
	s.mu.Lock()
	conn := s.conn
	s.mu.Unlock()
	if conn != nil {
		conn.Close()
	}
}

// awaitAccept waits until the plugin's connection was accepted (the plugin
// said it wrote through the sink: its connection may still wait in the
// listener's backlog, and closing the listener would drop it).
func (s *sink) awaitAccept(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-s.accepted:
	case <-s.done:
	case <-t.C:
	}
}

// copyLarge copies in 1 MiB reads (io.Copy into a ReaderFrom such as
// io.Discard or a file would read 8-32 KiB at a time).
func copyLarge(dst io.Writer, src io.Reader) (int64, error) {
	buf := make([]byte, 1<<20)
	var n int64
	for {
		r, rerr := src.Read(buf)
		if r > 0 {
			w, werr := dst.Write(buf[:r])
			n += int64(w)
			if werr != nil {
				return n, &writeError{werr}
			}
		}
		if rerr == io.EOF {
			return n, nil
		}
		if rerr != nil {
			return n, rerr
		}
	}
}

// expectEnd bounds the wait for a ring's end message: the plugin sent it
// before it reported the end of the file.
func (s *sink) expectEnd(d time.Duration) {
	s.mu.Lock()
	conn := s.conn
	s.mu.Unlock()
	if conn != nil && s.ring != nil {
		_ = conn.SetReadDeadline(time.Now().Add(d))
	}
}
