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

	mu       sync.Mutex
	mode     int // 0 undecided, 1 sink, 2 grpc chunks
	conn     net.Conn
	done     chan struct{}
	n        int64
	err      error
	accepted chan struct{}
}

const (
	sinkUndecided = iota
	sinkRaw
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

func (h *Host) openSink(w io.Writer) (*sink, error) {
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
	go s.serve()
	return s, nil
}

func (s *sink) address() string { return s.ln.Addr().String() }

func (s *sink) serve() {
	defer close(s.done)
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
		s.mode, s.conn = sinkRaw, c
		s.mu.Unlock()
		close(s.accepted)
		s.ln.Close()
		if uc, ok := c.(*net.UnixConn); ok {
			_ = uc.SetReadBuffer(4 << 20)
		}
		n, err := copyLarge(s.w, c)
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
	if s.mode == sinkRaw {
		return false
	}
	s.mode = sinkChunks
	return true
}

// finish waits for the raw copy, if there was one, and returns the bytes
// it wrote.
func (s *sink) finish(abort bool) (int64, bool, error) {
	s.mu.Lock()
	conn := s.conn
	s.mu.Unlock()
	if abort && conn != nil {
		conn.Close()
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
	return s.n, s.mode == sinkRaw, s.err
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
				return n, werr
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
