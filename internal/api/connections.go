package api

import (
	"context"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/medrelay/medrelay/internal/connections"
	"github.com/medrelay/medrelay/internal/events"
	"github.com/medrelay/medrelay/internal/sessions"
	agentv1 "github.com/medrelay/medrelay/proto/gen/medrelay/agent/v1"
)

// appScope is the app whose data the caller may see: its own id for an app,
// "" (everything) for an administrator.
func appScope(ctx context.Context) string {
	c := CallerFrom(ctx)
	if c.Kind == KindApp {
		return c.App.ID
	}
	return ""
}

func ts(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

var stateToProto = map[connections.State]agentv1.ConnectionState{
	connections.Pending:       agentv1.ConnectionState_CONNECTION_STATE_PENDING,
	connections.Active:        agentv1.ConnectionState_CONNECTION_STATE_ACTIVE,
	connections.Failed:        agentv1.ConnectionState_CONNECTION_STATE_FAILED,
	connections.RefreshFailed: agentv1.ConnectionState_CONNECTION_STATE_REFRESH_FAILED,
	connections.Expired:       agentv1.ConnectionState_CONNECTION_STATE_EXPIRED,
	connections.Revoked:       agentv1.ConnectionState_CONNECTION_STATE_REVOKED,
}

func stateFromProto(s agentv1.ConnectionState) connections.State {
	for k, v := range stateToProto {
		if v == s {
			return k
		}
	}
	return ""
}

func connectionProto(c connections.Connection, hist []connections.Transition) *agentv1.Connection {
	p := &agentv1.Connection{
		Id: c.ID, AppId: c.AppID, Pattern: string(c.Pattern), SourceId: c.SourceID, Vendor: c.Vendor,
		FhirBaseUrl: c.FHIRBase, PatientRef: c.PatientRef, SessionId: c.SessionID, PatientId: c.PatientID,
		FhirUser: c.FHIRUser, Scopes: c.Scopes, State: stateToProto[c.State], Reason: c.Reason,
		StateChangedAt: ts(c.StateChangedAt), CreatedAt: ts(c.CreatedAt),
		AccessTokenExpiresAt: ts(c.AccessExpiry), GrantExpiresAt: ts(c.GrantExpiry),
		LastRefreshAt: ts(c.LastRefreshAt), NextRefreshAt: ts(c.NextRefreshAt), LastError: c.LastError,
	}
	for _, h := range hist {
		p.History = append(p.History, &agentv1.ConnectionTransition{
			Time: ts(h.Time), From: stateToProto[h.From], To: stateToProto[h.To], Reason: h.Reason,
		})
	}
	return p
}

// RecordDeleter removes a connection's stored records (package records).
type RecordDeleter interface {
	DeleteConnection(ctx context.Context, connectionID string) error
}

type connectionService struct {
	agentv1.UnimplementedConnectionServiceServer
	conns   *connections.Manager
	events  *events.Log
	records RecordDeleter
}

var _ agentv1.ConnectionServiceServer = (*connectionService)(nil)

func (s *connectionService) GetConnection(ctx context.Context, req *agentv1.GetConnectionRequest) (*agentv1.GetConnectionResponse, error) {
	c, err := s.conns.GetForApp(ctx, appScope(ctx), req.GetConnectionId())
	if err != nil {
		return nil, err
	}
	var hist []connections.Transition
	if req.GetHistory() {
		if hist, err = s.conns.History(ctx, c.ID); err != nil {
			return nil, err
		}
	}
	return &agentv1.GetConnectionResponse{Connection: connectionProto(c, hist)}, nil
}

func (s *connectionService) ListConnections(ctx context.Context, req *agentv1.ListConnectionsRequest) (*agentv1.ListConnectionsResponse, error) {
	after, err := decodePageToken(req.GetPageToken())
	if err != nil {
		return nil, err
	}
	f := connections.Filter{AppID: appScope(ctx), PatientRef: req.GetPatientRef(), SourceID: req.GetSourceId()}
	if f.AppID == "" {
		f.AppID = req.GetAppId()
	}
	for _, st := range req.GetStates() {
		f.States = append(f.States, stateFromProto(st))
	}
	list, next, err := s.conns.List(ctx, f, int(req.GetPageSize()), after)
	if err != nil {
		return nil, err
	}
	resp := &agentv1.ListConnectionsResponse{NextPageToken: encodePageToken(next)}
	for _, c := range list {
		resp.Connections = append(resp.Connections, connectionProto(c, nil))
	}
	return resp, nil
}

func (s *connectionService) WatchConnections(req *agentv1.WatchConnectionsRequest, stream agentv1.ConnectionService_WatchConnectionsServer) error {
	ctx := stream.Context()
	app := appScope(ctx)
	match := func(c connections.Connection) bool {
		return (req.GetPatientRef() == "" || c.PatientRef == req.GetPatientRef()) &&
			(req.GetSourceId() == "" || c.SourceID == req.GetSourceId()) &&
			(req.GetConnectionId() == "" || c.ID == req.GetConnectionId())
	}
	// Remember where the log is before listing, so no change between the
	// listing and the follow is lost (at worst one is sent twice).
	cursor, err := s.events.Head(ctx)
	if err != nil {
		return err
	}
	if req.GetConnectionId() != "" {
		c, err := s.conns.GetForApp(ctx, app, req.GetConnectionId())
		if err != nil {
			return err
		}
		if err := stream.Send(&agentv1.WatchConnectionsResponse{Connection: connectionProto(c, nil)}); err != nil {
			return err
		}
	} else {
		after := ""
		for {
			page, next, err := s.conns.List(ctx, connections.Filter{AppID: app, PatientRef: req.GetPatientRef(), SourceID: req.GetSourceId()}, 500, after)
			if err != nil {
				return err
			}
			for _, c := range page {
				if err := stream.Send(&agentv1.WatchConnectionsResponse{Connection: connectionProto(c, nil)}); err != nil {
					return err
				}
			}
			if after = next; after == "" {
				break
			}
		}
	}
	f := events.Filter{AppID: app, All: app == "", Types: map[string]bool{events.ConnectionStateChanged: true}}
	return s.events.Follow(ctx, f, cursor, func(e events.Event) error {
		c, err := s.conns.GetForApp(ctx, app, e.ConnectionID)
		if err != nil || !match(c) {
			return nil
		}
		return stream.Send(&agentv1.WatchConnectionsResponse{Connection: connectionProto(c, nil), Cursor: e.Cursor()})
	})
}

func (s *connectionService) RefreshConnection(ctx context.Context, req *agentv1.RefreshConnectionRequest) (*agentv1.RefreshConnectionResponse, error) {
	if _, err := s.conns.GetForApp(ctx, appScope(ctx), req.GetConnectionId()); err != nil {
		return nil, err
	}
	c, err := s.conns.Refresh(ctx, req.GetConnectionId())
	if err != nil {
		return nil, err
	}
	return &agentv1.RefreshConnectionResponse{Connection: connectionProto(c, nil)}, nil
}

func (s *connectionService) DeleteConnection(ctx context.Context, req *agentv1.DeleteConnectionRequest) (*agentv1.DeleteConnectionResponse, error) {
	c, err := s.conns.GetForApp(ctx, appScope(ctx), req.GetConnectionId())
	if err != nil {
		return nil, err
	}
	c, err = s.conns.Delete(ctx, c.ID, "deleted by the app")
	if err != nil {
		return nil, err
	}
	if s.records != nil {
		if err := s.records.DeleteConnection(ctx, c.ID); err != nil {
			return nil, err
		}
	}
	return &agentv1.DeleteConnectionResponse{Connection: connectionProto(c, nil)}, nil
}

type sessionService struct {
	agentv1.UnimplementedSessionServiceServer
	sessions *sessions.Manager
}

var _ agentv1.SessionServiceServer = (*sessionService)(nil)

func sessionProto(s sessions.Session, url string) *agentv1.Session {
	st := map[sessions.State]agentv1.Session_State{
		sessions.Open: agentv1.Session_STATE_OPEN, sessions.Complete: agentv1.Session_STATE_COMPLETE, sessions.Expired: agentv1.Session_STATE_EXPIRED,
	}[s.State]
	return &agentv1.Session{
		Id: s.ID, PatientRef: s.PatientRef, ReturnUrl: s.ReturnURL, SourceId: s.SourceID,
		RecommendedSourceIds: s.Recommend, Metadata: s.Metadata, State: st, Url: url,
		CreatedAt: ts(s.CreatedAt), ExpiresAt: ts(s.ExpiresAt), Success: s.Success,
		ConnectionId: s.ConnectionID, Error: s.Error, ErrorDescription: s.ErrorDescription, CompletedAt: ts(s.CompletedAt),
	}
}

func (s *sessionService) CreateSession(ctx context.Context, req *agentv1.CreateSessionRequest) (*agentv1.CreateSessionResponse, error) {
	sess, url, err := s.sessions.Create(ctx, sessions.CreateRequest{
		AppID: appScope(ctx), PatientRef: req.GetPatientRef(), ReturnURL: req.GetReturnUrl(),
		SourceID: req.GetSourceId(), Recommend: req.GetRecommendedSourceIds(), Metadata: req.GetMetadata(),
	})
	if err != nil {
		return nil, err
	}
	return &agentv1.CreateSessionResponse{Session: sessionProto(sess, url)}, nil
}

func (s *sessionService) GetSession(ctx context.Context, req *agentv1.GetSessionRequest) (*agentv1.GetSessionResponse, error) {
	sess, err := s.sessions.Get(ctx, appScope(ctx), req.GetSessionId())
	if err != nil {
		return nil, err
	}
	return &agentv1.GetSessionResponse{Session: sessionProto(sess, s.sessions.URL(sess.ID))}, nil
}
