// Package goplugin is the plugin side of HashiCorp go-plugin's wire protocol
// (gRPC flavour), written here so that plugins built with the medrelay SDK
// link nothing of go-plugin: its one Go package holds the host side too
// (process launching, reattach, the client), which a plugin must not carry.
//
// What a host built on go-plugin expects from a plugin process, and what this
// package does:
//   - the magic cookie in the environment, else the binary was run by a person;
//   - the app protocol version chosen from PLUGIN_PROTOCOL_VERSIONS;
//   - a listener (unix socket, or loopback TCP within PLUGIN_MIN_PORT..MAX on
//     Windows), mTLS with a fresh self-signed certificate when the host sent
//     PLUGIN_CLIENT_CERT (AutoMTLS);
//   - one line on stdout, "1|<app version>|<network>|<addr>|grpc|<cert>", and
//     nothing else on stdout, ever;
//   - gRPC services: grpc.health.v1 ("plugin" SERVING), plugin.GRPCBroker,
//     plugin.GRPCController (Shutdown) and plugin.GRPCStdio.
package goplugin

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/types/known/emptypb"
)

// CoreProtocolVersion is go-plugin's own protocol version (the handshake's
// first field).
const CoreProtocolVersion = 1

// ErrNotLaunchedByHost is returned when the magic cookie is missing: a person
// ran the binary.
var ErrNotLaunchedByHost = errors.New("not launched by a plugin host")

// ErrNoCommonVersion is returned when the host speaks none of our protocol
// versions.
var ErrNoCommonVersion = errors.New("no protocol version in common with the host")

// Config describes the plugin.
type Config struct {
	MagicCookieKey   string
	MagicCookieValue string
	// Versions this plugin speaks; the highest one the host also speaks wins.
	Versions []int
	// Register adds the application's services. The broker lets them dial
	// services the host offers.
	Register func(s *grpc.Server, b *Broker, version int)
	// ServerOptions are added to the gRPC server (message sizes, interceptors).
	ServerOptions []grpc.ServerOption
	// Stdout receives the handshake line; default os.Stdout.
	Stdout io.Writer
	// Getenv reads the environment; default os.Getenv.
	Getenv func(string) string
	// Ready, when set, is called after the handshake line is written.
	Ready func()
}

// Negotiate picks the protocol version: the highest of ours that the host
// lists. A host that lists nothing gets our highest (go-plugin does the same).
func Negotiate(ours []int, hostList string) (int, error) {
	sorted := slices.Clone(ours)
	slices.Sort(sorted)
	slices.Reverse(sorted)
	if len(sorted) == 0 {
		return 0, ErrNoCommonVersion
	}
	if strings.TrimSpace(hostList) == "" {
		return sorted[0], nil
	}
	var host []int
	for _, s := range strings.Split(hostList, ",") {
		if v, err := strconv.Atoi(strings.TrimSpace(s)); err == nil {
			host = append(host, v)
		}
	}
	for _, v := range sorted {
		if slices.Contains(host, v) {
			return v, nil
		}
	}
	return 0, fmt.Errorf("%w: plugin speaks %v, host speaks %q", ErrNoCommonVersion, ours, hostList)
}

// Serve runs the plugin's gRPC server until the host shuts it down (or the
// connection's context ends). It returns nil after a Shutdown from the host.
func Serve(ctx context.Context, cfg Config) error {
	getenv := cfg.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	stdout := cfg.Stdout
	if stdout == nil {
		stdout = os.Stdout
	}
	if cfg.MagicCookieKey == "" || getenv(cfg.MagicCookieKey) != cfg.MagicCookieValue {
		return ErrNotLaunchedByHost
	}
	version, err := Negotiate(cfg.Versions, getenv("PLUGIN_PROTOCOL_VERSIONS"))
	if err != nil {
		return err
	}
	if getenv("PLUGIN_MULTIPLEX_GRPC") == "true" {
		// Multiplexing changes the broker's transport; our hosts never ask
		// for it, so fail loudly rather than misbehave.
		return errors.New("go-plugin broker multiplexing is not supported by the medrelay SDK")
	}

	ln, err := listen(getenv)
	if err != nil {
		return fmt.Errorf("plugin listener: %w", err)
	}
	defer ln.Close()

	var tlsCfg *tls.Config
	var certField string
	if pemCert := getenv("PLUGIN_CLIENT_CERT"); pemCert != "" {
		tlsCfg, certField, err = autoMTLS([]byte(pemCert))
		if err != nil {
			return fmt.Errorf("plugin mTLS: %w", err)
		}
	}

	opts := slices.Clone(cfg.ServerOptions)
	if tlsCfg != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(tlsCfg)))
	}
	srv := grpc.NewServer(opts...)

	hs := health.NewServer()
	hs.SetServingStatus("plugin", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(srv, hs)

	broker := newBroker(tlsCfg)
	srv.RegisterService(&brokerServiceDesc, broker)

	ctl := &controller{stop: make(chan struct{})}
	srv.RegisterService(&controllerServiceDesc, ctl)
	srv.RegisterService(&stdioServiceDesc, stdioServer{})

	if cfg.Register != nil {
		cfg.Register(srv, broker, version)
	}

	line := fmt.Sprintf("%d|%d|%s|%s|grpc|%s\n", CoreProtocolVersion, version, ln.Addr().Network(), ln.Addr().String(), certField)
	if _, err := io.WriteString(stdout, line); err != nil {
		return fmt.Errorf("handshake: %w", err)
	}
	if f, ok := stdout.(*os.File); ok {
		_ = f.Sync()
	}
	if cfg.Ready != nil {
		cfg.Ready()
	}

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	select {
	case <-ctl.stop:
		// go-plugin's own server stops hard on Shutdown: the host has
		// already finished its calls (or gave up on them).
		srv.Stop()
		<-serveErr
		broker.close()
		return nil
	case <-ctx.Done():
		srv.Stop()
		<-serveErr
		broker.close()
		return ctx.Err()
	case err := <-serveErr:
		broker.close()
		return err
	}
}

func listen(getenv func(string) string) (net.Listener, error) {
	if runtime.GOOS == "windows" {
		lo, _ := strconv.Atoi(getenv("PLUGIN_MIN_PORT"))
		hi, _ := strconv.Atoi(getenv("PLUGIN_MAX_PORT"))
		if lo > hi {
			return nil, fmt.Errorf("PLUGIN_MIN_PORT %d > PLUGIN_MAX_PORT %d", lo, hi)
		}
		for p := lo; p <= hi; p++ {
			if l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p)); err == nil {
				return l, nil
			}
		}
		return nil, errors.New("no free loopback port in PLUGIN_MIN_PORT..PLUGIN_MAX_PORT")
	}
	dir := getenv("PLUGIN_UNIX_SOCKET_DIR")
	if dir == "" {
		dir = os.TempDir()
	}
	// A unique name: create a temp file for the name, then replace it by the
	// socket (what go-plugin does).
	f, err := os.CreateTemp(dir, "medrelay-plugin")
	if err != nil {
		return nil, err
	}
	path := f.Name()
	f.Close()
	if err := os.Remove(path); err != nil {
		return nil, err
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	// Only our own user may connect (mTLS is on top of that).
	_ = os.Chmod(path, 0o600)
	return &removeOnClose{Listener: l, path: path}, nil
}

type removeOnClose struct {
	net.Listener
	path string
	once sync.Once
}

func (l *removeOnClose) Close() error {
	err := l.Listener.Close()
	l.once.Do(func() { _ = os.Remove(l.path) })
	return err
}

// autoMTLS builds the server side of go-plugin's AutoMTLS: trust exactly the
// host's certificate, present a fresh one of ours, and return ours for the
// handshake line (base64 DER without padding).
func autoMTLS(hostPEM []byte) (*tls.Config, string, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(hostPEM) {
		return nil, "", errors.New("PLUGIN_CLIENT_CERT holds no PEM certificate")
	}
	cert, err := selfSigned()
	if err != nil {
		return nil, "", err
	}
	cfg := &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		RootCAs:      pool,
		MinVersion:   tls.VersionTLS12,
		ServerName:   "localhost",
	}
	return cfg, base64.RawStdEncoding.EncodeToString(cert.Certificate[0]), nil
}

func selfSigned() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	sn, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: "localhost", Organization: []string{"medrelay plugin"}},
		DNSNames:              []string{"localhost"},
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageKeyAgreement | x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		SerialNumber:          sn,
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(10 * 365 * 24 * time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// controller answers plugin.GRPCController/Shutdown.
type controller struct {
	once sync.Once
	stop chan struct{}
}

func (c *controller) shutdown() { c.once.Do(func() { close(c.stop) }) }

var controllerServiceDesc = grpc.ServiceDesc{
	ServiceName: "plugin.GRPCController",
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Shutdown",
		Handler: func(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			// plugin.Empty and google.protobuf.Empty are the same on the wire.
			if err := dec(&emptypb.Empty{}); err != nil {
				return nil, err
			}
			// Answer first, then stop: Stop would cut this very call.
			go func() {
				time.Sleep(10 * time.Millisecond)
				srv.(*controller).shutdown()
			}()
			return &emptypb.Empty{}, nil
		},
	}},
	Metadata: "plugin/grpc_controller.proto",
}

// stdioServer answers plugin.GRPCStdio/StreamStdio with a stream that never
// carries data: after the handshake os.Stdout is pointed at stderr, and the
// host reads stderr directly from the process.
type stdioServer struct{}

var stdioServiceDesc = grpc.ServiceDesc{
	ServiceName: "plugin.GRPCStdio",
	HandlerType: (*any)(nil),
	Streams: []grpc.StreamDesc{{
		StreamName:    "StreamStdio",
		ServerStreams: true,
		Handler: func(_ any, stream grpc.ServerStream) error {
			if err := stream.RecvMsg(&emptypb.Empty{}); err != nil {
				return err
			}
			<-stream.Context().Done()
			return nil
		},
	}},
	Metadata: "plugin/grpc_stdio.proto",
}
