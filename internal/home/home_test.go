package home_test

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/medrelay/medrelay/agent/client"
	"github.com/medrelay/medrelay/internal/home"
)

// The client library cannot import internal/home; it carries its own copy of
// the socket paths. They must agree.
func TestClientAgreesOnSocketPaths(t *testing.T) {
	if client.DefaultSocket != home.DefaultSocket || home.Default().Socket != home.DefaultSocket {
		t.Fatalf("default socket: client %q, agent %q", client.DefaultSocket, home.DefaultSocket)
	}
	dir := t.TempDir()
	l, err := home.ForHome(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := client.HomeSocket(dir); got != l.Socket {
		t.Fatalf("home socket: client %q, agent %q", got, l.Socket)
	}
}

func TestLockExcludesSecondAgentAndNamesPID(t *testing.T) {
	l, _ := home.ForHome(filepath.Join(t.TempDir(), "h"))
	if err := l.Prepare(); err != nil {
		t.Fatal(err)
	}
	first, err := l.AcquireLock()
	if err != nil {
		t.Fatal(err)
	}
	_, err = l.AcquireLock()
	if !errors.Is(err, home.ErrAlreadyRunning) || !strings.Contains(err.Error(), "(pid ") {
		t.Fatalf("second lock: %v", err)
	}
	first.Release()
	again, err := l.AcquireLock()
	if err != nil {
		t.Fatalf("after release: %v", err)
	}
	again.Release()
}
