package pluginhost

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/medrelay/medrelay/internal/errdefs"
	pluginv1 "github.com/medrelay/medrelay/proto/gen/medrelay/plugin/v1"
)

// hostService is what a plugin may ask of the agent. Tokens are handed out
// only for connections that have a call in flight to this very plugin: a
// plugin cannot fish for other connections' tokens.
type hostService struct {
	pluginv1.UnimplementedHostServiceServer
	p *plugin
}

var _ pluginv1.HostServiceServer = (*hostService)(nil)

func (s *hostService) AccessToken(ctx context.Context, req *pluginv1.AccessTokenRequest) (*pluginv1.AccessTokenResponse, error) {
	id := req.GetConnectionId()
	if !s.p.inCall(id) {
		s.p.log.Warn("plugin asked for a token outside a call; refused", "connection", id)
		return nil, hostStatus(fmt.Errorf("%w: %q", ErrNotInCall, id))
	}
	tp := s.p.h.opts.Tokens
	if tp == nil {
		return nil, hostStatus(ErrNoTokens)
	}
	tok, err := tp.AccessToken(ctx, id, req.GetRejected())
	if err != nil {
		return nil, hostStatus(err)
	}
	resp := &pluginv1.AccessTokenResponse{AccessToken: tok.AccessToken, TokenType: tok.TokenType}
	if !tok.Expiry.IsZero() {
		resp.ExpiresAt = timestamppb.New(tok.Expiry)
	}
	return resp, nil
}

func (s *hostService) Log(ctx context.Context, req *pluginv1.LogRequest) (*pluginv1.LogResponse, error) {
	var lvl slog.Level
	switch req.GetLevel() {
	case pluginv1.LogLevel_LOG_LEVEL_DEBUG:
		lvl = slog.LevelDebug
	case pluginv1.LogLevel_LOG_LEVEL_WARN:
		lvl = slog.LevelWarn
	case pluginv1.LogLevel_LOG_LEVEL_ERROR:
		lvl = slog.LevelError
	default:
		lvl = slog.LevelInfo
	}
	attrs := make([]any, 0, 2*len(req.GetAttrs()))
	for _, a := range req.GetAttrs() {
		if len(attrs) >= 64 {
			break
		}
		attrs = append(attrs, slog.String(clip(a.GetKey(), 64), clip(a.GetValue(), 2000)))
	}
	s.p.log.Log(ctx, lvl, clip(req.GetMessage(), 2000), attrs...)
	return &pluginv1.LogResponse{}, nil
}

var hostCodes = map[*errdefs.Kind]codes.Code{
	errdefs.InvalidArgument:    codes.InvalidArgument,
	errdefs.NotFound:           codes.NotFound,
	errdefs.PermissionDenied:   codes.PermissionDenied,
	errdefs.Unauthenticated:    codes.Unauthenticated,
	errdefs.FailedPrecondition: codes.FailedPrecondition,
	errdefs.Unavailable:        codes.Unavailable,
	errdefs.ResourceExhausted:  codes.ResourceExhausted,
}

// hostStatus tells the plugin why it got no token, in words fit for its
// log: the token provider's errors carry no secrets.
func hostStatus(err error) error {
	if _, ok := status.FromError(err); ok {
		return err
	}
	if errors.Is(err, context.Canceled) {
		return status.Error(codes.Canceled, err.Error())
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return status.Error(codes.DeadlineExceeded, err.Error())
	}
	if kind, _, ok := errdefs.Classify(err); ok {
		if c, ok := hostCodes[kind]; ok {
			return status.Error(c, err.Error())
		}
	}
	return status.Error(codes.Unavailable, err.Error())
}
