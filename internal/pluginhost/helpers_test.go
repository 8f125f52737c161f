//go:build unix

package pluginhost

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/medrelay/medrelay/internal/sandbox"
	"github.com/medrelay/medrelay/internal/sandbox/sandboxtest"
	"github.com/medrelay/medrelay/plugins/sdk/sdktest"
)

// helpers are other roles the test binary can play in a child process
// (bench_test.go adds one).
var helpers = map[string]func(){}

// binDir holds every plugin binary the tests use, built once per test
// binary (building is the slow part on two cores), each with its manifest.
var binDir string

var testPlugins = map[string]string{
	"smart":        "../../plugins/smart",
	"skeleton":     "../../plugins/skeleton",
	"stdoutplugin": "./testdata/stdoutplugin",
	"panicplugin":  "./testdata/panicplugin",
	"initpanic":    "./testdata/initpanic",
	"benchplugin":  "./testdata/benchplugin",
}

func TestMain(m *testing.M) {
	if os.Getenv(agentEnv) != "" {
		runTestAgent()
		return
	}
	if helper := os.Getenv("PLUGINHOST_TEST_HELPER"); helper != "" && helpers[helper] != nil {
		helpers[helper]()
		return
	}
	dir, err := os.MkdirTemp("", "pluginhost-bins")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := 1
	if err := buildPlugins(dir); err != nil {
		fmt.Fprintln(os.Stderr, "building test plugins:", err)
	} else {
		binDir = dir
		code = m.Run()
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

func buildPlugins(dir string) error {
	args := []string{"build", "-o", dir + string(os.PathSeparator)}
	for _, pkg := range testPlugins {
		args = append(args, pkg)
	}
	cmd := exec.Command("go", args...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%v: %s", err, out)
	}
	for name, pkg := range testPlugins {
		bin := filepath.Join(dir, BinaryPrefix+name)
		if err := os.Rename(filepath.Join(dir, filepath.Base(pkg)), bin); err != nil {
			return err
		}
		if err := writeManifest(bin, name, "1.0.0-test"); err != nil {
			return err
		}
	}
	return nil
}

// installDir is a fresh plugin directory holding the named plugins.
func installDir(t testing.TB, names ...string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "plugins")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		for _, f := range []string{BinaryPrefix + n, BinaryPrefix + n + ".json"} {
			if err := os.Link(filepath.Join(binDir, f), filepath.Join(dir, f)); err != nil {
				t.Fatal(err)
			}
		}
	}
	return dir
}

// logBuf collects the host's log; it is printed when a test fails.
type logBuf struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuf) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(b)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func testOptions(t testing.TB, dir string, tokens TokenProvider) (Options, *logBuf) {
	logs := &logBuf{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("host log:\n%s", logs.String())
		}
	})
	return Options{
		Dir: dir, StateDir: t.TempDir(), Tokens: tokens,
		Logger:         slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		HealthInterval: time.Second, BackoffInitial: 50 * time.Millisecond, BackoffMax: time.Second,
		CrashLimit: 3, CrashWindow: time.Minute, StartTimeout: 20 * time.Second,
	}, logs
}

func startHost(t testing.TB, o Options) *Host {
	t.Helper()
	h := New(o)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := h.Start(ctx); err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = h.Stop(ctx)
	})
	return h
}

// patientLogin logs a patient in to a sandbox tenant with a real SMART
// authorization-code flow and returns the token provider and patient id.
func patientLogin(t testing.TB, sb *sandbox.Sandbox, tenant string) (*patientTokens, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pt, err := sdktest.LoginPatient(ctx, sdktest.PatientLogin{FHIRBase: sb.FHIRBase(tenant), ClientID: "pluginhost-test"})
	if err != nil {
		t.Fatalf("login: %v", err)
	}
	return &patientTokens{pt: pt}, pt.Patient
}

type patientTokens struct {
	pt    *sdktest.PatientTokens
	mu    sync.Mutex
	calls int
}

func (p *patientTokens) AccessToken(ctx context.Context, id string, rejected bool) (Token, error) {
	p.mu.Lock()
	p.calls++
	p.mu.Unlock()
	tok, err := p.pt.AccessToken(ctx, id, rejected)
	return Token{AccessToken: tok.AccessToken, TokenType: tok.TokenType, Expiry: tok.Expiry}, err
}

func newSandbox(t testing.TB, opts ...sandboxtest.Option) *sandbox.Sandbox {
	return sandboxtest.Start(t, append([]sandboxtest.Option{sandboxtest.WithOpenRegistration(), sandboxtest.WithPatients(3)}, opts...)...)
}

func mustContain(t testing.TB, s string, subs ...string) {
	t.Helper()
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			t.Errorf("%q does not contain %q", s, sub)
		}
	}
}

// writeManifest writes bin's manifest the way `manifest --write` does (the
// broken test plugins cannot write their own).
func writeManifest(bin, name, version string) error {
	sum, err := fileSHA256(bin)
	if err != nil {
		return err
	}
	b, _ := json.Marshal(Manifest{Name: name, Version: version, Binary: filepath.Base(bin), SHA256: sum, ProtocolVersions: []int{1}})
	return os.WriteFile(bin+".json", b, 0o644)
}
