//go:build linux || darwin || freebsd

package ipc

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// ListenOptions are the socket's ownership and mode.
type ListenOptions struct {
	// Group, when set, owns the socket (mode 0660) so its members can connect.
	Group string
}

// Listen creates the socket at path with mode 0660. A stale socket file left
// by a crashed agent is removed; a live one is ErrInUse.
func Listen(path string, o ListenOptions) (net.Listener, error) {
	if _, err := os.Lstat(path); err == nil {
		if c, err := net.DialTimeout("unix", path, 200*time.Millisecond); err == nil {
			c.Close()
			return nil, fmt.Errorf("%w: %s", ErrInUse, path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
		}
	}
	// Create the socket with no access for others at all, then open it up to
	// exactly 0660: there is no window in which others could connect.
	old := syscall.Umask(0o177)
	l, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(true)
	if o.Group != "" {
		g, err := user.LookupGroup(o.Group)
		if err != nil {
			l.Close()
			return nil, fmt.Errorf("socket group %q: %w", o.Group, err)
		}
		gid, _ := strconv.Atoi(g.Gid)
		if err := os.Chown(path, -1, gid); err != nil {
			l.Close()
			return nil, fmt.Errorf("chown socket to group %s: %w", o.Group, err)
		}
		// The group must also be able to traverse the socket's directory
		// (0750), or the socket's own mode is moot.
		if err := os.Chown(filepath.Dir(path), -1, gid); err != nil {
			l.Close()
			return nil, fmt.Errorf("chown socket directory to group %s: %w", o.Group, err)
		}
	}
	if err := os.Chmod(path, 0o660); err != nil {
		l.Close()
		return nil, fmt.Errorf("chmod socket: %w", err)
	}
	return l, nil
}

func peerOf(c net.Conn) (Peer, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return Peer{}, errors.New("ipc: not a unix socket connection")
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return Peer{}, fmt.Errorf("ipc: peer credentials: %w", err)
	}
	var p Peer
	var perr error
	if err := raw.Control(func(fd uintptr) { p, perr = peerCred(int(fd)) }); err != nil {
		return Peer{}, fmt.Errorf("ipc: peer credentials: %w", err)
	}
	if perr != nil {
		return Peer{}, fmt.Errorf("ipc: peer credentials: %w", perr)
	}
	return p, nil
}
