package api

import (
	"context"
	"fmt"
	"strconv"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/medrelay/medrelay/internal/errdefs"
	"github.com/medrelay/medrelay/internal/events"
	"github.com/medrelay/medrelay/internal/webhooks"
	agentv1 "github.com/medrelay/medrelay/proto/gen/medrelay/agent/v1"
)

// ErrWebhookEventsChoice: a new endpoint must say which events it takes.
var ErrWebhookEventsChoice = errdefs.Define(errdefs.InvalidArgument, "WEBHOOK_EVENTS_REQUIRED", "give the event types to deliver, or all_events (not both)")

type webhookService struct {
	agentv1.UnimplementedWebhookServiceServer
	hooks *webhooks.Manager
}

var _ agentv1.WebhookServiceServer = (*webhookService)(nil)

// webhookAccess: an app manages its own endpoints, an administrator all.
func webhookAccess(ctx context.Context) webhooks.Access {
	c := CallerFrom(ctx)
	if c.Kind == KindAdmin {
		return webhooks.Access{All: true}
	}
	return webhooks.Access{AppID: c.App.ID}
}

func (s *webhookService) CreateWebhook(ctx context.Context, req *agentv1.CreateWebhookRequest) (*agentv1.CreateWebhookResponse, error) {
	if req.GetAllEvents() == (len(req.GetEventTypes()) > 0) {
		return nil, ErrWebhookEventsChoice
	}
	ep, sec, err := s.hooks.Create(ctx, CallerFrom(ctx).App.ID, webhooks.CreateRequest{
		URL: req.GetUrl(), Description: req.GetDescription(), Types: req.GetEventTypes(),
	})
	if err != nil {
		return nil, err
	}
	// The one place a secret leaves the agent: to its owner, once.
	return &agentv1.CreateWebhookResponse{Webhook: webhookProto(webhooks.Status{Endpoint: ep}), Secret: sec.Reveal()}, nil
}

func (s *webhookService) ListWebhooks(ctx context.Context, _ *agentv1.ListWebhooksRequest) (*agentv1.ListWebhooksResponse, error) {
	list, err := s.hooks.List(ctx, webhookAccess(ctx))
	if err != nil {
		return nil, err
	}
	resp := &agentv1.ListWebhooksResponse{}
	for _, st := range list {
		resp.Webhooks = append(resp.Webhooks, webhookProto(st))
	}
	return resp, nil
}

func (s *webhookService) GetWebhook(ctx context.Context, req *agentv1.GetWebhookRequest) (*agentv1.GetWebhookResponse, error) {
	st, err := s.hooks.Get(ctx, webhookAccess(ctx), req.GetId())
	if err != nil {
		return nil, err
	}
	return &agentv1.GetWebhookResponse{Webhook: webhookProto(st)}, nil
}

func (s *webhookService) DeleteWebhook(ctx context.Context, req *agentv1.DeleteWebhookRequest) (*agentv1.DeleteWebhookResponse, error) {
	ep, err := s.hooks.Delete(ctx, webhookAccess(ctx), req.GetId())
	if err != nil {
		return nil, err
	}
	return &agentv1.DeleteWebhookResponse{Webhook: webhookProto(webhooks.Status{Endpoint: ep})}, nil
}

func (s *webhookService) RotateWebhookSecret(ctx context.Context, req *agentv1.RotateWebhookSecretRequest) (*agentv1.RotateWebhookSecretResponse, error) {
	ep, sec, err := s.hooks.RotateSecret(ctx, webhooks.Access{AppID: CallerFrom(ctx).App.ID}, req.GetId())
	if err != nil {
		return nil, err
	}
	return &agentv1.RotateWebhookSecretResponse{Webhook: webhookProto(webhooks.Status{Endpoint: ep}), Secret: sec.Reveal()}, nil
}

func (s *webhookService) EnableWebhook(ctx context.Context, req *agentv1.EnableWebhookRequest) (*agentv1.EnableWebhookResponse, error) {
	from := webhooks.ResumeUndelivered
	switch req.GetResume() {
	case agentv1.EnableWebhookRequest_RESUME_OLDEST_RETAINED:
		from = webhooks.ResumeOldestRetained
	case agentv1.EnableWebhookRequest_RESUME_NOW:
		from = webhooks.ResumeNow
	}
	if _, err := s.hooks.Enable(ctx, webhookAccess(ctx), req.GetId(), from); err != nil {
		return nil, err
	}
	st, err := s.hooks.Get(ctx, webhookAccess(ctx), req.GetId())
	if err != nil {
		return nil, err
	}
	return &agentv1.EnableWebhookResponse{Webhook: webhookProto(st)}, nil
}

func (s *webhookService) DisableWebhook(ctx context.Context, req *agentv1.DisableWebhookRequest) (*agentv1.DisableWebhookResponse, error) {
	if _, err := s.hooks.Disable(ctx, webhookAccess(ctx), req.GetId()); err != nil {
		return nil, err
	}
	st, err := s.hooks.Get(ctx, webhookAccess(ctx), req.GetId())
	if err != nil {
		return nil, err
	}
	return &agentv1.DisableWebhookResponse{Webhook: webhookProto(st)}, nil
}

func (s *webhookService) ListWebhookAttempts(ctx context.Context, req *agentv1.ListWebhookAttemptsRequest) (*agentv1.ListWebhookAttemptsResponse, error) {
	var seq uint64
	if req.GetEventId() != "" {
		v, err := events.ParseCursor(req.GetEventId())
		if err != nil {
			return nil, fmt.Errorf("%w: event id %q", webhooks.ErrEventNotFound, req.GetEventId())
		}
		seq = v
	}
	after, err := decodePageToken(req.GetPageToken())
	if err != nil {
		return nil, err
	}
	list, next, err := s.hooks.Attempts(ctx, webhookAccess(ctx), req.GetId(), seq, int(req.GetPageSize()), after)
	if err != nil {
		return nil, err
	}
	resp := &agentv1.ListWebhookAttemptsResponse{NextPageToken: encodePageToken(next)}
	for _, at := range list {
		resp.Attempts = append(resp.Attempts, attemptProto(at))
	}
	return resp, nil
}

func (s *webhookService) RedeliverWebhookEvent(ctx context.Context, req *agentv1.RedeliverWebhookEventRequest) (*agentv1.RedeliverWebhookEventResponse, error) {
	seq, err := strconv.ParseUint(req.GetEventId(), 10, 64)
	if err != nil {
		return nil, fmt.Errorf("%w: event id %q", webhooks.ErrEventNotFound, req.GetEventId())
	}
	list, err := s.hooks.Redeliver(ctx, webhookAccess(ctx), seq, req.GetWebhookId())
	if err != nil {
		return nil, err
	}
	resp := &agentv1.RedeliverWebhookEventResponse{}
	for _, at := range list {
		resp.Attempts = append(resp.Attempts, attemptProto(at))
	}
	return resp, nil
}

func tsOrNil(t interface{ IsZero() bool }, p *timestamppb.Timestamp) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return p
}

// webhookProto never carries a secret: the endpoint type holds none.
func webhookProto(st webhooks.Status) *agentv1.Webhook {
	ep, p := st.Endpoint, st.Progress
	w := &agentv1.Webhook{
		Id:                  ep.ID,
		AppId:               ep.AppID,
		Url:                 ep.URL,
		Description:         ep.Description,
		EventTypes:          ep.Types,
		State:               agentv1.Webhook_STATE_ENABLED,
		CreatedAt:           timestamppb.New(ep.CreatedAt),
		DisabledAt:          tsOrNil(ep.DisabledAt, timestamppb.New(ep.DisabledAt)),
		DisabledReason:      ep.DisabledReason,
		SecretRotatedAt:     tsOrNil(ep.SecretRotatedAt, timestamppb.New(ep.SecretRotatedAt)),
		PreviousSecretUntil: tsOrNil(ep.PreviousSecretUntil, timestamppb.New(ep.PreviousSecretUntil)),
		Delivery: &agentv1.WebhookDeliveryStatus{
			Cursor:        strconv.FormatUint(p.Cursor, 10),
			Delivered:     p.Delivered,
			LastSuccessAt: tsOrNil(p.LastSuccessAt, timestamppb.New(p.LastSuccessAt)),
			LastFailureAt: tsOrNil(p.LastFailureAt, timestamppb.New(p.LastFailureAt)),
			LastError:     p.LastError,
		},
	}
	if ep.State == webhooks.Disabled {
		w.State = agentv1.Webhook_STATE_DISABLED
	}
	if pd := p.Pending; pd != nil {
		w.Delivery.PendingEventId = strconv.FormatUint(pd.Seq, 10)
		w.Delivery.PendingEventType = pd.Type
		w.Delivery.PendingAttempts = int32(pd.Attempts)
		w.Delivery.NextAttemptAt = tsOrNil(pd.NextAt, timestamppb.New(pd.NextAt))
	}
	return w
}

func attemptProto(at webhooks.Attempt) *agentv1.WebhookAttempt {
	return &agentv1.WebhookAttempt{
		WebhookId:     at.EndpointID,
		EventId:       strconv.FormatUint(at.EventSeq, 10),
		EventType:     at.EventType,
		Number:        int32(at.Number),
		Redelivery:    at.Manual,
		Time:          timestamppb.New(at.Time),
		Latency:       durationpb.New(at.Latency),
		Status:        int32(at.Status),
		Error:         at.Error,
		Response:      at.Response,
		Ok:            at.OK,
		NextAttemptAt: tsOrNil(at.NextAt, timestamppb.New(at.NextAt)),
	}
}
