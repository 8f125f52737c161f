package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	agentv1 "github.com/medrelay/medrelay/proto/gen/medrelay/agent/v1"
)

// Off a terminal, import progress is plain lines: one per phase.
func TestImportProgressWithoutTerminal(t *testing.T) {
	var out bytes.Buffer
	p := newProgress(&out)
	for _, u := range []*agentv1.ImportProgress{
		{Phase: "receive", Done: 1 << 20, Total: 3 << 20}, {Phase: "receive", Done: 3 << 20, Total: 3 << 20},
		{Phase: "parse", Done: 100, Total: 17136}, {Phase: "merge", Done: 17136, Total: 17136},
		{Phase: "write", Done: 5, Total: 5}, {Phase: "index", Done: 1, Total: 1},
	} {
		p.update(u)
	}
	p.done()
	if got, want := out.String(), "uploading…\nreading rows…\nmerging…\nwriting…\nindexing…\n"; got != want {
		t.Fatalf("progress:\n%s\nwant:\n%s", got, want)
	}
}

func TestPrintSummary(t *testing.T) {
	var out bytes.Buffer
	s := &agentv1.ImportSummary{
		ListId: "file:oneupdata.csv", Format: "payer-brands-csv", Rows: 51, Created: 50, RejectedCount: 2,
		ByVendor: map[string]int64{"1uphealth": 50}, ByKind: map[string]int64{"payer": 50}, Endpoints: 40,
		Duration: durationpb.New(3 * time.Millisecond),
		Rejected: []*agentv1.RejectedRow{{Row: 12, Name: "HealthPartners", Reason: `FHIR base URL has no valid host name: "https://api/healthpartnersfhir.com/rt"`}},
	}
	printSummary(&out, s, false)
	for _, want := range []string{
		"Imported file:oneupdata.csv (payer-brands-csv): 51 rows in 3ms",
		"sources:    50 (50 new, 0 updated, 0 unchanged)",
		"by vendor:  1uphealth 50",
		"rejected:   2",
		`row 12: HealthPartners: FHIR base URL has no valid host name: "https://api/healthpartnersfhir.com/rt"`,
		"… 1 more",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, out.String())
		}
	}
}
