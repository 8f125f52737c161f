package main_test

// These tests run the real binaries the way an administrator would: start
// medrelayd, talk to it with the medrelay CLI, signal it, kill it.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/medrelay/medrelay/agent/client"
	agentv1 "github.com/medrelay/medrelay/proto/gen/medrelay/agent/v1"
)

var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "medrelayd-test-bin")
	if err != nil {
		panic(err)
	}
	binDir = dir
	build := exec.Command("go", "build", "-o", dir+"/", "github.com/medrelay/medrelay/agent/cmd/medrelayd", "github.com/medrelay/medrelay/agent/cmd/medrelay")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type daemon struct {
	cmd  *exec.Cmd
	home string
	log  *bytes.Buffer
	done chan error
}

func startDaemon(t *testing.T, home string, args ...string) *daemon {
	t.Helper()
	d := &daemon{home: home, log: &bytes.Buffer{}, done: make(chan error, 1)}
	if len(args) == 0 {
		args = []string{"--http-addr", "127.0.0.1:0"}
	}
	d.cmd = exec.Command(filepath.Join(binDir, "medrelayd"), append([]string{"run", "--home", home, "--admin-addr", "127.0.0.1:0"}, args...)...)
	d.cmd.Stderr = d.log
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.done <- d.cmd.Wait() }()
	t.Cleanup(func() {
		if d.cmd.ProcessState == nil {
			d.cmd.Process.Kill()
			<-d.done
		}
	})
	// Ready when the socket answers.
	c, err := client.Dial(context.Background(), client.WithSocket(client.HomeSocket(home)), client.WithStartupWait(20*time.Second))
	if err != nil {
		t.Fatalf("agent did not come up: %v\n%s", err, d.log)
	}
	c.Close()
	return d
}

func cli(t *testing.T, home string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "medrelay"), append([]string{"--home", home}, args...)...)
	cmd.Env = append(os.Environ(), "MEDRELAY_APP_TOKEN=")
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return string(out), code
}

var tokenRE = regexp.MustCompile(`mrapp_[A-Za-z0-9_-]{43}`)

func TestDataSurvivesRestartAndKill9(t *testing.T) {
	home := filepath.Join(t.TempDir(), "h")
	d := startDaemon(t, home)
	out, code := cli(t, home, "apps", "create", "billing")
	tok := tokenRE.FindString(out)
	if code != 0 || tok == "" {
		t.Fatalf("apps create: %d %s", code, out)
	}
	// kill -9: no chance to flush or close anything.
	d.cmd.Process.Signal(syscall.SIGKILL)
	<-d.done

	startDaemon(t, home)
	out, code = cli(t, home, "apps", "list")
	if code != 0 || !strings.Contains(out, "billing") {
		t.Fatalf("after kill -9 the app is gone: %d %s", code, out)
	}
	out, code = cli(t, home, "status", "--app-token", tok)
	if code != 0 || !strings.Contains(out, "app billing") {
		t.Fatalf("token stopped working after kill -9: %d %s", code, out)
	}
}

func TestSecondAgentOnSameHomeFailsClearly(t *testing.T) {
	home := filepath.Join(t.TempDir(), "h")
	first := startDaemon(t, home)
	cmd := exec.Command(filepath.Join(binDir, "medrelayd"), "run", "--home", home, "--http-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0")
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatal("second agent started")
	}
	msg := string(out)
	if !strings.Contains(msg, "another medrelayd is already running") || !strings.Contains(msg, fmt.Sprint(first.cmd.Process.Pid)) {
		t.Fatalf("unclear error: %s", msg)
	}
	if strings.Contains(msg, "Badger") || strings.Contains(msg, "goroutine") {
		t.Fatalf("error leaks internals: %s", msg)
	}
	// And the first agent is unharmed.
	if out, code := cli(t, home, "status"); code != 0 {
		t.Fatalf("first agent hurt: %s", out)
	}
}

// SIGTERM: stops accepting, finishes, closes the store, exits 0 within the
// 10 seconds the issue allows, and removes its socket.
func TestGracefulShutdownOnSIGTERM(t *testing.T) {
	home := filepath.Join(t.TempDir(), "h")
	d := startDaemon(t, home)
	// An open client connection must not hold the agent up.
	c, err := client.Dial(context.Background(), client.WithSocket(client.HomeSocket(home)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Admin.GetStatus(context.Background(), &agentv1.GetStatusRequest{}); err != nil {
		t.Fatal(err)
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-d.done:
		if err != nil {
			t.Fatalf("exit: %v\n%s", err, d.log)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("still running 10s after SIGTERM\n%s", d.log)
	}
	if _, err := os.Stat(client.HomeSocket(home)); !os.IsNotExist(err) {
		t.Errorf("socket left behind: %v", err)
	}
	if !strings.Contains(d.log.String(), "shutting down") {
		t.Errorf("no shutdown log line:\n%s", d.log)
	}
	// The next start finds the store closed cleanly (no lock, no replay error).
	startDaemon(t, home)
}

func TestRefusesKeyReadableByOthers(t *testing.T) {
	home := filepath.Join(t.TempDir(), "h")
	d := startDaemon(t, home)
	d.cmd.Process.Signal(syscall.SIGTERM)
	<-d.done
	key := filepath.Join(home, "master.key")
	os.Chmod(key, 0o644)
	out, err := exec.Command(filepath.Join(binDir, "medrelayd"), "run", "--home", home, "--http-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0").CombinedOutput()
	if err == nil {
		t.Fatal("started with a world-readable master key")
	}
	if !strings.Contains(string(out), "master.key has mode 0644") || !strings.Contains(string(out), "chmod 0600") {
		t.Fatalf("unclear error: %s", out)
	}
	os.Chmod(key, 0o600)
	os.Chmod(filepath.Join(home, "store"), 0o755)
	out, err = exec.Command(filepath.Join(binDir, "medrelayd"), "run", "--home", home, "--http-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "store directory") {
		t.Fatalf("started with a world-readable store directory: %v %s", err, out)
	}
}

func TestCLISaysPlainlyWhenAgentIsNotRunning(t *testing.T) {
	home := filepath.Join(t.TempDir(), "nothing-here")
	out, code := cli(t, home, "status")
	if code != 2 {
		t.Errorf("exit code %d, want 2", code)
	}
	first := strings.SplitN(out, "\n", 2)[0]
	if !strings.Contains(first, "not running") || !strings.Contains(first, home) {
		t.Errorf("first line %q", first)
	}
	if !strings.Contains(out, "medrelayd run") {
		t.Errorf("does not say how to start it: %s", out)
	}
}

func TestConfigErrorsNameTheKey(t *testing.T) {
	home := filepath.Join(t.TempDir(), "h")
	os.MkdirAll(home, 0o750)
	os.WriteFile(filepath.Join(home, "medrelay.toml"), []byte("http_adr = \"127.0.0.1:1\"\n"), 0o600)
	out, err := exec.Command(filepath.Join(binDir, "medrelayd"), "run", "--home", home).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "unknown key(s) http_adr") {
		t.Fatalf("%v %s", err, out)
	}
}

// The admin listener serves /healthz and /metrics on loopback.
func TestAdminListener(t *testing.T) {
	home := filepath.Join(t.TempDir(), "h")
	startDaemon(t, home)
	out, _ := cli(t, home, "status", "--json")
	m := regexp.MustCompile(`"admin_addr":\s*"([^"]+)"`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no admin addr in %s", out)
	}
	// What docs/administrators.md promises is there.
	for path, wants := range map[string][]string{
		"/healthz": {`"status":"OK"`, `"store":"ok"`},
		"/metrics": {"medrelay_build_info", "medrelay_store_bytes", "medrelay_records_bytes", "medrelay_api_call_duration_seconds", "go_goroutines"},
	} {
		resp, err := http.Get("http://" + m[1] + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%s: HTTP %d", path, resp.StatusCode)
		}
		for _, w := range wants {
			if !strings.Contains(string(body), w) {
				t.Errorf("%s lacks %s", path, w)
			}
		}
	}
}
