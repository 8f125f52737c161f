package main

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A deadline that passes while the CLI connects to the socket reads as the
// agent not running (exit status 2, the socket named, how to start it), as
// a missing socket does; it used to be "connect ...: i/o timeout", exit 1.
func TestCLIDialTimeoutSaysAgentNotReachable(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "none.sock")
	ctx, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	root := newRoot()
	root.SetOut(&bytes.Buffer{})
	root.SetErr(&bytes.Buffer{})
	root.SetArgs([]string{"status", "--socket", sock, "--app-token", ""})
	err := root.ExecuteContext(ctx)
	if err == nil {
		t.Fatal("status succeeded without an agent")
	}
	msg := explain(err)
	if exitCode(err) != 2 || !strings.Contains(msg, "not running") || !strings.Contains(msg, sock) ||
		!strings.Contains(msg, "timed out") || !strings.Contains(msg, "Start it with") {
		t.Fatalf("exit %d, %q: want 2 and the not-running message naming %s", exitCode(err), msg, sock)
	}
}
