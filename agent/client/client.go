// Package client is the Go library host apps use to talk to the medrelay
// agent over its local socket. The medrelay CLI uses it too, and nothing
// more: what the CLI can do, an app can do.
//
//	c, err := client.Dial(ctx, client.WithAppToken(os.Getenv("MEDRELAY_APP_TOKEN")))
//	if errors.Is(err, client.ErrAgentNotRunning) {
//		log.Fatal("start the agent: sudo systemctl start medrelayd")
//	}
//	defer c.Close()
//	st, err := c.Admin.GetStatus(ctx, &agentv1.GetStatusRequest{})
//
// The service clients (Admin, Apps, ...) are the generated gRPC clients of
// medrelay.agent.v1; errors they return can be tested with errors.Is against
// the sentinels of this package (ErrPermissionDenied, ErrNotFound, ...) and
// inspected with AsError for the machine-readable reason.
package client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	agentv1 "github.com/medrelay/medrelay/proto/gen/medrelay/agent/v1"
)

// Environment variables read by Dial.
const (
	EnvSocket   = "MEDRELAY_SOCKET"
	EnvAppToken = "MEDRELAY_APP_TOKEN"
)

// Client is a connection to the agent. Safe for concurrent use.
type Client struct {
	conn   *grpc.ClientConn
	socket string

	Admin       agentv1.AdminServiceClient
	Apps        agentv1.AppServiceClient
	Sessions    agentv1.SessionServiceClient
	Connections agentv1.ConnectionServiceClient
	Credentials agentv1.CredentialServiceClient
	Records     agentv1.RecordServiceClient
	Plugins     agentv1.PluginServiceClient
	Directory   agentv1.DirectoryServiceClient
	Events      agentv1.EventServiceClient
	Webhooks    agentv1.WebhookServiceClient
	Sync        agentv1.SyncServiceClient
}

type options struct {
	socket   string
	token    string
	tokenSet bool
	wait     time.Duration
	dialOpts []grpc.DialOption
}

// Option configures Dial.
type Option func(*options)

// WithSocket connects to this socket (or named pipe) instead of
// $MEDRELAY_SOCKET or the OS default.
func WithSocket(path string) Option { return func(o *options) { o.socket = path } }

// WithAppToken authenticates as an app. Without it (and without
// $MEDRELAY_APP_TOKEN) the caller is an administrator if its OS user is one.
func WithAppToken(token string) Option {
	return func(o *options) { o.token, o.tokenSet = token, true }
}

// WithStartupWait sets how long Dial keeps trying while an agent that was
// just started is still coming up (default 3s; 0 tries once).
func WithStartupWait(d time.Duration) Option { return func(o *options) { o.wait = d } }

// WithDialOptions adds gRPC dial options (interceptors, tracing).
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(o *options) { o.dialOpts = append(o.dialOpts, opts...) }
}

// Dial connects to the agent. It returns ErrAgentNotRunning (wrapped, with
// the socket path) when nothing answers on the socket within the startup
// wait.
func Dial(ctx context.Context, opts ...Option) (*Client, error) {
	o := options{socket: os.Getenv(EnvSocket), wait: 3 * time.Second}
	for _, f := range opts {
		f(&o)
	}
	if o.socket == "" {
		o.socket = DefaultSocket
	}
	if !o.tokenSet {
		o.token = os.Getenv(EnvAppToken)
	}
	if err := waitForSocket(ctx, o.socket, o.wait); err != nil {
		return nil, err
	}
	dialOpts := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			return dialSocket(ctx, o.socket)
		}),
		grpc.WithChainUnaryInterceptor(unaryErrors(o.socket)),
		grpc.WithChainStreamInterceptor(streamErrors(o.socket)),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16 << 20)),
		grpc.WithInitialWindowSize(4 << 20), grpc.WithInitialConnWindowSize(4 << 20),
		grpc.WithReadBufferSize(256 << 10), grpc.WithWriteBufferSize(256 << 10),
	}
	if o.token != "" {
		dialOpts = append(dialOpts, grpc.WithPerRPCCredentials(tokenCreds(o.token)))
	}
	dialOpts = append(dialOpts, o.dialOpts...)
	// The target is never resolved: the context dialer ignores it.
	conn, err := grpc.NewClient("passthrough:///medrelay", dialOpts...)
	if err != nil {
		return nil, fmt.Errorf("medrelay client: %w", err)
	}
	return &Client{
		conn:   conn,
		socket: o.socket,
		Admin:  agentv1.NewAdminServiceClient(conn),
		Apps:   agentv1.NewAppServiceClient(conn),

		Sessions:    agentv1.NewSessionServiceClient(conn),
		Connections: agentv1.NewConnectionServiceClient(conn),
		Credentials: agentv1.NewCredentialServiceClient(conn),
		Records:     agentv1.NewRecordServiceClient(conn),
		Plugins:     agentv1.NewPluginServiceClient(conn),
		Directory:   agentv1.NewDirectoryServiceClient(conn),
		Events:      agentv1.NewEventServiceClient(conn),
		Webhooks:    agentv1.NewWebhookServiceClient(conn),
		Sync:        agentv1.NewSyncServiceClient(conn),
	}, nil
}

// Conn is the underlying gRPC connection (for services this package has no
// field for yet, health checks, reflection).
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// Socket is the socket path the client connects to.
func (c *Client) Socket() string { return c.socket }

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// waitForSocket tries to connect until the agent answers or wait passes:
// a missing socket or a refused connection mean "not up (yet)", and so does
// an attempt that timed out (an agent too busy to accept, or the caller's
// deadline passing mid-dial); anything else (permission denied) is reported
// at once.
func waitForSocket(ctx context.Context, socket string, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	var timedOut error // the last attempt's timeout, if it timed out
	for {
		dctx, cancel := context.WithTimeout(ctx, time.Second)
		conn, err := dialSocket(dctx, socket)
		cancel()
		if err == nil {
			conn.Close()
			return nil
		}
		// net's "i/o timeout" matches context.DeadlineExceeded.
		timedOut = nil
		if errors.Is(err, context.DeadlineExceeded) {
			timedOut = err
		}
		if !notRunning(err) && timedOut == nil {
			if errors.Is(err, os.ErrPermission) || errors.Is(err, syscall.EACCES) {
				return fmt.Errorf("%w: cannot open %s: your user may not access the agent's socket (ask an administrator to add you to its group)", ErrPermissionDenied, socket)
			}
			return fmt.Errorf("medrelay client: connect %s: %w", socket, err)
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return &notRunningError{socket: socket, timedOut: timedOut}
		}
		select {
		case <-ctx.Done():
			return &notRunningError{socket: socket, timedOut: timedOut}
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// notRunningError is ErrAgentNotRunning with the socket that was tried.
type notRunningError struct {
	socket string
	// timedOut is the dial's error when the last attempt to connect timed
	// out rather than finding no socket or no listener.
	timedOut error
}

func (e *notRunningError) Error() string {
	if e.timedOut != nil {
		return fmt.Sprintf("the medrelay agent is not running or not answering (connecting to %s timed out)", e.socket)
	}
	return fmt.Sprintf("the medrelay agent is not running (nothing answers on %s)", e.socket)
}
func (e *notRunningError) Is(t error) bool { return t == ErrAgentNotRunning }

// Unwrap keeps a timeout visible to errors.Is(err, context.DeadlineExceeded).
func (e *notRunningError) Unwrap() error { return e.timedOut }

type tokenCreds string

func (t tokenCreds) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(t)}, nil
}

// RequireTransportSecurity is false: the local socket is protected by the
// kernel (file permissions and peer credentials), not by TLS.
func (tokenCreds) RequireTransportSecurity() bool { return false }
