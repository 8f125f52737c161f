// Package config reads medrelay.toml and merges command-line flags over it.
// Unknown keys are errors (a misspelt key silently ignored is a 2 a.m. bug).
package config

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/dustin/go-humanize"
)

// Config is the agent's configuration. Field tags are the TOML keys.
type Config struct {
	// HTTPAddr is the public HTTP listener (OAuth callback, patient pages,
	// SMART launch, CDS Hooks, JWKS).
	HTTPAddr string `toml:"http_addr"`
	// AdminAddr serves /metrics and /healthz. Keep it on loopback.
	AdminAddr string `toml:"admin_addr"`
	// PublicURL is how browsers and EHRs reach HTTPAddr (through a reverse
	// proxy, usually). Redirect URIs are derived from it.
	PublicURL string `toml:"public_url"`
	// AdminGroup: members of this OS group are administrators on the socket.
	AdminGroup string `toml:"admin_group"`
	// SocketGroup owns the socket so that app users in it can connect.
	SocketGroup string `toml:"socket_group"`
	PluginDir   string `toml:"plugin_dir"`
	Log         Log    `toml:"log"`
	// ShutdownTimeout bounds a graceful stop.
	ShutdownTimeout Duration `toml:"shutdown_timeout"`
	TLS             TLS      `toml:"tls"`
	// WebhooksAllowPublicHTTP lets apps register plain-http webhook URLs
	// that resolve to public addresses. Off by default: payloads carry
	// patient references, so outside loopback and private networks they
	// must travel over https.
	WebhooksAllowPublicHTTP bool          `toml:"webhooks_allow_public_http"`
	PatientAccess           PatientAccess `toml:"patient_access"`
	// MemoryLimit is the Go runtime's soft memory limit (debug.SetMemoryLimit):
	// past it the garbage collector works harder instead of letting the
	// heap grow. Zero: none. GOMEMLIMIT in the environment wins.
	MemoryLimit Bytes `toml:"memory_limit"`
	// DebugPprof serves Go's profiles (/debug/pprof/) on admin_addr, for
	// finding where memory or CPU goes. Off by default; a heap profile
	// holds no record contents, but it is only for the machine's admins.
	DebugPprof bool `toml:"debug_pprof"`
}

// PatientAccess tunes patient sessions.
type PatientAccess struct {
	// SessionTTL is how long a session URL works (default 30m).
	SessionTTL Duration `toml:"session_ttl"`
	// AuthorizationTTL is how long a patient may take at the portal between
	// leaving for it and coming back to the callback (default 15m).
	AuthorizationTTL Duration `toml:"authorization_ttl"`
	// PullInterval is how often an active connection's records are pulled
	// again, incrementally (default 6h).
	PullInterval Duration `toml:"pull_interval"`
}

// Log configures the agent's own log.
type Log struct {
	Level  string `toml:"level"`  // debug, info, warn, error
	Format string `toml:"format"` // text or json
}

// TLS for the public listener; empty means plain HTTP (behind a proxy).
type TLS struct {
	CertFile string `toml:"cert_file"`
	KeyFile  string `toml:"key_file"`
}

// Duration is a time.Duration written as "10s" in TOML.
type Duration struct{ time.Duration }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// Bytes is a size written as "256MiB", "200MB" or a number of bytes.
type Bytes uint64

// UnmarshalText implements encoding.TextUnmarshaler.
func (b *Bytes) UnmarshalText(t []byte) error {
	v, err := humanize.ParseBytes(string(t))
	if err != nil {
		return fmt.Errorf("%q is not a size (like 256MiB or 200MB)", t)
	}
	*b = Bytes(v)
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (b Bytes) MarshalText() ([]byte, error) { return []byte(humanize.IBytes(uint64(b))), nil }

// Default is the embedded default configuration: everything on loopback.
func Default() Config {
	return Config{
		HTTPAddr:        "127.0.0.1:8750",
		AdminAddr:       "127.0.0.1:8751",
		Log:             Log{Level: "info", Format: "text"},
		ShutdownTimeout: Duration{8 * time.Second},
	}
}

// ErrInvalid marks a configuration that cannot be used.
var ErrInvalid = errors.New("invalid configuration")

// Load reads path over the defaults. A missing file is fine when optional.
func Load(path string, optional bool) (Config, error) {
	c := Default()
	if path == "" {
		return c, nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && optional {
		return c, nil
	}
	if err != nil {
		return c, fmt.Errorf("config: %w", err)
	}
	md, err := toml.Decode(string(b), &c)
	if err != nil {
		var perr toml.ParseError
		if errors.As(err, &perr) {
			return c, fmt.Errorf("%w: %s line %d: %s", ErrInvalid, path, perr.Position.Line, perr.Message)
		}
		return c, fmt.Errorf("%w: %s: %v", ErrInvalid, path, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		keys := make([]string, len(und))
		for i, k := range und {
			keys[i] = k.String()
		}
		return c, fmt.Errorf("%w: %s: unknown key(s) %s", ErrInvalid, path, strings.Join(keys, ", "))
	}
	return c, nil
}

// Validate checks values that Load cannot check by type.
func (c Config) Validate() error {
	for _, a := range []struct{ key, v string }{{"http_addr", c.HTTPAddr}, {"admin_addr", c.AdminAddr}} {
		if _, _, err := net.SplitHostPort(a.v); err != nil {
			return fmt.Errorf("%w: %s %q: %v", ErrInvalid, a.key, a.v, err)
		}
	}
	if host, _, _ := net.SplitHostPort(c.AdminAddr); !isLoopback(host) {
		return fmt.Errorf("%w: admin_addr %q must be a loopback address (it serves metrics without authentication)", ErrInvalid, c.AdminAddr)
	}
	if c.PublicURL != "" {
		u, err := url.Parse(c.PublicURL)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return fmt.Errorf("%w: public_url %q must be an absolute http(s) URL", ErrInvalid, c.PublicURL)
		}
		if u.Scheme == "http" && !isLoopback(u.Hostname()) {
			return fmt.Errorf("%w: public_url %q must use https unless it is loopback (OAuth codes travel through it)", ErrInvalid, c.PublicURL)
		}
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("%w: log.level %q (want debug, info, warn or error)", ErrInvalid, c.Log.Level)
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		return fmt.Errorf("%w: log.format %q (want text or json)", ErrInvalid, c.Log.Format)
	}
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		return fmt.Errorf("%w: tls.cert_file and tls.key_file go together", ErrInvalid)
	}
	return nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
