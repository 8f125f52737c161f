package sync

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/medrelay/medrelay/internal/connections"
	"github.com/medrelay/medrelay/internal/events"
	"github.com/medrelay/medrelay/internal/pluginhost"
	"github.com/medrelay/medrelay/internal/store"
	pluginv1 "github.com/medrelay/medrelay/proto/gen/medrelay/plugin/v1"
)

// Run works on syncs until ctx ends: first those a stop or a crash
// interrupted, then queued ones and schedules as they come due. It returns
// once every job it runs has stopped; an interrupted job stays running in
// the store and resumes at the next start.
func (e *Engine) Run(ctx context.Context) {
	if err := e.load(ctx); err != nil {
		e.log.Error("sync: load jobs", "err", err)
	}
	done := make(chan string, 64)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		wait := e.dispatch(ctx, done)
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			e.mu.Lock()
			e.stopping = true
			n := len(e.running)
			e.mu.Unlock()
			for ; n > 0; n-- {
				<-done
			}
			return
		case <-e.wake:
		case <-done:
		case <-timer.C:
		}
	}
}

// load reads which jobs are not finished, and sends the events a crash may
// have kept from being sent.
func (e *Engine) load(ctx context.Context) error {
	var resend []Job
	err := e.jobs.Scan(ctx, store.ScanOptions{}, func(_ string, j Job) error {
		if !j.State.Terminal() {
			e.mu.Lock()
			e.active[j.ID] = true
			e.mu.Unlock()
		} else if !j.EventSent {
			resend = append(resend, j)
		}
		return nil
	})
	for _, j := range resend {
		e.sendEvent(ctx, j)
	}
	e.mu.Lock()
	e.loaded = true
	e.mu.Unlock()
	return err
}

// dispatch starts what may start and returns how long to sleep at most.
func (e *Engine) dispatch(ctx context.Context, done chan<- string) time.Duration {
	if ctx.Err() != nil {
		return time.Hour
	}
	wait := e.dueSchedules(ctx)
	e.mu.Lock()
	ids := make([]string, 0, len(e.active))
	for id := range e.active {
		if e.running[id] == nil {
			ids = append(ids, id)
		}
	}
	e.mu.Unlock()
	slices.Sort(ids) // oldest first: ids sort by creation time
	var start []Job
	for _, id := range ids {
		j, err := e.jobs.Get(ctx, id)
		if err != nil {
			e.log.Warn("sync: read job", "sync", id, "err", err)
			continue
		}
		if j.State.Terminal() {
			e.mu.Lock()
			delete(e.active, id)
			e.mu.Unlock()
			continue
		}
		start = append(start, j)
	}
	// Interrupted jobs first: they hold progress.
	slices.SortStableFunc(start, func(a, b Job) int {
		if (a.State == Running) != (b.State == Running) {
			if a.State == Running {
				return -1
			}
			return 1
		}
		return 0
	})
	for _, j := range start {
		e.mu.Lock()
		if len(e.running) >= e.o.MaxJobs {
			e.mu.Unlock()
			break
		}
		if _, busy := e.busy[j.ConnectionID]; busy {
			e.mu.Unlock()
			continue
		}
		rctx, cancel := context.WithCancelCause(ctx)
		r := &run{cancel: cancel, live: newLive(e.o.Now)}
		e.running[j.ID] = r
		e.busy[j.ConnectionID] = j.ID
		e.mu.Unlock()
		go func(id string) {
			defer func() {
				cancel(nil)
				e.mu.Lock()
				delete(e.running, id)
				if e.busy[j.ConnectionID] == id {
					delete(e.busy, j.ConnectionID)
				}
				e.mu.Unlock()
				e.notify()
				done <- id
			}()
			e.runJob(rctx, id, r)
		}(j.ID)
	}
	return wait
}

// dueSchedules queues the syncs of schedules that are due and returns the
// time until the next one.
func (e *Engine) dueSchedules(ctx context.Context) time.Duration {
	now := e.o.Now()
	wait := time.Hour
	var due []Schedule
	err := e.schedules.Scan(ctx, store.ScanOptions{}, func(_ string, s Schedule) error {
		if s.NextAt.IsZero() {
			return nil
		}
		if d := s.NextAt.Sub(now); d > 0 {
			wait = min(wait, d)
			return nil
		}
		due = append(due, s)
		return nil
	})
	if err != nil {
		e.log.Warn("sync: read schedules", "err", err)
		return time.Minute
	}
	for _, s := range due {
		if _, _, err := e.startScheduled(ctx, s); err != nil {
			e.log.Warn("scheduled sync not started; trying again later", "schedule", s.ID, "connection", s.ConnectionID, "err", err)
			s.NextAt = now.Add(min(s.Every, time.Hour))
			if err := e.schedules.Put(ctx, s.ID, s, store.Synced()); err != nil {
				e.log.Warn("sync: store schedule", "err", err)
			}
			wait = min(wait, s.NextAt.Sub(now))
		}
	}
	// A minute at most, so a changed clock is noticed.
	return min(wait, time.Minute)
}

func (e *Engine) startScheduled(ctx context.Context, s Schedule) (Job, Schedule, error) {
	c, err := e.conns.Get(ctx, s.ConnectionID)
	if err != nil {
		return Job{}, s, err
	}
	if err := e.usable(c); err != nil {
		return Job{}, s, err
	}
	now := e.o.Now().UTC()
	j := Job{ID: newID("sync", now), ConnectionID: c.ID, AppID: c.AppID, Plugin: c.Plugin, Request: s.Request,
		State: Queued, Phase: PhaseKickoff, CreatedAt: now, ScheduleID: s.ID}
	j.Request.Since = time.Time{}
	if err := e.incremental(ctx, &j); err != nil {
		return j, s, err
	}
	s.NextAt, s.LastSyncID = time.Time{}, j.ID
	err = e.db.Update(ctx, func(tx *store.Txn) error {
		if err := e.schedules.PutTx(tx, s.ID, s); err != nil {
			return err
		}
		return e.jobs.PutTx(tx, j.ID, j)
	}, store.Synced())
	if err != nil {
		return j, s, err
	}
	e.mu.Lock()
	e.active[j.ID] = true
	e.mu.Unlock()
	e.log.Info("scheduled sync queued", "sync", j.ID, "schedule", s.ID, "connection", c.ID, "since", j.Request.Since)
	e.notify()
	return j, s, nil
}

// save stores the runner's copy of a job, keeping a cancellation a caller
// stored meanwhile.
func (e *Engine) save(ctx context.Context, j *Job) error {
	stored, err := e.jobs.Modify(context.WithoutCancel(ctx), j.ID, func(cur Job, found bool) (Job, error) {
		n := *j
		n.CancelRequested = n.CancelRequested || cur.CancelRequested
		return n, nil
	}, store.Synced())
	if err != nil {
		return err
	}
	*j = stored
	e.notify()
	return nil
}

// failure kinds.
var (
	// errExpired: the export or its files are gone at the source; it is
	// started again.
	errExpired = errors.New("the export's files expired or vanished at the source")
)

// permanentError ends a job.
type permanentError struct{ err error }

func (p *permanentError) Error() string { return p.err.Error() }
func (p *permanentError) Unwrap() error { return p.err }

func permanent(err error) error { return &permanentError{err} }

// classify decides what an error means for the job.
func (e *Engine) classify(ctx context.Context, j *Job, err error) error {
	var pe *permanentError
	switch {
	case errors.As(err, &pe), errors.Is(err, errExpired):
		return err
	case errors.Is(err, pluginhost.ErrSourceGone):
		return fmt.Errorf("%w: %v", errExpired, err)
	case errors.Is(err, pluginhost.ErrSourceBadReq), errors.Is(err, pluginhost.ErrSourceDenied),
		errors.Is(err, pluginhost.ErrUnsupported), errors.Is(err, pluginhost.ErrNoPlugin),
		errors.Is(err, pluginhost.ErrFailed):
		return permanent(err)
	}
	// A connection that was revoked or expired will not come back.
	if c, cerr := e.conns.Get(ctx, j.ConnectionID); cerr == nil && c.State != connections.Active && c.State != connections.RefreshFailed {
		return permanent(fmt.Errorf("%w: %s is %s: %s", ErrNotActive, c.ID, c.State, c.Reason))
	} else if errors.Is(cerr, connections.ErrNotFound) {
		return permanent(cerr)
	}
	return err
}

// retryAfter is how long a transient failure asks to wait.
func (e *Engine) retryDelay(err error, failures int) time.Duration {
	var se *pluginhost.SourceError
	if errors.As(err, &se) && se.RetryAfter > 0 {
		return min(se.RetryAfter, e.o.MaxRetryAfter)
	}
	d := e.o.Backoff << min(max(failures-1, 0), 20)
	if d <= 0 || d > e.o.MaxBackoff {
		d = e.o.MaxBackoff
	}
	return d
}

// runJob works on one job until it ends, is cancelled, or the agent stops.
func (e *Engine) runJob(ctx context.Context, id string, r *run) {
	j, err := e.jobs.Get(ctx, id)
	if err != nil {
		e.log.Warn("sync: read job", "sync", id, "err", err)
		return
	}
	if j.CancelRequested {
		if _, err := e.finishCancelled(ctx, j); err != nil {
			e.log.Warn("sync: cancel", "sync", id, "err", err)
		}
		return
	}
	resumed := j.State == Running
	if j.State == Queued {
		j.State, j.StartedAt = Running, e.o.Now().UTC()
		if j.Phase == "" {
			j.Phase = PhaseKickoff
		}
		if err := e.save(ctx, &j); err != nil {
			e.log.Warn("sync: store job", "sync", id, "err", err)
			return
		}
	}
	e.log.Info("sync running", "sync", j.ID, "connection", j.ConnectionID, "phase", j.Phase, "resumed", resumed)
	c, err := e.conns.Get(ctx, j.ConnectionID)
	if err == nil {
		err = e.usable(c)
	}
	if err != nil {
		e.fail(ctx, &j, err)
		return
	}
	for {
		if ctx.Err() != nil {
			e.stopped(ctx, &j)
			return
		}
		if err := e.sleepUntil(ctx, j.NextPollAt, r.live); err != nil {
			continue
		}
		var progressed bool
		switch j.Phase {
		case PhaseKickoff:
			err = e.kickoff(ctx, &j, c)
		case PhaseExporting:
			err = e.poll(ctx, &j, c)
		case PhaseDownloading:
			progressed, err = e.download(ctx, &j, c, r.live)
			if err == nil {
				e.complete(ctx, &j, r.live)
				return
			}
		default:
			err = permanent(fmt.Errorf("unknown phase %q", j.Phase))
		}
		if err == nil {
			continue
		}
		if ctx.Err() != nil {
			continue
		}
		err = e.classify(ctx, &j, err)
		var pe *permanentError
		switch {
		case errors.As(err, &pe):
			e.fail(ctx, &j, err)
			return
		case errors.Is(err, errExpired):
			if j.Kickoffs >= e.o.MaxKickoffs {
				e.fail(ctx, &j, fmt.Errorf("%w (started %d times)", err, j.Kickoffs))
				return
			}
			e.log.Warn("export gone at the source; starting it again", "sync", j.ID, "err", err)
			if err := e.restartExport(ctx, &j); err != nil {
				e.log.Warn("sync: restart export", "sync", j.ID, "err", err)
			}
			continue
		}
		if progressed {
			j.Failures = 0
		}
		j.Failures++
		if j.Failures >= e.o.MaxFailures {
			e.fail(ctx, &j, fmt.Errorf("gave up after %d failures in a row: %w", j.Failures, err))
			return
		}
		wait := e.retryDelay(err, j.Failures)
		j.NextPollAt = e.o.Now().UTC().Add(wait)
		j.Waiting = fmt.Sprintf("retrying in %s after: %s", wait.Round(time.Second), firstLine(err.Error()))
		e.log.Warn("sync: transient failure", "sync", j.ID, "phase", j.Phase, "failures", j.Failures, "retry_in", wait, "err", err)
		if err := e.save(ctx, &j); err != nil {
			e.log.Warn("sync: store job", "sync", j.ID, "err", err)
		}
	}
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}

// sleepUntil waits for t; it returns ctx's error when cancelled first.
func (e *Engine) sleepUntil(ctx context.Context, t time.Time, lv *live) error {
	d := t.Sub(e.o.Now())
	if d <= 0 {
		return nil
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// stopped handles a job whose context ended: a cancellation is finished; a
// shutdown leaves the job running in the store, to resume at start.
func (e *Engine) stopped(ctx context.Context, j *Job) {
	if errors.Is(context.Cause(ctx), errConnectionEnded) {
		err := error(errConnectionEnded)
		if c, cerr := e.conns.Get(context.WithoutCancel(ctx), j.ConnectionID); cerr == nil {
			err = fmt.Errorf("%w: %s is %s: %s", ErrNotActive, c.ID, c.State, c.Reason)
		}
		e.fail(ctx, j, err)
		return
	}
	if errors.Is(context.Cause(ctx), errCancelled) {
		if _, err := e.finishCancelled(ctx, *j); err != nil {
			e.log.Warn("sync: cancel", "sync", j.ID, "err", err)
		}
		return
	}
	e.log.Info("sync interrupted; it resumes at the next start", "sync", j.ID, "phase", j.Phase)
}

func (e *Engine) pconn(c connections.Connection) *pluginv1.Connection {
	return &pluginv1.Connection{Id: c.ID, FhirBaseUrl: c.FHIRBase, Settings: c.Settings}
}

// kickoff starts the export (bulkdata-2.0-client #43, #45: the plugin sends
// Accept and Prefer: respond-async).
func (e *Engine) kickoff(ctx context.Context, j *Job, c connections.Connection) error {
	req := &pluginv1.BulkKickoffRequest{Connection: e.pconn(c), GroupId: j.Request.GroupID, Types: j.Request.Types,
		TypeFilters: j.Request.TypeFilters, OutputFormat: "application/fhir+ndjson"}
	switch j.Request.Level {
	case Patient:
		req.Level = pluginv1.BulkLevel_BULK_LEVEL_PATIENT
	case Group:
		req.Level = pluginv1.BulkLevel_BULK_LEVEL_GROUP
	default:
		req.Level = pluginv1.BulkLevel_BULK_LEVEL_SYSTEM
	}
	if !j.Request.Since.IsZero() {
		req.Since = timestamppb.New(j.Request.Since)
	}
	resp, err := e.plugins.BulkKickoff(ctx, j.Plugin, req)
	if err != nil {
		if errors.Is(err, pluginhost.ErrSourceGone) {
			// 404 at kick-off: no such group, or no Bulk Data here.
			return permanent(err)
		}
		return err
	}
	j.StatusURL, j.Kickoffs, j.Phase = resp.GetStatusUrl(), j.Kickoffs+1, PhaseExporting
	j.Polls, j.Progress, j.Failures, j.Waiting = 0, "", 0, ""
	j.NextPollAt = e.o.Now().UTC()
	e.log.Info("export started", "sync", j.ID, "kickoff", j.Kickoffs)
	return e.save(ctx, j)
}

// poll asks for the export's status once (bulkdata-2.0-client #123-#135).
func (e *Engine) poll(ctx context.Context, j *Job, c connections.Connection) error {
	resp, err := e.plugins.BulkStatus(ctx, j.Plugin, &pluginv1.BulkStatusRequest{Connection: e.pconn(c), StatusUrl: j.StatusURL})
	j.Polls++
	if err != nil {
		return err
	}
	now := e.o.Now().UTC()
	switch resp.GetState() {
	case pluginv1.BulkState_BULK_STATE_IN_PROGRESS:
		j.Progress = resp.GetProgress()
		j.NextPollAt = now.Add(e.pollDelay(j.Polls, resp.GetRetryAfter().AsDuration()))
		j.Failures, j.Waiting = 0, ""
		return e.save(ctx, j)
	case pluginv1.BulkState_BULK_STATE_COMPLETE:
		m := resp.GetManifest()
		man := &Manifest{RequiresAccessToken: m.GetRequiresAccessToken()}
		if m.GetTransactionTime() != nil {
			man.TransactionTime = m.GetTransactionTime().AsTime().UTC()
		}
		for _, set := range []struct {
			kind  string
			files []*pluginv1.BulkFile
		}{{KindOutput, m.GetOutput()}, {KindDeleted, m.GetDeleted()}, {KindError, m.GetError()}} {
			for _, f := range set.files {
				man.Files = append(man.Files, File{Kind: set.kind, Type: f.GetType(), URL: f.GetUrl(), Count: f.GetCount()})
			}
		}
		j.Manifest, j.Phase, j.Progress = man, PhaseDownloading, "complete"
		j.NextPollAt, j.Failures, j.Waiting = time.Time{}, 0, ""
		e.log.Info("export complete", "sync", j.ID, "files", len(man.Files), "transaction_time", man.TransactionTime, "requires_access_token", man.RequiresAccessToken)
		return e.save(ctx, j)
	case pluginv1.BulkState_BULK_STATE_FAILED:
		msg := outcomeMessage(resp.GetError())
		if transientOutcome(resp.GetError()) {
			// The server says the failure is transient: keep polling.
			j.Progress = "transient error: " + msg
			j.NextPollAt = now.Add(e.pollDelay(j.Polls, 0))
			return e.save(ctx, j)
		}
		return permanent(fmt.Errorf("the source failed the export: %s", msg))
	}
	return fmt.Errorf("unexpected export state %v", resp.GetState())
}

// pollDelay: the server's Retry-After when it sent one, else exponential
// backoff (bulkdata-2.0-client #124, #126).
func (e *Engine) pollDelay(polls int, retryAfter time.Duration) time.Duration {
	if retryAfter > 0 {
		return min(retryAfter, e.o.MaxRetryAfter)
	}
	d := e.o.PollInterval << min(max(polls-1, 0), 20)
	if d <= 0 || d > e.o.MaxPollInterval {
		d = e.o.MaxPollInterval
	}
	return d
}

// outcome is the part of an OperationOutcome we read.
type outcome struct {
	ResourceType string `json:"resourceType"`
	Issue        []struct {
		Severity    string `json:"severity"`
		Code        string `json:"code"`
		Diagnostics string `json:"diagnostics"`
		Details     struct {
			Text string `json:"text"`
		} `json:"details"`
	} `json:"issue"`
}

// transientOutcome reports an OperationOutcome that says "transient" (an
// issue with that code, and no error or fatal issue with another).
func transientOutcome(b []byte) bool {
	var o outcome
	if json.Unmarshal(b, &o) != nil {
		return false
	}
	transient := false
	for _, is := range o.Issue {
		if is.Code == "transient" {
			transient = true
		} else if is.Severity == "error" || is.Severity == "fatal" {
			return false
		}
	}
	return transient
}

// outcomeMessage says what an OperationOutcome says, in one line.
func outcomeMessage(b []byte) string {
	var o outcome
	if json.Unmarshal(b, &o) != nil || len(o.Issue) == 0 {
		return firstLine(strings.Join(strings.Fields(string(b)), " "))
	}
	var parts []string
	for _, is := range o.Issue {
		msg := is.Diagnostics
		if msg == "" {
			msg = is.Details.Text
		}
		p := strings.TrimSpace(is.Severity + " " + is.Code)
		if msg != "" {
			p += ": " + msg
		}
		parts = append(parts, p)
	}
	return firstLine(strings.Join(strings.Fields(strings.Join(parts, "; ")), " "))
}

// restartExport forgets an export whose files are gone and starts over;
// records already stored stay (storing them again changes nothing).
func (e *Engine) restartExport(ctx context.Context, j *Job) error {
	if err := e.deleteFiles(ctx, j.ID); err != nil {
		return err
	}
	j.Phase, j.StatusURL, j.Manifest, j.Progress, j.Polls = PhaseKickoff, "", nil, "", 0
	j.NextPollAt, j.Waiting = time.Time{}, ""
	return e.save(ctx, j)
}

func (e *Engine) deleteFiles(ctx context.Context, jobID string) error {
	b := e.db.NewBatch()
	err := batchDeletePrefix(ctx, b, e.files, jobID+"/")
	if err == nil {
		err = batchDeletePrefix(ctx, b, e.malformed, jobID+"/")
	}
	if err == nil {
		err = batchDeletePrefix(ctx, b, e.errs, jobID+"/")
	}
	if err != nil {
		b.Cancel()
		return err
	}
	return b.Flush(true)
}

func batchDeletePrefix[T any](ctx context.Context, b *store.Batch, t *store.Table[T], prefix string) error {
	return t.Scan(ctx, store.ScanOptions{Prefix: prefix, KeysOnly: true}, func(k string, _ T) error {
		return store.BatchDelete(b, t, k)
	})
}

// complete ends a job whose files are all stored.
func (e *Engine) complete(ctx context.Context, j *Job, lv *live) {
	ctx = context.WithoutCancel(ctx)
	if err := e.db.Sync(); err != nil {
		e.log.Warn("sync: fsync", "sync", j.ID, "err", err)
	}
	totals, err := e.totals(ctx, *j)
	if err != nil {
		e.log.Warn("sync: totals", "sync", j.ID, "err", err)
	}
	totals.Rate = lv.rate(totals.Resources())
	now := e.o.Now().UTC()
	j.State, j.Phase, j.FinishedAt, j.Totals = Completed, PhaseDone, now, &totals
	j.NextPollAt, j.Waiting, j.Error = time.Time{}, "", ""
	cur := cursorKey(j.ConnectionID, j.Request.scope())
	err = e.db.Update(ctx, func(tx *store.Txn) error {
		if j.Manifest != nil && !j.Manifest.TransactionTime.IsZero() {
			// The next sync of this scope asks for changes since the
			// export's transactionTime.
			if err := e.cursors.PutTx(tx, cur, j.Manifest.TransactionTime); err != nil {
				return err
			}
		}
		return e.jobs.PutTx(tx, j.ID, *j)
	}, store.Synced())
	if err != nil {
		e.log.Error("sync: store completion", "sync", j.ID, "err", err)
		return
	}
	e.notify()
	e.log.Info("sync completed", "sync", j.ID, "connection", j.ConnectionID, "resources", totals.Resources(),
		"written", totals.Written, "deleted", totals.Deleted, "malformed", totals.Malformed, "errors", totals.Errors,
		"files", totals.FilesTotal, "rate", int(totals.Rate))
	// Let the source drop the files now (the export is ours to delete).
	e.deleteExport(ctx, *j)
	e.end(ctx, j)
}

// totals adds up a job's files from the store.
func (e *Engine) totals(ctx context.Context, j Job) (Totals, error) {
	var t Totals
	if j.Manifest != nil {
		t.FilesTotal = len(j.Manifest.Files)
	}
	err := e.files.Scan(ctx, store.ScanOptions{Prefix: j.ID + "/"}, func(_ string, p FileProgress) error {
		t.add(p)
		return nil
	})
	return t, err
}

func (e *Engine) deleteExport(ctx context.Context, j Job) {
	if j.StatusURL == "" {
		return
	}
	c, err := e.conns.Get(ctx, j.ConnectionID)
	if err != nil {
		return
	}
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if err := e.plugins.BulkCancel(dctx, j.Plugin, &pluginv1.BulkCancelRequest{Connection: e.pconn(c), StatusUrl: j.StatusURL}); err != nil {
		e.log.Info("export not deleted at the source", "sync", j.ID, "err", err)
	}
}

// fail ends a job with a reason.
func (e *Engine) fail(ctx context.Context, j *Job, cause error) {
	ctx = context.WithoutCancel(ctx)
	totals, _ := e.totals(ctx, *j)
	j.State, j.Phase, j.FinishedAt, j.Totals = Failed, PhaseDone, e.o.Now().UTC(), &totals
	j.Error, j.Waiting, j.NextPollAt = firstLine(cause.Error()), "", time.Time{}
	if err := e.save(ctx, j); err != nil {
		e.log.Error("sync: store failure", "sync", j.ID, "err", err)
		return
	}
	e.log.Warn("sync failed", "sync", j.ID, "connection", j.ConnectionID, "err", cause)
	e.deleteExport(ctx, *j)
	e.end(ctx, j)
}

// finishCancelled ends a cancelled job: DELETE of the export at the source
// (bulkdata-2.0-client #119), then the job is stored cancelled.
func (e *Engine) finishCancelled(ctx context.Context, j Job) (Job, error) {
	ctx = context.WithoutCancel(ctx)
	e.deleteExport(ctx, j)
	totals, _ := e.totals(ctx, j)
	j.State, j.Phase, j.FinishedAt, j.Totals = Cancelled, PhaseDone, e.o.Now().UTC(), &totals
	j.Error, j.Waiting, j.NextPollAt, j.CancelRequested = "cancelled", "", time.Time{}, true
	if err := e.save(ctx, &j); err != nil {
		return j, err
	}
	e.log.Info("sync cancelled", "sync", j.ID, "connection", j.ConnectionID)
	e.end(ctx, &j)
	return j, nil
}

// end sends the job's event, schedules the next sync of its schedule, and
// forgets the job.
func (e *Engine) end(ctx context.Context, j *Job) {
	e.mu.Lock()
	delete(e.active, j.ID)
	e.mu.Unlock()
	if j.ScheduleID != "" {
		_, err := e.schedules.Modify(ctx, j.ScheduleID, func(s Schedule, found bool) (Schedule, error) {
			if !found {
				return s, store.ErrNotFound
			}
			if s.LastSyncID == j.ID {
				s.NextAt = j.FinishedAt.Add(s.Every)
			}
			return s, nil
		}, store.Synced())
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			e.log.Warn("sync: schedule next", "schedule", j.ScheduleID, "err", err)
		}
		e.poke()
	}
	e.sendEvent(ctx, *j)
}

// SyncEvent is the Data of records.sync.completed and records.sync.failed.
type SyncEvent struct {
	SyncID          string     `json:"sync_id"`
	State           State      `json:"state"`
	Level           Level      `json:"level"`
	GroupID         string     `json:"group_id,omitempty"`
	Types           []string   `json:"types,omitempty"`
	Since           *time.Time `json:"since,omitempty"`
	TransactionTime *time.Time `json:"transaction_time,omitempty"`
	Resources       int64      `json:"resources"`
	Written         int64      `json:"written"`
	Unchanged       int64      `json:"unchanged"`
	Deleted         int64      `json:"deleted"`
	Malformed       int64      `json:"malformed"`
	Errors          int64      `json:"errors"`
	Files           int        `json:"files"`
	Error           string     `json:"error,omitempty"`
	Cancelled       bool       `json:"cancelled,omitempty"`
}

func (e *Engine) sendEvent(ctx context.Context, j Job) {
	if e.events == nil || j.EventSent {
		return
	}
	d := SyncEvent{SyncID: j.ID, State: j.State, Level: j.Request.Level, GroupID: j.Request.GroupID, Types: j.Request.Types,
		Error: j.Error, Cancelled: j.State == Cancelled}
	if t := j.Totals; t != nil {
		d.Resources, d.Written, d.Unchanged, d.Deleted = t.Resources(), t.Written, t.Unchanged, t.Deleted
		d.Malformed, d.Errors, d.Files = t.Malformed, t.Errors, t.FilesTotal
	}
	if !j.Request.Since.IsZero() {
		s := j.Request.Since
		d.Since = &s
	}
	if j.Manifest != nil && !j.Manifest.TransactionTime.IsZero() {
		t := j.Manifest.TransactionTime
		d.TransactionTime = &t
	}
	typ := events.RecordsSyncFailed
	if j.State == Completed {
		typ = events.RecordsSyncCompleted
	}
	if _, err := e.events.Append(ctx, events.Event{Type: typ, AppID: j.AppID, ConnectionID: j.ConnectionID}, d); err != nil {
		e.log.Error("sync event not recorded", "sync", j.ID, "err", err)
		return
	}
	if _, err := e.jobs.Modify(ctx, j.ID, func(cur Job, found bool) (Job, error) {
		if !found {
			return cur, store.ErrNotFound
		}
		cur.EventSent = true
		return cur, nil
	}); err != nil {
		e.log.Warn("sync: mark event sent", "sync", j.ID, "err", err)
	}
}
