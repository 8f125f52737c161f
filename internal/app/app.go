// Package app is the only package that knows every component of the agent.
// It builds them in dependency order, starts the listeners, and stops
// everything in the reverse order: listeners, then jobs, then plugins, then
// the store, so nothing writes to a closed store and no call is cut without
// a status.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"os"
	"runtime/debug"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/medrelay/medrelay/internal/api"
	"github.com/medrelay/medrelay/internal/apps"
	"github.com/medrelay/medrelay/internal/audit"
	"github.com/medrelay/medrelay/internal/authorize"
	"github.com/medrelay/medrelay/internal/config"
	"github.com/medrelay/medrelay/internal/connections"
	"github.com/medrelay/medrelay/internal/credentials"
	"github.com/medrelay/medrelay/internal/directory"
	"github.com/medrelay/medrelay/internal/events"
	"github.com/medrelay/medrelay/internal/home"
	"github.com/medrelay/medrelay/internal/ipc"
	"github.com/medrelay/medrelay/internal/pluginhost"
	"github.com/medrelay/medrelay/internal/pull"
	"github.com/medrelay/medrelay/internal/records"
	"github.com/medrelay/medrelay/internal/secrets"
	"github.com/medrelay/medrelay/internal/sessions"
	"github.com/medrelay/medrelay/internal/store"
	syncs "github.com/medrelay/medrelay/internal/sync"
	"github.com/medrelay/medrelay/internal/telemetry"
	"github.com/medrelay/medrelay/internal/version"
	"github.com/medrelay/medrelay/internal/web"
	"github.com/medrelay/medrelay/internal/webhooks"
	agentv1 "github.com/medrelay/medrelay/proto/gen/medrelay/agent/v1"
)

// Options are everything Run needs.
type Options struct {
	Layout home.Layout
	Config config.Config
	Logger *slog.Logger
	// Ready, when set, is called once every listener is up.
	Ready func(Info)
}

// Info describes a running agent.
type Info struct {
	Socket    string
	HTTPAddr  string
	AdminAddr string
	PublicURL string
}

// Agent is a running agent; Run builds one, serves, and tears it down.
type Agent struct {
	opts    Options
	log     *slog.Logger
	started time.Time

	lock    *home.Lock
	keys    *secrets.Keyring
	db      *store.DB
	audit   *audit.Log
	apps    *apps.Registry
	metrics *telemetry.Metrics

	events   *events.Log
	catalog  *directory.Catalog
	creds    *credentials.Store
	plugins  *pluginhost.Host
	conns    *connections.Manager
	authz    *authorize.Authorizer
	sessions *sessions.Manager
	records  *records.Store
	puller   *pull.Puller
	syncer   *syncs.Engine
	webhooks *webhooks.Manager

	// jobs are background loops (refresher, pruning, deliveries); stop
	// cancels them and waits, after the listeners and before the plugins.
	jobsCancel context.CancelFunc
	jobs       sync.WaitGroup

	sock   net.Listener
	api    *api.Server
	public *web.Server
	admin  *telemetry.AdminServer
}

// Run starts the agent and blocks until ctx is cancelled, then shuts down
// gracefully. Errors at start are returned at once, with what to do.
func Run(ctx context.Context, o Options) error {
	a := &Agent{opts: o, log: o.Logger, started: time.Now()}
	if err := a.start(ctx); err != nil {
		a.stop()
		return err
	}
	a.log.Info("medrelayd ready",
		"version", version.String(),
		"socket", o.Layout.Socket,
		"http", a.public.Addr(),
		"public_url", a.public.PublicURL(),
		"admin", a.admin.Addr(),
		"key", a.keys.Origin)
	if o.Ready != nil {
		o.Ready(a.info())
	}
	serveErr := make(chan error, 3)
	go func() { serveErr <- a.api.Serve(a.sock) }()
	go func() { serveErr <- a.public.Serve() }()
	go func() { serveErr <- a.admin.Serve() }()

	var runErr error
	select {
	case <-ctx.Done():
		a.log.Info("shutting down", "reason", context.Cause(ctx))
	case err := <-serveErr:
		if err != nil {
			runErr = fmt.Errorf("listener failed: %w", err)
			a.log.Error("listener failed; shutting down", "err", err)
		}
	}
	a.stop()
	return runErr
}

func (a *Agent) info() Info {
	return Info{
		Socket:    a.opts.Layout.Socket,
		HTTPAddr:  a.public.Addr(),
		AdminAddr: a.admin.Addr(),
		PublicURL: a.public.PublicURL(),
	}
}

func (a *Agent) start(ctx context.Context) error {
	o := a.opts
	if err := o.Config.Validate(); err != nil {
		return err
	}
	if err := o.Layout.Prepare(); err != nil {
		return err
	}
	lock, err := o.Layout.AcquireLock()
	if err != nil {
		return err
	}
	a.lock = lock

	keys, created, err := secrets.Load(o.Layout.KeyFile, true)
	if err != nil {
		return err
	}
	a.keys = keys
	if created {
		a.log.Warn("created a new master key; back it up: losing it loses the store", "file", o.Layout.KeyFile)
	}

	applyMemoryLimit(o.Config.MemoryLimit, a.log)
	applyGCPercent(a.log)

	db, err := store.Open(ctx, store.Options{Dir: o.Layout.StoreDir, Key: keys.StoreKey(), Logger: a.log})
	if err != nil {
		if errors.Is(err, store.ErrLocked) {
			return fmt.Errorf("%w: %v", home.ErrAlreadyRunning, err)
		}
		return err
	}
	a.db = db
	if err := checkFormat(ctx, db); err != nil {
		return err
	}

	a.audit = audit.New(db, a.log)
	a.apps = apps.NewRegistry(db)
	a.events = events.New(db, a.log)
	a.metrics = telemetry.New(version.String())
	a.metrics.GaugeFunc("medrelay_store_bytes", "Size of the store on disk (LSM and value log).", func() float64 {
		l, v := db.Size()
		return float64(l + v)
	})

	a.public, err = web.Listen(web.Options{
		Addr: o.Config.HTTPAddr, PublicURL: o.Config.PublicURL,
		CertFile: o.Config.TLS.CertFile, KeyFile: o.Config.TLS.KeyFile, Logger: a.log,
	})
	if err != nil {
		return err
	}
	a.admin, err = a.metrics.ListenAdmin(o.Config.AdminAddr, a.health, o.Config.DebugPprof, a.log)
	if err != nil {
		return fmt.Errorf("admin listener %s: %w", o.Config.AdminAddr, err)
	}
	if err := a.startComponents(ctx); err != nil {
		return err
	}
	a.api = api.New(api.Deps{
		Logger:      a.log,
		Apps:        a.apps,
		Audit:       a.audit,
		Status:      a.status,
		AdminGroup:  o.Config.AdminGroup,
		ObserveCall: a.metrics.ObserveCall,
		Credentials: a.creds,
		PublicURL:   a.public.PublicURL(),
		Connections: a.conns,
		Backend:     a.authz,
		Sessions:    a.sessions,
		Events:      a.events,
		Records:     a.records,
		RecordStore: a.records,
		LiveSearch:  liveSearch{conns: a.conns, plugins: a.plugins},
		Sync:        a.syncer,
		Plugins:     a.plugins,
		Directory:   a.catalog,
		Webhooks:    a.webhooks,
	})
	// The socket opens last: a client that can connect can be answered.
	a.sock, err = ipc.Listen(o.Layout.Socket, ipc.ListenOptions{Group: o.Config.SocketGroup})
	if err != nil {
		if errors.Is(err, ipc.ErrInUse) {
			return fmt.Errorf("%w: %v", home.ErrAlreadyRunning, err)
		}
		return err
	}
	return nil
}

// stop tears down whatever start built, in reverse dependency order, within
// the configured shutdown timeout.
func (a *Agent) stop() {
	grace := a.opts.Config.ShutdownTimeout.Duration
	if grace <= 0 {
		grace = 8 * time.Second
	}
	deadline := time.Now().Add(grace)
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()

	// 1. Listeners: stop accepting, let running calls finish.
	var wg sync.WaitGroup
	if a.api != nil {
		wg.Add(1)
		go func() { defer wg.Done(); a.api.Stop(time.Until(deadline) / 2) }()
	} else if a.sock != nil {
		a.sock.Close()
	}
	var https []interface{ Shutdown(context.Context) error }
	if a.public != nil {
		https = append(https, a.public)
	}
	if a.admin != nil {
		https = append(https, a.admin)
	}
	for _, s := range https {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.Shutdown(ctx); err != nil {
				a.log.Warn("listener shutdown", "err", err)
			}
		}()
	}
	wg.Wait()
	// 2. Jobs: cancel and wait, so no refresh or delivery is left half done.
	if a.jobsCancel != nil {
		a.jobsCancel()
		a.jobs.Wait()
	}
	// 3. Plugins: killed with a deadline.
	if a.plugins != nil {
		if err := a.plugins.Stop(ctx); err != nil {
			a.log.Warn("stop plugins", "err", err)
		}
	}
	// 4. Store: drain the audit writer first, it writes into the store.
	if a.audit != nil {
		a.audit.Close()
	}
	if a.records != nil {
		_ = a.records.Close()
	}
	if a.db != nil {
		if err := a.db.Close(); err != nil {
			a.log.Error("close store", "err", err)
		}
	}
	if a.lock != nil {
		_ = a.lock.Release()
	}
}

func (a *Agent) health(ctx context.Context) map[string]error {
	_, err := store.NewTable[int](a.db, store.Meta).Get(ctx, "format")
	return map[string]error{"store": err}
}

func (a *Agent) recordsBytes() int64 {
	if a.records == nil {
		return 0
	}
	return a.records.SegmentBytes()
}

func (a *Agent) status(ctx context.Context) (*agentv1.GetStatusResponse, error) {
	lsm, vlog := a.db.Size()
	return &agentv1.GetStatusResponse{
		Version:   version.String(),
		StartedAt: timestamppb.New(a.started),
		Uptime:    durationpb.New(time.Since(a.started)),
		Home:      a.opts.Layout.Home,
		Store: &agentv1.StoreStatus{
			Path: a.db.Dir(), LsmBytes: lsm, VlogBytes: vlog, Encrypted: true,
			RecordsPath: a.opts.Layout.RecordsDir, RecordsBytes: a.recordsBytes(),
		},
		PluginCount:     int64(a.plugins.Count()),
		ConnectionCount: int64(a.connectionCount()),
		Listeners: &agentv1.Listeners{
			Socket:    a.opts.Layout.Socket,
			HttpAddr:  a.public.Addr(),
			AdminAddr: a.admin.Addr(),
			PublicUrl: a.public.PublicURL(),
		},
	}, nil
}

// storeFormat is the on-disk format version. An agent refuses a store
// written by a newer format instead of misreading it.
//
// 2: records keep their change index in change logs beside the segments
// (an earlier agent would find a converted store without records, and
// write an index there the next upgrade would not convert).
const storeFormat = 2

func checkFormat(ctx context.Context, db *store.DB) error {
	meta := store.NewTable[int](db, store.Meta)
	v, err := meta.Get(ctx, "format")
	switch {
	case errors.Is(err, store.ErrNotFound):
		return meta.Put(ctx, "format", storeFormat, store.Synced())
	case err != nil:
		return err
	case v > storeFormat:
		return fmt.Errorf("store format %d is newer than this agent understands (%d): upgrade medrelayd", v, storeFormat)
	case v < storeFormat:
		// Marked first: the conversion that follows (package records)
		// cannot be undone, and finishes at the next start if cut short.
		return meta.Put(ctx, "format", storeFormat, store.Synced())
	}
	return nil
}

// gcPercent is the agent's GOGC unless the environment sets one: the heap
// may grow half past what is live between collections, not twice. Most of
// a bulk sync's heap is buffers reused batch after batch, so collections
// find little to do. Measured on 1M resources, interleaved: peak RSS
// 152-153 MB against 186-191 MB with GOGC=100, the sync 6.3 and 8.3 s
// against 5.3 and 7.4 s (on a disk whose fsync took 2.6-3.8 ms); on 5M,
// 168-179 MB against 203-210 MB, time within the runs' noise.
const gcPercent = 50

func applyGCPercent(log *slog.Logger) {
	if env := os.Getenv("GOGC"); env != "" {
		log.Info("garbage collector target from GOGC", "gogc", env)
		return
	}
	debug.SetGCPercent(gcPercent)
}

// applyMemoryLimit sets the runtime's soft memory limit from memory_limit,
// unless GOMEMLIMIT is set (the runtime has read it already, and an
// administrator's environment wins over the file).
func applyMemoryLimit(limit config.Bytes, log *slog.Logger) {
	if env := os.Getenv("GOMEMLIMIT"); env != "" {
		log.Info("soft memory limit from GOMEMLIMIT", "limit", env)
		return
	}
	if limit == 0 {
		return
	}
	debug.SetMemoryLimit(int64(min(uint64(limit), math.MaxInt64)))
	log.Info("soft memory limit", "limit", limit)
}
