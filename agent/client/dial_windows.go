//go:build windows

package client

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"

	"github.com/Microsoft/go-winio"
)

// DefaultSocket is the named pipe of an agent installed as a service.
const DefaultSocket = `\\.\pipe\medrelay`

func dialSocket(ctx context.Context, path string) (net.Conn, error) {
	return winio.DialPipeContext(ctx, path)
}

func notRunning(err error) bool {
	return errors.Is(err, os.ErrNotExist) || errors.Is(err, winio.ErrTimeout)
}

// HomeSocket is the pipe of an agent started with --home dir.
func HomeSocket(dir string) string {
	abs, err := filepath.Abs(dir)
	if err != nil {
		abs = dir
	}
	return `\\.\pipe\medrelay-` + filepath.Base(abs)
}
