package client_test

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/medrelay/medrelay/agent/client"
)

// A caller's deadline that passes while Dial connects to the socket is
// reported as the agent not running or not answering, naming the socket:
// the sentinel (and so the CLI's exit status 2) of a missing socket, not a
// bare "i/o timeout". The deadline stays visible to errors.Is.
func TestDialTimeoutSaysAgentNotReachable(t *testing.T) {
	dir := t.TempDir()
	listening := filepath.Join(dir, "up.sock")
	l, err := net.Listen("unix", listening)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	for name, sock := range map[string]string{"missing socket": filepath.Join(dir, "none.sock"), "listening socket": listening} {
		t.Run(name, func(t *testing.T) {
			// The deadline has passed when the first connection attempt
			// starts: the dial itself times out, whatever is at the socket.
			ctx, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
			defer cancel()
			c, err := client.Dial(ctx, client.WithSocket(sock), client.WithAppToken(""))
			if err == nil {
				c.Close()
				t.Fatal("Dial succeeded with a deadline already passed")
			}
			if !errors.Is(err, client.ErrAgentNotRunning) {
				t.Errorf("not ErrAgentNotRunning: %v", err)
			}
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("the deadline is not in the chain: %v", err)
			}
			if msg := err.Error(); !strings.Contains(msg, sock) || !strings.Contains(msg, "timed out") || strings.Contains(msg, "i/o timeout") {
				t.Errorf("message %q: want the socket and that connecting timed out", msg)
			}
		})
	}
}
