package sandbox_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/medrelay/medrelay/internal/sandbox"
	"github.com/medrelay/medrelay/internal/sandbox/sandboxtest"
)

func adminDo(t testing.TB, method, u, body string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, u, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func TestAdminAPI(t *testing.T) {
	s := sandboxtest.Start(t, sandboxtest.WithPatients(3))
	base := s.URL() + "/admin/"
	code, body := adminDo(t, "POST", base+"clients", `{"tenant":"generic","client_id":"late","redirect_uris":["`+redirectURI+`"],"scope":"launch/patient patient/*.rs offline_access","client_secret":"pw"}`)
	if code != 201 {
		t.Fatalf("register: %d %s", code, body)
	}
	standalone(t, s, "generic", oauthConf(t, s, "generic", "late", "pw", "launch/patient patient/*.rs offline_access"))
	if code, body = adminDo(t, "GET", base+"clients?tenant=generic", ""); code != 200 || strings.Contains(string(body), `"pw"`) {
		t.Fatalf("client list leaks the secret or fails: %d %s", code, body)
	}
	if code, _ = adminDo(t, "POST", base+"clients", `{"client_id":"x","bogus":1}`); code != 400 {
		t.Fatalf("unknown field: %d", code)
	}
	if code, _ = adminDo(t, "POST", base+"clients", `{"tenant":"nope","client_id":"x"}`); code != 400 {
		t.Fatalf("unknown tenant: %d", code)
	}

	code, body = adminDo(t, "POST", base+"faults", `[{"tenant":"generic","endpoints":["search"],"status":429,"retry_after":5,"count":1},{"tenant":"epic","refuse_refresh":true}]`)
	if code != 200 || len(s.Faults()) != 2 {
		t.Fatalf("faults: %d %s", code, body)
	}
	if code, _ = adminDo(t, "POST", base+"faults", `{"status":200}`); code != 400 {
		t.Fatalf("bad fault accepted: %d", code)
	}
	tok := systemToken(t, s, "generic")
	if r, _ := bearerGet(t, s.FHIRBase("generic")+"/Patient", tok); r.StatusCode != 429 || r.Header.Get("Retry-After") != "5" {
		t.Fatalf("429 fault via admin API: %d", r.StatusCode)
	}
	if code, _ = adminDo(t, "DELETE", base+"faults", ""); code != 204 || len(s.Faults()) != 0 {
		t.Fatalf("clear faults: %d", code)
	}

	code, body = adminDo(t, "POST", base+"mutate", `{"tenant":"generic","update":2,"delete":1,"types":["Observation"]}`)
	var mr sandbox.MutateResult
	if err := json.Unmarshal(body, &mr); err != nil || code != 200 || len(mr.Updated) != 2 || len(mr.Deleted) != 1 || !strings.HasPrefix(mr.Deleted[0], "Observation/") {
		t.Fatalf("mutate: %d %s", code, body)
	}

	conf := oauthConf(t, s, "generic", "late", "pw", "launch/patient patient/*.rs offline_access")
	standalone(t, s, "generic", conf, oauth2.SetAuthURLParam("login_hint", "pat-2"))
	code, body = adminDo(t, "POST", base+"revoke", `{"tenant":"generic","patient":"Patient/pat-2"}`)
	if code != 200 || !strings.Contains(string(body), `"revoked_grants":1`) {
		t.Fatalf("revoke: %d %s", code, body)
	}

	var st sandbox.Stats
	code, body = adminDo(t, "GET", base+"stats", "")
	if err := json.Unmarshal(body, &st); err != nil || code != 200 || st.Tenants["generic"]["token:authorization_code"] != 2 || st.Faults["search:429"] != 1 {
		t.Fatalf("stats: %d %s", code, body)
	}
	if code, _ = adminDo(t, "POST", base+"stats/reset", ""); code != 204 || s.Stats().Total != 0 {
		t.Fatalf("stats reset: %d %d", code, s.Stats().Total)
	}
	var tenants []sandbox.TenantSummary
	_, body = adminDo(t, "GET", base+"tenants", "")
	if err := json.Unmarshal(body, &tenants); err != nil || len(tenants) != 6 || tenants[0].FHIRBase != s.FHIRBase("generic") {
		t.Fatalf("tenants: %s", body)
	}
}

// smart-2.2-client #413-#435 (server side): brands.json is a collection of
// Organizations with portal details and Endpoints, cacheable by ETag.
func TestBrandsBundle(t *testing.T) {
	s := sandboxtest.Start(t)
	resp, err := http.Get(s.URL() + "/brands.json")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var bundle struct {
		Type  string `json:"type"`
		Entry []struct {
			Resource map[string]any `json:"resource"`
		} `json:"entry"`
	}
	if err := json.Unmarshal(b, &bundle); err != nil || bundle.Type != "collection" {
		t.Fatalf("brands: %v %s", err, b)
	}
	addresses := map[string]bool{}
	for _, e := range bundle.Entry {
		if e.Resource["resourceType"] == "Endpoint" {
			addresses[e.Resource["address"].(string)] = true
		}
	}
	for _, tenant := range s.Tenants() {
		if !addresses[s.FHIRBase(tenant)] {
			t.Errorf("no Endpoint for %s", tenant)
		}
	}
	if !bytes.Contains(b, []byte("organization-portal")) || !bytes.Contains(b, []byte("portalEndpoint")) || !bytes.Contains(b, []byte("brandLogo")) {
		t.Error("portal/brand extensions missing")
	}
	req, _ := http.NewRequest("GET", s.URL()+"/brands.json", nil)
	req.Header.Set("If-None-Match", resp.Header.Get("ETag"))
	resp2, err := http.DefaultClient.Do(req)
	if err != nil || resp2.StatusCode != 304 {
		t.Fatalf("If-None-Match: %v %v", err, resp2.Status)
	}
	resp2.Body.Close()
}

func TestTLSAndConfigFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sandbox.toml")
	cfgText := `
patients = 2
seed = 9
auto_approve = true
tls = true
[[tenants]]
name = "hospital-a"
profile = "epic"
[[tenants]]
name = "payer"
profile = "bluebutton"
access_token_lifetime = "2m"
[[clients]]
tenant = "payer"
client_id = "bb-app"
client_secret = "x"
redirect_uris = ["` + redirectURI + `"]
[[faults]]
tenant = "hospital-a"
endpoints = ["metadata"]
status = 503
count = 1
`
	if err := os.WriteFile(path, []byte(cfgText), 0o600); err != nil {
		t.Fatal(err)
	}
	var cfg sandbox.Config
	if err := sandbox.LoadConfig(path, &cfg); err != nil {
		t.Fatal(err)
	}
	s := sandboxtest.Start(t, sandboxtest.WithConfig(func(c *sandbox.Config) {
		addr := c.Addr
		*c = cfg
		c.Addr = addr
	}))
	if !strings.HasPrefix(s.URL(), "https://") || strings.Join(s.Tenants(), ",") != "hospital-a,payer" {
		t.Fatalf("url %s tenants %v", s.URL(), s.Tenants())
	}
	c := s.HTTPClient()
	if r := getJSON(t, c, s.FHIRBase("hospital-a")+"/metadata", nil); r.StatusCode != 503 {
		t.Fatalf("fault from config: %d", r.StatusCode)
	}
	if r := getJSON(t, c, s.FHIRBase("hospital-a")+"/metadata", nil); r.StatusCode != 200 {
		t.Fatalf("metadata over TLS: %d", r.StatusCode)
	}
	if _, err := http.Get(s.URL() + "/brands.json"); err == nil {
		t.Fatal("self-signed certificate accepted by a default client")
	}
	bad := filepath.Join(dir, "bad.json")
	_ = os.WriteFile(bad, []byte(`{"tenants":[{"name":"x","profile":"nope"}]}`), 0o600)
	var badCfg sandbox.Config
	if err := sandbox.LoadConfig(bad, &badCfg); err != nil {
		t.Fatal(err)
	}
	badCfg.Addr = "127.0.0.1:0"
	if _, err := sandbox.Start(t.Context(), badCfg); err == nil {
		t.Fatal("unknown profile accepted")
	}
}

// slow_ms delays answers (checked with a client deadline, not a stopwatch);
// after lets requests through before a burst.
func TestSlowAndAfterFaults(t *testing.T) {
	s := sandboxtest.Start(t, sandboxtest.WithPatients(1))
	_ = s.SetFaults(sandbox.Faults{Tenant: "generic", Endpoints: []string{sandbox.EndpointMetadata}, SlowMillis: 5000})
	c := &http.Client{Timeout: 200 * time.Millisecond}
	if _, err := c.Get(s.FHIRBase("generic") + "/metadata"); err == nil {
		t.Fatal("slow fault did not delay the answer past the client's deadline")
	}
	// Under 5 s (the fault's delay) but far above 200 ms: a loaded machine
	// must not fail the unaffected tenant.
	other := &http.Client{Timeout: 4 * time.Second}
	if resp, err := other.Get(s.FHIRBase("epic") + "/metadata"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("other tenant slowed: %v", err)
	}
	_ = s.SetFaults(sandbox.Faults{Tenant: "generic", Endpoints: []string{sandbox.EndpointMetadata}, Status: 500, After: 2, Count: 1})
	var got []int
	for range 4 {
		r := getJSON(t, http.DefaultClient, s.FHIRBase("generic")+"/metadata", nil)
		got = append(got, r.StatusCode)
	}
	if fmt.Sprint(got) != "[200 200 500 200]" {
		t.Fatalf("after/count sequence %v", got)
	}
}
