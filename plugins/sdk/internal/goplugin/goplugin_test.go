package goplugin

import (
	"bytes"
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"
)

func TestNegotiate(t *testing.T) {
	for _, tc := range []struct {
		ours []int
		host string
		want int
		err  bool
	}{
		{[]int{1}, "1", 1, false},
		{[]int{1, 2}, "1,2", 2, false},
		{[]int{1, 2}, "1", 1, false},
		{[]int{2}, "1", 0, true},
		{[]int{1, 3}, "", 3, false},
		{[]int{1}, "x, 1", 1, false},
	} {
		got, err := Negotiate(tc.ours, tc.host)
		if got != tc.want || (err != nil) != tc.err {
			t.Errorf("Negotiate(%v, %q) = %d, %v", tc.ours, tc.host, got, err)
		}
	}
}

func TestConnInfoRoundTrip(t *testing.T) {
	in := ConnInfo{ServiceID: 7, Network: "unix", Address: "/tmp/x.sock"}
	b, err := MarshalConnInfo(in)
	if err != nil {
		t.Fatal(err)
	}
	// Field 1 varint 7, field 2 "unix": go-plugin's own field numbers.
	if !bytes.Contains(b, []byte{0x08, 0x07}) || !bytes.Contains(b, []byte{0x12, 0x04, 'u', 'n', 'i', 'x'}) {
		t.Fatalf("wire bytes %x", b)
	}
	out, err := UnmarshalConnInfo(b)
	if err != nil || out != in {
		t.Fatalf("%+v %v", out, err)
	}
}

func TestServeRefusesWithoutCookie(t *testing.T) {
	err := Serve(context.Background(), Config{MagicCookieKey: "K", MagicCookieValue: "V", Getenv: func(string) string { return "" }})
	if !errors.Is(err, ErrNotLaunchedByHost) {
		t.Fatal(err)
	}
}

// The handshake line is the only thing on stdout, and says grpc with our
// certificate when the host sent one.
func TestHandshakeLine(t *testing.T) {
	env := map[string]string{"K": "V", "PLUGIN_PROTOCOL_VERSIONS": "1", "PLUGIN_UNIX_SOCKET_DIR": t.TempDir()}
	var out bytes.Buffer
	ready := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Serve(ctx, Config{MagicCookieKey: "K", MagicCookieValue: "V", Versions: []int{1}, Stdout: &out,
			Getenv: func(k string) string { return env[k] }, Ready: func() { close(ready) }})
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatal(err)
	case <-time.After(10 * time.Second):
		t.Fatal("no handshake")
	}
	line := out.String()
	parts := strings.Split(strings.TrimSpace(line), "|")
	if len(parts) != 6 || parts[0] != "1" || parts[1] != "1" || parts[2] != "unix" || parts[4] != "grpc" || parts[5] != "" {
		t.Fatalf("handshake %q", line)
	}
	if _, err := os.Stat(parts[3]); err != nil {
		t.Fatalf("socket: %v", err)
	}
	cancel()
	<-done
	if _, err := os.Stat(parts[3]); !os.IsNotExist(err) {
		t.Fatalf("socket left behind: %v", err)
	}
}
