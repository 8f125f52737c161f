package pluginhost

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	goplugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	pluginv1 "github.com/medrelay/medrelay/proto/gen/medrelay/plugin/v1"
)

// streamWindow is the gRPC flow-control window for plugin connections.
const streamWindow = 16 << 20

// plugin is one supervised plugin.
type plugin struct {
	h        *Host
	name     string
	path     string
	manifest Manifest
	candErr  error
	log      *slog.Logger
	stderr   *lineRing

	mu        sync.Mutex
	state     State
	lastErr   string
	restarts  int
	crashes   []time.Time
	startedAt time.Time
	pid       int
	client    *goplugin.Client
	rpc       pluginv1.SourceServiceClient
	conn      *grpc.ClientConn
	desc      *pluginv1.DescribeResponse
	retryAt   time.Time
	changed   chan struct{}
	active    map[string]int
	// rings are the plugin's idle download rings.
	rings ringPool
}

func newPlugin(h *Host, c candidate) *plugin {
	return &plugin{
		h: h, name: c.name, path: c.path, manifest: c.manifest, candErr: c.err,
		log:     h.log.With("plugin", c.name),
		stderr:  newLineRing(20),
		state:   StateStarting,
		changed: make(chan struct{}),
		active:  map[string]int{},
	}
}

// setState changes state and wakes whoever waits for a change. Callers hold mu.
func (p *plugin) setStateLocked(s State) {
	p.state = s
	close(p.changed)
	p.changed = make(chan struct{})
}

func (p *plugin) info() Info {
	p.mu.Lock()
	defer p.mu.Unlock()
	i := Info{Name: p.name, Path: p.path, Manifest: p.manifest, State: p.state, PID: p.pid, Restarts: p.restarts,
		LastError: p.lastErr, StartedAt: p.startedAt, Describe: p.desc}
	if p.state == StateFailed || p.state == StateRestarting {
		i.LastStderr = p.stderr.lines()
	}
	return i
}

// permanentError: retrying cannot help (checksum, manifest, handshake, a
// plugin that reports it cannot start).
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// supervise runs the plugin until ctx ends: start, watch, restart with
// backoff, give up after the crash-loop limit. firstDone is called after
// the first attempt.
func (p *plugin) supervise(ctx context.Context, firstDone func()) {
	var once sync.Once
	first := func() { once.Do(firstDone) }
	defer first()
	defer p.rings.close()
	if p.candErr != nil {
		p.fail(p.candErr)
		return
	}
	backoff := p.h.opts.BackoffInitial
	for {
		err := p.launch(ctx)
		if ctx.Err() != nil {
			p.shutdown()
			return
		}
		var ran time.Duration
		if err == nil {
			first()
			started := time.Now()
			err = p.watch(ctx)
			ran = time.Since(started)
			if ctx.Err() != nil {
				p.shutdown()
				return
			}
		}
		p.kill()
		p.rings.drain()
		var perm *permanentError
		if errors.As(err, &perm) {
			p.fail(perm.err)
			return
		}
		if ran > p.h.opts.CrashWindow {
			backoff = p.h.opts.BackoffInitial
		}
		if p.crashed(err, backoff) {
			return
		}
		first()
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			p.shutdown()
			return
		}
		backoff = min(backoff*2, p.h.opts.BackoffMax)
	}
}

func (p *plugin) fail(err error) {
	msg := err.Error()
	if tail := p.stderr.lines(); len(tail) > 0 {
		msg += "\nlast stderr lines:\n  " + strings.Join(tail, "\n  ")
	}
	p.mu.Lock()
	p.lastErr = msg
	p.pid = 0
	p.setStateLocked(StateFailed)
	p.mu.Unlock()
	p.log.Error("plugin failed; not restarting it", "err", err, "last_stderr", strings.Join(p.stderr.lines(), " | "))
}

// crashed records a crash; it reports true when the crash-loop limit is
// reached and the plugin is now failed.
func (p *plugin) crashed(err error, backoff time.Duration) bool {
	now := time.Now()
	p.mu.Lock()
	p.restarts++
	keep := p.crashes[:0]
	for _, t := range p.crashes {
		if now.Sub(t) < p.h.opts.CrashWindow {
			keep = append(keep, t)
		}
	}
	p.crashes = append(keep, now)
	n := len(p.crashes)
	p.mu.Unlock()
	if n >= p.h.opts.CrashLimit {
		p.fail(fmt.Errorf("%w: crashed %d times within %s; last: %v", ErrFailed, n, p.h.opts.CrashWindow, err))
		return true
	}
	p.mu.Lock()
	p.lastErr = err.Error()
	p.retryAt = now.Add(backoff)
	p.pid = 0
	p.setStateLocked(StateRestarting)
	p.mu.Unlock()
	p.log.Warn("plugin crashed; restarting", "err", err, "in", backoff, "crashes", n)
	return false
}

// sourcePlugin is the go-plugin adapter: a gRPC client of SourceService,
// and the host's HostService served to the plugin over the broker.
type sourcePlugin struct {
	goplugin.NetRPCUnsupportedPlugin
	host *hostService
}

var _ goplugin.GRPCPlugin = (*sourcePlugin)(nil)

type dispensed struct {
	rpc    pluginv1.SourceServiceClient
	conn   *grpc.ClientConn
	hostID uint32
}

func (s *sourcePlugin) GRPCServer(*goplugin.GRPCBroker, *grpc.Server) error {
	return errors.New("the agent does not serve plugins")
}

func (s *sourcePlugin) GRPCClient(_ context.Context, b *goplugin.GRPCBroker, c *grpc.ClientConn) (any, error) {
	id := b.NextId()
	go b.AcceptAndServe(id, func(opts []grpc.ServerOption) *grpc.Server {
		srv := grpc.NewServer(opts...)
		pluginv1.RegisterHostServiceServer(srv, s.host)
		return srv
	})
	return &dispensed{rpc: pluginv1.NewSourceServiceClient(c), conn: c, hostID: id}, nil
}

func (p *plugin) clientConfig() (*goplugin.ClientConfig, error) {
	sum, err := hex.DecodeString(p.manifest.SHA256)
	if err != nil {
		return nil, &permanentError{fmt.Errorf("%w: sha256: %v", ErrManifest, err)}
	}
	cmd := exec.Command(p.path)
	cmd.Dir = filepath.Dir(p.path)
	setParentDeath(cmd)
	versions := map[int]goplugin.PluginSet{}
	for _, v := range ProtocolVersions {
		versions[v] = goplugin.PluginSet{"source": &sourcePlugin{host: &hostService{p: p}}}
	}
	return &goplugin.ClientConfig{
		HandshakeConfig:  goplugin.HandshakeConfig{ProtocolVersion: uint(ProtocolVersions[0]), MagicCookieKey: MagicCookieKey, MagicCookieValue: MagicCookieValue},
		VersionedPlugins: versions,
		Cmd:              cmd,
		SecureConfig:     &goplugin.SecureConfig{Checksum: sum, Hash: sha256.New()},
		AutoMTLS:         true,
		AllowedProtocols: []goplugin.Protocol{goplugin.ProtocolGRPC},
		SkipHostEnv:      true,
		Logger:           newHCLog(p.log, filepath.Base(p.path)),
		Stderr:           p.stderr,
		StartTimeout:     p.h.opts.StartTimeout,
		// Bulk files stream through in 1 MiB messages: windows and buffers
		// sized for that, on a local socket, instead of gRPC's 64 KiB start.
		GRPCDialOptions: []grpc.DialOption{
			grpc.WithInitialWindowSize(streamWindow),
			grpc.WithInitialConnWindowSize(streamWindow),
			grpc.WithReadBufferSize(1 << 20),
			grpc.WithWriteBufferSize(64 << 10),
		},
	}, nil
}

// launch starts the process, completes the handshake, and describes the
// plugin.
func (p *plugin) launch(ctx context.Context) error {
	cfg, err := p.clientConfig()
	if err != nil {
		return err
	}
	p.stderr.reset()
	client := goplugin.NewClient(cfg)
	proto, err := client.Client()
	if err != nil {
		client.Kill()
		return p.startError(err)
	}
	raw, err := proto.Dispense("source")
	if err != nil {
		client.Kill()
		return &permanentError{fmt.Errorf("%w: plugin %s: %v", ErrHandshake, p.name, err)}
	}
	d := raw.(*dispensed)
	pid := 0
	if rc := client.ReattachConfig(); rc != nil {
		pid = rc.Pid
	}
	p.h.writePid(p.name, pid, p.path)
	p.mu.Lock()
	p.client, p.rpc, p.conn, p.pid = client, d.rpc, d.conn, pid
	p.mu.Unlock()

	dctx, cancel := context.WithTimeout(ctx, p.h.opts.StartTimeout)
	defer cancel()
	desc, err := d.rpc.Describe(dctx, &pluginv1.DescribeRequest{HostProtocolVersions: u32s(ProtocolVersions), HostServiceId: d.hostID})
	if err != nil {
		if st, ok := status.FromError(err); ok && st.Code() == codes.FailedPrecondition {
			return &permanentError{fmt.Errorf("%w: plugin %s: %s", ErrFailed, p.name, st.Message())}
		}
		return fmt.Errorf("plugin %s: Describe: %v", p.name, err)
	}
	if desc.GetName() != p.manifest.Name {
		return &permanentError{fmt.Errorf("%w: the binary says it is plugin %q, its manifest says %q", ErrManifest, desc.GetName(), p.manifest.Name)}
	}
	p.mu.Lock()
	p.desc = desc
	p.startedAt = time.Now()
	p.lastErr = ""
	p.setStateLocked(StateRunning)
	p.mu.Unlock()
	p.log.Info("plugin running", "version", desc.GetVersion(), "vendor", desc.GetVendor(), "pid", pid)
	return nil
}

func u32s(v []int) []uint32 {
	out := make([]uint32, len(v))
	for i, x := range v {
		out[i] = uint32(x)
	}
	return out
}

// startError makes go-plugin's start failures say what to do.
func (p *plugin) startError(err error) error {
	msg := err.Error()
	switch {
	case errors.Is(err, goplugin.ErrChecksumsDoNotMatch):
		sum, _ := fileSHA256(p.path)
		return &permanentError{fmt.Errorf("%w: plugin %s: %s has sha256 %s but its manifest says %s; reinstall the plugin or rewrite its manifest (%s manifest --write) if you trust this binary",
			ErrChecksum, p.name, p.path, sum, p.manifest.SHA256, filepath.Base(p.path))}
	case strings.Contains(msg, "Failed to read any lines from plugin's stdout"):
		return fmt.Errorf("%w: plugin %s exited before completing the handshake", ErrUnavailable, p.name)
	case strings.Contains(msg, "Unrecognized remote plugin message"):
		line := strings.TrimSpace(strings.SplitN(strings.TrimPrefix(msg, "Unrecognized remote plugin message: "), "\n", 2)[0])
		return &permanentError{fmt.Errorf("%w: plugin %s wrote %q to stdout before the handshake; plugins must write nothing to stdout (log to stderr; plugins/sdk does)", ErrHandshake, p.name, clip(line, 200))}
	case strings.Contains(msg, "Incompatible API version") || strings.Contains(msg, "incompatible core API version"):
		return &permanentError{fmt.Errorf("%w: plugin %s speaks another protocol version (agent speaks %v): %s", ErrHandshake, p.name, ProtocolVersions, firstLine(msg))}
	case strings.Contains(msg, "exited before we could connect"):
		return fmt.Errorf("%w: plugin %s exited before completing the handshake", ErrUnavailable, p.name)
	case strings.Contains(msg, "timeout while waiting for plugin to start"):
		return fmt.Errorf("%w: plugin %s did not complete the handshake within %s", ErrUnavailable, p.name, p.h.opts.StartTimeout)
	}
	return fmt.Errorf("%w: plugin %s: %s", ErrUnavailable, p.name, firstLine(msg))
}

func firstLine(s string) string { return strings.SplitN(s, "\n", 2)[0] }

// clip cuts s to at most n bytes, not inside a UTF-8 sequence.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

// watch returns when the plugin process exits or stops answering health
// checks, or ctx ends.
func (p *plugin) watch(ctx context.Context) error {
	p.mu.Lock()
	client, conn := p.client, p.conn
	p.mu.Unlock()
	health := healthpb.NewHealthClient(conn)
	poll := time.NewTicker(100 * time.Millisecond)
	defer poll.Stop()
	ping := time.NewTicker(p.h.opts.HealthInterval)
	defer ping.Stop()
	failures := 0
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-poll.C:
			if client.Exited() {
				return fmt.Errorf("%w: plugin %s exited unexpectedly", ErrUnavailable, p.name)
			}
		case <-ping.C:
			pctx, cancel := context.WithTimeout(ctx, max(p.h.opts.HealthInterval/2, time.Second))
			resp, err := health.Check(pctx, &healthpb.HealthCheckRequest{Service: "plugin"})
			cancel()
			if err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING {
				failures = 0
				continue
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			failures++
			if failures >= 2 {
				return fmt.Errorf("%w: plugin %s failed two health checks in a row (%v)", ErrUnavailable, p.name, err)
			}
		}
	}
}

// kill ends the current process at once (after a crash: nothing to be
// graceful about).
func (p *plugin) kill() {
	p.mu.Lock()
	client, pid := p.client, p.pid
	p.client, p.rpc, p.conn = nil, nil, nil
	p.mu.Unlock()
	if client == nil {
		return
	}
	if pid > 0 {
		if proc, err := os.FindProcess(pid); err == nil {
			_ = proc.Kill()
		}
	}
	client.Kill()
	p.h.removePid(p.name)
}

// shutdown stops the process gracefully until the host's stop deadline,
// then kills it.
func (p *plugin) shutdown() {
	p.mu.Lock()
	client, pid := p.client, p.pid
	p.client, p.rpc, p.conn = nil, nil, nil
	if p.state != StateFailed {
		p.setStateLocked(StateStopped)
	}
	p.pid = 0
	p.mu.Unlock()
	if client == nil {
		return
	}
	done := make(chan struct{})
	go func() { client.Kill(); close(done) }()
	wait := time.Until(p.h.stopBy)
	if wait <= 0 {
		wait = time.Second
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		p.log.Warn("plugin did not stop in time; killing it", "pid", pid)
		if proc, err := os.FindProcess(pid); err == nil && pid > 0 {
			_ = proc.Kill()
		}
		<-done
	}
	p.h.removePid(p.name)
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// lineRing keeps the last n lines written to it (the plugin's stderr).
type lineRing struct {
	mu      sync.Mutex
	n       int
	buf     []string
	partial []byte
}

func newLineRing(n int) *lineRing { return &lineRing{n: n} }

func (r *lineRing) Write(b []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.partial = append(r.partial, b...)
	for {
		i := bytes.IndexByte(r.partial, '\n')
		if i < 0 {
			break
		}
		line := stderrLine(r.partial[:i])
		r.partial = r.partial[i+1:]
		if line == "" {
			continue
		}
		r.buf = append(r.buf, line)
		if len(r.buf) > r.n {
			r.buf = r.buf[len(r.buf)-r.n:]
		}
	}
	if len(r.partial) > 4096 {
		r.partial = r.partial[:0]
	}
	return len(b), nil
}

func (r *lineRing) lines() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := append([]string(nil), r.buf...)
	if line := stderrLine(r.partial); line != "" {
		out = append(out, line)
	}
	return out
}

// stderrLine makes one line of a plugin's stderr fit to show: the lines
// reach administrators in proto strings, which must be valid UTF-8, and a
// plugin writes whatever bytes it likes.
func stderrLine(b []byte) string {
	return clip(strings.ToValidUTF8(strings.TrimRight(string(b), "\r"), "\uFFFD"), 500)
}

func (r *lineRing) reset() {
	r.mu.Lock()
	r.buf, r.partial = nil, nil
	r.mu.Unlock()
}
