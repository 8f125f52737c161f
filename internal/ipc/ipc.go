// Package ipc owns the agent's local socket: a unix socket with explicit
// permissions on Linux and macOS, a named pipe with an explicit ACL on
// Windows. It reads the peer's credentials at connection time and hands them
// to gRPC as AuthInfo, so the API layer can decide who the caller is in one
// place (internal/api).
package ipc

import (
	"context"
	"errors"
	"net"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// ErrInUse means something is already listening on the socket path.
var ErrInUse = errors.New("socket is in use by a running agent")

// Peer is who is on the other end of a local connection, as the kernel says.
type Peer struct {
	UID, GID, PID int
	// Known is false when the platform could not tell (then nobody is an
	// administrator by uid).
	Known bool
	// SID is the Windows security identifier of the caller (Windows only).
	SID string
}

// AuthInfo carries the Peer through gRPC.
type AuthInfo struct {
	credentials.CommonAuthInfo
	Peer Peer
}

// AuthType implements credentials.AuthInfo.
func (AuthInfo) AuthType() string { return "medrelay-local" }

// PeerFromContext returns the peer of the gRPC call in ctx.
func PeerFromContext(ctx context.Context) (Peer, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return Peer{}, false
	}
	ai, ok := p.AuthInfo.(AuthInfo)
	if !ok {
		return Peer{}, false
	}
	return ai.Peer, true
}

// Credentials are gRPC transport credentials for the local socket: no
// encryption (the kernel is the channel), but peer credentials read once per
// connection.
func Credentials() credentials.TransportCredentials { return localCreds{} }

type localCreds struct{}

func (localCreds) ClientHandshake(_ context.Context, _ string, c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return c, AuthInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}}, nil
}

func (localCreds) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	p, err := peerOf(c)
	if err != nil {
		return nil, nil, err
	}
	return c, AuthInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}, Peer: p}, nil
}

func (localCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "medrelay-local"}
}
func (l localCreds) Clone() credentials.TransportCredentials { return l }
func (localCreds) OverrideServerName(string) error           { return nil }
