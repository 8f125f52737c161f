package webhooks_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/medrelay/medrelay/agent/client"
	"github.com/medrelay/medrelay/internal/errdefs"
	"github.com/medrelay/medrelay/internal/events"
	"github.com/medrelay/medrelay/internal/webhooks"
)

func TestDeliversSignedCloudEventsInOrderToTheOwningAppOnly(t *testing.T) {
	e := newEnv(t)
	ra, rb := newReceiver(t, e.clock.Now), newReceiver(t, e.clock.Now)
	epA, secA := e.create("app-a", ra.srv.URL+"/hook")
	ra.setSecret(secA)
	_, secB := e.create("app-b", rb.srv.URL+"/hook")
	rb.setSecret(secB)
	if !strings.HasPrefix(secA, webhooks.SecretPrefix) || secA == secB {
		t.Fatalf("secrets %q %q", secA, secB)
	}

	var want []events.Event
	for i := range 30 {
		app := "app-a"
		if i%3 == 0 {
			app = "app-b"
		}
		ev := e.append(app, events.ConnectionStateChanged, events.StateChange{From: "pending", To: "active", Reason: fmt.Sprint(i)})
		if app == "app-a" {
			want = append(want, ev)
		}
	}
	eventually(t, "app-a's 20 deliveries", func() bool { return ra.count() >= 20 })
	eventually(t, "app-b's 10 deliveries", func() bool { return rb.count() >= 10 })

	got := ra.deliveries()
	if len(got) != len(want) {
		t.Fatalf("app-a got %d deliveries, want %d", len(got), len(want))
	}
	for i, d := range got {
		if d.VerifyErr != nil {
			t.Fatalf("delivery %d: signature: %v", i, d.VerifyErr)
		}
		ev := d.Event
		if ev == nil {
			t.Fatalf("delivery %d did not decode: %s", i, d.Body)
		}
		w := want[i]
		if ev.ID != w.Cursor() || ev.Type != w.Type || ev.SpecVersion != "1.0" || ev.Source == "" || ev.AppID != "app-a" || ev.ConnectionID != "conn-app-a" || !ev.Time.Equal(w.Time) {
			t.Fatalf("delivery %d is %+v, want event %+v", i, ev, w)
		}
		var data events.StateChange
		if err := json.Unmarshal(ev.Data, &data); err != nil || data.To != "active" {
			t.Fatalf("delivery %d data %s: %v", i, ev.Data, err)
		}
		if ct := d.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/cloudevents+json") {
			t.Fatalf("content type %q", ct)
		}
		if d.Header.Get(webhooks.HeaderWebhookID) != epA.ID || d.Header.Get(webhooks.HeaderEventID) != w.Cursor() || d.Header.Get(webhooks.HeaderAttempt) != "1" {
			t.Fatalf("headers %v", d.Header)
		}
	}
	for _, d := range rb.deliveries() {
		if d.Event == nil || d.Event.AppID != "app-b" {
			t.Fatalf("app-b's endpoint received %s", d.Body)
		}
	}
	// Progress is saved in the background, soon after the worker is idle.
	eventually(t, "the progress to be saved", func() bool { return e.status(epA.ID).Progress.Delivered == 20 })
	st := e.status(epA.ID)
	if st.Progress.Delivered != 20 || st.Progress.Cursor != want[len(want)-1].Seq || st.Progress.Pending != nil {
		t.Fatalf("progress %+v", st.Progress)
	}
}

func TestTypeFilterAndEventsBeforeCreationAreNotDelivered(t *testing.T) {
	e := newEnv(t)
	r := newReceiver(t, e.clock.Now)
	e.append("app", events.SessionCompleted, nil) // before the endpoint exists
	_, sec := e.create("app", r.srv.URL, events.SessionCompleted)
	r.setSecret(sec)
	e.append("app", events.ConnectionStateChanged, nil)
	e.append("app", events.SessionCompleted, map[string]string{"n": "1"})
	e.append("app", events.RecordsPullCompleted, nil)
	last := e.append("app", events.SessionCompleted, map[string]string{"n": "2"})
	eventually(t, "two deliveries", func() bool { return r.count() >= 2 })
	// A marker event of another type moves the cursor past everything.
	eventually(t, "cursor at the last event", func() bool {
		list, _ := e.m.List(context.Background(), webhooks.Access{AppID: "app"})
		return len(list) == 1 && list[0].Progress.Cursor >= last.Seq
	})
	got := r.deliveries()
	if len(got) != 2 || got[0].Event.Type != events.SessionCompleted || got[1].Event.ID != last.Cursor() {
		t.Fatalf("deliveries: %d", len(got))
	}
}

// The retry schedule, attempt by attempt, with a clock the test moves:
// immediately, 1 min, 5 min, 30 min, 2 h, 12 h, 24 h, 24 h, 24 h; then the
// endpoint is disabled and says so in the app's events and the log.
func TestRetryScheduleThenDisabledWithEvent(t *testing.T) {
	var logBuf syncBuffer
	e := &env{t: t, dir: t.TempDir(), clock: newClock(), logger: slog.New(slog.NewTextHandler(&logBuf, nil))}
	e.opts = []webhooks.Option{webhooks.WithClock(e.clock), webhooks.WithTimeout(2 * time.Second)}
	e.open()
	t.Cleanup(e.close)
	ctx := context.Background()

	failing := newReceiver(t, e.clock.Now)
	failing.setRespond(func(int, delivery) int { return http.StatusServiceUnavailable })
	watcher := newReceiver(t, e.clock.Now) // another endpoint of the same app
	ep, sec := e.create("app", failing.srv.URL+"/down?token=receiver-token")
	failing.setSecret(sec)
	_, wsec := e.create("app", watcher.srv.URL, events.WebhookEndpointDisable)
	watcher.setSecret(wsec)
	start := e.clock.Now()
	ev := e.append("app", events.ConnectionStateChanged, nil)

	schedule := []time.Duration{0, time.Minute, 5 * time.Minute, 30 * time.Minute, 2 * time.Hour, 12 * time.Hour, 24 * time.Hour, 24 * time.Hour, 24 * time.Hour}
	wantTimes := []time.Time{start}
	elapsed := time.Duration(0)
	for _, d := range schedule {
		elapsed += d
		wantTimes = append(wantTimes, start.Add(elapsed))
	}
	for i := 1; i <= len(wantTimes); i++ {
		eventually(t, fmt.Sprintf("attempt %d", i), func() bool { return failing.count() >= i })
		if i < len(wantTimes) {
			next := wantTimes[i].Sub(e.clock.Now())
			if next > 0 {
				// The worker must be waiting on the clock before it moves.
				eventually(t, "the worker to wait for its next attempt", func() bool { return e.clock.Waiting() >= 1 })
				if failing.count() != i {
					t.Fatalf("attempt %d came before its time", i+1)
				}
				st := e.status(ep.ID)
				if st.Progress.Pending == nil || st.Progress.Pending.Attempts != i || !st.Progress.Pending.NextAt.Equal(wantTimes[i]) {
					t.Fatalf("after attempt %d: pending %+v, want next at %s", i, st.Progress.Pending, wantTimes[i])
				}
				e.clock.Advance(next)
			}
		}
	}
	eventually(t, "the endpoint to be disabled", func() bool { return e.status(ep.ID).State == webhooks.Disabled })
	got := failing.deliveries()
	if len(got) != 10 {
		t.Fatalf("%d attempts, want 10", len(got))
	}
	for i, d := range got {
		if d.Header.Get(webhooks.HeaderAttempt) != fmt.Sprint(i+1) || d.Event == nil || d.Event.ID != ev.Cursor() {
			t.Fatalf("attempt %d: header %q, event %+v", i+1, d.Header.Get(webhooks.HeaderAttempt), d.Event)
		}
	}
	attempts, _, err := e.m.Attempts(ctx, webhooks.Access{AppID: "app"}, ep.ID, 0, 100, "")
	if err != nil || len(attempts) != 10 {
		t.Fatalf("recorded attempts: %d %v", len(attempts), err)
	}
	for i, at := range attempts { // newest first
		n := 10 - i
		if at.Number != n || !at.Time.Equal(wantTimes[n-1]) || at.Status != http.StatusServiceUnavailable || at.OK || at.Response != "answer 503" || at.Latency <= 0 {
			t.Fatalf("attempt record %d: %+v (want time %s)", n, at, wantTimes[n-1])
		}
	}
	st := e.status(ep.ID)
	if !strings.HasPrefix(st.DisabledReason, webhooks.ReasonDeliveryFailed) || !strings.Contains(st.DisabledReason, "HTTP 503") {
		t.Fatalf("disabled reason %q", st.DisabledReason)
	}

	// The app's event stream says so, and its other endpoint received it.
	var list []events.Event
	eventually(t, "a webhook.endpoint_disabled event", func() bool {
		list, err = e.log.Read(ctx, events.Filter{AppID: "app", Types: map[string]bool{events.WebhookEndpointDisable: true}}, 0, 10)
		return err != nil || len(list) > 0
	})
	if err != nil || len(list) != 1 {
		t.Fatalf("endpoint_disabled events: %v %v", list, err)
	}
	var data webhooks.DisabledData
	if err := json.Unmarshal(list[0].Data, &data); err != nil {
		t.Fatal(err)
	}
	if data.EndpointID != ep.ID || data.Reason != webhooks.ReasonDeliveryFailed || data.EventID != ev.Cursor() || data.Attempts != 10 || data.LastStatus != 503 {
		t.Fatalf("event data %+v", data)
	}
	if strings.Contains(data.URL, "receiver-token") || strings.Contains(logBuf.String(), "receiver-token") {
		t.Fatal("the URL's query (a receiver's token) reached the event or the log")
	}
	eventually(t, "the other endpoint to receive webhook.endpoint_disabled", func() bool { return watcher.count() >= 1 })
	if w := watcher.deliveries()[0]; w.Event.Type != events.WebhookEndpointDisable || w.VerifyErr != nil {
		t.Fatalf("watcher got %s (%v)", w.Body, w.VerifyErr)
	}
	if !strings.Contains(logBuf.String(), "webhook endpoint disabled") || !strings.Contains(logBuf.String(), "level=WARN") {
		t.Fatalf("log lacks the warning:\n%s", logBuf.String())
	}

	// Nothing more is tried while disabled, whatever the clock does.
	e.append("app", events.ConnectionStateChanged, nil)
	e.clock.Advance(72 * time.Hour)
	if e.status(ep.ID).State != webhooks.Disabled {
		t.Fatal("re-enabled by itself")
	}

	// Re-enabled, it resumes with the event that failed, in order.
	failing.setRespond(nil)
	if _, err := e.m.Enable(ctx, webhooks.Access{AppID: "app"}, ep.ID, webhooks.ResumeUndelivered); err != nil {
		t.Fatal(err)
	}
	// The failed event, the disabled notice, and the event appended since.
	eventually(t, "the backlog after enabling", func() bool { return failing.count() >= 13 })
	tail := failing.deliveries()[10:]
	if tail[0].Event.ID != ev.Cursor() || tail[0].Header.Get(webhooks.HeaderAttempt) != "1" || tail[1].Event.Type != events.WebhookEndpointDisable {
		t.Fatalf("after enabling: %s, then %s", tail[0].Body, tail[1].Body)
	}
}

func TestRecoversAfterFailuresWithoutReordering(t *testing.T) {
	e := newEnv(t)
	r := newReceiver(t, e.clock.Now)
	_, sec := e.create("app", r.srv.URL)
	r.setSecret(sec)
	// The first two attempts of the first event fail.
	r.setRespond(func(n int, d delivery) int {
		if n < 2 {
			return http.StatusInternalServerError
		}
		return http.StatusNoContent
	})
	var want []string
	for range 5 {
		want = append(want, e.append("app", events.ConnectionStateChanged, nil).Cursor())
	}
	// Attempt 1 fails, attempt 2 is immediate and fails, then 1 minute.
	eventually(t, "two failed attempts", func() bool { return r.count() >= 2 && e.clock.Waiting() >= 1 })
	e.clock.Advance(time.Minute)
	eventually(t, "all deliveries", func() bool { return r.count() >= 7 })
	var ids []string
	for _, d := range r.deliveries() {
		ids = append(ids, d.Event.ID)
	}
	wantIDs := append([]string{want[0], want[0]}, want...)
	if fmt.Sprint(ids) != fmt.Sprint(wantIDs) {
		t.Fatalf("delivered %v, want %v", ids, wantIDs)
	}
}

// A delivery waiting for its next attempt is still pending after a
// restart, resumes on its schedule with the right attempt number, and the
// events behind it follow in order.
func TestPendingDeliverySurvivesRestart(t *testing.T) {
	e := newEnv(t)
	r := newReceiver(t, e.clock.Now)
	ep, sec := e.create("app", r.srv.URL)
	r.setSecret(sec)
	r.setRespond(func(int, delivery) int { return http.StatusBadGateway })
	first := e.append("app", events.ConnectionStateChanged, nil)
	second := e.append("app", events.SessionCompleted, nil)
	eventually(t, "two failed attempts", func() bool { return r.count() >= 2 && e.clock.Waiting() >= 1 })

	e.restart()
	st := e.status(ep.ID)
	if st.Progress.Pending == nil || st.Progress.Pending.Seq != first.Seq || st.Progress.Pending.Attempts != 2 {
		t.Fatalf("after restart pending is %+v", st.Progress.Pending)
	}
	r.setRespond(nil)
	// Not before its time: the restarted worker waits for the clock.
	eventually(t, "the restarted worker to wait", func() bool { return e.clock.Waiting() >= 1 })
	if r.count() != 2 {
		t.Fatalf("%d attempts before the retry was due", r.count())
	}
	e.clock.Advance(time.Minute)
	eventually(t, "the retry and the next event", func() bool { return r.count() >= 4 })
	got := r.deliveries()
	if got[2].Event.ID != first.Cursor() || got[2].Header.Get(webhooks.HeaderAttempt) != "3" || got[3].Event.ID != second.Cursor() || got[3].Header.Get(webhooks.HeaderAttempt) != "1" {
		t.Fatalf("after restart: %s (attempt %s), %s", got[2].Body, got[2].Header.Get(webhooks.HeaderAttempt), got[3].Body)
	}
	// Events appended while the agent was down are delivered after a restart
	// too. (Stopped before the cursor is saved, the last delivery would be
	// made again: at least once.)
	eventually(t, "the cursor to pass the second event", func() bool { return e.status(ep.ID).Progress.Cursor == second.Seq })
	e.close()
	db := openDB(t, e.dir)
	l := events.New(db, quiet)
	third, err := l.Append(context.Background(), events.Event{Type: events.SessionCompleted, AppID: "app"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	e.open()
	eventually(t, "the event appended while webhooks were stopped", func() bool { return r.count() >= 5 })
	if got := r.deliveries()[4]; got.Event.ID != third.Cursor() {
		t.Fatalf("got %s", got.Body)
	}
}

// One endpoint that does not answer must not hold back another, nor the
// agent appending events.
func TestSlowEndpointDelaysNoOneElse(t *testing.T) {
	e := newEnv(t, webhooks.WithTimeout(time.Minute))
	release := make(chan struct{})
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(release) }) })
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(slow.Close)
	fast := newReceiver(t, e.clock.Now)
	e.create("app", slow.URL)
	_, sec := e.create("app", fast.srv.URL)
	fast.setSecret(sec)
	const n = 50
	for range n { // every append returns while the slow endpoint hangs
		e.append("app", events.ConnectionStateChanged, nil)
	}
	eventually(t, "the fast endpoint to get every event", func() bool { return fast.count() >= n })
	select {
	case <-release:
		t.Fatal("released early")
	default: // the slow endpoint is still stuck on its first event
	}
	once.Do(func() { close(release) })
}

func TestRedeliverSendsAgainAndIsRecorded(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	r := newReceiver(t, e.clock.Now)
	other := newReceiver(t, e.clock.Now)
	ep, sec := e.create("app", r.srv.URL)
	r.setSecret(sec)
	e.create("other-app", other.srv.URL)
	ev := e.append("app", events.RecordsPullCompleted, map[string]int{"resources": 12})
	otherEv := e.append("other-app", events.RecordsPullCompleted, nil)
	eventually(t, "the first delivery to be recorded", func() bool {
		ats, _, _ := e.m.Attempts(ctx, webhooks.Access{AppID: "app"}, ep.ID, 0, 10, "")
		return len(ats) == 1
	})

	ats, err := e.m.Redeliver(ctx, webhooks.Access{AppID: "app"}, ev.Seq, "")
	if err != nil || len(ats) != 1 || !ats[0].OK || !ats[0].Manual || ats[0].EndpointID != ep.ID {
		t.Fatalf("redeliver: %+v %v", ats, err)
	}
	got := r.deliveries()
	if len(got) != 2 || got[1].Event.ID != ev.Cursor() || got[1].Header.Get(webhooks.HeaderAttempt) != "redelivery" || got[1].VerifyErr != nil {
		t.Fatalf("deliveries %d, last %s", len(got), got[len(got)-1].Body)
	}
	list, _, err := e.m.Attempts(ctx, webhooks.Access{AppID: "app"}, ep.ID, ev.Seq, 10, "")
	if err != nil || len(list) != 2 || !list[0].Manual || list[1].Manual {
		t.Fatalf("attempts of the event: %+v %v", list, err)
	}
	// Another app's event, or this event to another app's endpoint: no.
	if _, err := e.m.Redeliver(ctx, webhooks.Access{AppID: "app"}, otherEv.Seq, ""); !errors.Is(err, webhooks.ErrEventNotFound) {
		t.Fatalf("redeliver another app's event: %v", err)
	}
	if _, err := e.m.Redeliver(ctx, webhooks.Access{AppID: "other-app"}, ev.Seq, ep.ID); !errors.Is(err, errdefs.NotFound) {
		t.Fatalf("redeliver to another app's endpoint: %v", err)
	}
	if _, err := e.m.Redeliver(ctx, webhooks.Access{AppID: "app"}, 999999, ""); !errors.Is(err, webhooks.ErrEventNotFound) {
		t.Fatalf("redeliver a missing event: %v", err)
	}
	// An administrator may redeliver any app's event.
	if ats, err := e.m.Redeliver(ctx, webhooks.Access{All: true}, ev.Seq, ep.ID); err != nil || len(ats) != 1 {
		t.Fatalf("administrator redeliver: %v %v", ats, err)
	}
}

func TestRotatedSecretSignsAlongsideThePreviousFor24Hours(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	r := newReceiver(t, e.clock.Now)
	ep, oldSec := e.create("app", r.srv.URL)
	r.setSecret(oldSec)
	_, newSec, err := e.m.RotateSecret(ctx, webhooks.Access{AppID: "app"}, ep.ID)
	if err != nil || newSec.Reveal() == oldSec {
		t.Fatal(err)
	}
	e.append("app", events.SessionCompleted, nil)
	eventually(t, "a delivery", func() bool { return r.count() >= 1 })
	d := r.deliveries()[0]
	if strings.Count(d.Header.Get(client.WebhookSignatureHeader), "v1=") != 2 {
		t.Fatalf("header during rotation: %q", d.Header.Get(client.WebhookSignatureHeader))
	}
	for _, s := range []string{oldSec, newSec.Reveal()} {
		if err := client.VerifyWebhookSignature(d.Header.Get(client.WebhookSignatureHeader), d.Body, s, client.WithWebhookClock(e.clock.Now)); err != nil {
			t.Fatalf("verify with a secret of the rotation: %v", err)
		}
	}
	e.clock.Advance(24*time.Hour + time.Second)
	e.append("app", events.SessionCompleted, nil)
	eventually(t, "a second delivery", func() bool { return r.count() >= 2 })
	d = r.deliveries()[1]
	h := d.Header.Get(client.WebhookSignatureHeader)
	if strings.Count(h, "v1=") != 1 {
		t.Fatalf("header a day after rotation: %q", h)
	}
	if err := client.VerifyWebhookSignature(h, d.Body, oldSec, client.WithWebhookClock(e.clock.Now)); !errors.Is(err, client.ErrWebhookSignature) {
		t.Fatalf("the previous secret still verifies a day later: %v", err)
	}
	if err := client.VerifyWebhookSignature(h, d.Body, newSec.Reveal(), client.WithWebhookClock(e.clock.Now)); err != nil {
		t.Fatal(err)
	}
	// Another app cannot rotate it.
	if _, _, err := e.m.RotateSecret(ctx, webhooks.Access{AppID: "intruder"}, ep.ID); !errors.Is(err, webhooks.ErrNotFound) {
		t.Fatalf("rotate by another app: %v", err)
	}
}

// The secret is shown once: it is not in listings, statuses, attempts,
// events or the log (at debug level), and a restart still signs with it.
func TestSecretStaysSecret(t *testing.T) {
	var logBuf syncBuffer
	e := &env{t: t, dir: t.TempDir(), clock: newClock(), logger: slog.New(slog.NewTextHandler(&logBuf, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	e.opts = []webhooks.Option{webhooks.WithClock(e.clock), webhooks.WithTimeout(2 * time.Second)}
	e.open()
	t.Cleanup(e.close)
	ctx := context.Background()
	r := newReceiver(t, e.clock.Now)
	r.setRespond(func(n int, _ delivery) int {
		if n == 0 {
			return 500
		}
		return 200
	})
	ep, sec := e.create("app", r.srv.URL)
	r.setSecret(sec)
	_, rotated, err := e.m.RotateSecret(ctx, webhooks.Access{AppID: "app"}, ep.ID)
	if err != nil {
		t.Fatal(err)
	}
	e.append("app", events.SessionCompleted, nil)
	eventually(t, "a retry wait", func() bool { return e.clock.Waiting() >= 1 || r.count() >= 2 })
	e.clock.Advance(time.Minute)
	eventually(t, "the delivery", func() bool { return r.count() >= 2 })
	e.restart()
	e.append("app", events.SessionCompleted, nil)
	eventually(t, "a delivery after restart", func() bool { return r.count() >= 3 })
	if d := r.deliveries()[2]; d.VerifyErr != nil {
		t.Fatalf("after restart: %v", d.VerifyErr)
	}

	var dump bytes.Buffer
	list, _ := e.m.List(ctx, webhooks.Access{All: true})
	st, _ := e.m.Get(ctx, webhooks.Access{AppID: "app"}, ep.ID)
	ats, _, _ := e.m.Attempts(ctx, webhooks.Access{AppID: "app"}, ep.ID, 0, 100, "")
	evs, _ := e.log.Read(ctx, events.Filter{All: true}, 0, 100)
	for _, v := range []any{list, st, ats, evs} {
		json.NewEncoder(&dump).Encode(v)
		fmt.Fprintf(&dump, "%v %+v %#v\n", v, v, v)
	}
	dump.WriteString(logBuf.String())
	for _, s := range []string{sec, rotated.Reveal(), strings.TrimPrefix(sec, webhooks.SecretPrefix)} {
		if strings.Contains(dump.String(), s) {
			t.Fatalf("a signing secret leaked into listings, attempts, events or the log")
		}
	}
	if fmt.Sprint(rotated) != "[redacted]" {
		t.Fatalf("a secret formats as %q", fmt.Sprint(rotated))
	}
}

func TestURLRules(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	for _, c := range []struct {
		url string
		err error
	}{
		{"https://93.184.216.34/hook", nil},
		{"http://127.0.0.1:9/hook", nil},
		{"http://localhost:9/hook", nil},
		{"http://10.1.2.3/hook", nil},
		{"http://192.168.1.20:8080/hook", nil},
		{"http://[::1]:9/hook", nil},
		{"http://[fd00::1]/hook", nil},
		{"http://93.184.216.34/hook", webhooks.ErrInsecureURL},
		{"http://169.254.169.254/latest", webhooks.ErrInsecureURL},
		{"http://[2001:db8::1]/hook", webhooks.ErrInsecureURL},
		{"ftp://10.0.0.1/hook", webhooks.ErrBadURL},
		{"file:///etc/passwd", webhooks.ErrBadURL},
		{"/relative", webhooks.ErrBadURL},
		{"https://user:pass@example.org/hook", webhooks.ErrBadURL},
		{"https://example.org/hook#frag", webhooks.ErrBadURL},
		{"", webhooks.ErrBadURL},
	} {
		_, _, err := e.m.Create(ctx, "app", webhooks.CreateRequest{URL: c.url})
		if (c.err == nil) != (err == nil) || (c.err != nil && !errors.Is(err, c.err)) {
			t.Errorf("%q: %v, want %v", c.url, err, c.err)
		}
	}
	if _, _, err := e.m.Create(ctx, "", webhooks.CreateRequest{URL: "https://example.org"}); !errors.Is(err, webhooks.ErrNoApp) {
		t.Errorf("without an app: %v", err)
	}
	if _, _, err := e.m.Create(ctx, "app", webhooks.CreateRequest{URL: "https://example.org", Types: []string{"Not A Type"}}); !errors.Is(err, webhooks.ErrBadEventType) {
		t.Errorf("bad type: %v", err)
	}

	// With the configuration flag, public plain http is allowed.
	open := newEnv(t, webhooks.WithAllowPublicHTTP(true))
	if _, _, err := open.m.Create(ctx, "app", webhooks.CreateRequest{URL: "http://93.184.216.34/hook"}); err != nil {
		t.Errorf("public http with the flag: %v", err)
	}
}

func TestRedirectsAreNotFollowed(t *testing.T) {
	e := newEnv(t)
	target := newReceiver(t, e.clock.Now)
	// A real redirect (307 with a Location) to a receiver that would accept.
	loc := httptest.NewServer(http.RedirectHandler(target.srv.URL, http.StatusTemporaryRedirect))
	t.Cleanup(loc.Close)
	ep, _ := e.create("app", loc.URL)
	e.append("app", events.SessionCompleted, nil)
	eventually(t, "a failed attempt", func() bool {
		ats, _, _ := e.m.Attempts(context.Background(), webhooks.Access{All: true}, ep.ID, 0, 10, "")
		return len(ats) >= 1
	})
	ats, _, _ := e.m.Attempts(context.Background(), webhooks.Access{All: true}, ep.ID, 0, 10, "")
	if ats[len(ats)-1].Status != http.StatusTemporaryRedirect || ats[len(ats)-1].OK {
		t.Fatalf("attempt %+v", ats[len(ats)-1])
	}
	if target.count() != 0 {
		t.Fatal("the redirect was followed")
	}
}

// A receiver that never answers is abandoned when the timeout passes: the
// server sees its request cancelled, and the attempt is a failure saying
// "timeout". The timeout is injected (100 ms); that the default is the
// documented 5 s is read in timeout_internal_test.go, never waited for.
func TestTimeoutIsAFailedAttempt(t *testing.T) {
	e := newEnv(t, webhooks.WithTimeout(100*time.Millisecond))
	hang := make(chan struct{})
	var abandoned atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body) // the server notices a gone client only once the body is read
		select {
		case <-hang:
		case <-r.Context().Done():
			abandoned.Add(1)
		}
	}))
	t.Cleanup(srv.Close)
	// Runs before srv.Close (cleanups run last first), which waits for the
	// handler: a delivery that never lets go fails the test, not hangs it.
	t.Cleanup(func() { close(hang) })
	ep, _ := e.create("app", srv.URL)
	e.append("app", events.SessionCompleted, nil)
	eventually(t, "the receiver to see its request abandoned", func() bool { return abandoned.Load() >= 1 })
	// Two attempts (the first retry is immediate), then a wait.
	eventually(t, "two timed-out attempts", func() bool {
		ats, _, _ := e.m.Attempts(context.Background(), webhooks.Access{All: true}, ep.ID, 0, 10, "")
		return len(ats) >= 2
	})
	ats, _, _ := e.m.Attempts(context.Background(), webhooks.Access{All: true}, ep.ID, 0, 10, "")
	for _, at := range ats {
		if at.OK || at.Status != 0 || !strings.Contains(at.Error, "timeout") || strings.Contains(at.Error, srv.URL) {
			t.Fatalf("attempt %+v", at)
		}
	}
}

// An endpoint whose next events were pruned before it got them is disabled
// with a reason and an event, never advanced in silence; enabling it again
// asks where to resume.
func TestPrunedBacklogDisablesInsteadOfSkipping(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	r := newReceiver(t, e.clock.Now)
	watcher := newReceiver(t, e.clock.Now)
	ep, sec := e.create("app", r.srv.URL, events.SessionCompleted)
	r.setSecret(sec)
	e.create("app", watcher.srv.URL, events.WebhookEndpointDisable)

	// While the agent's webhooks are stopped, events arrive and age out.
	e.m.Stop()
	old := time.Now().Add(-48 * time.Hour)
	for range 3 {
		if _, err := e.log.Append(ctx, events.Event{Type: events.SessionCompleted, AppID: "app", Time: old}, nil); err != nil {
			t.Fatal(err)
		}
	}
	kept := e.append("app", events.SessionCompleted, nil)
	pl := events.New(e.db, quiet, events.WithRetention(24*time.Hour))
	if n, err := pl.Prune(ctx, time.Now()); err != nil || n != 3 {
		t.Fatalf("pruned %d: %v", n, err)
	}
	e.m = webhooks.New(e.db, e.log, e.logger, e.opts...)
	if err := e.m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the endpoint to be disabled", func() bool { return e.status(ep.ID).State == webhooks.Disabled })
	if st := e.status(ep.ID); !strings.HasPrefix(st.DisabledReason, webhooks.ReasonEventsExpired) {
		t.Fatalf("reason %q", st.DisabledReason)
	}
	if r.count() != 0 {
		t.Fatal("delivered past a gap")
	}
	eventually(t, "the disabled notice on the app's other endpoint", func() bool { return watcher.count() >= 1 })

	// Resuming with the undelivered events is impossible: say so.
	if _, err := e.m.Enable(ctx, webhooks.Access{AppID: "app"}, ep.ID, webhooks.ResumeUndelivered); !errors.Is(err, webhooks.ErrEventsExpired) {
		t.Fatalf("enable: %v", err)
	}
	if _, err := e.m.Enable(ctx, webhooks.Access{AppID: "app"}, ep.ID, webhooks.ResumeOldestRetained); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the retained event", func() bool { return r.count() >= 1 })
	if got := r.deliveries()[0]; got.Event.ID != kept.Cursor() {
		t.Fatalf("resumed with %s", got.Body)
	}
}

func TestEndpointsBelongToTheirApp(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	epA, _ := e.create("app-a", "https://a.example/hook")
	e.create("app-b", "https://b.example/hook")
	list, err := e.m.List(ctx, webhooks.Access{AppID: "app-a"})
	if err != nil || len(list) != 1 || list[0].ID != epA.ID {
		t.Fatalf("app-a lists %v %v", list, err)
	}
	if all, _ := e.m.List(ctx, webhooks.Access{All: true}); len(all) != 2 {
		t.Fatalf("administrator lists %d", len(all))
	}
	b := webhooks.Access{AppID: "app-b"}
	if _, err := e.m.Get(ctx, b, epA.ID); !errors.Is(err, webhooks.ErrNotFound) {
		t.Fatalf("get: %v", err)
	}
	if _, err := e.m.Delete(ctx, b, epA.ID); !errors.Is(err, webhooks.ErrNotFound) {
		t.Fatalf("delete: %v", err)
	}
	if _, err := e.m.Disable(ctx, b, epA.ID); !errors.Is(err, webhooks.ErrNotFound) {
		t.Fatalf("disable: %v", err)
	}
	if _, _, err := e.m.Attempts(ctx, b, epA.ID, 0, 10, ""); !errors.Is(err, webhooks.ErrNotFound) {
		t.Fatalf("attempts: %v", err)
	}
	if _, err := e.m.Delete(ctx, webhooks.Access{AppID: "app-a"}, epA.ID); err != nil {
		t.Fatal(err)
	}
	if list, _ := e.m.List(ctx, webhooks.Access{All: true}); len(list) != 1 {
		t.Fatalf("after delete %d", len(list))
	}
	for range webhooks.MaxEndpointsPerApp - 1 {
		e.create("app-b", "https://b.example/hook")
	}
	if _, _, err := e.m.Create(ctx, "app-b", webhooks.CreateRequest{URL: "https://b.example/hook"}); !errors.Is(err, webhooks.ErrTooMany) {
		t.Fatalf("past the limit: %v", err)
	}
}

func TestDisableStopsAndEnableFromNowSkipsTheBacklog(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	r := newReceiver(t, e.clock.Now)
	ep, sec := e.create("app", r.srv.URL)
	r.setSecret(sec)
	a := webhooks.Access{AppID: "app"}
	if _, err := e.m.Disable(ctx, a, ep.ID); err != nil {
		t.Fatal(err)
	}
	if st := e.status(ep.ID); st.State != webhooks.Disabled || !strings.HasPrefix(st.DisabledReason, webhooks.ReasonByRequest) {
		t.Fatalf("status %+v", st.Endpoint)
	}
	e.append("app", events.SessionCompleted, nil)
	e.append("app", events.SessionCompleted, nil)
	if _, err := e.m.Enable(ctx, a, ep.ID, webhooks.ResumeNow); err != nil {
		t.Fatal(err)
	}
	next := e.append("app", events.SessionCompleted, nil)
	eventually(t, "the next event", func() bool { return r.count() >= 1 })
	if got := r.deliveries(); len(got) != 1 || got[0].Event == nil || got[0].Event.ID != next.Cursor() {
		t.Fatalf("after enabling from now: %d deliveries, first %s", len(got), got[0].Body)
	}
}

// syncBuffer is a bytes.Buffer safe for the logger's concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// The endpoints of a revoked app stop: disabled with a reason, nothing more
// delivered.
func TestRevokedAppsEndpointsStop(t *testing.T) {
	var revoked atomic.Bool
	e := newEnv(t, webhooks.WithAppCheck(func(_ context.Context, app string) bool { return !revoked.Load() }))
	r := newReceiver(t, e.clock.Now)
	ep, sec := e.create("app", r.srv.URL, events.SessionCompleted)
	r.setSecret(sec)
	e.append("app", events.SessionCompleted, nil)
	eventually(t, "first delivery", func() bool { return r.count() == 1 })
	revoked.Store(true)
	e.append("app", events.SessionCompleted, nil)
	eventually(t, "endpoint disabled", func() bool {
		st := e.status(ep.ID)
		return st.Endpoint.State == webhooks.Disabled && strings.HasPrefix(st.Endpoint.DisabledReason, webhooks.ReasonAppRevoked)
	})
	if r.count() != 1 {
		t.Fatalf("%d deliveries after the app was revoked", r.count()-1)
	}
}

// Retries give up at the end of the documented window: ten attempts over
// about three and a half days from the first (docs/webhooks.md, "Order,
// retries and the attempt history"), also when the agent was stopped in the
// middle of them. A retry found overdue after a restart is made once; when
// it fails after the window has passed the endpoint is disabled, instead of
// the rest of the schedule starting over days after the event. A shorter
// stop, inside the window, does not cut the schedule short.
func TestRetriesGiveUpAtTheEndOfTheWindow(t *testing.T) {
	var window time.Duration
	for _, d := range webhooks.DefaultSchedule {
		window += d
	}
	for _, tc := range []struct {
		name     string
		down     time.Duration
		giveUp   bool
		nextWait time.Duration // after the attempt made on restart
	}{
		{name: "stopped past the window", down: 10 * 24 * time.Hour, giveUp: true},
		{name: "stopped inside the window", down: time.Hour, nextWait: 5 * time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			e := newEnv(t)
			r := newReceiver(t, e.clock.Now)
			ep, sec := e.create("app", r.srv.URL)
			r.setSecret(sec)
			r.setRespond(func(int, delivery) int { return http.StatusServiceUnavailable })
			start := e.clock.Now()
			ev := e.append("app", events.ConnectionStateChanged, nil)
			// Attempts 1 and 2 (the first retry is at once), then a minute's wait.
			eventually(t, "two failed attempts", func() bool { return r.count() >= 2 && e.clock.Waiting() >= 1 })

			e.close()
			e.clock.Advance(tc.down) // also fires the stopped worker's timer
			if e.clock.Waiting() != 0 {
				t.Fatalf("%d timers left before the restart", e.clock.Waiting())
			}
			e.open()
			// The overdue retry is made at once; then the worker gives up or
			// waits on the clock for the next.
			eventually(t, "the resumed worker to give up or wait", func() bool {
				return r.count() >= 3 && (e.status(ep.ID).State == webhooks.Disabled || e.clock.Waiting() >= 1)
			})
			if n := r.count(); n != 3 {
				t.Fatalf("%d attempts, want 3", n)
			}
			if got := r.deliveries()[2]; got.Header.Get(webhooks.HeaderAttempt) != "3" || got.Event == nil || got.Event.ID != ev.Cursor() {
				t.Fatalf("the attempt after the restart: %s (attempt %q)", got.Body, got.Header.Get(webhooks.HeaderAttempt))
			}
			st := e.status(ep.ID)
			if !tc.giveUp {
				want := start.Add(tc.down + tc.nextWait)
				if st.State != webhooks.Enabled || st.Progress.Pending == nil || st.Progress.Pending.Attempts != 3 || !st.Progress.Pending.NextAt.Equal(want) {
					t.Fatalf("inside the window: %s, pending %+v, want attempt 4 at %s", st.State, st.Progress.Pending, want)
				}
				r.setRespond(nil)
				e.clock.Advance(tc.nextWait)
				eventually(t, "the fourth attempt", func() bool { return e.status(ep.ID).Progress.Cursor == ev.Seq })
				return
			}
			if st.State != webhooks.Disabled || !strings.HasPrefix(st.DisabledReason, webhooks.ReasonDeliveryFailed) ||
				!strings.Contains(st.DisabledReason, "failed 3 attempts") || !strings.Contains(st.DisabledReason, "retries end 86h36m0s after the first attempt") {
				t.Fatalf("past the window (%s after the first attempt, window %s): %s %q, pending %+v",
					e.clock.Now().Sub(start), window, st.State, st.DisabledReason, st.Progress.Pending)
			}
			var list []events.Event
			var err error
			eventually(t, "a webhook.endpoint_disabled event", func() bool {
				list, err = e.log.Read(ctx, events.Filter{AppID: "app", Types: map[string]bool{events.WebhookEndpointDisable: true}}, 0, 10)
				return err != nil || len(list) > 0
			})
			var data webhooks.DisabledData
			if err != nil || json.Unmarshal(list[0].Data, &data) != nil || data.Attempts != 3 || data.EventID != ev.Cursor() || data.LastStatus != http.StatusServiceUnavailable {
				t.Fatalf("endpoint_disabled event: %v %+v", err, data)
			}
			// Given up: nothing more is tried, whatever the clock does.
			e.clock.Advance(window)
			if n := r.count(); n != 3 {
				t.Fatalf("%d attempts after giving up", n)
			}
		})
	}
}
