package webhooks

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/medrelay/medrelay/internal/events"
	"github.com/medrelay/medrelay/internal/store"
)

// Delivery headers besides SignatureHeader.
const (
	HeaderWebhookID = "Medrelay-Webhook-Id"
	HeaderEventID   = "Medrelay-Event-Id"
	HeaderEventType = "Medrelay-Event-Type"
	// HeaderAttempt is the scheduled attempt's number (1 = first); manual
	// redeliveries send "redelivery".
	HeaderAttempt = "Medrelay-Delivery-Attempt"
)

// snippetBytes is how much of a response body an attempt keeps.
const snippetBytes = 1024

// readBatch is how many events a worker reads at a time.
const readBatch = 200

// worker delivers one enabled endpoint's events in order.
type worker struct {
	id, app string
	// wake is nudged (never blocking) when the app gets an event.
	wake chan struct{}
	// notified is the highest sequence the tap announced for the app.
	notified atomic.Uint64
	cancel   context.CancelFunc
	done     chan struct{}
	// unsaved are successful attempts not yet written, with the progress
	// they lead to: written together every flushEvery deliveries, when the
	// worker goes idle, before a failure is recorded, and when it stops.
	unsaved []Attempt
}

// flushEvery bounds how many delivered events a crash can make the agent
// deliver again (at least once allows it) in exchange for one write per
// batch instead of one per delivery.
const flushEvery = 64

// startWorker starts the endpoint's worker unless it runs already or the
// manager is not started (Start will).
func (m *Manager) startWorker(ep Endpoint) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.ctx == nil || m.stopped {
		return
	}
	if _, ok := m.workers[ep.ID]; ok {
		return
	}
	ctx, cancel := context.WithCancel(m.ctx)
	w := &worker{id: ep.ID, app: ep.AppID, wake: make(chan struct{}, 1), cancel: cancel, done: make(chan struct{})}
	m.workers[ep.ID] = w
	m.byApp[ep.AppID] = append(m.byApp[ep.AppID], w)
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		defer close(w.done)
		defer cancel()
		m.run(ctx, w)
		m.mu.Lock()
		m.removeLocked(w)
		m.mu.Unlock()
	}()
}

func (m *Manager) removeLocked(w *worker) {
	if m.workers[w.id] == w {
		delete(m.workers, w.id)
	}
	ws := m.byApp[w.app]
	for i, x := range ws {
		if x == w {
			m.byApp[w.app] = append(ws[:i:i], ws[i+1:]...)
			break
		}
	}
	if len(m.byApp[w.app]) == 0 {
		delete(m.byApp, w.app)
	}
}

// stopWorker cuts the endpoint's worker and waits for it to end.
func (m *Manager) stopWorker(id string) {
	m.mu.Lock()
	w := m.workers[id]
	if w != nil {
		m.removeLocked(w)
	}
	m.mu.Unlock()
	if w != nil {
		w.cancel()
		<-w.done
	}
}

// run follows the app's events from the endpoint's cursor until ctx ends
// or the endpoint is disabled.
func (m *Manager) run(ctx context.Context, w *worker) {
	log := m.log.With("endpoint", w.id, "app", w.app)
	var p Progress
	dirty := false // p has moved since it was last saved
	idle := time.NewTimer(time.Hour)
	idle.Stop()
	defer idle.Stop()
	// Whatever way the worker ends, deliveries made are saved (the store
	// closes only after the workers stop).
	defer func() {
		if dirty || len(w.unsaved) > 0 {
			m.flush(w, p)
		}
	}()
	for {
		var err error
		p, err = m.progress.Get(ctx, w.id)
		if err == nil || errors.Is(err, store.ErrNotFound) {
			break
		}
		if ctx.Err() != nil {
			return
		}
		log.Error("read delivery progress; retrying", "err", err)
		if !m.sleep(ctx, 10*time.Second) {
			return
		}
	}
	for ctx.Err() == nil {
		// Taken before reading, so an append in between is not missed.
		changed := m.events.Changed()
		batch, err := m.events.Read(ctx, events.Filter{AppID: w.app}, p.Cursor, readBatch)
		// Cursor 0 is "nothing seen yet" here, not "from the oldest
		// retained": events pruned since would be missed too.
		if errors.Is(err, events.ErrCursorExpired) || (err == nil && p.Cursor == 0) {
			c, ok := m.liveConfig(w.id)
			if !ok {
				return
			}
			missed, through, gerr := m.gap(ctx, c.ep, p.Cursor)
			switch {
			case gerr != nil:
				err = gerr
			case missed:
				m.autoDisable(ctx, w, p, ReasonEventsExpired,
					fmt.Sprintf("events after %d were pruned before they could be delivered (events are kept for the agent's retention); enable it again from the oldest retained event or from now", p.Cursor), nil)
				return
			case through > p.Cursor:
				// Only events of types it does not take were pruned.
				p.Cursor = through
				m.flush(w, p)
				continue
			}
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			log.Error("read events; retrying", "err", err)
			if !m.sleep(ctx, 10*time.Second) {
				return
			}
			continue
		}
		skipped := false
		for _, e := range batch {
			c, ok := m.liveConfig(w.id)
			if !ok {
				return
			}
			if !c.ep.Wants(e.Type) {
				p.Cursor, skipped = e.Seq, true
				continue
			}
			skipped = false
			if !m.deliver(ctx, w, e, &p) {
				return
			}
		}
		dirty = dirty || skipped || len(w.unsaved) > 0
		if len(batch) == readBatch {
			continue
		}
		// The tap announced an event of this app that the read did not
		// return: an earlier append (of any app) is still committing and
		// holds it back. Wait for the next commit instead of the next tap.
		wait := (<-chan struct{})(w.wake)
		if w.notified.Load() > p.Cursor {
			wait = changed
		}
		// Idle: what was delivered or skipped is saved if nothing new comes
		// within idleFlush (one write per burst, not one per event).
		var flushNow <-chan time.Time
		if dirty {
			idle.Reset(idleFlush)
			flushNow = idle.C
		}
		select {
		case <-ctx.Done():
			return
		case <-wait:
			idle.Stop()
		case <-flushNow:
			m.flush(w, p)
			dirty = false
			select {
			case <-ctx.Done():
				return
			case <-wait:
			}
		}
	}
}

// idleFlush is how long an idle worker waits for more events before saving
// its progress. Wall time, not the schedule's clock: it only batches writes.
const idleFlush = 100 * time.Millisecond

// gap tells whether events of the endpoint's app after cursor were pruned,
// and whether any of them was of a type the endpoint takes (missed). through
// is the app's newest pruned event, past which a cursor may move when
// nothing was missed.
func (m *Manager) gap(ctx context.Context, ep Endpoint, cursor uint64) (missed bool, through uint64, err error) {
	through, err = m.events.PrunedThrough(ctx, events.Filter{AppID: ep.AppID})
	if err != nil || through <= cursor {
		return false, through, err
	}
	if len(ep.Types) == 0 {
		return true, through, nil
	}
	types := map[string]bool{}
	for _, t := range ep.Types {
		types[t] = true
	}
	wanted, err := m.events.PrunedThrough(ctx, events.Filter{AppID: ep.AppID, Types: types})
	return wanted > cursor, through, err
}

func (m *Manager) sleep(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-m.clock.After(d):
		return true
	}
}

// deliver sends e until it is accepted (true) or the schedule runs out and
// the endpoint is disabled, or ctx ends (false). A pending retry of e read
// from the store resumes where it stood.
func (m *Manager) deliver(ctx context.Context, w *worker, e events.Event, p *Progress) bool {
	attempts, next, first := 0, time.Time{}, time.Time{}
	if p.Pending != nil && p.Pending.Seq == e.Seq {
		attempts, next, first = p.Pending.Attempts, p.Pending.NextAt, p.Pending.FirstAt
	}
	for {
		if !next.IsZero() {
			if d := next.Sub(m.clock.Now()); d > 0 && !m.sleep(ctx, d) {
				return false
			}
		}
		c, ok := m.liveConfig(w.id)
		if !ok {
			return false
		}
		if m.appActive != nil && !m.appActive(ctx, w.app) {
			m.autoDisable(ctx, w, *p, ReasonAppRevoked, "the app "+w.app+" was revoked; its endpoints receive nothing more", nil)
			return false
		}
		at := m.send(ctx, c, e, attempts+1)
		if ctx.Err() != nil {
			// Cut by shutdown or by a change of the endpoint: not an
			// attempt of the receiver's; it is made again later.
			return false
		}
		attempts++
		if at.OK {
			p.Cursor, p.Pending = e.Seq, nil
			p.Delivered++
			p.LastSuccessAt = at.Time
			w.unsaved = append(w.unsaved, at)
			if len(w.unsaved) >= flushEvery {
				m.flush(w, *p)
			}
			return true
		}
		p.LastFailureAt, p.LastError = at.Time, at.describe()
		if first.IsZero() {
			first = at.Time
		}
		// The schedule is spaced from each attempt, so a stop of the agent
		// would push the rest of it back by as long: past the window (a
		// retry made late, after a restart) the event is given up as after
		// the last attempt, not retried for days more.
		if attempts > len(DefaultSchedule) || !at.Time.Before(first.Add(retryWindow())) {
			p.Pending = &Pending{Seq: e.Seq, Type: e.Type, Attempts: attempts, FirstAt: first}
			if !m.record(ctx, w, at, *p) {
				return false
			}
			late := ""
			if attempts <= len(DefaultSchedule) {
				late = fmt.Sprintf(" (retries end %s after the first attempt and this one came later, as after a stop of the agent)", retryWindow())
			}
			m.autoDisable(ctx, w, *p, ReasonDeliveryFailed,
				fmt.Sprintf("event %d (%s) failed %d attempts since %s%s; last: %s", e.Seq, e.Type, attempts, e.Time.UTC().Format(time.RFC3339), late, at.describe()), &at)
			return false
		}
		next = m.clock.Now().Add(DefaultSchedule[attempts-1])
		at.NextAt = next
		p.Pending = &Pending{Seq: e.Seq, Type: e.Type, Attempts: attempts, NextAt: next, FirstAt: first}
		if !m.record(ctx, w, at, *p) {
			return false
		}
	}
}

// record stores a failed attempt, the successful ones before it and the
// progress they lead to, and waits until they are written: a retry's
// schedule is on disk before the worker sleeps on it.
func (m *Manager) record(ctx context.Context, w *worker, at Attempt, p Progress) bool {
	w.unsaved = append(w.unsaved, at)
	done := make(chan error, 1)
	m.save(saveReq{id: w.id, attempts: w.unsaved, progress: &p, done: done})
	w.unsaved = nil
	if err := <-done; err != nil {
		if ctx.Err() == nil {
			m.log.Error("save delivery attempts", "endpoint", w.id, "err", err)
		}
		return false
	}
	return true
}

// flush hands the unsaved attempts and the progress to the saver, without
// waiting: deliveries never wait on the store. Not synced: losing them in a
// power cut means deliveries are made again, which at-least-once allows.
func (m *Manager) flush(w *worker, p Progress) {
	m.save(saveReq{id: w.id, attempts: w.unsaved, progress: &p})
	w.unsaved = nil
}

// saveReq is a write for the saver; one with only done is a barrier.
type saveReq struct {
	id       string
	attempts []Attempt
	progress *Progress
	done     chan error
}

// save queues a write, or makes it at once when the saver is not running.
func (m *Manager) save(r saveReq) {
	// saveMu, not mu: a send may wait for the saver, and mu is taken by
	// the event log's tap, which must never wait.
	m.saveMu.RLock()
	if m.saves != nil && !m.saverClosed {
		m.saves <- r
		m.saveMu.RUnlock()
		return
	}
	m.saveMu.RUnlock()
	err := m.write([]saveReq{r})
	if r.done != nil {
		r.done <- err
	}
}

// barrier returns once every write queued before it is made.
func (m *Manager) barrier() {
	done := make(chan error, 1)
	m.save(saveReq{done: done})
	<-done
}

// saver writes the workers' attempts and progress in order, coalescing what
// is queued into one transaction, so that a slow store (a memtable flush,
// a compaction) delays the bookkeeping, not the deliveries.
func (m *Manager) saver() {
	defer close(m.saverDone)
	const maxAttempts = 2000 // well inside a transaction's limits
	for r := range m.saves {
		batch, n := []saveReq{r}, len(r.attempts)
	more:
		for n < maxAttempts {
			select {
			case r, ok := <-m.saves:
				if !ok {
					break more
				}
				batch, n = append(batch, r), n+len(r.attempts)
			default:
				break more
			}
		}
		err := m.write(batch)
		if err != nil {
			m.log.Error("save delivery attempts", "err", err)
		}
		for _, r := range batch {
			if r.done != nil {
				r.done <- err
			}
		}
	}
}

func (m *Manager) write(batch []saveReq) error {
	return m.db.Update(context.Background(), func(tx *store.Txn) error {
		for _, r := range batch {
			for _, at := range r.attempts {
				if err := m.putAttemptTx(tx, at); err != nil {
					return err
				}
			}
			if r.progress != nil {
				if err := m.progress.PutTx(tx, r.id, *r.progress); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

func (m *Manager) putAttemptTx(tx *store.Txn, at Attempt) error {
	n, err := m.db.NextSeq("webhook_attempts")
	if err != nil {
		return err
	}
	key := at.EndpointID + "/" + seqKey(at.EventSeq) + "/" + seqKey(n)
	return m.attempts.PutTx(tx, key, at, store.WithTTL(m.events.Retention()))
}

// DisabledData is the data of a webhook.endpoint_disabled event.
type DisabledData struct {
	EndpointID string `json:"endpoint_id"`
	// URL without its query.
	URL    string `json:"url"`
	Reason string `json:"reason"`
	Detail string `json:"detail"`
	// EventID is the event that could not be delivered, if one.
	EventID    string `json:"event_id,omitempty"`
	Attempts   int    `json:"attempts,omitempty"`
	LastStatus int    `json:"last_status,omitempty"`
	LastError  string `json:"last_error,omitempty"`
	// Cursor: every event up to it was handled.
	Cursor string `json:"cursor"`
}

// autoDisable disables an endpoint the agent cannot deliver to, and says so
// where the app and the administrator will see it.
func (m *Manager) autoDisable(ctx context.Context, w *worker, p Progress, reason, detail string, last *Attempt) {
	ep, changed, err := m.markDisabled(ctx, w.id, reason+": "+detail)
	if err != nil {
		if ctx.Err() == nil {
			m.log.Error("disable webhook endpoint", "endpoint", w.id, "err", err)
		}
		return
	}
	if !changed {
		return
	}
	m.log.Warn("webhook endpoint disabled", "endpoint", ep.ID, "app", ep.AppID, "url", redactURL(ep.URL), "reason", reason, "detail", detail)
	d := DisabledData{EndpointID: ep.ID, URL: redactURL(ep.URL), Reason: reason, Detail: detail, Cursor: strconv.FormatUint(p.Cursor, 10)}
	if last != nil {
		d.EventID = strconv.FormatUint(last.EventSeq, 10)
		d.Attempts, d.LastStatus, d.LastError = last.Number, last.Status, last.Error
	}
	if _, err := m.events.Append(ctx, events.Event{Type: events.WebhookEndpointDisable, AppID: ep.AppID}, d); err != nil {
		m.log.Error("append webhook.endpoint_disabled", "endpoint", ep.ID, "err", err)
	}
}

// CloudEvent is the JSON body of a delivery: CloudEvents 1.0 in structured
// mode. The extension attributes carry what the event stream carries beside
// the data.
type CloudEvent struct {
	SpecVersion     string          `json:"specversion"`
	ID              string          `json:"id"`
	Source          string          `json:"source"`
	Type            string          `json:"type"`
	Time            string          `json:"time"`
	DataContentType string          `json:"datacontenttype,omitempty"`
	AppID           string          `json:"appid,omitempty"`
	ConnectionID    string          `json:"connectionid,omitempty"`
	SessionID       string          `json:"sessionid,omitempty"`
	PatientRef      string          `json:"patientref,omitempty"`
	Data            json.RawMessage `json:"data,omitempty"`
}

// Payload is the body delivered for e.
func Payload(source string, e events.Event) ([]byte, error) {
	ce := CloudEvent{
		SpecVersion:  "1.0",
		ID:           e.Cursor(),
		Source:       source,
		Type:         e.Type,
		Time:         e.Time.UTC().Format(time.RFC3339Nano),
		AppID:        e.AppID,
		ConnectionID: e.ConnectionID,
		SessionID:    e.SessionID,
		PatientRef:   e.PatientRef,
	}
	if len(e.Data) > 0 {
		ce.DataContentType, ce.Data = "application/json", e.Data
	}
	return json.Marshal(ce)
}

// send makes one HTTP attempt; number 0 is a manual redelivery.
func (m *Manager) send(ctx context.Context, c *liveConfig, e events.Event, number int) Attempt {
	now := m.clock.Now()
	at := Attempt{EndpointID: c.ep.ID, EventSeq: e.Seq, EventType: e.Type, Number: number, Manual: number == 0, Time: now.UTC()}
	body, err := Payload(m.source, e)
	if err != nil {
		at.Error = "cannot encode the event: " + err.Error()
		return at
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.ep.URL, bytes.NewReader(body))
	if err != nil {
		at.Error = "bad request: " + unwrapURLError(err)
		return at
	}
	h := req.Header
	h.Set("Content-Type", "application/cloudevents+json; charset=utf-8")
	h.Set("User-Agent", m.userAgent)
	h.Set(HeaderWebhookID, c.ep.ID)
	h.Set(HeaderEventID, e.Cursor())
	h.Set(HeaderEventType, e.Type)
	if number == 0 {
		h.Set(HeaderAttempt, "redelivery")
	} else {
		h.Set(HeaderAttempt, strconv.Itoa(number))
	}
	h.Set(SignatureHeader, Sign(now, body, c.sec.keys(now)...))
	client := m.httpsClient
	if req.URL.Scheme == "http" {
		client = m.httpClient
	}
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		at.Latency = time.Since(start)
		at.Error = unwrapURLError(err)
		return at
	}
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, snippetBytes))
	// Drain a little more so the connection can be reused; not forever.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	at.Latency = time.Since(start)
	at.Status = resp.StatusCode
	at.OK = resp.StatusCode >= 200 && resp.StatusCode < 300
	at.Response = strings.ToValidUTF8(string(snippet), string(utf8.RuneError))
	return at
}

// unwrapURLError drops the URL net/http puts in its errors (it may hold a
// receiver's token in its query) and says "timeout" plainly.
func unwrapURLError(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		if ue.Timeout() {
			return "timeout: no response within the delivery timeout"
		}
		err = ue.Err
	}
	return err.Error()
}

// describe says in a few words how an attempt ended.
func (a Attempt) describe() string {
	if a.Status != 0 {
		return "HTTP " + strconv.Itoa(a.Status)
	}
	return a.Error
}
