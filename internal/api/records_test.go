package api_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/medrelay/medrelay/agent/client"
	"github.com/medrelay/medrelay/internal/api"
	"github.com/medrelay/medrelay/internal/apps"
	"github.com/medrelay/medrelay/internal/audit"
	"github.com/medrelay/medrelay/internal/errdefs"
	"github.com/medrelay/medrelay/internal/ipc"
	"github.com/medrelay/medrelay/internal/records"
	"github.com/medrelay/medrelay/internal/store"
	agentv1 "github.com/medrelay/medrelay/proto/gen/medrelay/agent/v1"
)

// owners is a RecordOwner over a table: connection → app and patient.
type owners struct {
	mu sync.Mutex
	m  map[string][2]string
}

var errNoConnection = errdefs.Define(errdefs.NotFound, "CONNECTION_NOT_FOUND", "no such connection")

func (o *owners) set(conn, app, patient string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.m == nil {
		o.m = map[string][2]string{}
	}
	o.m[conn] = [2]string{app, patient}
}

func (o *owners) CheckAccess(_ context.Context, appID, conn string) (string, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	c, ok := o.m[conn]
	if !ok || (appID != "" && c[0] != appID) {
		return "", fmt.Errorf("%w: %s", errNoConnection, conn)
	}
	return c[1], nil
}

type recordsAgent struct {
	socket  string
	audit   *audit.Log
	records *records.Store
	apps    *apps.Registry
}

// startRecordsAgent serves the host API with RecordService on a real socket.
// owner may be nil (connections not wired).
func startRecordsAgent(t *testing.T, owner api.RecordOwner) *recordsAgent {
	t.Helper()
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	db, err := store.Open(ctx, store.Options{InMemory: true, Key: bytes.Repeat([]byte{3}, 32), GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	a := &recordsAgent{socket: filepath.Join(t.TempDir(), "a.sock"), audit: audit.New(db, log), apps: apps.NewRegistry(db)}
	if a.records, err = records.Open(ctx, db, records.WithLogger(log)); err != nil {
		t.Fatal(err)
	}
	d := api.Deps{Logger: log, Apps: a.apps, Audit: a.audit, RecordStore: a.records, Status: func(context.Context) (*agentv1.GetStatusResponse, error) {
		return &agentv1.GetStatusResponse{}, nil
	}}
	if owner != nil {
		d.RecordOwner = owner
	}
	srv := api.New(d)
	l, err := ipc.Listen(a.socket, ipc.ListenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	t.Cleanup(func() {
		srv.Stop(time.Second)
		a.audit.Close()
		db.Close()
	})
	return a
}

func (a *recordsAgent) dial(t *testing.T, token string) *client.Client {
	t.Helper()
	c, err := client.Dial(context.Background(), client.WithSocket(a.socket), client.WithAppToken(token))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func (a *recordsAgent) app(t *testing.T, name string) (string, string) {
	t.Helper()
	app, tok, err := a.apps.Create(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return app.ID, tok
}

func (a *recordsAgent) ingest(t *testing.T, conn string, lines ...string) {
	t.Helper()
	var in bytes.Buffer
	for _, l := range lines {
		in.WriteString(l + "\n")
	}
	if _, err := a.records.IngestNDJSON(context.Background(), conn, &in, records.IngestOptions{}); err != nil {
		t.Fatal(err)
	}
}

func listAll(t *testing.T, c *client.Client, req *agentv1.ListRecordsRequest) ([]*agentv1.Record, string, error) {
	t.Helper()
	st, err := c.Records.ListRecords(context.Background(), req)
	if err != nil {
		return nil, "", err
	}
	var out []*agentv1.Record
	cursor := ""
	for {
		m, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return out, cursor, nil
		}
		if err != nil {
			return out, cursor, err
		}
		out = append(out, m.GetRecords()...)
		cursor = m.GetCursor()
	}
}

func ids(rs []*agentv1.Record) []string {
	var out []string
	for _, r := range rs {
		s := r.GetResourceType() + "/" + r.GetId()
		if r.GetDeleted() {
			s += "-"
		}
		out = append(out, s)
	}
	return out
}

// waitAudit returns the audit entries of method once n of them are written
// (the audit writer is asynchronous).
func waitAudit(t *testing.T, l *audit.Log, method string, n int) []audit.Entry {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		all, _, err := l.List(context.Background(), audit.Filter{}, 1000, "")
		if err != nil {
			t.Fatal(err)
		}
		var got []audit.Entry
		for _, e := range all {
			if e.Method == method {
				got = append(got, e)
			}
		}
		if len(got) >= n || time.Now().After(deadline) {
			return got
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestRecordServiceAppsReadOnlyTheirConnectionsAndAreAudited(t *testing.T) {
	o := &owners{}
	a2 := startRecordsAgent(t, o)
	appA, tokA := a2.app(t, "app-a")
	appB, tokB := a2.app(t, "app-b")
	o.set("conn-a", appA, "patient-7")
	o.set("conn-b", appB, "patient-9")
	a2.ingest(t, "conn-a",
		`{"resourceType":"Patient","id":"p1","meta":{"versionId":"1","lastUpdated":"2025-01-01T00:00:00Z"}}`,
		`{"resourceType":"Observation","id":"o1"}`,
		`{"resourceType":"Observation","id":"o2"}`)
	a2.ingest(t, "conn-b", `{"resourceType":"Patient","id":"q1"}`)
	ca, cb, admin := a2.dial(t, tokA), a2.dial(t, tokB), a2.dial(t, "")

	got, cursor, err := listAll(t, ca, &agentv1.ListRecordsRequest{ConnectionId: "conn-a", PageSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(ids(got)) != "[Patient/p1 Observation/o1 Observation/o2]" || cursor == "" || got[2].GetCursor() != cursor {
		t.Fatalf("list = %v, cursor %q", ids(got), cursor)
	}
	p := got[0]
	if p.GetVersionId() != "1" || !p.GetLastUpdated().AsTime().Equal(time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)) ||
		string(p.GetJson()) != `{"resourceType":"Patient","id":"p1","meta":{"versionId":"1","lastUpdated":"2025-01-01T00:00:00Z"}}` {
		t.Fatalf("record %v", p)
	}
	// Messages hold page_size records; each carries the cursor after it.
	st, err := ca.Records.ListRecords(context.Background(), &agentv1.ListRecordsRequest{ConnectionId: "conn-a", PageSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	var sizes []int
	var cursors []string
	for {
		m, err := st.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, len(m.GetRecords()))
		cursors = append(cursors, m.GetCursor())
	}
	if fmt.Sprint(sizes) != "[2 1]" || cursors[0] != got[1].GetCursor() || cursors[1] != cursor {
		t.Fatalf("messages of %v records, cursors %v", sizes, cursors)
	}
	// Another app's connection does not exist for this app.
	if _, _, err := listAll(t, ca, &agentv1.ListRecordsRequest{ConnectionId: "conn-b"}); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("app A lists B's connection: %v", err)
	}
	if _, err := cb.Records.GetRecord(context.Background(), &agentv1.GetRecordRequest{ConnectionId: "conn-a", ResourceType: "Patient", Id: "p1"}); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("app B gets A's record: %v", err)
	}
	// Administrators read every connection.
	if got, _, err := listAll(t, admin, &agentv1.ListRecordsRequest{ConnectionId: "conn-b"}); err != nil || len(got) != 1 {
		t.Fatalf("admin list: %v, %v", ids(got), err)
	}
	// Continuing from the cursor: nothing new, and the cursor stays.
	if more, c2, err := listAll(t, ca, &agentv1.ListRecordsRequest{ConnectionId: "conn-a", SinceCursor: cursor}); err != nil || len(more) != 0 || c2 != cursor {
		t.Fatalf("after cursor: %v %q %v", ids(more), c2, err)
	}
	a2.ingest(t, "conn-a", `{"resourceType":"Observation","id":"o1","meta":{"versionId":"2"}}`)
	if more, _, err := listAll(t, ca, &agentv1.ListRecordsRequest{ConnectionId: "conn-a", SinceCursor: cursor}); err != nil || fmt.Sprint(ids(more)) != "[Observation/o1]" {
		t.Fatalf("changed since cursor: %v %v", ids(more), err)
	}
	if only, _, err := listAll(t, ca, &agentv1.ListRecordsRequest{ConnectionId: "conn-a", Types: []string{"Patient"}}); err != nil || fmt.Sprint(ids(only)) != "[Patient/p1]" {
		t.Fatalf("types filter: %v %v", ids(only), err)
	}
	if lim, _, err := listAll(t, ca, &agentv1.ListRecordsRequest{ConnectionId: "conn-a", Limit: 1}); err != nil || len(lim) != 1 {
		t.Fatalf("limit: %v %v", ids(lim), err)
	}

	r, err := ca.Records.GetRecord(context.Background(), &agentv1.GetRecordRequest{ConnectionId: "conn-a", ResourceType: "Observation", Id: "o1"})
	if err != nil || r.GetRecord().GetVersionId() != "2" {
		t.Fatalf("get: %v %v", r, err)
	}
	_, err = ca.Records.GetRecord(context.Background(), &agentv1.GetRecordRequest{ConnectionId: "conn-a", ResourceType: "Observation", Id: "nope"})
	if e, ok := client.AsError(err); !ok || e.Code != codes.NotFound || e.Reason != "RECORD_NOT_FOUND" {
		t.Fatalf("missing record: %v", err)
	}
	_, _, err = listAll(t, ca, &agentv1.ListRecordsRequest{ConnectionId: "conn-a", SinceCursor: "garbage"})
	if e, ok := client.AsError(err); !ok || e.Code != codes.InvalidArgument || e.Reason != "RECORD_CURSOR_INVALID" {
		t.Fatalf("bad cursor: %v", err)
	}
	_, _, err = listAll(t, ca, &agentv1.ListRecordsRequest{ConnectionId: "conn-a", Types: []string{"not a type"}})
	if e, ok := client.AsError(err); !ok || e.Code != codes.InvalidArgument || e.Reason != "RESOURCE_TYPE_INVALID" {
		t.Fatalf("bad type: %v", err)
	}

	// Every read by an app is audited with its connection and patient,
	// refused ones included.
	entries := waitAudit(t, a2.audit, "/medrelay.agent.v1.RecordService/ListRecords", 6)
	var okA, refused bool
	for _, e := range entries {
		if e.AppID == appA && e.ConnectionID == "conn-a" && e.PatientRef == "patient-7" && e.Outcome == "OK" {
			okA = true
		}
		if e.AppID == appA && e.ConnectionID == "conn-b" && e.Outcome == "NotFound" && e.PatientRef == "" {
			refused = true // the patient of a connection it may not see is not named
		}
	}
	if !okA || !refused {
		t.Fatalf("audit entries: %+v", entries)
	}
	gets := waitAudit(t, a2.audit, "/medrelay.agent.v1.RecordService/GetRecord", 2)
	var getOK bool
	for _, e := range gets {
		getOK = getOK || (e.AppID == appA && e.ConnectionID == "conn-a" && e.PatientRef == "patient-7" && e.Outcome == "OK")
	}
	if !getOK {
		t.Fatalf("GetRecord audit: %+v", gets)
	}
}

func TestRecordServiceWithoutOwnerCheckRefusesApps(t *testing.T) {
	a := startRecordsAgent(t, nil)
	_, tok := a.app(t, "app")
	a.ingest(t, "c1", `{"resourceType":"Patient","id":"p1"}`)
	_, _, err := listAll(t, a.dial(t, tok), &agentv1.ListRecordsRequest{ConnectionId: "c1"})
	if e, ok := client.AsError(err); !ok || e.Code != codes.Unavailable || e.Reason != "CONNECTIONS_UNAVAILABLE" {
		t.Fatalf("app without owner check: %v", err)
	}
	if got, _, err := listAll(t, a.dial(t, ""), &agentv1.ListRecordsRequest{ConnectionId: "c1"}); err != nil || len(got) != 1 {
		t.Fatalf("admin: %v %v", ids(got), err)
	}
	if _, _, err := listAll(t, a.dial(t, ""), &agentv1.ListRecordsRequest{}); !errors.Is(err, client.ErrInvalidArgument) {
		t.Fatalf("no connection id: %v", err)
	}
}
