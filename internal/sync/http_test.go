package sync

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	stdsync "sync"
	"testing"
	"time"

	"github.com/medrelay/medrelay/internal/sandbox"
	"github.com/medrelay/medrelay/internal/sandbox/sandboxtest"
)

// bulkServer is a small Bulk Data server that records every request's
// headers, for what the sandbox cannot show: which headers the client
// sent, Range requests, scripted status answers.
type bulkServer struct {
	srv *httptest.Server

	mu            stdsync.Mutex
	reqs          []seen
	files         map[string][]byte
	order         []string
	requiresToken bool
	// status answers polls in order before the manifest is served.
	status []func(http.ResponseWriter)
	polls  int
	// cutAfter cuts each file's first download after that many bytes.
	cutAfter    int
	cut         map[string]bool
	ignoreRange bool
	deleted     int
}

type seen struct {
	Method, Path, Query string
	Header              http.Header
}

func newBulkServer(t *testing.T) *bulkServer {
	b := &bulkServer{files: map[string][]byte{}, cut: map[string]bool{}, requiresToken: true}
	b.srv = httptest.NewServer(http.HandlerFunc(b.serve))
	t.Cleanup(b.srv.Close)
	return b
}

func (b *bulkServer) fhirBase() string { return b.srv.URL + "/fhir" }

func (b *bulkServer) addFile(name string, lines ...string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.files[name] = []byte(strings.Join(lines, "\n") + "\n")
	b.order = append(b.order, name)
}

func (b *bulkServer) requests(method, pathPrefix string) []seen {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []seen
	for _, s := range b.reqs {
		if s.Method == method && strings.HasPrefix(s.Path, pathPrefix) {
			out = append(out, s)
		}
	}
	return out
}

func (b *bulkServer) serve(w http.ResponseWriter, r *http.Request) {
	b.mu.Lock()
	b.reqs = append(b.reqs, seen{Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery, Header: r.Header.Clone()})
	b.mu.Unlock()
	switch {
	case r.URL.Path == "/fhir/$export":
		w.Header().Set("Content-Location", b.srv.URL+"/fhir/status")
		w.WriteHeader(http.StatusAccepted)
	case r.URL.Path == "/fhir/status" && r.Method == http.MethodDelete:
		b.mu.Lock()
		b.deleted++
		b.mu.Unlock()
		w.WriteHeader(http.StatusAccepted)
	case r.URL.Path == "/fhir/status":
		b.mu.Lock()
		var answer func(http.ResponseWriter)
		if b.polls < len(b.status) {
			answer = b.status[b.polls]
		}
		b.polls++
		b.mu.Unlock()
		if answer != nil {
			answer(w)
			return
		}
		var out []string
		b.mu.Lock()
		for _, n := range b.order {
			typ, _, _ := strings.Cut(n, "-")
			kind := "output"
			if typ == "OperationOutcome" {
				kind = "error"
			}
			_ = kind
			// Pre-signed, as storage services hand out.
			out = append(out, fmt.Sprintf(`{"type":%q,"url":%q}`, typ, b.srv.URL+"/fhir/files/"+n+"?sig=s3cr3t"))
		}
		req := b.requiresToken
		b.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"transactionTime":"2025-01-02T03:04:05.678Z","request":"x","requiresAccessToken":%v,"output":[%s],"error":[]}`, req, strings.Join(out, ","))
	case strings.HasPrefix(r.URL.Path, "/fhir/files/"):
		if r.URL.Query().Get("sig") != "s3cr3t" {
			http.Error(w, "bad signature", http.StatusForbidden)
			return
		}
		name := strings.TrimPrefix(r.URL.Path, "/fhir/files/")
		b.mu.Lock()
		data, ok := b.files[name]
		cut := b.cutAfter > 0 && !b.cut[name]
		b.cut[name] = true
		ignore := b.ignoreRange
		needTok := b.requiresToken
		b.mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		if needTok && r.Header.Get("Authorization") != "Bearer static-test-token" {
			http.Error(w, "token required", http.StatusUnauthorized)
			return
		}
		w.Header().Set("Content-Type", "application/fhir+ndjson")
		if cut {
			w.Header().Set("Content-Length", strconv.Itoa(len(data)))
			w.WriteHeader(http.StatusOK)
			_, _ = w.Write(data[:b.cutAfter])
			_ = http.NewResponseController(w).Flush()
			panic(http.ErrAbortHandler)
		}
		if ignore {
			r.Header.Del("Range")
		}
		http.ServeContent(w, r, name, time.Time{}, bytes.NewReader(data))
	default:
		http.NotFound(w, r)
	}
}

func resource(typ, id string) string {
	return fmt.Sprintf(`{"resourceType":%q,"id":%q,"meta":{"versionId":"1","lastUpdated":"2024-05-06T07:08:09Z"},"text":{"status":"generated","div":"<div>%s</div>"}}`, typ, id, strings.Repeat("x", 200))
}

func lines(typ string, n int) []string {
	var out []string
	for i := range n {
		out = append(out, resource(typ, fmt.Sprintf("%s-%d", strings.ToLower(typ), i)))
	}
	return out
}

// The requests carry the headers Bulk Data asks of a client, and the token
// goes with downloads exactly when the manifest says so.
// bulkdata-2.0-client #43, #45, #48, #130, #201, #205, #232;
// smart-2.2-client #264.
func TestRequiresAccessTokenHeaders(t *testing.T) {
	t.Parallel()
	for _, requires := range []bool{true, false} {
		t.Run(fmt.Sprintf("requiresAccessToken=%v", requires), func(t *testing.T) {
			b := newBulkServer(t)
			b.requiresToken = requires
			b.addFile("Patient-1.ndjson", lines("Patient", 20)...)
			e := newEnv(t, withServer(b.fhirBase()))
			v := e.wait(e.startSync(StartRequest{}).ID)
			if v.State != Completed || v.Totals.Written != 20 {
				t.Fatalf("sync %s %s %+v", v.State, v.Error, v.Totals)
			}
			k := b.requests(http.MethodGet, "/fhir/$export")
			if len(k) != 1 || k[0].Header.Get("Accept") != "application/fhir+json" || k[0].Header.Get("Prefer") != "respond-async" ||
				k[0].Header.Get("Authorization") != "Bearer static-test-token" {
				t.Errorf("kick-off headers %v", k)
			}
			if q := k[0].Query; q != "_outputFormat=application%2Ffhir%2Bndjson" {
				t.Errorf("kick-off query %q", q)
			}
			st := b.requests(http.MethodGet, "/fhir/status")
			if len(st) == 0 || st[0].Header.Get("Accept") != "application/json" || st[0].Header.Get("Authorization") == "" {
				t.Errorf("status headers %v", st)
			}
			if len(v.Files) != 1 || v.Files[0].URL != b.srv.URL+"/fhir/files/Patient-1.ndjson" {
				t.Errorf("files shown %+v", v.Files)
			}
			files := b.requests(http.MethodGet, "/fhir/files/")
			if len(files) != 1 || files[0].Header.Get("Accept") != "application/fhir+ndjson" {
				t.Fatalf("file requests %v", files)
			}
			if got := files[0].Header.Get("Authorization") != ""; got != requires {
				t.Errorf("token sent with the download: %v, requiresAccessToken %v", got, requires)
			}
		})
	}
}

// An interrupted download continues with a Range request from the last
// line stored; a server that ignores Range is skipped forward instead.
func TestRangeResume(t *testing.T) {
	t.Parallel()
	for _, ignore := range []bool{false, true} {
		t.Run(fmt.Sprintf("ignoreRange=%v", ignore), func(t *testing.T) {
			b := newBulkServer(t)
			b.cutAfter, b.ignoreRange = 10_000, ignore
			b.addFile("Observation-1.ndjson", lines("Observation", 300)...)
			e := newEnv(t, withServer(b.fhirBase()), withOptions(func(o *Options) { o.BatchRecords = 10 }))
			v := e.wait(e.startSync(StartRequest{}).ID)
			if v.State != Completed || v.Totals.Written != 300 || v.Totals.Malformed != 0 {
				t.Fatalf("sync %s %s %+v %v", v.State, v.Error, v.Totals, v.Malformed)
			}
			files := b.requests(http.MethodGet, "/fhir/files/")
			if len(files) != 2 || files[0].Header.Get("Range") != "" {
				t.Fatalf("requests %v", files)
			}
			rng := files[1].Header.Get("Range")
			off, err := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(rng, "bytes="), "-"))
			if err != nil || off <= 0 || off > 10_000 {
				t.Fatalf("resumed with Range %q", rng)
			}
			if got := e.stored(e.conn.ID); got.Total != 300 {
				t.Errorf("stored %d", got.Total)
			}
		})
	}
}

// Transient OperationOutcomes at the status URL keep the client polling;
// a permanent one fails the sync with its diagnostics.
// bulkdata-2.0-client #123, #124.
func TestStatusOutcomes(t *testing.T) {
	t.Parallel()
	outcome := func(status int, code, msg string) func(http.ResponseWriter) {
		return func(w http.ResponseWriter) {
			w.Header().Set("Content-Type", "application/fhir+json")
			w.WriteHeader(status)
			fmt.Fprintf(w, `{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":%q,"diagnostics":%q}]}`, code, msg)
		}
	}
	progress := func(w http.ResponseWriter) {
		w.Header().Set("X-Progress", "42% done")
		w.WriteHeader(http.StatusAccepted)
	}
	b := newBulkServer(t)
	b.addFile("Patient-1.ndjson", lines("Patient", 5)...)
	b.status = []func(http.ResponseWriter){progress, outcome(400, "transient", "busy, try later"), outcome(400, "transient", "still busy"), progress}
	e := newEnv(t, withServer(b.fhirBase()))
	v := e.wait(e.startSync(StartRequest{}).ID)
	if v.State != Completed || v.Totals.Written != 5 || v.Polls != 5 {
		t.Fatalf("sync %s %s after %d polls", v.State, v.Error, v.Polls)
	}

	b2 := newBulkServer(t)
	b2.status = []func(http.ResponseWriter){progress, outcome(400, "processing", "the export cannot include Binary")}
	e2 := newEnv(t, withServer(b2.fhirBase()))
	v = e2.wait(e2.startSync(StartRequest{}).ID)
	if v.State != Failed || !strings.Contains(v.Error, "cannot include Binary") {
		t.Fatalf("sync %s: %s", v.State, v.Error)
	}
}

// A line that is not a resource is skipped and reported with its file and
// line; the rest of the file is stored.
func TestMalformedLines(t *testing.T) {
	t.Parallel()
	b := newBulkServer(t)
	l := lines("Condition", 10)
	l[3] = `{"resourceType":"Condition","id":` // cut short
	l[7] = `not json at all`
	b.addFile("Condition-1.ndjson", l...)
	e := newEnv(t, withServer(b.fhirBase()))
	v := e.wait(e.startSync(StartRequest{}).ID)
	if v.State != Completed || v.Totals.Written != 8 || v.Totals.Malformed != 2 || len(v.Malformed) != 2 {
		t.Fatalf("sync %s %+v %v", v.State, v.Totals, v.Malformed)
	}
	if m := v.Malformed[0]; m.Line != 4 || m.File != "output:Condition-1.ndjson" {
		t.Errorf("malformed %+v", m)
	}
	if m := v.Malformed[1]; m.Line != 8 {
		t.Errorf("malformed %+v", m)
	}
}

// 429 with Retry-After, as seconds and as an HTTP-date: nothing is sent to
// the status URL inside the window. bulkdata-2.0-client #126.
func TestRetryAfter429(t *testing.T) {
	t.Parallel()
	for _, date := range []bool{false, true} {
		t.Run(fmt.Sprintf("httpDate=%v", date), func(t *testing.T) {
			t.Parallel()
			const window = 2
			e := newEnv(t, withSandbox(sandboxtest.WithFaults(sandbox.Faults{Endpoints: []string{"export-status"}, Status: 429,
				RetryAfter: window, RetryAfterHTTPDate: date, Count: 1})))
			v := e.wait(e.startSync(StartRequest{Request: Request{Types: []string{"Patient"}}}).ID)
			if v.State != Completed {
				t.Fatalf("sync %s: %s", v.State, v.Error)
			}
			if e.sb.Stats().Faults["export-status:429"] != 1 {
				t.Fatalf("fault not hit: %v", e.sb.Stats().Faults)
			}
			var polls []time.Time
			for _, q := range e.reqs.all() {
				if q.Method == http.MethodGet && strings.Contains(q.Path, "/bulk/") && !strings.HasSuffix(q.Path, ".ndjson") {
					polls = append(polls, q.At)
				}
			}
			if len(polls) < 2 {
				t.Fatalf("%d polls", len(polls))
			}
			// Poll 1 got the 429; poll 2 must come after the window. An
			// HTTP-date has whole seconds: its window ends at the second.
			end := polls[0].Add(window * time.Second)
			if date {
				end = end.Truncate(time.Second)
			}
			if early := end.Sub(polls[1]); early > 20*time.Millisecond {
				t.Errorf("polled %s inside the Retry-After window", early)
			}
		})
	}
}

// An export that answers Retry-After of hours: the job records when to ask
// again, and a restarted agent still waits for it (DESIGN §7).
func TestLongRetryAfterSurvivesRestart(t *testing.T) {
	t.Parallel()
	e := newEnv(t, withSandbox(sandboxtest.WithConfig(func(c *sandbox.Config) {
		c.BulkRetryAfter, c.BulkMinDuration = 3*3600, sandbox.Duration(time.Hour)
	})))
	id := e.startSync(StartRequest{}).ID
	v := e.waitFor(id, func(v View) bool { return v.NextPollAt.After(time.Now().Add(2 * time.Hour)) }, time.Minute)
	if v.State != Running || v.Phase != PhaseExporting || v.Polls != 1 {
		t.Fatalf("sync %s/%s after %d polls", v.State, v.Phase, v.Polls)
	}
	e.stop()
	polls := e.sb.Stats().Endpoints["export-status"]
	e.start()
	time.Sleep(300 * time.Millisecond)
	if n := e.sb.Stats().Endpoints["export-status"]; n != polls {
		t.Errorf("polled inside the window after a restart: %d -> %d", polls, n)
	}
	v, err := e.eng.Get(context.Background(), "", id, false)
	if err != nil || v.State != Running {
		t.Fatalf("%v %v", v.State, err)
	}
	if _, _, err := e.eng.Cancel(context.Background(), "", id, ""); err != nil {
		t.Fatal(err)
	}
	if n := e.sb.Stats().Endpoints["export-delete"]; n != 1 {
		t.Errorf("export-delete %d", n)
	}
}

func TestPollDelay(t *testing.T) {
	e := &Engine{o: Options{PollInterval: time.Second, MaxPollInterval: 10 * time.Second, MaxRetryAfter: time.Hour}}
	for _, c := range []struct {
		polls int
		ra    time.Duration
		want  time.Duration
	}{
		{1, 0, time.Second}, {2, 0, 2 * time.Second}, {3, 0, 4 * time.Second}, {4, 0, 8 * time.Second}, {5, 0, 10 * time.Second}, {60, 0, 10 * time.Second},
		{1, 30 * time.Second, 30 * time.Second}, {9, 5 * time.Hour, time.Hour},
	} {
		if got := e.pollDelay(c.polls, c.ra); got != c.want {
			t.Errorf("pollDelay(%d, %s) = %s, want %s", c.polls, c.ra, got, c.want)
		}
	}
}
