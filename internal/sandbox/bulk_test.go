package sandbox_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/medrelay/medrelay/internal/sandbox"
	"github.com/medrelay/medrelay/internal/sandbox/sandboxtest"
)

type manifest struct {
	TransactionTime     string `json:"transactionTime"`
	Request             string `json:"request"`
	RequiresAccessToken bool   `json:"requiresAccessToken"`
	Output              []struct {
		Type  string `json:"type"`
		URL   string `json:"url"`
		Count int    `json:"count"`
	} `json:"output"`
	Deleted []struct {
		Type string `json:"type"`
		URL  string `json:"url"`
	} `json:"deleted"`
	Error []struct {
		Type string `json:"type"`
		URL  string `json:"url"`
	} `json:"error"`
}

func do(t testing.TB, method, u, tok string, hdr map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, u, nil)
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp, b
	}
	return resp, b
}

var kickoffHeaders = map[string]string{"Accept": "application/fhir+json", "Prefer": "respond-async"}

// kickoff starts an export and returns the status URL (bulkdata-2.0-client #43 #45).
func kickoff(t testing.TB, u, tok string) string {
	t.Helper()
	resp, body := do(t, "GET", u, tok, kickoffHeaders)
	if resp.StatusCode != http.StatusAccepted || resp.Header.Get("Content-Location") == "" {
		t.Fatalf("kick-off %s: %d %s", u, resp.StatusCode, body)
	}
	return resp.Header.Get("Content-Location")
}

// poll waits for the manifest (bulkdata-2.0-client #123 #130).
func poll(t testing.TB, status, tok string) manifest {
	t.Helper()
	for range 2000 {
		resp, body := do(t, "GET", status, tok, map[string]string{"Accept": "application/json"})
		switch resp.StatusCode {
		case http.StatusAccepted:
			time.Sleep(5 * time.Millisecond)
			continue
		case http.StatusOK:
			var m manifest
			if err := json.Unmarshal(body, &m); err != nil {
				t.Fatal(err)
			}
			return m
		default:
			t.Fatalf("status: %d %s", resp.StatusCode, body)
		}
	}
	t.Fatal("export never completed")
	return manifest{}
}

// download fetches every output file and digests it.
func download(t testing.TB, m manifest, tok string) (map[string]int, sandbox.ExportDigest) {
	t.Helper()
	counts := map[string]int{}
	var dg sandbox.ExportDigest
	for _, o := range m.Output {
		send := ""
		if m.RequiresAccessToken {
			send = tok
		}
		resp, body := do(t, "GET", o.URL, send, map[string]string{"Accept": "application/fhir+ndjson"})
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/fhir+ndjson" {
			t.Fatalf("file %s: %d %s", o.URL, resp.StatusCode, body)
		}
		n := 0
		sc := bufio.NewScanner(bytes.NewReader(body))
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var r resMeta
			if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
				t.Fatalf("%s line %d: %v", o.URL, n+1, err)
			}
			if r.ResourceType != o.Type {
				t.Fatalf("%s holds a %s", o.URL, r.ResourceType)
			}
			dg.Add(r.ResourceType, r.ID, r.Meta.VersionID)
			n++
		}
		if n != o.Count {
			t.Fatalf("%s: %d lines, manifest count %d", o.URL, n, o.Count)
		}
		counts[o.Type] += n
	}
	return counts, dg
}

func checkExport(t testing.TB, s *sandbox.Sandbox, p sandbox.ExportParams, m manifest, tok string) sandbox.ExportExpectation {
	t.Helper()
	exp, err := s.ExpectedExport(p)
	if err != nil {
		t.Fatal(err)
	}
	counts, dg := download(t, m, tok)
	if dg.String() != exp.Digest {
		t.Fatalf("export digest %s, want %s (counts %v, want %v)", dg, exp.Digest, counts, exp.Counts)
	}
	return exp
}

// System, Patient and Group level exports return exactly the data, split
// into files of the configured size (bulkdata-2.0-client #17 #18 #200 #201).
func TestExportLevels(t *testing.T) {
	s := sandboxtest.Start(t, sandboxtest.WithPatients(5), sandboxtest.WithConfig(func(c *sandbox.Config) { c.BulkFileResources = 300 }))
	tok := systemToken(t, s, "generic")
	base := s.FHIRBase("generic")
	m := poll(t, kickoff(t, base+"/$export", tok), tok)
	if !m.RequiresAccessToken || m.TransactionTime == "" || !strings.HasSuffix(m.Request, "/$export") {
		t.Fatalf("manifest %+v", m)
	}
	obsFiles := 0
	for _, o := range m.Output {
		if o.Type == "Observation" {
			obsFiles++
			if o.Count > 300 {
				t.Fatalf("file of %d resources, limit 300", o.Count)
			}
		}
	}
	if obsFiles < 3 {
		t.Fatalf("Observation split into %d files", obsFiles)
	}
	exp := checkExport(t, s, sandbox.ExportParams{Tenant: "generic"}, m, tok)
	if exp.Counts["Practitioner"] == 0 || exp.Total < 5*300 {
		t.Fatalf("system export counts %v", exp.Counts)
	}
	m = poll(t, kickoff(t, base+"/Patient/$export", tok), tok)
	exp = checkExport(t, s, sandbox.ExportParams{Tenant: "generic", Level: "patient"}, m, tok)
	if exp.Counts["Practitioner"] != 0 || exp.Counts["Patient"] != 5 {
		t.Fatalf("patient export counts %v", exp.Counts)
	}
	m = poll(t, kickoff(t, base+"/Group/cohort-1/$export?_type=Patient,Observation", tok), tok)
	exp = checkExport(t, s, sandbox.ExportParams{Tenant: "generic", Level: "group", Group: "cohort-1", Types: []string{"Patient", "Observation"}}, m, tok)
	if exp.Counts["Patient"] != 2 || len(exp.Counts) != 2 {
		t.Fatalf("group export counts %v", exp.Counts)
	}
}

// bulkdata-2.0-client #31 #61 #102 #113 #116: _type and _typeFilter, repeated.
func TestExportTypeFilter(t *testing.T) {
	s := sandboxtest.Start(t, sandboxtest.WithPatients(3))
	tok := systemToken(t, s, "generic")
	u := s.FHIRBase("generic") + "/$export?_type=Observation&_type=Condition" +
		"&_typeFilter=Observation%3Fcategory%3Dlaboratory&_typeFilter=Condition%3Fclinical-status%3Dactive,Condition%3Fcategory%3Dproblem-list-item"
	m := poll(t, kickoff(t, u, tok), tok)
	exp := checkExport(t, s, sandbox.ExportParams{Tenant: "generic", Types: []string{"Observation", "Condition"},
		TypeFilters: []string{"Observation?category=laboratory", "Condition?clinical-status=active", "Condition?category=problem-list-item"}}, m, tok)
	all, _ := s.ExpectedExport(sandbox.ExportParams{Tenant: "generic", Types: []string{"Observation"}})
	if exp.Counts["Observation"] == 0 || exp.Counts["Observation"] >= all.Counts["Observation"] {
		t.Fatalf("typeFilter kept %d of %d observations", exp.Counts["Observation"], all.Counts["Observation"])
	}
	// An unsupported filter is ignored and reported in the error file (#115).
	m = poll(t, kickoff(t, s.FHIRBase("generic")+"/$export?_type=Condition&_typeFilter=Condition%3Fonset-age%3D5", tok), tok)
	if len(m.Error) != 1 {
		t.Fatalf("manifest error files %+v", m.Error)
	}
	if resp, body := do(t, "GET", m.Error[0].URL, tok, nil); resp.StatusCode != 200 || !strings.Contains(string(body), "OperationOutcome") {
		t.Fatalf("error file: %d %s", resp.StatusCode, body)
	}
	// With Prefer: handling=strict the same request is refused.
	resp, _ := do(t, "GET", s.FHIRBase("generic")+"/$export?_typeFilter=Condition%3Fonset-age%3D5", tok,
		map[string]string{"Prefer": "respond-async, handling=strict"})
	if resp.StatusCode != 400 {
		t.Fatalf("strict unsupported _typeFilter: %d", resp.StatusCode)
	}
}

// bulkdata-2.0-client #54: an incremental export after data changed returns
// only the changes and lists deletions.
func TestExportSinceAfterMutation(t *testing.T) {
	s := sandboxtest.Start(t, sandboxtest.WithPatients(4))
	tok := systemToken(t, s, "generic")
	base := s.FHIRBase("generic")
	first := poll(t, kickoff(t, base+"/Patient/$export", tok), tok)
	time.Sleep(2 * time.Millisecond)
	res, err := s.Mutate(sandbox.MutateRequest{Tenant: "generic", Update: 7, Delete: 3})
	if err != nil {
		t.Fatal(err)
	}
	since, _ := time.Parse(time.RFC3339Nano, first.TransactionTime)
	m := poll(t, kickoff(t, base+"/Patient/$export?_since="+first.TransactionTime, tok), tok)
	exp := checkExport(t, s, sandbox.ExportParams{Tenant: "generic", Level: "patient", Since: since}, m, tok)
	if exp.Total != len(res.Updated) || len(exp.Deleted) != 3 {
		t.Fatalf("incremental export: %d resources (want %d), %d deleted", exp.Total, len(res.Updated), len(exp.Deleted))
	}
	if len(m.Deleted) != 1 {
		t.Fatalf("manifest deleted %+v", m.Deleted)
	}
	_, body := do(t, "GET", m.Deleted[0].URL, tok, nil)
	var got []string
	for _, line := range strings.Split(strings.TrimSpace(string(body)), "\n") {
		var b struct {
			Type  string `json:"type"`
			Entry []struct {
				Request struct{ Method, URL string } `json:"request"`
			} `json:"entry"`
		}
		if err := json.Unmarshal([]byte(line), &b); err != nil || b.Type != "transaction" || b.Entry[0].Request.Method != "DELETE" {
			t.Fatalf("deleted line %s: %v", line, err)
		}
		got = append(got, b.Entry[0].Request.URL)
	}
	sort.Strings(got)
	if strings.Join(got, ",") != strings.Join(exp.Deleted, ",") {
		t.Fatalf("deleted %v, want %v", got, exp.Deleted)
	}
}

// bulkdata-2.0-client #201: requiresAccessToken both ways.
func TestRequiresAccessToken(t *testing.T) {
	no := false
	s := sandboxtest.Start(t, sandboxtest.WithPatients(1),
		sandboxtest.WithTenants(sandbox.TenantConfig{Name: "open", Profile: "generic", RequiresAccessToken: &no},
			sandbox.TenantConfig{Name: "closed", Profile: "generic"}))
	for tenant, want := range map[string]bool{"open": false, "closed": true} {
		tok := systemToken(t, s, tenant)
		m := poll(t, kickoff(t, s.FHIRBase(tenant)+"/$export?_type=Patient", tok), tok)
		if m.RequiresAccessToken != want {
			t.Fatalf("%s: requiresAccessToken %v", tenant, m.RequiresAccessToken)
		}
		resp, _ := do(t, "GET", m.Output[0].URL, "", nil)
		if want && resp.StatusCode != 401 || !want && resp.StatusCode != 200 {
			t.Fatalf("%s: tokenless download %d", tenant, resp.StatusCode)
		}
	}
	// A fault flips it per client.
	tok := systemToken(t, s, "closed")
	_ = s.SetFaults(sandbox.Faults{Tenant: "closed", RequiresAccessToken: &no})
	m := poll(t, kickoff(t, s.FHIRBase("closed")+"/$export?_type=Patient", tok), tok)
	if m.RequiresAccessToken {
		t.Fatal("RequiresAccessToken fault ignored")
	}
}

// bulkdata-2.0-client #124 #126 #135: in progress answers X-Progress and
// Retry-After; 429 carries Retry-After as seconds or an HTTP-date.
func TestExportPollingAndRateLimits(t *testing.T) {
	s := sandboxtest.Start(t, sandboxtest.WithPatients(1), sandboxtest.WithConfig(func(c *sandbox.Config) {
		c.BulkMinDuration = sandbox.Duration(time.Hour) // stays in progress until cancelled
		c.BulkRetryAfter = 3
	}))
	tok := systemToken(t, s, "generic")
	status := kickoff(t, s.FHIRBase("generic")+"/$export", tok)
	resp, _ := do(t, "GET", status, tok, nil)
	if resp.StatusCode != 202 || resp.Header.Get("X-Progress") == "" || resp.Header.Get("Retry-After") != "3" {
		t.Fatalf("in progress: %d %v", resp.StatusCode, resp.Header)
	}
	_ = s.SetFaults(sandbox.Faults{Tenant: "generic", Endpoints: []string{sandbox.EndpointExportStat}, Status: 429, Count: 1, RetryAfter: 7},
		sandbox.Faults{Tenant: "generic", Endpoints: []string{sandbox.EndpointExport}, Status: 429, Count: 1, RetryAfter: 90, RetryAfterHTTPDate: true})
	resp, body := do(t, "GET", status, tok, nil)
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "7" || !strings.Contains(string(body), "OperationOutcome") {
		t.Fatalf("429 seconds: %d %v", resp.StatusCode, resp.Header)
	}
	resp, _ = do(t, "GET", s.FHIRBase("generic")+"/$export", tok, kickoffHeaders)
	when, err := http.ParseTime(resp.Header.Get("Retry-After"))
	if resp.StatusCode != 429 || err != nil || time.Until(when) < 60*time.Second {
		t.Fatalf("429 HTTP-date: %d %q %v", resp.StatusCode, resp.Header.Get("Retry-After"), err)
	}
	if st := s.Stats(); st.Faults["export-status:429"] != 1 || st.Faults["export:429"] != 1 {
		t.Fatalf("fault stats %v", st.Faults)
	}
	if resp, _ := do(t, "GET", status, tok, nil); resp.StatusCode != 202 {
		t.Fatalf("after the 429 burst: %d, want 202 (still in progress)", resp.StatusCode)
	}
	if resp, _ := do(t, "DELETE", status, tok, nil); resp.StatusCode != 202 {
		t.Fatalf("DELETE: %d", resp.StatusCode)
	}
}

// A burst of 5xx, a connection cut mid-file resumed with Range, expired
// files, and DELETE cancelling.
func TestExportFileFaults(t *testing.T) {
	s := sandboxtest.Start(t, sandboxtest.WithPatients(2))
	tok := systemToken(t, s, "generic")
	m := poll(t, kickoff(t, s.FHIRBase("generic")+"/$export?_type=Observation", tok), tok)
	fileURL := m.Output[0].URL
	_, full := do(t, "GET", fileURL, tok, nil)
	if len(full) < 10000 {
		t.Fatalf("file too small: %d", len(full))
	}

	_ = s.SetFaults(sandbox.Faults{Tenant: "generic", Endpoints: []string{sandbox.EndpointExportFile}, Status: 503, Count: 2})
	for i := range 3 {
		resp, _ := do(t, "GET", fileURL, tok, nil)
		if want := map[bool]int{true: 503, false: 200}[i < 2]; resp.StatusCode != want {
			t.Fatalf("request %d: %d, want %d", i, resp.StatusCode, want)
		}
	}

	_ = s.SetFaults(sandbox.Faults{Tenant: "generic", DropNDJSONAfterBytes: 5000})
	req, _ := http.NewRequest("GET", fileURL, nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	part, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil || !errors.Is(err, io.ErrUnexpectedEOF) && !strings.Contains(err.Error(), "EOF") {
		t.Fatalf("dropped connection: read %d bytes, err %v", len(part), err)
	}
	if len(part) != 5000 || !bytes.Equal(part, full[:5000]) {
		t.Fatalf("before the drop: %d bytes", len(part))
	}
	resp2, rest := do(t, "GET", fileURL, tok, map[string]string{"Range": "bytes=" + strconv.Itoa(len(part)) + "-"})
	if resp2.StatusCode != http.StatusPartialContent || !bytes.Equal(append(part, rest...), full) {
		t.Fatalf("resume with Range: %d, %d+%d bytes of %d", resp2.StatusCode, len(part), len(rest), len(full))
	}
	if cr := resp2.Header.Get("Content-Range"); cr != "bytes 5000-"+strconv.Itoa(len(full)-1)+"/"+strconv.Itoa(len(full)) {
		t.Fatalf("Content-Range %q", cr)
	}
	// The drop fault fires once per file: a retry gets everything.
	if _, again := do(t, "GET", fileURL, tok, nil); !bytes.Equal(again, full) {
		t.Fatal("second download differs")
	}
	if resp, mid := do(t, "GET", fileURL, tok, map[string]string{"Range": "bytes=10-19"}); resp.StatusCode != 206 || !bytes.Equal(mid, full[10:20]) {
		t.Fatalf("middle range: %d %q", resp.StatusCode, mid)
	}
	if resp, _ := do(t, "GET", fileURL, tok, map[string]string{"Range": "bytes=99999999-"}); resp.StatusCode != 416 {
		t.Fatalf("range past the end: %d", resp.StatusCode)
	}

	_ = s.SetFaults(sandbox.Faults{Tenant: "generic", ExpireBulkFiles: true})
	if resp, _ := do(t, "GET", fileURL, tok, nil); resp.StatusCode != 404 {
		t.Fatalf("expired file: %d", resp.StatusCode)
	}
	_ = s.SetFaults()

	// bulkdata-2.0-client #119: DELETE cancels; the job is gone.
	status := kickoff(t, s.FHIRBase("generic")+"/$export", tok)
	if resp, _ := do(t, "DELETE", status, tok, nil); resp.StatusCode != 202 {
		t.Fatalf("DELETE: %d", resp.StatusCode)
	}
	if resp, _ := do(t, "GET", status, tok, nil); resp.StatusCode != 404 {
		t.Fatalf("status after DELETE: %d", resp.StatusCode)
	}
}

func TestKickoffErrors(t *testing.T) {
	s := sandboxtest.Start(t, sandboxtest.WithPatients(1))
	tok := systemToken(t, s, "generic")
	base := s.FHIRBase("generic")
	for u, want := range map[string]int{
		base + "/$export?_type=Nope":                        400,
		base + "/$export?_outputFormat=text/csv":            400,
		base + "/$export?_since=yesterday":                  400,
		base + "/Group/unknown/$export":                     404,
		s.FHIRBase("bluebutton") + "/$export?_type=Patient": 401,
	} {
		if resp, body := do(t, "GET", u, tok, kickoffHeaders); resp.StatusCode != want {
			t.Errorf("%s: %d, want %d (%s)", u, resp.StatusCode, want, body)
		}
	}
	if resp, _ := do(t, "GET", base+"/$export", "", kickoffHeaders); resp.StatusCode != 401 {
		t.Errorf("no token: %d", resp.StatusCode)
	}
}

// Same seed, same bytes; different seeds, different bytes.
func TestExportDeterministic(t *testing.T) {
	get := func(seed int64) []byte {
		s := sandboxtest.Start(t, sandboxtest.WithPatients(2), sandboxtest.WithSeed(seed))
		tok := systemToken(t, s, "generic")
		m := poll(t, kickoff(t, s.FHIRBase("generic")+"/$export", tok), tok)
		var all []byte
		for _, o := range m.Output {
			_, b := do(t, "GET", o.URL, tok, nil)
			all = append(all, b...)
		}
		return all
	}
	a, b, c := get(5), get(5), get(6)
	if !bytes.Equal(a, b) || len(a) == 0 {
		t.Fatal("same seed, different export bytes")
	}
	if bytes.Equal(a, c) {
		t.Fatal("different seeds, same bytes")
	}
}
