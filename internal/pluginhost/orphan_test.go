//go:build unix

package pluginhost

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// agentEnv makes the test binary act as an agent that runs plugins (so that
// a test can SIGKILL a whole agent process).
const agentEnv = "PLUGINHOST_TEST_AGENT"

func runTestAgent() {
	h := New(Options{Dir: os.Getenv("PLUGINHOST_TEST_DIR"), StateDir: os.Getenv("PLUGINHOST_TEST_STATE"),
		Logger: slog.New(slog.NewTextHandler(os.Stderr, nil))})
	if err := h.Start(context.Background()); err != nil {
		fmt.Println("ERR", err)
		os.Exit(1)
	}
	var pids []string
	for _, i := range h.List() {
		pids = append(pids, strconv.Itoa(i.PID))
	}
	fmt.Println("PIDS", strings.Join(pids, " "))
	select {}
}

func alive(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil {
		return false
	}
	// A zombie is dead; it only waits for its parent to read its status.
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	return err != nil || !strings.Contains(string(b), ") Z ")
}

// No plugin process survives the agent being killed and restarted.
func TestNoPluginSurvivesAKilledAgent(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("parent-death signal and /proc are Linux")
	}
	dir := installDir(t, "smart", "skeleton")
	state := t.TempDir()
	run := func() (*exec.Cmd, []int) {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), agentEnv+"=1", "PLUGINHOST_TEST_DIR="+dir, "PLUGINHOST_TEST_STATE="+state)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			line := sc.Text()
			if rest, ok := strings.CutPrefix(line, "PIDS "); ok {
				var pids []int
				for _, f := range strings.Fields(rest) {
					n, _ := strconv.Atoi(f)
					pids = append(pids, n)
				}
				return cmd, pids
			}
		}
		t.Fatalf("test agent said nothing useful: %v", sc.Err())
		return nil, nil
	}
	agent, pids := run()
	if len(pids) != 2 || pids[0] <= 0 || pids[1] <= 0 {
		t.Fatalf("plugin pids: %v", pids)
	}
	for _, pid := range pids {
		if !alive(pid) {
			t.Fatalf("plugin %d not running before the kill", pid)
		}
	}
	if err := agent.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = agent.Wait()

	// A new agent on the same state starts clean: the old plugins are gone,
	// by the parent-death signal or, failing that, reaped from pid files.
	agent2, pids2 := run()
	defer func() { _ = agent2.Process.Kill(); _ = agent2.Wait() }()
	deadline := time.Now().Add(10 * time.Second)
	for _, pid := range pids {
		for alive(pid) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if alive(pid) {
			t.Errorf("plugin process %d survived its agent", pid)
		}
	}
	if len(pids2) != 2 {
		t.Fatalf("second agent's plugins: %v", pids2)
	}
}

// The reaper kills a process recorded in a pid file only when it still runs
// the recorded executable.
func TestReapOrphansChecksTheExecutable(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("reaping verifies /proc/<pid>/exe")
	}
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep binary")
	}
	state := t.TempDir()
	h := New(Options{StateDir: state})
	start := func() *exec.Cmd {
		c := exec.Command(sleep, "60")
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Process.Kill(); _ = c.Wait() })
		return c
	}
	orphan, stranger := start(), start()
	exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", orphan.Process.Pid))
	h.writePid("orphan", orphan.Process.Pid, exe)
	h.writePid("recycled", stranger.Process.Pid, "/usr/lib/medrelay/plugins/medrelay-plugin-gone")
	h.reapOrphans()

	err = orphan.Wait()
	if ws, ok := orphan.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("orphan not killed: %v", err)
	}
	if !alive(stranger.Process.Pid) {
		t.Fatal("a process running another executable was killed")
	}
	if entries, _ := os.ReadDir(state + "/plugins"); len(entries) != 0 {
		t.Fatalf("pid files left: %v", entries)
	}
}
