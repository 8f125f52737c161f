package main

// The records commands against a real host API (RecordService over a
// socket, a real record store): what an administrator types, what a script
// reads.

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/medrelay/medrelay/internal/api"
	"github.com/medrelay/medrelay/internal/apps"
	"github.com/medrelay/medrelay/internal/audit"
	"github.com/medrelay/medrelay/internal/ipc"
	"github.com/medrelay/medrelay/internal/records"
	"github.com/medrelay/medrelay/internal/store"
	agentv1 "github.com/medrelay/medrelay/proto/gen/medrelay/agent/v1"
)

func startRecordsAPI(t *testing.T, ndjson string, opts ...records.Option) string {
	t.Helper()
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	db, err := store.Open(ctx, store.Options{InMemory: true, Key: bytes.Repeat([]byte{5}, 32), GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	recs, err := records.Open(ctx, db, append([]records.Option{records.WithLogger(log)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := recs.IngestNDJSON(ctx, "conn1", strings.NewReader(ndjson), records.IngestOptions{}); err != nil {
		t.Fatal(err)
	}
	w, _ := recs.NewWriter("conn1")
	_ = w.Delete("Condition", "gone", time.Time{})
	if _, err := w.Commit(ctx, nil); err != nil {
		t.Fatal(err)
	}
	al := audit.New(db, log)
	srv := api.New(api.Deps{Logger: log, Apps: apps.NewRegistry(db), Audit: al, RecordStore: recs,
		Status: func(context.Context) (*agentv1.GetStatusResponse, error) { return &agentv1.GetStatusResponse{}, nil }})
	sock := filepath.Join(t.TempDir(), "a.sock")
	l, err := ipc.Listen(sock, ipc.ListenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	t.Cleanup(func() {
		srv.Stop(time.Second)
		al.Close()
		db.Close()
	})
	return sock
}

func run(t *testing.T, sock string, args ...string) (string, string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	root := newRoot()
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(append(args, "--socket", sock, "--app-token", ""))
	err := root.ExecuteContext(context.Background())
	return out.String(), errOut.String(), err
}

const patient = `{"resourceType":"Patient","id":"p1","meta":{"versionId":"2","lastUpdated":"2025-03-04T05:06:07Z"},"name":[{"family":"Doe"}]}`

func TestRecordsListAndGet(t *testing.T) {
	sock := startRecordsAPI(t, patient+"\n"+`{"resourceType":"Observation","id":"o1","status":"final"}`+"\n")

	out, errOut, err := run(t, sock, "records", "list", "conn1", "--ndjson")
	if err != nil {
		t.Fatal(err)
	}
	if out != patient+"\n"+`{"resourceType":"Observation","id":"o1","status":"final"}`+"\n" {
		t.Fatalf("ndjson output:\n%s", out)
	}
	if !strings.Contains(errOut, "1 deleted resources left out") || !strings.Contains(errOut, "cursor: ") {
		t.Fatalf("stderr: %s", errOut)
	}
	cursor := strings.TrimSpace(errOut[strings.LastIndex(errOut, "cursor: ")+len("cursor: "):])

	out, _, err = run(t, sock, "records", "list", "conn1", "--json")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 {
		t.Fatalf("json lines: %q", out)
	}
	var first, last recordLine
	if err := json.Unmarshal([]byte(lines[0]), &first); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(lines[2]), &last); err != nil {
		t.Fatal(err)
	}
	if first.ResourceType != "Patient" || first.VersionID != "2" || first.LastUpdated != "2025-03-04T05:06:07Z" || string(first.Resource) != patient {
		t.Fatalf("first line %+v", first)
	}
	if !last.Deleted || last.Resource != nil || last.Cursor != cursor {
		t.Fatalf("last line %+v (cursor %q)", last, cursor)
	}

	out, errOut, err = run(t, sock, "records", "list", "conn1", "--type", "Observation")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "TYPE") || !strings.Contains(out, "o1") || strings.Contains(out, "p1") || !strings.Contains(errOut, "1 records") {
		t.Fatalf("table:\n%s\n%s", out, errOut)
	}
	// Nothing changed since the cursor: no records, the same cursor.
	out, errOut, err = run(t, sock, "records", "list", "conn1", "--since", cursor, "--ndjson")
	if err != nil || out != "" || !strings.HasSuffix(errOut, "cursor: "+cursor+"\n") {
		t.Fatalf("since cursor: %q %q %v", out, errOut, err)
	}

	out, _, err = run(t, sock, "records", "get", "conn1", "Patient/p1")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "\n  \"name\": [") {
		t.Fatalf("get is not indented:\n%s", out)
	}
	out, _, err = run(t, sock, "records", "get", "conn1", "Patient", "p1", "--ndjson")
	if err != nil || out != patient+"\n" {
		t.Fatalf("get --ndjson: %q %v", out, err)
	}
	if _, _, err := run(t, sock, "records", "get", "conn1", "Condition/gone"); err == nil || !strings.Contains(err.Error(), "deleted at the source") {
		t.Fatalf("get deleted: %v", err)
	}
	if _, _, err := run(t, sock, "records", "get", "conn1", "Patient/none"); err == nil || !strings.Contains(explain(err), "RECORD_NOT_FOUND") {
		t.Fatalf("get missing: %v", err)
	}
	if _, _, err := run(t, sock, "records", "get", "conn1", "Patient"); err == nil || !strings.Contains(err.Error(), "TYPE/ID") {
		t.Fatalf("get without id: %v", err)
	}
}

// A stream that fails after some records arrived still prints those rows
// (the table is not lost), then the error, and the command fails. The
// failure is a real one: the agent sends a record larger than the client
// accepts in one message (16 MiB), after a first message of two records.
func TestRecordsListTablePrintsRowsBeforeStreamError(t *testing.T) {
	big := `{"resourceType":"Binary","id":"big","data":"` + strings.Repeat("A", 17<<20) + `"}`
	// Bodies in segment files, as the agent keeps them: the in-memory
	// store's values are limited to 1 MiB.
	sock := startRecordsAPI(t, patient+"\n"+`{"resourceType":"Observation","id":"o1","status":"final"}`+"\n"+big+"\n",
		records.WithSegments(t.TempDir(), bytes.Repeat([]byte{6}, 32)))

	for _, mode := range [][]string{nil, {"--ndjson"}, {"--json"}} {
		out, errOut, err := run(t, sock, append([]string{"records", "list", "conn1"}, mode...)...)
		if err == nil {
			t.Fatalf("%v: the stream did not fail (output %d bytes)", mode, len(out))
		}
		if exitCode(err) != 1 || !strings.Contains(explain(err), "larger than max") {
			t.Fatalf("%v: exit %d, %v (want 1, the message size error)", mode, exitCode(err), explain(err))
		}
		if !strings.Contains(out, "p1") || !strings.Contains(out, "o1") || strings.Contains(out, `"big"`) {
			t.Fatalf("%v: want the two records received before the error, got:\n%.300s", mode, out)
		}
		if mode == nil && !strings.HasPrefix(out, "TYPE") {
			t.Fatalf("table without its header:\n%s", out)
		}
		// The cursor reached is given, to continue from.
		if !strings.Contains(errOut, "2 records received before the error") || !strings.Contains(errOut, "cursor: ") {
			t.Fatalf("%v: stderr %q", mode, errOut)
		}
	}
}
