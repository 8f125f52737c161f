package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "github.com/medrelay/medrelay/proto/gen/medrelay/agent/v1"
)

func TestPrintEventOneLineEach(t *testing.T) {
	data, _ := structpb.NewStruct(map[string]any{"from": "pending", "to": "active", "reason": "said \"yes\" "})
	e := &agentv1.Event{Id: "42", Type: "connection.state_changed", Time: timestamppb.New(time.Unix(1_800_000_000, 0)),
		AppId: "app1", ConnectionId: "c1", PatientRef: "p 1", Data: data}
	var out bytes.Buffer
	for range 2 {
		if err := printEvent(&out, e, true); err != nil {
			t.Fatal(err)
		}
	}
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != 2 {
		t.Fatalf("--json printed %d lines for 2 events: %q", len(lines), out.String())
	}
	var got map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &got); err != nil || got["id"] != "42" || got["connection_id"] != "c1" {
		t.Fatalf("line %q: %v %v", lines[0], got, err)
	}

	out.Reset()
	if err := printEvent(&out, e, false); err != nil {
		t.Fatal(err)
	}
	line := out.String()
	for _, want := range []string{"42", "connection.state_changed", "connection=c1", "patient=p 1", `"reason":"said \"yes\" "`} {
		if !strings.Contains(line, want) {
			t.Fatalf("table line %q lacks %q", line, want)
		}
	}
	if strings.Count(line, "\n") != 1 {
		t.Fatalf("table line %q", line)
	}
}
