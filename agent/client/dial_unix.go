//go:build !windows

package client

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"syscall"
)

// DefaultSocket is where an agent installed as a service listens.
const DefaultSocket = "/run/medrelay/medrelay.sock"

func dialSocket(ctx context.Context, path string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "unix", path)
}

func notRunning(err error) bool {
	return errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED)
}

// HomeSocket is the socket of an agent started with --home dir.
func HomeSocket(dir string) string { return filepath.Join(dir, "medrelay.sock") }
