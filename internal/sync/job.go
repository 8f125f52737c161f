// Package sync runs FHIR Bulk Data exports of backend connections into the
// record store: kick-off, status polling (Retry-After and X-Progress
// honoured, backoff otherwise), parallel downloads through the vendor plugin
// within the source's concurrency limit, NDJSON ingest, tombstones for
// deleted entries, error files kept, cancellation with DELETE, incremental
// syncs from the last transactionTime, and schedules (--every).
//
// # Surviving a crash
//
// A job and its progress live in the store. Each file's progress (byte
// offset and line reached, counts) is written by the record store's
// Writer.Commit in the same batch as the records it covers, after them: once
// the progress is stored, so are the records (records package, "Exactly-once
// ingest"). After the agent is killed at any point, the job resumes: finished
// files are not downloaded again, an interrupted file continues with an HTTP
// Range request from the last committed line, and a record stored again is
// identical to the stored copy and changes nothing. No record is lost or
// stored twice.
package sync

import (
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"strings"
	"time"

	"github.com/medrelay/medrelay/internal/errdefs"
	"github.com/medrelay/medrelay/internal/records"
)

// Level is the level of an export.
type Level string

// Levels.
const (
	System  Level = "system"
	Patient Level = "patient"
	Group   Level = "group"
)

// State of a job.
type State string

// States. Apps see these through the API; never rename one.
const (
	Queued    State = "queued"
	Running   State = "running"
	Completed State = "completed"
	Failed    State = "failed"
	Cancelled State = "cancelled"
)

// Terminal states never change again.
func (s State) Terminal() bool { return s == Completed || s == Failed || s == Cancelled }

// Phase of a running job.
type Phase string

// Phases, in order.
const (
	PhaseKickoff     Phase = "kickoff"
	PhaseExporting   Phase = "exporting"
	PhaseDownloading Phase = "downloading"
	PhaseDone        Phase = "done"
)

// Errors.
var (
	ErrNotFound       = errdefs.Define(errdefs.NotFound, "SYNC_NOT_FOUND", "no such sync")
	ErrInvalid        = errdefs.Define(errdefs.InvalidArgument, "SYNC_REQUEST_INVALID", "invalid sync request")
	ErrNotBackend     = errdefs.Define(errdefs.FailedPrecondition, "SYNC_NEEDS_BACKEND_CONNECTION", "only backend connections sync with Bulk Data")
	ErrNotActive      = errdefs.Define(errdefs.FailedPrecondition, "CONNECTION_NOT_ACTIVE", "the connection is not active")
	ErrNoPlugin       = errdefs.Define(errdefs.FailedPrecondition, "SYNC_NO_PLUGIN", "no plugin serves this connection")
	ErrScheduleAbsent = errdefs.Define(errdefs.NotFound, "SYNC_SCHEDULE_NOT_FOUND", "no such schedule")
)

// Request is what to export.
type Request struct {
	Level       Level     `json:"level"`
	GroupID     string    `json:"group_id,omitempty"`
	Types       []string  `json:"types,omitempty"`
	TypeFilters []string  `json:"type_filters,omitempty"`
	Since       time.Time `json:"since,omitempty"`
}

// scope names what a request covers, apart from since: incremental syncs
// continue from the last completed sync of the same scope.
func (r Request) scope() string {
	types := slices.Clone(r.Types)
	slices.Sort(types)
	filters := slices.Clone(r.TypeFilters)
	slices.Sort(filters)
	s := string(r.Level) + "|" + r.GroupID + "|" + strings.Join(types, ",") + "|" + strings.Join(filters, "\x1f")
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:8])
}

// Job is one sync, as stored.
type Job struct {
	ID           string  `json:"id"`
	ConnectionID string  `json:"connection_id"`
	AppID        string  `json:"app_id,omitempty"`
	Plugin       string  `json:"plugin"`
	Request      Request `json:"request"`
	// Incremental: Request.Since came from the last completed sync.
	Incremental bool   `json:"incremental,omitempty"`
	ScheduleID  string `json:"schedule_id,omitempty"`

	State      State     `json:"state"`
	Phase      Phase     `json:"phase"`
	CreatedAt  time.Time `json:"created_at"`
	StartedAt  time.Time `json:"started_at,omitempty"`
	FinishedAt time.Time `json:"finished_at,omitempty"`
	Error      string    `json:"error,omitempty"`
	// CancelRequested: cancelled by a caller; the runner finishes it.
	CancelRequested bool `json:"cancel_requested,omitempty"`
	// EventSent: the completion or failure event was appended (a crash
	// between storing the end and appending the event sends it at start).
	EventSent bool `json:"event_sent,omitempty"`

	StatusURL  string    `json:"status_url,omitempty"`
	Kickoffs   int       `json:"kickoffs,omitempty"`
	Polls      int       `json:"polls,omitempty"`
	Progress   string    `json:"progress,omitempty"`
	NextPollAt time.Time `json:"next_poll_at,omitempty"`
	// Failures counts consecutive transient failures (reset by progress).
	Failures int    `json:"failures,omitempty"`
	Waiting  string `json:"waiting,omitempty"`

	Manifest *Manifest `json:"manifest,omitempty"`
	// Totals are filled in when the job ends (running jobs report live
	// counters, interrupted ones the sum of their files).
	Totals *Totals `json:"totals,omitempty"`
}

// Manifest is what the export produced.
type Manifest struct {
	TransactionTime     time.Time `json:"transaction_time"`
	RequiresAccessToken bool      `json:"requires_access_token"`
	Files               []File    `json:"files"`
}

// File kinds.
const (
	KindOutput  = "output"
	KindDeleted = "deleted"
	KindError   = "error"
)

// File is one file of the manifest.
type File struct {
	Kind  string `json:"kind"`
	Type  string `json:"type"`
	URL   string `json:"url"`
	Count int64  `json:"count,omitempty"`
}

// FileProgress is how far one file is stored. It is written in the same
// batch as the records it covers.
type FileProgress struct {
	Offset    int64 `json:"offset"`
	Line      int64 `json:"line"`
	Done      bool  `json:"done,omitempty"`
	Written   int64 `json:"written,omitempty"`
	Unchanged int64 `json:"unchanged,omitempty"`
	Stale     int64 `json:"stale,omitempty"`
	Deleted   int64 `json:"deleted,omitempty"`
	Malformed int64 `json:"malformed,omitempty"`
	// Errors: OperationOutcomes of an error file.
	Errors int64 `json:"errors,omitempty"`
}

func (p FileProgress) position() records.Position {
	return records.Position{Offset: p.Offset, Line: p.Line}
}

// Totals add up a job's files.
type Totals struct {
	FilesTotal int   `json:"files_total"`
	FilesDone  int   `json:"files_done"`
	Bytes      int64 `json:"bytes"`
	Lines      int64 `json:"lines"`
	Written    int64 `json:"written"`
	Unchanged  int64 `json:"unchanged"`
	Stale      int64 `json:"stale"`
	Deleted    int64 `json:"deleted"`
	Malformed  int64 `json:"malformed"`
	Errors     int64 `json:"errors"`
	// Rate is resources per second over the download.
	Rate float64 `json:"rate,omitempty"`
}

// Resources is the number of resources read from output files.
func (t Totals) Resources() int64 { return t.Written + t.Unchanged + t.Stale }

func (t *Totals) add(p FileProgress) {
	t.Bytes += p.Offset
	t.Lines += p.Line
	t.Written += p.Written
	t.Unchanged += p.Unchanged
	t.Stale += p.Stale
	t.Deleted += p.Deleted
	t.Malformed += p.Malformed
	t.Errors += p.Errors
	if p.Done {
		t.FilesDone++
	}
}

// Schedule syncs a connection again Every after each sync ends.
type Schedule struct {
	ID           string        `json:"id"`
	ConnectionID string        `json:"connection_id"`
	AppID        string        `json:"app_id,omitempty"`
	Request      Request       `json:"request"`
	Every        time.Duration `json:"every"`
	NextAt       time.Time     `json:"next_at,omitempty"`
	LastSyncID   string        `json:"last_sync_id,omitempty"`
	CreatedAt    time.Time     `json:"created_at"`
}

// Malformed is a line skipped because it was not a FHIR resource.
type Malformed = records.Malformed

// View is a job with its progress, as the API shows it.
type View struct {
	Job
	Totals    Totals
	Files     []FileView
	Malformed []Malformed
	Errors    []string
}

// FileView is one file with its progress.
type FileView struct {
	File
	FileProgress
}
