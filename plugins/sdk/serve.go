package sdk

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/medrelay/medrelay/plugins/sdk/internal/goplugin"
	pluginv1 "github.com/medrelay/medrelay/proto/gen/medrelay/plugin/v1"
)

// Handshake values shared with the agent. A binary started without them was
// started by a person, and says so.
const (
	MagicCookieKey   = "MEDRELAY_PLUGIN_COOKIE"
	MagicCookieValue = "d3f1c5e0-medrelay-source-plugin"
)

// Manifest is the file the agent reads beside each plugin binary
// (<binary>.json): the binary's checksum is verified before every start.
type Manifest struct {
	Name             string `json:"name"`
	Version          string `json:"version"`
	Binary           string `json:"binary"`
	SHA256           string `json:"sha256"`
	ProtocolVersions []int  `json:"protocol_versions"`
	SDKVersion       string `json:"sdk_version"`
}

// ServeOption configures Serve.
type ServeOption func(*serveConfig)

type serveConfig struct {
	level slog.Leveler
}

// WithLogLevel sets the lowest level the plugin logs (default info).
func WithLogLevel(l slog.Leveler) ServeOption { return func(c *serveConfig) { c.level = l } }

// Logger is the plugin's logger: records go to the agent's log with the
// plugin's name (stderr until the agent connects). Use it, or the Call's
// Logger, never fmt.Print: stdout belongs to the handshake.
var Logger = slog.New(slog.DiscardHandler)

// Serve runs src as a medrelay source plugin and never returns.
//
// Started by the agent it serves the plugin protocol until the agent stops
// it, and exits when the agent dies. Started by a person it answers a few
// commands instead:
//
//	medrelay-plugin-NAME manifest           print the manifest JSON (name, version, sha256)
//	medrelay-plugin-NAME manifest --write   write it beside the binary as <binary>.json
//	medrelay-plugin-NAME describe           print what Describe returns
func Serve(src Source, opts ...ServeOption) {
	os.Exit(serve(src, os.Args[1:], os.Stdout, os.Stderr, opts...))
}

func serve(src Source, args []string, stdout, stderr io.Writer, opts ...ServeOption) int {
	cfg := serveConfig{level: slog.LevelInfo}
	for _, o := range opts {
		o(&cfg)
	}
	if os.Getenv(MagicCookieKey) != MagicCookieValue {
		return command(src, args, stdout, stderr)
	}
	watchParent()

	lh := newLogHandler(stderr, cfg.level)
	log := slog.New(lh)
	Logger = log
	srv := newServer(src, log)
	if err := srv.start(context.Background()); err != nil {
		// Keep running: the agent asks Describe and gets this reason, which
		// beats a process that vanished.
		log.Error("plugin failed at start", "err", err.Error())
	}
	srv.onHost = lh.setHost

	err := goplugin.Serve(context.Background(), goplugin.Config{
		MagicCookieKey:   MagicCookieKey,
		MagicCookieValue: MagicCookieValue,
		Versions:         ProtocolVersions,
		ServerOptions: []grpc.ServerOption{
			grpc.MaxRecvMsgSize(16 << 20),
			// Bulk files stream in 1 MiB messages over a local socket.
			grpc.InitialWindowSize(16 << 20),
			grpc.InitialConnWindowSize(16 << 20),
			grpc.WriteBufferSize(1 << 20),
			grpc.ReadBufferSize(64 << 10),
			grpc.ChainUnaryInterceptor(recoverUnary(log)),
			grpc.ChainStreamInterceptor(recoverStream(log)),
		},
		Register: func(s *grpc.Server, b *goplugin.Broker, _ int) {
			srv.broker = b
			pluginv1.RegisterSourceServiceServer(s, srv)
		},
		Ready: func() {
			// Anything printed from here on must not reach the agent's
			// handshake reader: send it to stderr.
			os.Stdout = os.Stderr
		},
	})
	if err != nil {
		fmt.Fprintf(stderr, "medrelay plugin: %v\n", err)
		return 1
	}
	return 0
}

func recoverUnary(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (resp any, err error) {
		defer func() {
			if r := recover(); r != nil {
				err = panicStatus(log, info.FullMethod, r)
			}
		}()
		return h(ctx, req)
	}
}

func recoverStream(log *slog.Logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) (err error) {
		defer func() {
			if r := recover(); r != nil {
				err = panicStatus(log, info.FullMethod, r)
			}
		}()
		return h(srv, ss)
	}
}

// panicStatus keeps the plugin alive after a panic in one call: the call
// fails, the stack goes to the log, other calls go on.
func panicStatus(log *slog.Logger, method string, r any) error {
	log.Error("panic in plugin call", "method", method, "panic", fmt.Sprint(r), "stack", trimStack(debug.Stack()))
	return withInfo(13 /* codes.Internal */, "PLUGIN_PANIC", fmt.Sprintf("plugin panicked in %s: %v", method, r), 0)
}

func command(src Source, args []string, stdout, stderr io.Writer) int {
	sub := ""
	if len(args) > 0 {
		sub = args[0]
	}
	switch sub {
	case "manifest":
		m, err := buildManifest(src)
		if err != nil {
			fmt.Fprintf(stderr, "manifest: %v\n", err)
			return 1
		}
		b, _ := json.MarshalIndent(m, "", "  ")
		b = append(b, '\n')
		if len(args) > 1 && (args[1] == "--write" || args[1] == "-w") {
			exe, _ := executable()
			path := exe + ".json"
			if err := os.WriteFile(path, b, 0o644); err != nil {
				fmt.Fprintf(stderr, "manifest: %v\n", err)
				return 1
			}
			fmt.Fprintf(stderr, "wrote %s\n", path)
			return 0
		}
		_, _ = stdout.Write(b)
		return 0
	case "describe":
		srv := newServer(src, slog.New(slog.DiscardHandler))
		if err := srv.start(context.Background()); err != nil {
			fmt.Fprintf(stderr, "describe: %v\n", err)
			return 1
		}
		b, _ := protojson.MarshalOptions{Multiline: true, Indent: "  ", UseProtoNames: true}.Marshal(describeProto(srv.desc, srv.capabilities()))
		fmt.Fprintln(stdout, string(b))
		return 0
	}
	name := filepath.Base(os.Args[0])
	fmt.Fprintf(stderr, "%s is a medrelay source plugin: the medrelay agent starts it.\n\n"+
		"Install it into the agent's plugin directory with its manifest:\n"+
		"  %s manifest --write     # writes %s.json (name, version, sha256)\n"+
		"  %s describe             # what the plugin tells the agent\n", name, name, name, name)
	return 1
}

func executable() (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", err
	}
	return filepath.EvalSymlinks(exe)
}

func buildManifest(src Source) (Manifest, error) {
	srv := newServer(src, slog.New(slog.DiscardHandler))
	if err := srv.start(context.Background()); err != nil {
		return Manifest{}, err
	}
	exe, err := executable()
	if err != nil {
		return Manifest{}, err
	}
	sum, err := FileSHA256(exe)
	if err != nil {
		return Manifest{}, err
	}
	return Manifest{Name: srv.desc.Name, Version: srv.desc.Version, Binary: filepath.Base(exe), SHA256: sum,
		ProtocolVersions: ProtocolVersions, SDKVersion: Version}, nil
}

// FileSHA256 is the hex sha256 of a file, as manifests carry it.
func FileSHA256(path string) (string, error) {
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
