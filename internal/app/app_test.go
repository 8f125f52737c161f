//go:build unix

package app_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/medrelay/medrelay/agent/client"
	"github.com/medrelay/medrelay/internal/app"
	"github.com/medrelay/medrelay/internal/config"
	"github.com/medrelay/medrelay/internal/home"
	agentv1 "github.com/medrelay/medrelay/proto/gen/medrelay/agent/v1"
)

// agent is an agent running in this process for one test.
type agent struct {
	layout home.Layout
	info   app.Info
	stop   func() error
}

func startAgent(t *testing.T, mutate ...func(*config.Config)) *agent {
	t.Helper()
	return startAgentWith(t, agentOptions{mutate: mutate})
}

type agentOptions struct {
	// layout reuses an agent's home (restart); nil makes a new one.
	layout    *home.Layout
	pluginDir string
	mutate    []func(*config.Config)
	// logs receives the agent's log (default: discarded).
	logs io.Writer
}

func startAgentWith(t *testing.T, o agentOptions) *agent {
	t.Helper()
	var layout home.Layout
	if o.layout != nil {
		layout = *o.layout
	} else {
		var err error
		layout, err = home.ForHome(filepath.Join(t.TempDir(), "home"))
		if err != nil {
			t.Fatal(err)
		}
	}
	if o.pluginDir != "" {
		layout.PluginDir = o.pluginDir
	}
	mutate := o.mutate
	logOut := o.logs
	if logOut == nil {
		logOut = io.Discard
	}
	cfg := config.Default()
	cfg.HTTPAddr, cfg.AdminAddr = "127.0.0.1:0", "127.0.0.1:0"
	for _, m := range mutate {
		m(&cfg)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan app.Info, 1)
	done := make(chan error, 1)
	go func() {
		done <- app.Run(ctx, app.Options{
			Layout: layout, Config: cfg,
			Logger: slog.New(slog.NewTextHandler(logOut, &slog.HandlerOptions{Level: slog.LevelDebug})),
			Ready:  func(i app.Info) { ready <- i },
		})
	}()
	a := &agent{layout: layout}
	select {
	case a.info = <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("agent did not start: %v", err)
	}
	stopped := false
	a.stop = func() error {
		if stopped {
			return nil
		}
		stopped = true
		cancel()
		return <-done
	}
	t.Cleanup(func() {
		if err := a.stop(); err != nil {
			t.Errorf("agent stop: %v", err)
		}
	})
	return a
}

func (a *agent) dial(t *testing.T, opts ...client.Option) *client.Client {
	t.Helper()
	c, err := client.Dial(context.Background(), append([]client.Option{client.WithSocket(a.layout.Socket), client.WithAppToken("")}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestFilesHaveTheirModes(t *testing.T) {
	a := startAgent(t)
	for _, c := range []struct {
		path string
		mode os.FileMode
	}{
		{a.layout.Home, 0o750},
		{a.layout.StoreDir, 0o700},
		{a.layout.KeyFile, 0o600},
		{a.layout.Socket, 0o660},
	} {
		fi, err := os.Stat(c.path)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != c.mode {
			t.Errorf("%s: mode %04o, want %04o", c.path, got, c.mode)
		}
	}
	fi, _ := os.Stat(a.layout.Socket)
	if fi.Mode().Type() != os.ModeSocket {
		t.Errorf("%s is not a socket", a.layout.Socket)
	}
}

// memory_limit becomes the runtime's soft limit (GOMEMLIMIT, when set,
// wins: the test environment must not set it).
func TestMemoryLimitIsApplied(t *testing.T) {
	if os.Getenv("GOMEMLIMIT") != "" {
		t.Skip("GOMEMLIMIT is set in the environment and wins over memory_limit")
	}
	old := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(old) })
	startAgent(t, func(c *config.Config) { c.MemoryLimit = 3 << 30 })
	if got := debug.SetMemoryLimit(-1); got != 3<<30 {
		t.Fatalf("soft memory limit %d, want %d", got, 3<<30)
	}
}

func TestStatusReportsBoundAddresses(t *testing.T) {
	a := startAgent(t)
	st, err := a.dial(t).Admin.GetStatus(context.Background(), &agentv1.GetStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	l := st.GetListeners()
	if l.GetHttpAddr() != a.info.HTTPAddr || strings.HasSuffix(l.GetHttpAddr(), ":0") {
		t.Errorf("http addr %q, agent bound %q", l.GetHttpAddr(), a.info.HTTPAddr)
	}
	if l.GetAdminAddr() == "" || strings.HasSuffix(l.GetAdminAddr(), ":0") {
		t.Errorf("admin addr %q", l.GetAdminAddr())
	}
	if l.GetPublicUrl() != "http://"+a.info.HTTPAddr {
		t.Errorf("public url %q", l.GetPublicUrl())
	}
	if !st.GetStore().GetEncrypted() || st.GetStore().GetPath() != a.layout.StoreDir {
		t.Errorf("store %+v", st.GetStore())
	}
	if st.GetCaller().GetKind() != agentv1.Caller_KIND_ADMIN || st.GetCaller().GetUid() != int64(os.Geteuid()) {
		t.Errorf("caller %+v: the agent's own user is an administrator", st.GetCaller())
	}
	// Health service answers for grpcurl and orchestrators.
	h, err := healthpb.NewHealthClient(a.dial(t).Conn()).Check(context.Background(), &healthpb.HealthCheckRequest{})
	if err != nil || h.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health: %v %v", h, err)
	}
}

func TestAppsCannotCallAdministratorMethods(t *testing.T) {
	ctx := context.Background()
	a := startAgent(t)
	admin := a.dial(t)
	created, err := admin.Apps.CreateApp(ctx, &agentv1.CreateAppRequest{Name: "billing"})
	if err != nil {
		t.Fatal(err)
	}
	app := a.dial(t, client.WithAppToken(created.GetToken()))

	// An app may ask for status and is told it is the app.
	st, err := app.Admin.GetStatus(ctx, &agentv1.GetStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.GetCaller().GetKind() != agentv1.Caller_KIND_APP || st.GetCaller().GetAppName() != "billing" {
		t.Fatalf("caller %+v", st.GetCaller())
	}
	// But not administer, even though its OS user is an administrator: the
	// token decides.
	for name, call := range map[string]func() error{
		"CreateApp": func() error { _, err := app.Apps.CreateApp(ctx, &agentv1.CreateAppRequest{Name: "x"}); return err },
		"ListApps":  func() error { _, err := app.Apps.ListApps(ctx, &agentv1.ListAppsRequest{}); return err },
		"RevokeApp": func() error { _, err := app.Apps.RevokeApp(ctx, &agentv1.RevokeAppRequest{App: "billing"}); return err },
		"ListAudit": func() error { _, err := app.Admin.ListAudit(ctx, &agentv1.ListAuditRequest{}); return err },
	} {
		err := call()
		if !errors.Is(err, client.ErrPermissionDenied) {
			t.Errorf("%s as app: %v, want PermissionDenied", name, err)
			continue
		}
		if e, _ := client.AsError(err); e.Reason != "NOT_ADMINISTRATOR" {
			t.Errorf("%s: reason %q", name, e.Reason)
		}
	}
	// The refusals are in the audit log.
	entries := auditEntries(t, admin)
	denied := 0
	for _, e := range entries {
		if e.GetOutcome() == codes.PermissionDenied.String() && e.GetCaller().GetAppName() == "billing" {
			denied++
		}
	}
	if denied != 4 {
		t.Errorf("audit shows %d refused calls of billing, want 4", denied)
	}
}

func auditEntries(t *testing.T, c *client.Client) []*agentv1.AuditEntry {
	t.Helper()
	// The audit writer is asynchronous; entries land within milliseconds.
	var out []*agentv1.AuditEntry
	for range 50 {
		resp, err := c.Admin.ListAudit(context.Background(), &agentv1.ListAuditRequest{PageSize: 1000})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.GetEntries()) > len(out) {
			out = resp.GetEntries()
		} else if len(out) > 0 {
			return out
		}
		time.Sleep(20 * time.Millisecond)
	}
	return out
}

func TestRevokedTokenStopsAtOnce(t *testing.T) {
	ctx := context.Background()
	a := startAgent(t)
	admin := a.dial(t)
	created, err := admin.Apps.CreateApp(ctx, &agentv1.CreateAppRequest{Name: "ehr-sync"})
	if err != nil {
		t.Fatal(err)
	}
	app := a.dial(t, client.WithAppToken(created.GetToken()))
	if _, err := app.Admin.GetStatus(ctx, &agentv1.GetStatusRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Apps.RevokeApp(ctx, &agentv1.RevokeAppRequest{App: "ehr-sync"}); err != nil {
		t.Fatal(err)
	}
	// Same connection, next call.
	_, err = app.Admin.GetStatus(ctx, &agentv1.GetStatusRequest{})
	if !errors.Is(err, client.ErrUnauthenticated) {
		t.Fatalf("after revoke: %v, want Unauthenticated", err)
	}
	if e, _ := client.AsError(err); e.Reason != "APP_TOKEN_INVALID" {
		t.Fatalf("reason %q", e.Reason)
	}
	// A made-up token is refused the same way.
	_, err = a.dial(t, client.WithAppToken("mrapp_made-up")).Admin.GetStatus(ctx, &agentv1.GetStatusRequest{})
	if !errors.Is(err, client.ErrUnauthenticated) {
		t.Fatalf("made-up token: %v", err)
	}
	// The name is free again, the revoked app still listed with --all.
	if _, err := admin.Apps.CreateApp(ctx, &agentv1.CreateAppRequest{Name: "ehr-sync"}); err != nil {
		t.Fatalf("name not freed: %v", err)
	}
	list, _ := admin.Apps.ListApps(ctx, &agentv1.ListAppsRequest{IncludeRevoked: true})
	if len(list.GetApps()) != 2 {
		t.Fatalf("apps with revoked: %d", len(list.GetApps()))
	}
}

func TestDomainErrorsCarryReasons(t *testing.T) {
	ctx := context.Background()
	a := startAgent(t)
	c := a.dial(t)
	if _, err := c.Apps.CreateApp(ctx, &agentv1.CreateAppRequest{Name: "dup"}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		call   func() error
		want   error
		reason string
	}{
		{func() error { _, err := c.Apps.CreateApp(ctx, &agentv1.CreateAppRequest{Name: "dup"}); return err }, client.ErrAlreadyExists, "APP_NAME_TAKEN"},
		{func() error {
			_, err := c.Apps.CreateApp(ctx, &agentv1.CreateAppRequest{Name: "no spaces"})
			return err
		}, client.ErrInvalidArgument, "APP_NAME_INVALID"},
		{func() error { _, err := c.Apps.RevokeApp(ctx, &agentv1.RevokeAppRequest{App: "ghost"}); return err }, client.ErrNotFound, "APP_NOT_FOUND"},
		{func() error {
			_, err := c.Apps.ListApps(ctx, &agentv1.ListAppsRequest{PageToken: "garbage"})
			return err
		}, client.ErrInvalidArgument, "PAGE_TOKEN_INVALID"},
	} {
		err := tc.call()
		e, ok := client.AsError(err)
		if !errors.Is(err, tc.want) || !ok || e.Reason != tc.reason {
			t.Errorf("got %v (reason %q), want %v with %s", err, e.Reason, tc.want, tc.reason)
		}
	}
}

func TestAppsPage(t *testing.T) {
	ctx := context.Background()
	a := startAgent(t)
	c := a.dial(t)
	for i := range 7 {
		if _, err := c.Apps.CreateApp(ctx, &agentv1.CreateAppRequest{Name: "app" + strconv.Itoa(i)}); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[string]bool{}
	tok := ""
	pages := 0
	for {
		resp, err := c.Apps.ListApps(ctx, &agentv1.ListAppsRequest{PageSize: 3, PageToken: tok})
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, ap := range resp.GetApps() {
			if seen[ap.GetId()] {
				t.Fatalf("app %s on two pages", ap.GetId())
			}
			seen[ap.GetId()] = true
		}
		if tok = resp.GetNextPageToken(); tok == "" {
			break
		}
	}
	if len(seen) != 7 || pages != 3 {
		t.Fatalf("saw %d apps on %d pages", len(seen), pages)
	}
}

// A process of another user, with access to the socket but neither an
// administrator nor holding an app token, is refused with a reason.
// This needs root (to run the client as nobody); the test re-executes its
// own binary as uid/gid 65534.
func TestOtherUserWithoutTokenIsRefused(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a client as another user")
	}
	nobody, err := user.LookupId("65534")
	if err != nil {
		t.Skip("no uid 65534 on this machine")
	}
	g, err := user.LookupGroupId("65534")
	if err != nil {
		t.Skip("no gid 65534 on this machine")
	}
	a := startAgent(t, func(c *config.Config) { c.SocketGroup = g.Name })
	// nobody must be able to reach the socket through the temp dirs above it.
	for d := filepath.Dir(a.layout.Home); d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		os.Chmod(d, 0o755)
	}

	// The test binary lives in a directory only root can read: copy it.
	exe := filepath.Join(filepath.Dir(a.layout.Home), "client.test")
	if b, err := os.ReadFile(os.Args[0]); err != nil || os.WriteFile(exe, b, 0o755) != nil {
		t.Fatalf("copy test binary: %v", err)
	}
	run := func(token string) (string, error) {
		cmd := exec.Command(exe, "-test.run=^TestHelperClient$")
		cmd.Env = append(os.Environ(), "MEDRELAY_TEST_CLIENT=1", client.EnvSocket+"="+a.layout.Socket, client.EnvAppToken+"="+token)
		uid, _ := strconv.Atoi(nobody.Uid)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: 65534}}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, _ := run("")
	if !strings.Contains(out, "RESULT PermissionDenied NO_IDENTITY") || !strings.Contains(out, "uid 65534") {
		t.Fatalf("nobody without token: %s", out)
	}
	created, err := a.dial(t).Apps.CreateApp(context.Background(), &agentv1.CreateAppRequest{Name: "nobodys-app"})
	if err != nil {
		t.Fatal(err)
	}
	out, _ = run(created.GetToken())
	if !strings.Contains(out, "RESULT OK app nobodys-app") {
		t.Fatalf("nobody with a token: %s", out)
	}
}

// TestHelperClient is the client half of TestOtherUserWithoutTokenIsRefused.
func TestHelperClient(t *testing.T) {
	if os.Getenv("MEDRELAY_TEST_CLIENT") != "1" {
		t.Skip("helper process only")
	}
	c, err := client.Dial(context.Background())
	if err != nil {
		os.Stdout.WriteString("RESULT dial " + err.Error() + "\n")
		return
	}
	st, err := c.Admin.GetStatus(context.Background(), &agentv1.GetStatusRequest{})
	if err != nil {
		e, _ := client.AsError(err)
		os.Stdout.WriteString("RESULT " + e.Code.String() + " " + e.Reason + " " + e.Message + "\n")
		return
	}
	os.Stdout.WriteString("RESULT OK app " + st.GetCaller().GetAppName() + "\n")
}
