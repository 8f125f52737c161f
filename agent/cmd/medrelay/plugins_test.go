package main

// plugins list|verify against a real host API serving a real plugin host
// with a real plugin process (the skeleton) and a broken one.

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/medrelay/medrelay/internal/api"
	"github.com/medrelay/medrelay/internal/apps"
	"github.com/medrelay/medrelay/internal/audit"
	"github.com/medrelay/medrelay/internal/ipc"
	"github.com/medrelay/medrelay/internal/pluginhost"
	"github.com/medrelay/medrelay/internal/store"
	agentv1 "github.com/medrelay/medrelay/proto/gen/medrelay/agent/v1"
)

func startPluginsAPI(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "plugins")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "medrelay-plugin-skeleton")
	if out, err := exec.Command("go", "build", "-ldflags", "-X main.version=3.1.4", "-o", bin, "../../../plugins/skeleton").CombinedOutput(); err != nil {
		t.Fatalf("build skeleton: %v\n%s", err, out)
	}
	if out, err := exec.Command(bin, "manifest", "--write").CombinedOutput(); err != nil {
		t.Fatalf("manifest: %v\n%s", err, out)
	}
	// A manifest whose binary is missing: reported, not hidden.
	_ = os.WriteFile(filepath.Join(dir, "medrelay-plugin-ghost.json"), []byte(`{"name":"ghost","version":"1","sha256":"`+strings.Repeat("0", 64)+`"}`), 0o644)

	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	host := pluginhost.New(pluginhost.Options{Dir: dir, StateDir: t.TempDir(), Logger: log})
	if err := host.Start(ctx); err != nil {
		t.Fatal(err)
	}
	db, err := store.Open(ctx, store.Options{InMemory: true, Key: bytes.Repeat([]byte{5}, 32), GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	al := audit.New(db, log)
	srv := api.New(api.Deps{Logger: log, Apps: apps.NewRegistry(db), Audit: al, Plugins: host,
		Status: func(context.Context) (*agentv1.GetStatusResponse, error) { return &agentv1.GetStatusResponse{}, nil }})
	sock := filepath.Join(t.TempDir(), "a.sock")
	l, err := ipc.Listen(sock, ipc.ListenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	t.Cleanup(func() {
		srv.Stop(time.Second)
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = host.Stop(sctx)
		al.Close()
		db.Close()
	})
	return sock
}

func TestPluginsListAndVerify(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a plugin")
	}
	sock := startPluginsAPI(t)

	out, _, err := run(t, sock, "plugins", "list")
	if err != nil {
		t.Fatalf("list: %v", err)
	}
	for _, want := range []string{"NAME", "skeleton", "3.1.4", "Example Health", "running", "search,read", "ghost", "failed", "names binary medrelay-plugin-ghost"} {
		if !strings.Contains(out, want) {
			t.Errorf("list output lacks %q:\n%s", want, out)
		}
	}

	out, _, err = run(t, sock, "plugins", "list", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var resp struct {
		Plugins []struct {
			Name  string `json:"name"`
			State string `json:"state"`
			Pid   string `json:"pid"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal([]byte(out), &resp); err != nil || len(resp.Plugins) != 2 || resp.Plugins[1].State != "STATE_RUNNING" || resp.Plugins[1].Pid == "" {
		t.Fatalf("json: %v %s", err, out)
	}

	out, _, err = run(t, sock, "plugins", "verify", "skeleton")
	if err != nil || !strings.Contains(out, "skeleton: ok") || !strings.Contains(out, "sha256 ok") || !strings.Contains(out, "describe ok") {
		t.Fatalf("verify skeleton: %v\n%s", err, out)
	}
	out, _, err = run(t, sock, "plugins", "verify")
	if err == nil || !strings.Contains(out, "ghost: FAILED") {
		t.Fatalf("verify all: %v\n%s", err, out)
	}
}

// `plugins list --long` prints what it promises: each failed plugin's
// whole last error and its last stderr lines.
func TestPrintPluginsLongShowsStderr(t *testing.T) {
	var b strings.Builder
	err := printPlugins(&b, []*agentv1.Plugin{{
		Name: "crashy", Path: "/usr/lib/medrelay/plugins/crashy", State: agentv1.Plugin_STATE_FAILED,
		LastError:  "exited: status 2\nrestarted 5 times in 60s",
		LastStderr: []string{"panic: no config", "goroutine 1 [running]:"},
	}}, true)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"crashy (/usr/lib/medrelay/plugins/crashy):", "  exited: status 2\n  restarted 5 times", "last stderr lines:", "    panic: no config", "    goroutine 1 [running]:"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("--long output lacks %q:\n%s", want, b.String())
		}
	}
}
