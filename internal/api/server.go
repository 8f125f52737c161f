// Package api serves the host API (medrelay.agent.v1) on the local socket.
// It decides who each caller is (identity.go), what they may call
// (policy.go), records the audit entry, and maps domain errors to gRPC
// statuses (errors.go): one place each. Service implementations are thin
// translations to domain packages.
package api

import (
	"log/slog"
	"net"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	"github.com/medrelay/medrelay/internal/apps"
	"github.com/medrelay/medrelay/internal/audit"
	"github.com/medrelay/medrelay/internal/connections"
	"github.com/medrelay/medrelay/internal/credentials"
	"github.com/medrelay/medrelay/internal/directory"
	"github.com/medrelay/medrelay/internal/events"
	"github.com/medrelay/medrelay/internal/ipc"
	"github.com/medrelay/medrelay/internal/records"
	"github.com/medrelay/medrelay/internal/sessions"
	syncs "github.com/medrelay/medrelay/internal/sync"
	"github.com/medrelay/medrelay/internal/webhooks"
	agentv1 "github.com/medrelay/medrelay/proto/gen/medrelay/agent/v1"
)

// Deps are what the API needs from the rest of the agent.
type Deps struct {
	Logger     *slog.Logger
	Apps       *apps.Registry
	Audit      *audit.Log
	Status     StatusFunc
	AdminGroup string
	// ObserveCall, when set, is told of every call (metrics).
	ObserveCall func(method, code string, d time.Duration)

	Connections *connections.Manager
	Sessions    *sessions.Manager
	Events      *events.Log
	// Records is optional (nil: not wired).
	Records RecordDeleter
	// Backend creates backend connections (nil: not wired).
	Backend BackendConnector
	// Sync runs Bulk Data syncs (nil: not wired).
	Sync *syncs.Engine

	// RecordStore serves RecordService (nil: not wired). RecordOwner checks
	// who may read a connection; nil means ConnectionOwner(Connections).
	RecordStore *records.Store
	// LiveSearch runs RecordService.SearchRecords at the source (nil: not wired).
	LiveSearch  LiveSearch
	RecordOwner RecordOwner

	// Credentials (nil: not wired) and the public URL that redirect URIs
	// and the JWKS URL derive from.
	Credentials *credentials.Store
	PublicURL   string

	// Plugins serves PluginService (nil: not wired).
	Plugins PluginRegistry

	// Directory serves DirectoryService (nil: not wired).
	Directory *directory.Catalog

	// Webhooks serves WebhookService (nil: not wired). EventService is
	// served whenever Events is set.
	Webhooks *webhooks.Manager
}

// Server is the gRPC server of the host API.
type Server struct {
	grpc   *grpc.Server
	health *health.Server
	log    *slog.Logger
	// stopping is closed at Stop, so that endless streams (events) end.
	stopping chan struct{}
}

// New builds the server and registers every service.
func New(d Deps) *Server {
	log := d.Logger.With("component", "api")
	policy := Policy{}
	g := &guard{policy: policy, ident: newIdentifier(d.Apps, d.AdminGroup), audit: d.Audit, log: log, observe: d.ObserveCall}
	gs := grpc.NewServer(
		grpc.Creds(ipc.Credentials()),
		grpc.ChainUnaryInterceptor(g.unary),
		grpc.ChainStreamInterceptor(g.stream),
		grpc.MaxRecvMsgSize(8<<20),
		grpc.InitialWindowSize(localWindow), grpc.InitialConnWindowSize(localWindow),
		grpc.WriteBufferSize(localBuffer), grpc.ReadBufferSize(localBuffer),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(gs, hs)
	reflection.Register(gs)

	register(policy, agentv1.AdminService_ServiceDesc, map[string]Rule{
		"GetStatus": {Who: Authenticated},
		"ListAudit": {Who: Admins, Audit: true},
	})
	agentv1.RegisterAdminServiceServer(gs, &adminService{status: d.Status, audit: d.Audit})

	register(policy, agentv1.AppService_ServiceDesc, map[string]Rule{
		"CreateApp": {Who: Admins, Audit: true},
		"ListApps":  {Who: Admins, Audit: true},
		"RevokeApp": {Who: Admins, Audit: true},
	})
	agentv1.RegisterAppServiceServer(gs, &appService{apps: d.Apps})

	if d.Connections != nil {
		register(policy, agentv1.ConnectionService_ServiceDesc, map[string]Rule{
			"GetConnection":           {Who: Authenticated, Audit: true},
			"ListConnections":         {Who: Authenticated, Audit: true},
			"WatchConnections":        {Who: Authenticated, Audit: true},
			"RefreshConnection":       {Who: Authenticated, Audit: true},
			"DeleteConnection":        {Who: Authenticated, Audit: true},
			"CreateBackendConnection": {Who: Authenticated, Audit: true},
		})
		agentv1.RegisterConnectionServiceServer(gs, &backendConnections{connectionService: &connectionService{conns: d.Connections, events: d.Events, records: d.Records}, backend: d.Backend})
	}
	if d.Sessions != nil {
		register(policy, agentv1.SessionService_ServiceDesc, map[string]Rule{
			"CreateSession": {Who: Authenticated, Audit: true},
			"GetSession":    {Who: Authenticated, Audit: true},
		})
		agentv1.RegisterSessionServiceServer(gs, &sessionService{sessions: d.Sessions})
	}

	if d.Credentials != nil {
		register(policy, agentv1.CredentialService_ServiceDesc, map[string]Rule{
			"SetCredential":       {Who: Admins, Audit: true},
			"ListCredentials":     {Who: Admins, Audit: true},
			"DeleteCredential":    {Who: Admins, Audit: true},
			"RotateCredentialKey": {Who: Admins, Audit: true},
			"GetJWKS":             {Who: Authenticated},
		})
		agentv1.RegisterCredentialServiceServer(gs, &credentialService{creds: d.Credentials, publicURL: strings.TrimRight(d.PublicURL, "/")})
	}

	if d.Sync != nil {
		register(policy, agentv1.SyncService_ServiceDesc, map[string]Rule{
			"StartSync":  {Who: Authenticated, Audit: true},
			"GetSync":    {Who: Authenticated},
			"ListSyncs":  {Who: Authenticated},
			"CancelSync": {Who: Authenticated, Audit: true},
			"WatchSync":  {Who: Authenticated},
		})
		agentv1.RegisterSyncServiceServer(gs, &syncService{engine: d.Sync})
	}

	if d.RecordStore != nil {
		register(policy, agentv1.RecordService_ServiceDesc, map[string]Rule{
			"ListRecords":   {Who: Authenticated, Audit: true},
			"GetRecord":     {Who: Authenticated, Audit: true},
			"SearchRecords": {Who: Authenticated, Audit: true},
		})
		owner := d.RecordOwner
		if owner == nil && d.Connections != nil {
			owner = ConnectionOwner(d.Connections)
		}
		agentv1.RegisterRecordServiceServer(gs, &recordService{records: d.RecordStore, owner: owner, live: d.LiveSearch})
	}

	if d.Plugins != nil {
		register(policy, agentv1.PluginService_ServiceDesc, map[string]Rule{
			"ListPlugins":   {Who: Admins},
			"VerifyPlugins": {Who: Admins, Audit: true},
		})
		agentv1.RegisterPluginServiceServer(gs, &pluginService{plugins: d.Plugins})
	}

	if d.Directory != nil {
		register(policy, agentv1.DirectoryService_ServiceDesc, map[string]Rule{
			"Search":   {Who: Authenticated},
			"Get":      {Who: Authenticated},
			"Discover": {Who: Authenticated, Audit: true},
			"Import":   {Who: Admins, Audit: true},
		})
		agentv1.RegisterDirectoryServiceServer(gs, &directoryService{dir: d.Directory})
	}

	stopping := make(chan struct{})
	if d.Events != nil {
		register(policy, agentv1.EventService_ServiceDesc, map[string]Rule{
			"Subscribe": {Who: Authenticated, Audit: true},
		})
		agentv1.RegisterEventServiceServer(gs, &eventService{events: d.Events, stopping: stopping})
	}
	if d.Webhooks != nil {
		register(policy, agentv1.WebhookService_ServiceDesc, map[string]Rule{
			"CreateWebhook":         {Who: Apps, Audit: true},
			"ListWebhooks":          {Who: Authenticated, Audit: true},
			"GetWebhook":            {Who: Authenticated, Audit: true},
			"DeleteWebhook":         {Who: Authenticated, Audit: true},
			"RotateWebhookSecret":   {Who: Apps, Audit: true},
			"EnableWebhook":         {Who: Authenticated, Audit: true},
			"DisableWebhook":        {Who: Authenticated, Audit: true},
			"ListWebhookAttempts":   {Who: Authenticated, Audit: true},
			"RedeliverWebhookEvent": {Who: Authenticated, Audit: true},
		})
		agentv1.RegisterWebhookServiceServer(gs, &webhookService{hooks: d.Webhooks})
	}

	return &Server{grpc: gs, health: hs, log: log, stopping: stopping}
}

// register adds a service's rules, and panics when a method of the service
// has none: every RPC needs a decision about who may call it.
func register(p Policy, sd grpc.ServiceDesc, rules map[string]Rule) {
	names := make([]string, 0, len(sd.Methods)+len(sd.Streams))
	for _, m := range sd.Methods {
		names = append(names, m.MethodName)
	}
	for _, s := range sd.Streams {
		names = append(names, s.StreamName)
	}
	for _, n := range names {
		r, ok := rules[n]
		if !ok {
			panic("api: no policy for " + sd.ServiceName + "/" + n)
		}
		p["/"+sd.ServiceName+"/"+n] = r
	}
}

// Serve answers calls on l until Stop.
func (s *Server) Serve(l net.Listener) error {
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	return s.grpc.Serve(l)
}

// Stop stops accepting calls, lets running ones finish until the deadline
// given by the caller passes, then cuts them.
func (s *Server) Stop(grace time.Duration) {
	s.health.Shutdown()
	select {
	case <-s.stopping:
	default:
		close(s.stopping)
	}
	done := make(chan struct{})
	go func() {
		s.grpc.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(grace):
		s.log.Warn("calls still running at shutdown; cancelling them", "grace", grace)
		s.grpc.Stop()
		<-done
	}
}

// localWindow and localBuffer size HTTP/2 flow control and the transport's
// buffers for a local socket, where bandwidth is memory bandwidth.
const (
	localWindow = 4 << 20
	localBuffer = 256 << 10
)
