package api_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/medrelay/medrelay/agent/client"
	"github.com/medrelay/medrelay/internal/api"
	"github.com/medrelay/medrelay/internal/apps"
	"github.com/medrelay/medrelay/internal/audit"
	"github.com/medrelay/medrelay/internal/events"
	"github.com/medrelay/medrelay/internal/ipc"
	"github.com/medrelay/medrelay/internal/store"
	"github.com/medrelay/medrelay/internal/webhooks"
	agentv1 "github.com/medrelay/medrelay/proto/gen/medrelay/agent/v1"
)

// eventsAgent serves EventService and WebhookService on a real socket, with
// the event log at hand to append to (no component appends events yet in
// these tests).
type eventsAgent struct {
	socket string
	db     *store.DB
	events *events.Log
	hooks  *webhooks.Manager
	apps   *apps.Registry
	audit  *audit.Log
	srv    *api.Server
}

func startEventsAgent(t *testing.T) *eventsAgent {
	t.Helper()
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	db, err := store.Open(ctx, store.Options{Dir: t.TempDir(), Key: bytes.Repeat([]byte{5}, 32), GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	a := &eventsAgent{socket: filepath.Join(t.TempDir(), "a.sock"), db: db, audit: audit.New(db, log), apps: apps.NewRegistry(db)}
	a.events = events.New(db, log)
	a.hooks = webhooks.New(db, a.events, log)
	if err := a.hooks.Start(ctx); err != nil {
		t.Fatal(err)
	}
	a.srv = api.New(api.Deps{Logger: log, Apps: a.apps, Audit: a.audit, Events: a.events, Webhooks: a.hooks,
		Status: func(context.Context) (*agentv1.GetStatusResponse, error) { return &agentv1.GetStatusResponse{}, nil }})
	l, err := ipc.Listen(a.socket, ipc.ListenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	go a.srv.Serve(l)
	t.Cleanup(func() {
		a.srv.Stop(time.Second)
		a.hooks.Stop()
		a.audit.Close()
		db.Close()
	})
	return a
}

func (a *eventsAgent) dial(t *testing.T, token string) *client.Client {
	t.Helper()
	c, err := client.Dial(context.Background(), client.WithSocket(a.socket), client.WithAppToken(token))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func (a *eventsAgent) app(t *testing.T, name string) (string, string) {
	t.Helper()
	app, tok, err := a.apps.Create(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return app.ID, tok
}

func (a *eventsAgent) append(t *testing.T, app, typ string) events.Event {
	t.Helper()
	e, err := a.events.Append(context.Background(), events.Event{Type: typ, AppID: app, ConnectionID: "c-" + app}, events.StateChange{From: "pending", To: "active"})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func reason(err error) string {
	if e, ok := client.AsError(err); ok {
		return e.Reason
	}
	return ""
}

func recvN(t *testing.T, s agentv1.EventService_SubscribeClient, n int) []*agentv1.Event {
	t.Helper()
	var out []*agentv1.Event
	for range n {
		r, err := s.Recv()
		if err != nil {
			t.Fatalf("after %d events: %v", len(out), err)
		}
		out = append(out, r.GetEvent())
	}
	return out
}

func TestSubscribeShowsAnAppOnlyItsOwnEvents(t *testing.T) {
	a := startEventsAgent(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	idA, tokA := a.app(t, "app-a")
	idB, _ := a.app(t, "app-b")
	a.append(t, idA, events.ConnectionStateChanged)
	a.append(t, idB, events.ConnectionStateChanged)
	a.append(t, "", "agent.started") // agent-wide
	a.append(t, idA, events.SessionCompleted)

	appA := a.dial(t, tokA)
	s, err := appA.Events.Subscribe(ctx, &agentv1.SubscribeRequest{})
	if err != nil {
		t.Fatal(err)
	}
	got := recvN(t, s, 2)
	if got[0].GetAppId() != idA || got[1].GetAppId() != idA || got[1].GetType() != events.SessionCompleted {
		t.Fatalf("app a's backlog: %v", got)
	}
	if got[0].GetData().GetFields()["to"].GetStringValue() != "active" || got[0].GetConnectionId() != "c-"+idA {
		t.Fatalf("event fields: %v", got[0])
	}
	// Live: another app's event is not sent, the app's own is.
	a.append(t, idB, events.ConnectionStateChanged)
	live := a.append(t, idA, events.RecordsPullCompleted)
	if e := recvN(t, s, 1)[0]; e.GetId() != live.Cursor() {
		t.Fatalf("live event %v, want %s", e, live.Cursor())
	}

	// Resume after a cursor, with a type filter.
	s2, _ := appA.Events.Subscribe(ctx, &agentv1.SubscribeRequest{FromCursor: got[0].GetId(), Types: []string{events.RecordsPullCompleted}})
	if e := recvN(t, s2, 1)[0]; e.GetId() != live.Cursor() {
		t.Fatalf("resumed with %v", e)
	}

	// An app may not ask for others' events.
	for _, req := range []*agentv1.SubscribeRequest{{AllApps: true}, {AppId: idB}} {
		s, err := appA.Events.Subscribe(ctx, req)
		if err == nil {
			_, err = s.Recv()
		}
		if !errors.Is(err, client.ErrPermissionDenied) || reason(err) != "EVENTS_OTHER_APP" {
			t.Fatalf("app asking %v: %v", req, err)
		}
	}

	// Administrators: agent-wide by default, one app, or all.
	admin := a.dial(t, "")
	for _, c := range []struct {
		req  *agentv1.SubscribeRequest
		want int
	}{{&agentv1.SubscribeRequest{}, 1}, {&agentv1.SubscribeRequest{AppId: idB}, 2}, {&agentv1.SubscribeRequest{AllApps: true}, 6}} {
		s, err := admin.Events.Subscribe(ctx, c.req)
		if err != nil {
			t.Fatal(err)
		}
		recvN(t, s, c.want)
	}

	// From now: only what comes next.
	s3, _ := appA.Events.Subscribe(ctx, &agentv1.SubscribeRequest{FromNow: true})
	time.Sleep(50 * time.Millisecond) // let the stream start before appending (not a timing assertion)
	next := a.append(t, idA, events.SessionCompleted)
	if e := recvN(t, s3, 1)[0]; e.GetId() != next.Cursor() {
		t.Fatalf("from now got %v, want %s", e, next.Cursor())
	}

	// A bad cursor is refused with a reason.
	s4, err := appA.Events.Subscribe(ctx, &agentv1.SubscribeRequest{FromCursor: "yesterday"})
	if err == nil {
		_, err = s4.Recv()
	}
	if !errors.Is(err, client.ErrInvalidArgument) || reason(err) != "CURSOR_INVALID" {
		t.Fatalf("bad cursor: %v", err)
	}
}

func TestSubscribeEndsWithUnavailableAtShutdown(t *testing.T) {
	a := startEventsAgent(t)
	_, tok := a.app(t, "app")
	s, err := a.dial(t, tok).Events.Subscribe(context.Background(), &agentv1.SubscribeRequest{})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := s.Recv(); done <- err }()
	time.Sleep(50 * time.Millisecond) // the stream is open (not a timing assertion)
	a.srv.Stop(30 * time.Second)      // must not wait for the stream's grace
	err = <-done
	if e, ok := client.AsError(err); !ok || e.Code != codes.Unavailable || e.Reason != "AGENT_SHUTTING_DOWN" {
		if !errors.Is(err, client.ErrAgentNotRunning) {
			t.Fatalf("stream at shutdown: %v", err)
		}
	}
}

func TestWebhooksThroughTheAPI(t *testing.T) {
	a := startEventsAgent(t)
	ctx := context.Background()
	idA, tokA := a.app(t, "app-a")
	_, tokB := a.app(t, "app-b")
	appA, appB, admin := a.dial(t, tokA), a.dial(t, tokB), a.dial(t, "")

	var mu sync.Mutex
	var got []*client.WebhookEvent
	var secret string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		ev, err := client.ReadWebhook(r, secret)
		if err != nil {
			io.Copy(io.Discard, r.Body)
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		got = append(got, ev)
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(srv.Close)

	// Refusals first: no event choice, an insecure URL, an administrator
	// creating without an app.
	if _, err := appA.Webhooks.CreateWebhook(ctx, &agentv1.CreateWebhookRequest{Url: srv.URL}); reason(err) != "WEBHOOK_EVENTS_REQUIRED" {
		t.Fatalf("no event choice: %v", err)
	}
	if _, err := appA.Webhooks.CreateWebhook(ctx, &agentv1.CreateWebhookRequest{Url: "http://93.184.216.34/", AllEvents: true}); !errors.Is(err, client.ErrInvalidArgument) || reason(err) != "WEBHOOK_URL_INSECURE" {
		t.Fatalf("public http: %v", err)
	}
	if _, err := admin.Webhooks.CreateWebhook(ctx, &agentv1.CreateWebhookRequest{Url: srv.URL, AllEvents: true}); !errors.Is(err, client.ErrPermissionDenied) {
		t.Fatalf("administrator creating: %v", err)
	}

	created, err := appA.Webhooks.CreateWebhook(ctx, &agentv1.CreateWebhookRequest{Url: srv.URL + "/hook", AllEvents: true, Description: "billing"})
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	secret = created.GetSecret()
	mu.Unlock()
	id := created.GetWebhook().GetId()
	ev := a.append(t, idA, events.ConnectionStateChanged)
	deadline := time.Now().Add(20 * time.Second)
	for {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no delivery")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got[0].ID != ev.Cursor() || got[0].AppID != idA {
		t.Fatalf("delivered %+v", got[0])
	}

	// Listings and the attempt history never carry the secret.
	var dump strings.Builder
	list, err := appA.Webhooks.ListWebhooks(ctx, &agentv1.ListWebhooksRequest{})
	if err != nil || len(list.GetWebhooks()) != 1 {
		t.Fatalf("list: %v %v", list, err)
	}
	show, _ := appA.Webhooks.GetWebhook(ctx, &agentv1.GetWebhookRequest{Id: id})
	// Attempts are saved in the background soon after the delivery.
	var ats *agentv1.ListWebhookAttemptsResponse
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		ats, err = appA.Webhooks.ListWebhookAttempts(ctx, &agentv1.ListWebhookAttemptsRequest{Id: id})
		if err != nil || len(ats.GetAttempts()) > 0 || time.Now().After(deadline) {
			break
		}
	}
	show, _ = appA.Webhooks.GetWebhook(ctx, &agentv1.GetWebhookRequest{Id: id})
	if err != nil || len(ats.GetAttempts()) != 1 || !ats.GetAttempts()[0].GetOk() || ats.GetAttempts()[0].GetStatus() != 204 {
		t.Fatalf("attempts: %v %v", ats, err)
	}
	for _, b := range [][]byte{must(protojson.Marshal(list)), must(protojson.Marshal(show)), must(protojson.Marshal(ats))} {
		dump.Write(b)
	}
	auditDump, _ := admin.Admin.ListAudit(ctx, &agentv1.ListAuditRequest{})
	dump.Write(must(protojson.Marshal(auditDump)))
	if strings.Contains(dump.String(), secret) || strings.Contains(dump.String(), strings.TrimPrefix(secret, webhooks.SecretPrefix)) {
		t.Fatal("the signing secret appears in a listing, a status, the attempts or the audit log")
	}
	if show.GetWebhook().GetDelivery().GetDelivered() != 1 || show.GetWebhook().GetDelivery().GetCursor() != ev.Cursor() {
		t.Fatalf("delivery status %v", show.GetWebhook().GetDelivery())
	}

	// Another app neither sees nor touches it; an administrator sees it.
	if l, _ := appB.Webhooks.ListWebhooks(ctx, &agentv1.ListWebhooksRequest{}); len(l.GetWebhooks()) != 0 {
		t.Fatalf("app b lists %v", l)
	}
	for _, call := range []func() error{
		func() error { _, err := appB.Webhooks.GetWebhook(ctx, &agentv1.GetWebhookRequest{Id: id}); return err },
		func() error {
			_, err := appB.Webhooks.DeleteWebhook(ctx, &agentv1.DeleteWebhookRequest{Id: id})
			return err
		},
		func() error {
			_, err := appB.Webhooks.RotateWebhookSecret(ctx, &agentv1.RotateWebhookSecretRequest{Id: id})
			return err
		},
		func() error {
			_, err := appB.Webhooks.RedeliverWebhookEvent(ctx, &agentv1.RedeliverWebhookEventRequest{EventId: ev.Cursor()})
			return err
		},
	} {
		if err := call(); !errors.Is(err, client.ErrNotFound) {
			t.Fatalf("app b on app a's webhook: %v", err)
		}
	}
	if l, _ := admin.Webhooks.ListWebhooks(ctx, &agentv1.ListWebhooksRequest{}); len(l.GetWebhooks()) != 1 {
		t.Fatalf("administrator lists %v", l)
	}

	// Rotation through the API: a new secret, and the old one keeps working.
	rot, err := appA.Webhooks.RotateWebhookSecret(ctx, &agentv1.RotateWebhookSecretRequest{Id: id})
	if err != nil || rot.GetSecret() == secret || !strings.HasPrefix(rot.GetSecret(), webhooks.SecretPrefix) {
		t.Fatalf("rotate: %v", err)
	}
	// Redelivery through the API, verified by the receiver with the old secret.
	red, err := appA.Webhooks.RedeliverWebhookEvent(ctx, &agentv1.RedeliverWebhookEventRequest{EventId: ev.Cursor()})
	if err != nil || len(red.GetAttempts()) != 1 || !red.GetAttempts()[0].GetOk() || !red.GetAttempts()[0].GetRedelivery() {
		t.Fatalf("redeliver: %v %v", red, err)
	}

	// Disable and enable.
	dis, err := admin.Webhooks.DisableWebhook(ctx, &agentv1.DisableWebhookRequest{Id: id})
	if err != nil || dis.GetWebhook().GetState() != agentv1.Webhook_STATE_DISABLED || !strings.HasPrefix(dis.GetWebhook().GetDisabledReason(), "by_request") {
		t.Fatalf("disable: %v %v", dis, err)
	}
	en, err := appA.Webhooks.EnableWebhook(ctx, &agentv1.EnableWebhookRequest{Id: id, Resume: agentv1.EnableWebhookRequest_RESUME_NOW})
	if err != nil || en.GetWebhook().GetState() != agentv1.Webhook_STATE_ENABLED {
		t.Fatalf("enable: %v %v", en, err)
	}
	if _, err := appA.Webhooks.DeleteWebhook(ctx, &agentv1.DeleteWebhookRequest{Id: id}); err != nil {
		t.Fatal(err)
	}
	if _, err := appA.Webhooks.GetWebhook(ctx, &agentv1.GetWebhookRequest{Id: id}); !errors.Is(err, client.ErrNotFound) || reason(err) != "WEBHOOK_NOT_FOUND" {
		t.Fatalf("after delete: %v", err)
	}
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}
