package api

import (
	"context"
	"encoding/base64"
	"fmt"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/medrelay/medrelay/internal/audit"
	"github.com/medrelay/medrelay/internal/errdefs"
	agentv1 "github.com/medrelay/medrelay/proto/gen/medrelay/agent/v1"
)

// StatusFunc reports the agent's status (everything but the caller).
type StatusFunc func(ctx context.Context) (*agentv1.GetStatusResponse, error)

type adminService struct {
	agentv1.UnimplementedAdminServiceServer
	status StatusFunc
	audit  *audit.Log
}

var _ agentv1.AdminServiceServer = (*adminService)(nil)

func (s *adminService) GetStatus(ctx context.Context, _ *agentv1.GetStatusRequest) (*agentv1.GetStatusResponse, error) {
	resp, err := s.status(ctx)
	if err != nil {
		return nil, err
	}
	resp.Caller = callerProto(CallerFrom(ctx))
	return resp, nil
}

func (s *adminService) ListAudit(ctx context.Context, req *agentv1.ListAuditRequest) (*agentv1.ListAuditResponse, error) {
	after, err := decodePageToken(req.GetPageToken())
	if err != nil {
		return nil, err
	}
	f := audit.Filter{AppID: req.GetAppId()}
	if req.GetSince() != nil {
		f.Since = req.GetSince().AsTime()
	}
	entries, next, err := s.audit.List(ctx, f, int(req.GetPageSize()), after)
	if err != nil {
		return nil, err
	}
	resp := &agentv1.ListAuditResponse{NextPageToken: encodePageToken(next)}
	for _, e := range entries {
		resp.Entries = append(resp.Entries, &agentv1.AuditEntry{
			Id:   e.ID,
			Time: timestamppb.New(e.Time),
			Caller: &agentv1.Caller{
				Kind:    kindProto(e.Kind),
				AppId:   e.AppID,
				AppName: e.AppName,
				Uid:     int64(e.UID), Gid: int64(e.GID), Pid: int64(e.PID),
			},
			Method:       e.Method,
			ConnectionId: e.ConnectionID,
			PatientRef:   e.PatientRef,
			Outcome:      e.Outcome,
			Detail:       e.Detail,
			Duration:     durationpb.New(e.Duration),
		})
	}
	return resp, nil
}

func kindProto(k string) agentv1.Caller_Kind {
	switch k {
	case "admin":
		return agentv1.Caller_KIND_ADMIN
	case "app":
		return agentv1.Caller_KIND_APP
	}
	return agentv1.Caller_KIND_UNSPECIFIED
}

func callerProto(c Caller) *agentv1.Caller {
	return &agentv1.Caller{
		Kind:    kindProto(c.Kind.String()),
		AppId:   c.App.ID,
		AppName: c.App.Name,
		Uid:     int64(c.Peer.UID), Gid: int64(c.Peer.GID), Pid: int64(c.Peer.PID),
	}
}

// ErrBadPageToken is returned for a page token this agent did not issue.
var ErrBadPageToken = errdefs.Define(errdefs.InvalidArgument, "PAGE_TOKEN_INVALID", "page token is not valid")

// Page tokens are opaque to callers: an encoded cursor they must not build.
func encodePageToken(cursor string) string {
	if cursor == "" {
		return ""
	}
	return base64.RawURLEncoding.EncodeToString([]byte("v1:" + cursor))
}

func decodePageToken(tok string) (string, error) {
	if tok == "" {
		return "", nil
	}
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil || len(b) < 3 || string(b[:3]) != "v1:" {
		return "", fmt.Errorf("%w: %q", ErrBadPageToken, tok)
	}
	return string(b[3:]), nil
}
