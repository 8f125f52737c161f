package api

import (
	"context"
	"fmt"

	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/medrelay/medrelay/internal/errdefs"
	"github.com/medrelay/medrelay/internal/events"
	agentv1 "github.com/medrelay/medrelay/proto/gen/medrelay/agent/v1"
)

// Errors of EventService.
var (
	ErrOtherAppsEvents = errdefs.Define(errdefs.PermissionDenied, "EVENTS_OTHER_APP", "an app reads only its own events")
	ErrShuttingDown    = errdefs.Define(errdefs.Unavailable, "AGENT_SHUTTING_DOWN", "the agent is shutting down; resume from the last event id")
)

type eventService struct {
	agentv1.UnimplementedEventServiceServer
	events *events.Log
	// stopping is closed when the server stops, to end open streams with
	// a status instead of holding the shutdown.
	stopping <-chan struct{}
}

var _ agentv1.EventServiceServer = (*eventService)(nil)

// eventFilter turns a request into the log's filter for the caller: an app
// reads its own events, an administrator agent-wide ones, one app's or all.
func eventFilter(c Caller, allApps bool, appID string, types []string) (events.Filter, error) {
	f := events.Filter{}
	if len(types) > 0 {
		f.Types = map[string]bool{}
		for _, t := range types {
			f.Types[t] = true
		}
	}
	switch c.Kind {
	case KindApp:
		if allApps || (appID != "" && appID != c.App.ID) {
			return f, ErrOtherAppsEvents
		}
		f.AppID = c.App.ID
	case KindAdmin:
		f.All, f.AppID = allApps, appID
	default:
		return f, ErrNoIdentity
	}
	return f, nil
}

func (s *eventService) Subscribe(req *agentv1.SubscribeRequest, stream agentv1.EventService_SubscribeServer) error {
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	f, err := eventFilter(CallerFrom(ctx), req.GetAllApps(), req.GetAppId(), req.GetTypes())
	if err != nil {
		return err
	}
	var after uint64
	if req.GetFromNow() {
		after, err = s.events.Head(ctx)
	} else {
		after, err = events.ParseCursor(req.GetFromCursor())
	}
	if err != nil {
		return err
	}
	go func() {
		select {
		case <-s.stopping:
			cancel()
		case <-ctx.Done():
		}
	}()
	err = s.events.Follow(ctx, f, after, func(e events.Event) error {
		pe, err := eventProto(e)
		if err != nil {
			return err
		}
		return stream.Send(&agentv1.SubscribeResponse{Event: pe})
	})
	select {
	case <-s.stopping:
		if stream.Context().Err() == nil {
			return ErrShuttingDown
		}
	default:
	}
	return err
}

func eventProto(e events.Event) (*agentv1.Event, error) {
	p := &agentv1.Event{
		Id:           e.Cursor(),
		Type:         e.Type,
		Time:         timestamppb.New(e.Time),
		AppId:        e.AppID,
		ConnectionId: e.ConnectionID,
		SessionId:    e.SessionID,
		PatientRef:   e.PatientRef,
	}
	if len(e.Data) > 0 && string(e.Data) != "null" {
		p.Data = &structpb.Struct{}
		if err := p.Data.UnmarshalJSON(e.Data); err != nil {
			return nil, fmt.Errorf("event %d data: %w", e.Seq, err)
		}
	}
	return p, nil
}
