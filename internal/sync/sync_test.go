package sync

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/medrelay/medrelay/internal/connections"
	"github.com/medrelay/medrelay/internal/events"
	"github.com/medrelay/medrelay/internal/records"
	"github.com/medrelay/medrelay/internal/sandbox"
	"github.com/medrelay/medrelay/internal/sandbox/sandboxtest"
)

// A system-level export lands in the store exactly: every resource of the
// export once, at its version. bulkdata-2.0-client #15-#18, #200;
// smart-2.2-client #264 (the plugin sends the backend token as Bearer).
func TestSystemExport(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	v := e.wait(e.startSync(StartRequest{}).ID)
	if v.State != Completed {
		t.Fatalf("sync %s: %s", v.State, v.Error)
	}
	want := e.expect(e.conn.ID, sandbox.ExportParams{})
	if v.Totals.Resources() != int64(want.Total) || v.Totals.Written != int64(want.Total) {
		t.Errorf("totals %+v, want %d resources written", v.Totals, want.Total)
	}
	if v.Totals.FilesDone != v.Totals.FilesTotal || v.Totals.FilesTotal < 10 {
		t.Errorf("files %d/%d", v.Totals.FilesDone, v.Totals.FilesTotal)
	}
	if v.Manifest == nil || v.Manifest.TransactionTime.IsZero() || !v.Manifest.RequiresAccessToken {
		t.Fatalf("manifest %+v", v.Manifest)
	}
	if v.Incremental || !v.Request.Since.IsZero() {
		t.Errorf("a first sync is full: %+v", v.Request)
	}
	// The event says what was done.
	evs := e.syncEvents()
	if len(evs) != 1 || evs[0].Type != events.RecordsSyncCompleted || evs[0].ConnectionID != e.conn.ID {
		t.Fatalf("events %+v", evs)
	}
	var d SyncEvent
	if err := json.Unmarshal(evs[0].Data, &d); err != nil || d.SyncID != v.ID || d.Resources != int64(want.Total) || d.TransactionTime == nil {
		t.Fatalf("event data %s", evs[0].Data)
	}
	// Each file was asked for once.
	seen := map[string]int{}
	for _, p := range e.reqs.filesRequested(0) {
		seen[p]++
	}
	if len(seen) != v.Totals.FilesTotal {
		t.Errorf("%d distinct files requested, manifest has %d", len(seen), v.Totals.FilesTotal)
	}
	for p, n := range seen {
		if n != 1 {
			t.Errorf("%s requested %d times", p, n)
		}
	}
	// The export was deleted at the source once downloaded.
	if n := e.sb.Stats().Endpoints["export-delete"]; n != 1 {
		t.Errorf("export-delete %d, want 1", n)
	}
}

// Group and patient level exports with _type and _typeFilter, then again
// incrementally with _since. bulkdata-2.0-client #61, #238, #252-#258,
// #270, #275-#281, #293; #31 (comma-separated and repeated _type).
func TestGroupAndPatientExports(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	for _, c := range []struct {
		req StartRequest
		exp sandbox.ExportParams
	}{
		{StartRequest{Request: Request{GroupID: "cohort-1", Types: []string{"Patient,Condition", "Immunization"}, TypeFilters: []string{"Immunization?status=completed"}}},
			sandbox.ExportParams{Level: "group", Group: "cohort-1", Types: []string{"Patient", "Condition", "Immunization"}, TypeFilters: []string{"Immunization?status=completed"}}},
		{StartRequest{Request: Request{Level: Patient, Types: []string{"Patient", "AllergyIntolerance", "Observation"}, TypeFilters: []string{"Observation?category=vital-signs"}}},
			sandbox.ExportParams{Level: "patient", Types: []string{"Patient", "AllergyIntolerance", "Observation"}, TypeFilters: []string{"Observation?category=vital-signs"}}},
	} {
		conn := e.newConnection(e.conn.FHIRBase)
		c.req.ConnectionID = conn.ID
		v := e.wait(e.startSync(c.req).ID)
		if v.State != Completed {
			t.Fatalf("%+v: %s %s", c.req, v.State, v.Error)
		}
		want := e.expect(conn.ID, c.exp)
		if want.Total == 0 || v.Totals.Written != int64(want.Total) {
			t.Fatalf("export of %d for %+v, %d written", want.Total, c.exp, v.Totals.Written)
		}
		// The same scope again: only changes since the first one's
		// transactionTime (none).
		again := e.wait(e.startSync(c.req).ID)
		if again.State != Completed || !again.Incremental || !again.Request.Since.Equal(v.Manifest.TransactionTime) || again.Totals.Written != 0 {
			t.Fatalf("second %s sync: %s since %v, %+v", c.req.Level, again.State, again.Request.Since, again.Totals)
		}
	}
}

// _typeFilter narrows the export; a filter the server cannot apply is
// ignored by it and reported in the manifest's error file, which the sync
// keeps and reports. bulkdata-2.0-client #102, #113, #115, #116, #247.
func TestTypeFilterAndErrorFiles(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	v := e.wait(e.startSync(StartRequest{Request: Request{Types: []string{"Observation", "Condition"},
		TypeFilters: []string{"Observation?category=laboratory", "Condition?unknown-param=x"}}}).ID)
	if v.State != Completed {
		t.Fatalf("sync %s: %s", v.State, v.Error)
	}
	// The sandbox ignored the Condition filter: every Condition is there.
	e.expect(e.conn.ID, sandbox.ExportParams{Types: []string{"Observation", "Condition"}, TypeFilters: []string{"Observation?category=laboratory"}})
	if v.Totals.Errors != 1 || len(v.Errors) != 1 || !strings.Contains(v.Errors[0], "unknown-param") {
		t.Errorf("error file not reported: %d %q", v.Totals.Errors, v.Errors)
	}
	// Search result parameters are refused before anything is sent
	// (bulkdata-2.0-client #104, #114).
	_, _, err := e.eng.Start(context.Background(), "", StartRequest{ConnectionID: e.conn.ID, Request: Request{TypeFilters: []string{"Observation?_include=Observation:patient"}}})
	if !errors.Is(err, ErrInvalid) {
		t.Errorf("_include in _typeFilter: %v", err)
	}
}

// A second sync asks only for what changed since the first one's
// transactionTime; deleted resources become tombstones.
// bulkdata-2.0-client #54, #235.
func TestIncrementalSyncAndDeletions(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	first := e.wait(e.startSync(StartRequest{}).ID)
	if first.State != Completed {
		t.Fatalf("first sync: %s", first.Error)
	}
	mut, err := e.sb.Mutate(sandbox.MutateRequest{Tenant: e.tenant, Update: 12, Delete: 4, Types: []string{"Observation", "Condition"}})
	if err != nil {
		t.Fatal(err)
	}
	second := e.wait(e.startSync(StartRequest{}).ID)
	if second.State != Completed {
		t.Fatalf("second sync: %s", second.Error)
	}
	if !second.Incremental || !second.Request.Since.Equal(first.Manifest.TransactionTime) {
		t.Fatalf("second sync since %v (incremental %v), want %v", second.Request.Since, second.Incremental, first.Manifest.TransactionTime)
	}
	// Only the changes came: the resources updated (and not deleted since)
	// and the deletions.
	changed := map[string]bool{}
	for _, r := range mut.Updated {
		changed[r] = true
	}
	for _, r := range mut.Deleted {
		delete(changed, r)
	}
	if second.Totals.Resources() != int64(len(changed)) || second.Totals.Written != int64(len(changed)) || second.Totals.Deleted != int64(len(mut.Deleted)) {
		t.Errorf("second sync: %+v, want %d updated and %d deleted", second.Totals, len(changed), len(mut.Deleted))
	}
	// The store now equals a full export taken now, plus the tombstones.
	e.expect(e.conn.ID, sandbox.ExportParams{})
	got := e.stored(e.conn.ID)
	if strings.Join(got.Deleted, ",") != strings.Join(sortedCopy(mut.Deleted), ",") {
		t.Errorf("tombstones %v, deleted %v", got.Deleted, mut.Deleted)
	}
	r, err := e.recs.Get(context.Background(), e.conn.ID, strings.Split(mut.Deleted[0], "/")[0], strings.Split(mut.Deleted[0], "/")[1])
	if err != nil || !r.Deleted {
		t.Errorf("%s: %+v %v", mut.Deleted[0], r, err)
	}
	// A third sync with nothing changed writes nothing (the plugin sends
	// _since to the second, so changes of the second's last second may be
	// sent again, unchanged).
	third := e.wait(e.startSync(StartRequest{}).ID)
	if third.State != Completed || third.Totals.Written != 0 || third.Totals.Resources() > int64(len(changed)) || !third.Request.Since.Equal(second.Manifest.TransactionTime) {
		t.Errorf("third sync: %s %+v since %v", third.State, third.Totals, third.Request.Since)
	}
	// Full ignores the cursor; everything read again is unchanged.
	full := e.wait(e.startSync(StartRequest{Full: true}).ID)
	if full.State != Completed || full.Totals.Written != 0 || full.Totals.Unchanged == 0 || !full.Request.Since.IsZero() {
		t.Errorf("full sync: %s %+v", full.State, full.Totals)
	}
}

func sortedCopy(s []string) []string {
	c := append([]string(nil), s...)
	for i := range c {
		for j := i + 1; j < len(c); j++ {
			if c[j] < c[i] {
				c[i], c[j] = c[j], c[i]
			}
		}
	}
	return c
}

// requiresAccessToken false: the files are fetched without the token and
// the sync completes. (That the token is then not sent is checked at the
// HTTP level in TestRequiresAccessTokenHeaders.) bulkdata-2.0-client #201.
func TestRequiresAccessTokenFalse(t *testing.T) {
	t.Parallel()
	no := false
	e := newEnv(t, withSandbox(sandboxtest.WithFaults(sandbox.Faults{RequiresAccessToken: &no})))
	v := e.wait(e.startSync(StartRequest{Request: Request{Types: []string{"Patient", "Encounter"}}}).ID)
	if v.State != Completed || v.Manifest.RequiresAccessToken {
		t.Fatalf("sync %s %s, requiresAccessToken %v", v.State, v.Error, v.Manifest.RequiresAccessToken)
	}
	e.expect(e.conn.ID, sandbox.ExportParams{Types: []string{"Patient", "Encounter"}})
}

// 5xx bursts on polling and on downloads are waited out; a file cut
// mid-stream continues where it stopped.
func TestServerErrorsAndCutDownloads(t *testing.T) {
	t.Parallel()
	e := newEnv(t, withSandbox(sandboxtest.WithFaults(
		sandbox.Faults{Endpoints: []string{"export-status"}, Status: 500, Count: 6},
		sandbox.Faults{Endpoints: []string{"export-file"}, Status: 503, After: 2, Count: 9},
		sandbox.Faults{DropNDJSONAfterBytes: 50_000},
	)))
	v := e.wait(e.startSync(StartRequest{}).ID)
	if v.State != Completed {
		t.Fatalf("sync %s: %s", v.State, v.Error)
	}
	e.expect(e.conn.ID, sandbox.ExportParams{})
	f := e.sb.Stats().Faults
	if f["export-status:500"] != 6 || f["export-file:503"] != 9 || f["export-file:drop"] < 5 {
		t.Errorf("faults not all hit: %v", f)
	}
	if v.Totals.Malformed != 0 {
		t.Errorf("a cut line was taken for a malformed one: %+v %+v", v.Totals, v.Malformed)
	}
}

// Files that expired before they were downloaded: the export is started
// again; when they keep expiring, the sync fails with the reason.
func TestExpiredFiles(t *testing.T) {
	t.Parallel()
	e := newEnv(t, withSandbox(sandboxtest.WithFaults(sandbox.Faults{ExpireBulkFiles: true})))
	v := e.wait(e.startSync(StartRequest{Request: Request{Types: []string{"Patient"}}}).ID)
	if v.State != Failed || v.Kickoffs != e.opts.MaxKickoffsOr(3) || !strings.Contains(v.Error, "expired") {
		t.Fatalf("sync %s after %d kick-offs: %s", v.State, v.Kickoffs, v.Error)
	}
	evs := e.syncEvents()
	if len(evs) != 1 || evs[0].Type != events.RecordsSyncFailed {
		t.Fatalf("events %+v", evs)
	}

	// Expiry that stops: the second export is downloaded.
	if err := e.sb.SetFaults(sandbox.Faults{ExpireBulkFiles: true, Endpoints: []string{"export-file"}}); err != nil {
		t.Fatal(err)
	}
	id := e.startSync(StartRequest{Request: Request{Types: []string{"Patient"}}}).ID
	e.waitFor(id, func(v View) bool { return v.Kickoffs >= 2 || v.State.Terminal() }, time.Minute)
	if err := e.sb.SetFaults(); err != nil {
		t.Fatal(err)
	}
	v = e.wait(id)
	if v.State != Completed || v.Kickoffs < 2 {
		t.Fatalf("sync %s after %d kick-offs: %s", v.State, v.Kickoffs, v.Error)
	}
	e.expect(e.conn.ID, sandbox.ExportParams{Types: []string{"Patient"}})
}

// MaxKickoffsOr is the option or its default (tests).
func (o Options) MaxKickoffsOr(d int) int {
	if o.MaxKickoffs > 0 {
		return o.MaxKickoffs
	}
	return d
}

// Cancelling a sync in progress deletes the export at the source.
// bulkdata-2.0-client #119.
func TestCancel(t *testing.T) {
	t.Parallel()
	e := newEnv(t, withSandbox(sandboxtest.WithConfig(func(c *sandbox.Config) { c.BulkMinDuration = sandbox.Duration(time.Hour) })))
	id := e.startSync(StartRequest{}).ID
	// The export is in progress: X-Progress is reported
	// (bulkdata-2.0-client #135).
	v := e.waitFor(id, func(v View) bool { return v.Phase == PhaseExporting && v.Polls >= 2 && v.Progress != "" }, time.Minute)
	cv, _, err := e.eng.Cancel(context.Background(), "", id, "")
	if err != nil {
		t.Fatal(err)
	}
	if cv.State != Cancelled {
		t.Fatalf("after cancel: %s", cv.State)
	}
	if n := e.sb.Stats().Endpoints["export-delete"]; n != 1 {
		t.Errorf("export-delete %d, want 1", n)
	}
	polls := e.sb.Stats().Endpoints["export-status"]
	time.Sleep(100 * time.Millisecond)
	if n := e.sb.Stats().Endpoints["export-status"]; n != polls {
		t.Errorf("polling went on after cancel: %d -> %d", polls, n)
	}
	evs := e.syncEvents()
	if len(evs) != 1 || evs[0].Type != events.RecordsSyncFailed || !strings.Contains(string(evs[0].Data), `"cancelled":true`) {
		t.Errorf("events %+v", evs)
	}
	_ = v
	// Cancelling again answers the same.
	cv, _, err = e.eng.Cancel(context.Background(), "", id, "")
	if err != nil || cv.State != Cancelled {
		t.Errorf("second cancel: %v %v", cv, err)
	}
}

// A sync interrupted by a stop resumes at the next start without asking
// for a finished file again, and ends with the exact export.
func TestResumeAfterStop(t *testing.T) {
	t.Parallel()
	e := newEnv(t, withOptions(func(o *Options) { o.DefaultDownloads, o.MaxDownloads, o.BatchRecords = 2, 2, 50 }),
		withSandbox(sandboxtest.WithConfig(func(c *sandbox.Config) { c.BulkFileResources = 200 })))
	id := e.startSync(StartRequest{}).ID
	v := e.waitFor(id, func(v View) bool { return v.Totals.FilesDone >= 3 }, time.Minute)
	e.stop()
	v, err := e.eng.Get(context.Background(), "", id, true)
	if err != nil {
		t.Fatal(err)
	}
	if v.State != Running || v.Totals.FilesDone == v.Totals.FilesTotal {
		t.Fatalf("stopped too late: %s, %d/%d files", v.State, v.Totals.FilesDone, v.Totals.FilesTotal)
	}
	done := map[string]bool{}
	partial := 0
	for _, f := range v.Files {
		if f.Done {
			done[urlPath(f.URL)] = true
		} else if f.Offset > 0 {
			partial++
		}
	}
	mark := len(e.reqs.all())
	e.start()
	v = e.wait(id)
	if v.State != Completed {
		t.Fatalf("resumed sync %s: %s", v.State, v.Error)
	}
	for _, p := range e.reqs.filesRequested(mark) {
		if done[p] {
			t.Errorf("finished file %s downloaded again", p)
		}
	}
	e.expect(e.conn.ID, sandbox.ExportParams{})
	t.Logf("%d files done before the stop, %d partial", len(done), partial)
}

func urlPath(u string) string {
	if i := strings.Index(u, "://"); i >= 0 {
		u = u[i+3:]
		if j := strings.IndexByte(u, '/'); j >= 0 {
			return u[j:]
		}
	}
	return u
}

// Schedules run the connection's sync again, incrementally.
func TestSchedule(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	v, sched, err := e.eng.Start(context.Background(), "", StartRequest{ConnectionID: e.conn.ID, Request: Request{Types: []string{"Patient"}}, Every: 200 * time.Millisecond})
	if err != nil || sched == nil || v.ScheduleID != sched.ID {
		t.Fatalf("start: %v %+v", err, sched)
	}
	first := e.wait(v.ID)
	if first.State != Completed {
		t.Fatal(first.Error)
	}
	var second View
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		list, _, err := e.eng.List(context.Background(), ListFilter{ConnectionID: e.conn.ID}, 10, "")
		if err != nil {
			t.Fatal(err)
		}
		if len(list) >= 2 {
			second = e.wait(list[0].ID)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if second.ID == "" || second.State != Completed || second.ScheduleID != sched.ID || !second.Incremental ||
		!second.Request.Since.Equal(first.Manifest.TransactionTime) {
		t.Fatalf("scheduled sync %+v", second.Job)
	}
	// Removing the schedule stops it.
	if _, s, err := e.eng.Cancel(context.Background(), "", "", sched.ID); err != nil || s == nil {
		t.Fatalf("remove schedule: %v", err)
	}
	scheds, _ := e.eng.Schedules(context.Background(), "", "")
	if len(scheds) != 0 {
		t.Errorf("schedules %+v", scheds)
	}
}

// Deleting (revoking) a connection stops its sync.
func TestRevokedConnectionStopsSync(t *testing.T) {
	t.Parallel()
	e := newEnv(t, withSandbox(sandboxtest.WithConfig(func(c *sandbox.Config) { c.BulkMinDuration = sandbox.Duration(time.Hour) })))
	id := e.startSync(StartRequest{}).ID
	e.waitFor(id, func(v View) bool { return v.Phase == PhaseExporting }, time.Minute)
	if _, err := e.conns.Delete(context.Background(), e.conn.ID, "deleted by the test"); err != nil {
		t.Fatal(err)
	}
	v := e.wait(id)
	if v.State != Failed || !strings.Contains(v.Error, "revoked") {
		t.Fatalf("sync %s: %s", v.State, v.Error)
	}
}

// Apps see only their connections' syncs; patient connections and
// inactive connections are refused.
func TestStartChecks(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	if _, _, err := e.eng.Start(ctx, "another-app", StartRequest{ConnectionID: e.conn.ID}); !errors.Is(err, connections.ErrNotFound) {
		t.Errorf("another app's connection: %v", err)
	}
	pc, err := e.conns.CreatePending(ctx, connections.Connection{Pattern: connections.PatientAccess, SourceID: "x", Plugin: "smart", FHIRBase: e.conn.FHIRBase})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := e.eng.Start(ctx, "", StartRequest{ConnectionID: pc.ID}); !errors.Is(err, ErrNotBackend) {
		t.Errorf("patient connection: %v", err)
	}
	if _, err := e.conns.Delete(ctx, e.conn.ID, "test"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := e.eng.Start(ctx, "", StartRequest{ConnectionID: e.conn.ID}); !errors.Is(err, ErrNotActive) {
		t.Errorf("revoked connection: %v", err)
	}
	for _, r := range []Request{{Level: "tenant"}, {Level: Group}, {GroupID: "a b"}, {Types: []string{"observation"}}, {TypeFilters: []string{"Observation"}}} {
		if _, err := normalize(r); !errors.Is(err, ErrInvalid) {
			t.Errorf("%+v: %v", r, err)
		}
	}
	if _, err := e.eng.Get(ctx, "", "sync_nope", false); !errors.Is(err, ErrNotFound) {
		t.Errorf("get unknown: %v", err)
	}
	_ = records.Position{}
}
