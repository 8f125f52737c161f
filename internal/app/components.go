package app

import (
	"context"
	"fmt"
	"time"

	"github.com/medrelay/medrelay/internal/authorize"
	"github.com/medrelay/medrelay/internal/connections"
	"github.com/medrelay/medrelay/internal/credentials"
	"github.com/medrelay/medrelay/internal/directory"
	"github.com/medrelay/medrelay/internal/pluginhost"
	"github.com/medrelay/medrelay/internal/pull"
	"github.com/medrelay/medrelay/internal/records"
	"github.com/medrelay/medrelay/internal/sessions"
	syncs "github.com/medrelay/medrelay/internal/sync"
	"github.com/medrelay/medrelay/internal/version"
	"github.com/medrelay/medrelay/internal/webhooks"
)

// startComponents builds the domain components in dependency order, after
// the store and the public listener (whose URL the redirect URI derives
// from), and starts their background jobs.
func (a *Agent) startComponents(ctx context.Context) error {
	var err error
	t := time.Now()
	took := func(what string) {
		a.log.Debug("started", "component", what, "took", time.Since(t).Round(time.Microsecond))
		t = time.Now()
	}
	a.creds = credentials.New(a.db, credentials.Options{Logger: a.log})
	a.public.Handle("GET /.well-known/jwks.json", a.creds.JWKSHandler())

	// Plugins ask custody for tokens; custody (connections) needs the
	// authorizer, which needs the plugins' profiles: the host is created
	// first and told about custody through an adapter filled in below.
	cust := &custody{}
	a.plugins = pluginhost.New(pluginhost.Options{
		Dir: a.opts.Layout.PluginDir, StateDir: a.opts.Layout.StateDir, Tokens: cust, Logger: a.log,
	})
	if err := a.plugins.Start(ctx); err != nil {
		return fmt.Errorf("plugins: %w", err)
	}
	vendors := pluginVendors{host: a.plugins}
	took("plugins")

	a.catalog = directory.New(a.db, directory.WithLogger(a.log), directory.WithSetupProvider(vendors))
	if err := a.catalog.Load(ctx); err != nil {
		return fmt.Errorf("directory: %w", err)
	}
	took("directory")

	a.authz = authorize.New(a.db, dirSources{cat: a.catalog}, credentialAdapter{s: a.creds}, vendors, a.log,
		authorize.Options{RedirectURI: a.public.PublicURL() + "/oauth/callback", StateTTL: a.opts.Config.PatientAccess.AuthorizationTTL.Duration})
	a.conns, err = connections.New(ctx, a.db, a.events, a.authz, a.log)
	if err != nil {
		return err
	}
	cust.conns = a.conns
	took("connections")

	recOpts := []records.Option{records.WithLogger(a.log)}
	if a.opts.Layout.RecordsDir != "" {
		recOpts = append(recOpts, records.WithSegments(a.opts.Layout.RecordsDir, a.keys.Derive("records/segments/v1")))
	}
	a.records, err = records.Open(ctx, a.db, recOpts...)
	if err != nil {
		return fmt.Errorf("records: %w", err)
	}
	took("records")
	a.metrics.GaugeFunc("medrelay_records_bytes", "Size of the stored resources' bodies on disk (encrypted segment files).", func() float64 {
		return float64(a.records.SegmentBytes())
	})
	a.puller = pull.New(a.db, a.conns, a.records, a.plugins, a.events, a.log, pull.Options{Interval: a.opts.Config.PatientAccess.PullInterval.Duration})
	a.syncer = syncs.New(a.db, a.conns, a.plugins, a.records, a.events, a.log, syncs.Options{})

	a.sessions = sessions.New(a.db, a.conns, a.events, pickerDirectory{cat: a.catalog}, a.authz, a.log,
		sessions.Options{PublicURL: a.public.PublicURL(), TTL: a.opts.Config.PatientAccess.SessionTTL.Duration})
	a.sessions.Register(a.public.Handle)

	jobCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	a.jobsCancel = cancel
	a.jobs.Go(func() { a.conns.Run(jobCtx) })
	a.jobs.Go(func() { a.pruneEvents(jobCtx) })
	a.jobs.Go(func() { a.puller.Run(jobCtx) })
	a.jobs.Go(func() { a.syncer.Run(jobCtx) })
	// Space of replaced resource bodies (new versions) comes back hourly.
	a.jobs.Go(func() { a.records.RunCompactor(jobCtx, time.Hour) })

	// Webhook deliveries are jobs: their workers stop with the others.
	a.webhooks = webhooks.New(a.db, a.events, a.log,
		webhooks.WithAllowPublicHTTP(a.opts.Config.WebhooksAllowPublicHTTP),
		webhooks.WithSource(a.public.PublicURL()),
		webhooks.WithUserAgent("medrelay/"+version.String()),
		webhooks.WithAppCheck(func(ctx context.Context, appID string) bool {
			app, err := a.apps.Get(ctx, appID)
			return err != nil || !app.Revoked() // unknown: keep delivering, the owner decides
		}))
	if err := a.webhooks.Start(jobCtx); err != nil {
		return err
	}
	a.jobs.Go(func() { <-jobCtx.Done(); a.webhooks.Stop() })
	return nil
}

// pruneEvents drops events past their retention, hourly.
func (a *Agent) pruneEvents(ctx context.Context) {
	t := time.NewTicker(time.Hour)
	defer t.Stop()
	for {
		if n, err := a.events.Prune(ctx, time.Now()); err != nil {
			a.log.Warn("prune events", "err", err)
		} else if n > 0 {
			a.log.Info("pruned events", "count", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (a *Agent) connectionCount() int {
	if a.conns == nil {
		return 0
	}
	n := 0
	for _, c := range a.conns.Count() {
		n += c
	}
	return n
}
