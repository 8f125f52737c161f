package api

import (
	"context"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/medrelay/medrelay/internal/apps"
	agentv1 "github.com/medrelay/medrelay/proto/gen/medrelay/agent/v1"
)

type appService struct {
	agentv1.UnimplementedAppServiceServer
	apps *apps.Registry
}

var _ agentv1.AppServiceServer = (*appService)(nil)

func appProto(a apps.App) *agentv1.App {
	p := &agentv1.App{Id: a.ID, Name: a.Name, CreatedAt: timestamppb.New(a.CreatedAt), TokenPrefix: a.TokenPrefix}
	if a.RevokedAt != nil {
		p.RevokedAt = timestamppb.New(*a.RevokedAt)
	}
	if a.LastSeenAt != nil {
		p.LastSeenAt = timestamppb.New(*a.LastSeenAt)
	}
	return p
}

func (s *appService) CreateApp(ctx context.Context, req *agentv1.CreateAppRequest) (*agentv1.CreateAppResponse, error) {
	a, tok, err := s.apps.Create(ctx, req.GetName())
	if err != nil {
		return nil, err
	}
	return &agentv1.CreateAppResponse{App: appProto(a), Token: tok}, nil
}

func (s *appService) ListApps(ctx context.Context, req *agentv1.ListAppsRequest) (*agentv1.ListAppsResponse, error) {
	after, err := decodePageToken(req.GetPageToken())
	if err != nil {
		return nil, err
	}
	list, next, err := s.apps.List(ctx, req.GetIncludeRevoked(), int(req.GetPageSize()), after)
	if err != nil {
		return nil, err
	}
	resp := &agentv1.ListAppsResponse{NextPageToken: encodePageToken(next)}
	for _, a := range list {
		resp.Apps = append(resp.Apps, appProto(a))
	}
	return resp, nil
}

func (s *appService) RevokeApp(ctx context.Context, req *agentv1.RevokeAppRequest) (*agentv1.RevokeAppResponse, error) {
	a, err := s.apps.Revoke(ctx, req.GetApp())
	if err != nil {
		return nil, err
	}
	return &agentv1.RevokeAppResponse{App: appProto(a)}, nil
}
