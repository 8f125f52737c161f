package api

import (
	"context"
	"time"

	"github.com/medrelay/medrelay/internal/authorize"
	"github.com/medrelay/medrelay/internal/connections"
	"github.com/medrelay/medrelay/internal/errdefs"
	agentv1 "github.com/medrelay/medrelay/proto/gen/medrelay/agent/v1"
)

// BackendConnector authorizes the agent at a source with SMART Backend
// Services (package authorize).
type BackendConnector interface {
	PrepareBackend(ctx context.Context, sourceID string, scopes []string) (authorize.BackendTarget, error)
	Backend(ctx context.Context, t authorize.BackendTarget) (connections.Grant, error)
}

// ErrBackendUnavailable: the agent was built without backend connections.
var ErrBackendUnavailable = errdefs.Define(errdefs.Unimplemented, "BACKEND_NOT_AVAILABLE", "backend connections are not available in this agent")

// backendTokenTimeout bounds the first token request of a new connection.
const backendTokenTimeout = time.Minute

// backendConnections is the connection service with backend connection
// creation added.
type backendConnections struct {
	*connectionService
	backend BackendConnector
}

var _ agentv1.ConnectionServiceServer = (*backendConnections)(nil)

// CreateBackendConnection records a pending backend connection, asks the
// source for a token, and returns the connection active, or failed with
// the source's reason (a failed connection is an answer, not an error: it
// is listed with its reason like any other).
func (s *backendConnections) CreateBackendConnection(ctx context.Context, req *agentv1.CreateBackendConnectionRequest) (*agentv1.CreateBackendConnectionResponse, error) {
	if s.backend == nil {
		return nil, ErrBackendUnavailable
	}
	t, err := s.backend.PrepareBackend(ctx, req.GetSourceId(), req.GetScopes())
	if err != nil {
		return nil, err
	}
	c, err := s.conns.CreatePending(ctx, connections.Connection{
		AppID: appScope(ctx), Pattern: connections.Backend, SourceID: t.SourceID, Vendor: t.Vendor,
		Plugin: t.Plugin, FHIRBase: t.FHIRBase, CredentialID: t.CredentialID, Scopes: t.Scopes,
	})
	if err != nil {
		return nil, err
	}
	// The caller hanging up must not leave the connection pending forever.
	tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), backendTokenTimeout)
	defer cancel()
	g, err := s.backend.Backend(tctx, t)
	if err != nil {
		c, ferr := s.conns.Fail(tctx, c.ID, err.Error())
		if ferr != nil {
			return nil, ferr
		}
		return &agentv1.CreateBackendConnectionResponse{Connection: connectionProto(c, nil)}, nil
	}
	c, err = s.conns.Activate(tctx, c.ID, g)
	if err != nil {
		return nil, err
	}
	return &agentv1.CreateBackendConnectionResponse{Connection: connectionProto(c, nil)}, nil
}
