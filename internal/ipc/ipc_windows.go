//go:build windows

package ipc

import (
	"errors"
	"fmt"
	"net"

	"github.com/Microsoft/go-winio"
)

// ListenOptions are the pipe's access rules.
type ListenOptions struct {
	// Group is a Windows group name or SID allowed to connect besides
	// SYSTEM and Administrators.
	Group string
}

// pipeSDDL grants full access to SYSTEM and Administrators, read/write to the
// interactive user group only when configured, and nothing to anyone else.
const baseSDDL = "D:P(A;;GA;;;SY)(A;;GA;;;BA)"

// Listen creates the named pipe with an explicit ACL.
func Listen(path string, o ListenOptions) (net.Listener, error) {
	sddl := baseSDDL
	if o.Group != "" {
		sddl += "(A;;GRGW;;;" + o.Group + ")"
	}
	l, err := winio.ListenPipe(path, &winio.PipeConfig{SecurityDescriptor: sddl, MessageMode: false})
	if err != nil {
		if errors.Is(err, winio.ErrPipeListenerClosed) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %s: %v", ErrInUse, path, err)
	}
	return l, nil
}

// peerOf cannot read a uid on Windows; the pipe's ACL admits only
// administrators and the configured group, and apps must present a token.
func peerOf(c net.Conn) (Peer, error) { return Peer{Known: false, UID: -1, GID: -1, PID: -1}, nil }
