// Package pluginhost runs the source plugins: one process per vendor, started
// from the plugin directory with go-plugin (gRPC only, AutoMTLS, checksums
// from each plugin's manifest, no inherited environment), supervised
// (health pings, restart with exponential backoff, a crash-loop limit that
// marks a plugin failed with its last stderr lines), reaped when a killed
// agent left them behind, and killed with a deadline at shutdown. It is the
// only package that imports go-plugin's host side.
//
// The agent calls plugins through Host (Read, Search, Everything, Bulk*);
// plugins call back for access tokens (TokenProvider) and to log.
package pluginhost

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	pluginv1 "github.com/medrelay/medrelay/proto/gen/medrelay/plugin/v1"
)

// Handshake values; plugins/sdk carries the same (a test keeps them equal).
const (
	MagicCookieKey   = "MEDRELAY_PLUGIN_COOKIE"
	MagicCookieValue = "d3f1c5e0-medrelay-source-plugin"
)

// ProtocolVersions are the plugin protocol majors this agent loads.
var ProtocolVersions = []int{1}

// Token is an access token the agent hands a plugin for one call.
type Token struct {
	AccessToken string
	TokenType   string
	Expiry      time.Time
}

// TokenProvider is token custody (the agent's connections): the plugin host
// only relays. rejected says the source refused the previous token.
type TokenProvider interface {
	AccessToken(ctx context.Context, connectionID string, rejected bool) (Token, error)
}

// Options configure a Host.
type Options struct {
	// Dir is the plugin directory (bin/plugins in development,
	// /usr/lib/medrelay/plugins installed). A missing directory means no
	// plugins.
	Dir string
	// StateDir holds the pid files used to reap orphans (<StateDir>/plugins).
	StateDir string
	Tokens   TokenProvider
	Logger   *slog.Logger

	// HealthInterval between health pings (default 5s); two failed pings in
	// a row restart the plugin.
	HealthInterval time.Duration
	// BackoffInitial and BackoffMax bound the wait before a restart
	// (default 250ms doubling to 30s).
	BackoffInitial, BackoffMax time.Duration
	// CrashLimit crashes within CrashWindow mark a plugin failed (default 5
	// in 2 minutes).
	CrashLimit  int
	CrashWindow time.Duration
	// StartTimeout bounds the handshake and the first Describe (default 20s).
	StartTimeout time.Duration
}

func (o *Options) defaults() {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.HealthInterval <= 0 {
		o.HealthInterval = 5 * time.Second
	}
	if o.BackoffInitial <= 0 {
		o.BackoffInitial = 250 * time.Millisecond
	}
	if o.BackoffMax <= 0 {
		o.BackoffMax = 30 * time.Second
	}
	if o.CrashLimit <= 0 {
		o.CrashLimit = 5
	}
	if o.CrashWindow <= 0 {
		o.CrashWindow = 2 * time.Minute
	}
	if o.StartTimeout <= 0 {
		o.StartTimeout = 20 * time.Second
	}
}

// State of a plugin.
type State int

// Plugin states.
const (
	StateStarting State = iota + 1
	StateRunning
	StateRestarting
	StateFailed
	StateStopped
)

func (s State) String() string {
	switch s {
	case StateStarting:
		return "starting"
	case StateRunning:
		return "running"
	case StateRestarting:
		return "restarting"
	case StateFailed:
		return "failed"
	case StateStopped:
		return "stopped"
	}
	return "unknown"
}

// Info is what List reports about one plugin.
type Info struct {
	Name       string
	Path       string
	Manifest   Manifest
	State      State
	PID        int
	Restarts   int
	LastError  string
	LastStderr []string
	StartedAt  time.Time
	// Describe is the plugin's last description (nil before its first start).
	Describe *pluginv1.DescribeResponse
}

// Host runs the plugins of one directory.
type Host struct {
	opts Options
	log  *slog.Logger

	mu      sync.Mutex
	plugins map[string]*plugin
	started bool

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	// stopBy is the deadline by which every plugin must be dead.
	stopBy time.Time
	// sinks is the private directory of download sockets.
	sinks string
}

// New builds a Host; Start launches the plugins.
func New(o Options) *Host {
	o.defaults()
	return &Host{opts: o, log: o.Logger.With("component", "plugins"), plugins: map[string]*plugin{}}
}

// Start reaps orphans of a previous agent, then launches every plugin in
// the directory and returns once each has either started or failed its
// first attempt (a plugin that fails keeps being retried in the
// background). It fails only when the directory itself is unusable.
func (h *Host) Start(ctx context.Context) error {
	h.mu.Lock()
	if h.started {
		h.mu.Unlock()
		return errors.New("pluginhost: already started")
	}
	h.started = true
	h.ctx, h.cancel = context.WithCancel(context.Background())
	h.mu.Unlock()

	h.reapOrphans()
	h.sweepSinks()
	cands, err := discover(h.opts.Dir)
	if err != nil {
		return err
	}
	if len(cands) == 0 {
		h.log.Info("no plugins", "dir", h.opts.Dir)
	}
	var first sync.WaitGroup
	h.mu.Lock()
	for _, c := range cands {
		p := newPlugin(h, c)
		h.plugins[c.name] = p
		first.Add(1)
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			p.supervise(h.ctx, first.Done)
		}()
	}
	h.mu.Unlock()
	done := make(chan struct{})
	go func() { first.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		return ctx.Err()
	}
	return nil
}

// Stop kills every plugin: gracefully (go-plugin's Shutdown) while the
// context allows, then with SIGKILL. It returns when every process is gone.
func (h *Host) Stop(ctx context.Context) error {
	h.mu.Lock()
	if !h.started || h.cancel == nil {
		h.mu.Unlock()
		return nil
	}
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(5 * time.Second)
	}
	h.stopBy = dl
	cancel := h.cancel
	h.cancel = nil
	h.mu.Unlock()
	cancel()
	h.wg.Wait()
	h.mu.Lock()
	if h.sinks != "" {
		_ = os.RemoveAll(h.sinks)
		h.sinks = ""
	}
	h.mu.Unlock()
	return nil
}

// sweepSinks removes sockets a killed agent left behind.
func (h *Host) sweepSinks() {
	if d := h.stateSinkDir(); d != "" {
		_ = os.RemoveAll(d)
	}
}

// Count is the number of plugins found (in any state).
func (h *Host) Count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.plugins)
}

// Dir is the plugin directory.
func (h *Host) Dir() string { return h.opts.Dir }

// List reports every plugin, by name.
func (h *Host) List() []Info {
	h.mu.Lock()
	ps := make([]*plugin, 0, len(h.plugins))
	for _, p := range h.plugins {
		ps = append(ps, p)
	}
	h.mu.Unlock()
	out := make([]Info, 0, len(ps))
	for _, p := range ps {
		out = append(out, p.info())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Info reports one plugin.
func (h *Host) Info(name string) (Info, error) {
	p, err := h.plugin(name)
	if err != nil {
		return Info{}, err
	}
	return p.info(), nil
}

func (h *Host) plugin(name string) (*plugin, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	p, ok := h.plugins[name]
	if !ok {
		return nil, fmt.Errorf("%w: %q (plugin directory %s)", ErrNoPlugin, name, h.opts.Dir)
	}
	return p, nil
}

// Verification is the outcome of checking one plugin.
type Verification struct {
	Name   string
	OK     bool
	Checks []string
	Err    error
	Info   Info
}

// Verify re-reads each plugin's manifest, recomputes its binary's sha256 and
// asks the running plugin to describe itself. No names verifies all.
func (h *Host) Verify(ctx context.Context, names ...string) []Verification {
	if len(names) == 0 {
		for _, i := range h.List() {
			names = append(names, i.Name)
		}
	}
	var out []Verification
	for _, n := range names {
		out = append(out, h.verify(ctx, n))
	}
	return out
}

func (h *Host) verify(ctx context.Context, name string) Verification {
	v := Verification{Name: name}
	p, err := h.plugin(name)
	if err != nil {
		v.Err = err
		return v
	}
	fail := func(err error) Verification {
		v.Err = err
		v.Info = p.info()
		return v
	}
	mpath := filepath.Join(h.opts.Dir, filepath.Base(p.path)+".json")
	b, err := os.ReadFile(mpath)
	if err != nil {
		return fail(fmt.Errorf("%w: %v", ErrManifest, err))
	}
	m, err := ParseManifest(b)
	if err != nil {
		return fail(err)
	}
	v.Checks = append(v.Checks, fmt.Sprintf("manifest ok: %s %s", m.Name, m.Version))
	if err := checkWritable(h.opts.Dir); err != nil {
		return fail(err)
	}
	if err := checkWritable(p.path); err != nil {
		return fail(err)
	}
	v.Checks = append(v.Checks, "permissions ok: not writable by others")
	sum, err := fileSHA256(p.path)
	if err != nil {
		return fail(err)
	}
	if sum != m.SHA256 {
		return fail(fmt.Errorf("%w: %s has sha256 %s, its manifest says %s", ErrChecksum, p.path, sum, m.SHA256))
	}
	v.Checks = append(v.Checks, "sha256 ok: "+sum)
	d, err := p.describe(ctx)
	if err != nil {
		return fail(err)
	}
	v.Checks = append(v.Checks, fmt.Sprintf("describe ok: %s %s (%s), protocol %v", d.GetName(), d.GetVersion(), d.GetVendor(), d.GetProtocolVersions()))
	v.OK = true
	v.Info = p.info()
	return v
}
