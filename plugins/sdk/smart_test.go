package sdk

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/medrelay/medrelay/internal/sandbox"
	"github.com/medrelay/medrelay/internal/sandbox/sandboxtest"
	pluginv1 "github.com/medrelay/medrelay/proto/gen/medrelay/plugin/v1"
)

type fixedToken string

func (f fixedToken) AccessToken(context.Context, string, bool) (Token, error) {
	return Token{AccessToken: string(f)}, nil
}

// A next link to another host is not followed: the access token never
// leaves the FHIR server's origin.
func TestNextLinkToAnotherOriginIsRefused(t *testing.T) {
	var leaked bool
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		leaked = r.Header.Get("Authorization") != ""
	}))
	defer evil.Close()
	fhir := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, `{"resourceType":"Bundle","type":"searchset","link":[{"relation":"next","url":%q}],"entry":[{"resource":{"resourceType":"Patient","id":"p1"}}]}`, evil.URL+"/fhir/Patient?page=2")
	}))
	defer fhir.Close()
	s := &SMART{Name: "t"}
	call := NewCall(Connection{ID: "c", FHIRBase: fhir.URL + "/fhir"}, fixedToken("tok"), NewClient(), nil)
	pages := 0
	err := s.Search(context.Background(), call, SearchRequest{ResourceType: "Patient"}, func(Page) error { pages++; return nil })
	if !errors.Is(err, ErrBadResponse) || pages != 1 || leaked {
		t.Fatalf("err %v pages %d leaked %v", err, pages, leaked)
	}
}

// $everything that the server turns out not to have falls back to searching
// type by type.
func TestEverythingFallsBackToPerTypeSearch(t *testing.T) {
	var paths []string
	fhir := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		paths = append(paths, r.URL.Path)
		switch {
		case strings.HasSuffix(r.URL.Path, "$everything"):
			w.WriteHeader(http.StatusNotFound)
			io.WriteString(w, `{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"not-supported"}]}`)
		case r.URL.Path == "/fhir/Patient/p1":
			io.WriteString(w, `{"resourceType":"Patient","id":"p1"}`)
		case r.URL.Path == "/fhir/Condition" && r.URL.Query().Get("patient") == "p1":
			io.WriteString(w, `{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"Condition","id":"c1","subject":{"reference":"Patient/p1"}}}]}`)
		default:
			w.WriteHeader(http.StatusTeapot)
		}
	}))
	defer fhir.Close()
	s := &SMART{Name: "t", Profile: Profile{Everything: true, ResourceTypes: []string{"Patient", "Condition", "Practitioner"}}}
	call := NewCall(Connection{ID: "c", FHIRBase: fhir.URL + "/fhir", PatientID: "p1"}, fixedToken("tok"), NewClient(), nil)
	var got []string
	err := s.Everything(context.Background(), call, EverythingRequest{}, func(rs []Resource) error {
		for _, r := range rs {
			got = append(got, r.Type+"/"+r.ID)
		}
		return nil
	})
	if err != nil || strings.Join(got, ",") != "Patient/p1,Condition/c1" {
		t.Fatalf("got %v err %v (paths %v)", got, err, paths)
	}
}

// A resumed download asks for a range; when the server ignores it, the
// SDK skips to the offset itself.
func TestBulkDownloadResumes(t *testing.T) {
	const file = "0123456789abcdefghij"
	for _, honour := range []bool{true, false} {
		t.Run(fmt.Sprint("range honoured ", honour), func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if !honour {
					io.WriteString(w, file)
					return
				}
				http.ServeContent(w, r, "f.ndjson", time.Time{}, strings.NewReader(file))
			}))
			defer srv.Close()
			s := &SMART{Name: "t", Profile: Profile{Bulk: true}}
			call := NewCall(Connection{ID: "c", FHIRBase: srv.URL + "/fhir"}, fixedToken("tok"), NewClient(), nil)
			body, off, err := s.BulkDownload(context.Background(), call, BulkDownloadRequest{URL: srv.URL + "/f.ndjson", Offset: 7, RequiresAccessToken: true})
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(body)
			body.Close()
			if off != 7 || string(b) != file[7:] {
				t.Fatalf("offset %d body %q", off, b)
			}
		})
	}
}

// A whole export through the SDK's adapter against the sandbox: kickoff,
// status until complete, download every file. (bulk-data-2.0-client: kick-off
// with Prefer: respond-async, status polling, requiresAccessToken downloads.)
func TestBulkExportAgainstSandbox(t *testing.T) {
	key := sandboxtest.NewKey(t, "ES384")
	sb := sandboxtest.Start(t, sandboxtest.WithPatients(3), sandboxtest.WithClients(sandbox.ClientConfig{Tenant: "generic", ClientID: "bulk", JWKS: key.JWKS()}))
	tok := backendToken(t, sb, key)
	s := &SMART{Name: "t", Vendor: "v", Version: "1", Profile: Profile{Bulk: true}}
	call := NewCall(Connection{ID: "c", FHIRBase: sb.FHIRBase("generic")}, fixedToken(tok), NewClient(), nil)
	ctx := context.Background()
	statusURL, err := s.BulkKickoff(ctx, call, BulkKickoffRequest{Level: BulkSystem, Types: []string{"Patient", "Condition"}})
	if err != nil {
		t.Fatal(err)
	}
	var st BulkStatus
	for i := 0; ; i++ {
		if st, err = s.BulkStatus(ctx, call, statusURL); err != nil {
			t.Fatal(err)
		}
		if st.State == BulkComplete {
			break
		}
		if st.State != BulkInProgress || i > 100 {
			t.Fatalf("status %+v", st)
		}
		time.Sleep(min(st.RetryAfter, 200*time.Millisecond))
	}
	lines := 0
	for _, f := range st.Manifest.Output {
		body, _, err := s.BulkDownload(ctx, call, BulkDownloadRequest{URL: f.URL, RequiresAccessToken: st.Manifest.RequiresAccessToken})
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(body)
		body.Close()
		n := strings.Count(string(b), "\n")
		if int64(n) != f.Count {
			t.Errorf("%s: %d lines, manifest says %d", f.Type, n, f.Count)
		}
		lines += n
	}
	if lines == 0 {
		t.Fatal("export has no resources")
	}
	if err := s.BulkCancel(ctx, call, statusURL); err != nil {
		t.Fatalf("delete completed export: %v", err)
	}
}

func backendToken(t *testing.T, sb *sandbox.Sandbox, key *sandboxtest.Key) string {
	t.Helper()
	tokenURL := sb.URL() + "/generic/auth/token"
	form := "grant_type=client_credentials&scope=system%2F*.read&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion=" +
		key.Assertion(t, "bulk", tokenURL, time.Minute, nil)
	resp, err := http.Post(tokenURL, "application/x-www-form-urlencoded", strings.NewReader(form))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || resp.StatusCode != 200 || body.AccessToken == "" {
		t.Fatalf("backend token: %d %v", resp.StatusCode, err)
	}
	return body.AccessToken
}

// The SDK's enums are the wire's numbers.
func TestEnumsMatchTheWire(t *testing.T) {
	pairs := []struct{ sdk, wire int32 }{
		{int32(CapSearch), int32(pluginv1.Capability_CAPABILITY_SEARCH)},
		{int32(CapReferenceFollowing), int32(pluginv1.Capability_CAPABILITY_REFERENCE_FOLLOWING)},
		{int32(CapBulkCancel), int32(pluginv1.Capability_CAPABILITY_BULK_CANCEL)},
		{int32(DiscoverStatic), int32(pluginv1.Discovery_DISCOVERY_STATIC)},
		{int32(AudIgnored), int32(pluginv1.AudRule_AUD_RULE_IGNORED)},
		{int32(ClientAuthPrivateKeyJWT), int32(pluginv1.ClientAuthMethod_CLIENT_AUTH_METHOD_PRIVATE_KEY_JWT)},
		{int32(BulkGroup), int32(pluginv1.BulkLevel_BULK_LEVEL_GROUP)},
		{int32(BulkFailed), int32(pluginv1.BulkState_BULK_STATE_FAILED)},
	}
	for i, p := range pairs {
		if p.sdk != p.wire {
			t.Errorf("pair %d: sdk %d, wire %d", i, p.sdk, p.wire)
		}
	}
}

// smart-2.2-client #97 #98 #267 #268: a reference to a resource on another
// server is not followed, so the access token is never presented there;
// references on the FHIR server itself are, with the token as a Bearer
// header (#93 #264).
func TestReferencesToOtherServersAreNotFollowed(t *testing.T) {
	var leaked bool
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		leaked = true
	}))
	defer evil.Close()
	var auth []string
	fhir := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		auth = append(auth, r.Header.Get("Authorization"))
		switch r.URL.Path {
		case "/fhir/Observation":
			fmt.Fprintf(w, `{"resourceType":"Bundle","type":"searchset","entry":[{"resource":{"resourceType":"Observation","id":"o1",`+
				`"subject":{"reference":"Patient/p1"},"performer":[{"reference":%q}]}}]}`, evil.URL+"/fhir/Practitioner/x")
		case "/fhir/Patient/p1":
			io.WriteString(w, `{"resourceType":"Patient","id":"p1"}`)
		default:
			w.WriteHeader(http.StatusNotFound)
		}
	}))
	defer fhir.Close()
	got, err := searchWithReferences(fhir.URL + "/fhir")
	if err != nil {
		t.Fatal(err)
	}
	if leaked {
		t.Fatal("a reference to another server was fetched")
	}
	if strings.Join(got, ",") != "Observation/o1,Patient/p1" {
		t.Fatalf("resources %v: want the match and its same-server reference", got)
	}
	for _, a := range auth {
		if a != "Bearer tok" {
			t.Fatalf("Authorization %q, want the token as a Bearer header", a)
		}
	}
}

// A reference that Read would refuse (here a type longer than 64 letters)
// is not followed, rather than failing the search that found it.
func TestReferenceReadWouldRefuseIsSkipped(t *testing.T) {
	long := strings.Repeat("X", 70)
	fhir := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/fhir/Observation":
			fmt.Fprintf(w, `{"resourceType":"Bundle","type":"searchset","entry":[{"resource":{"resourceType":"Observation","id":"o1",`+
				`"subject":{"reference":"Patient/p1"},"focus":[{"reference":%q}]}}]}`, long+"/x")
		case "/fhir/Patient/p1":
			io.WriteString(w, `{"resourceType":"Patient","id":"p1"}`)
		default:
			t.Errorf("unexpected request %s", r.URL.Path)
			w.WriteHeader(http.StatusNotFound)
		}
	}))
	defer fhir.Close()
	got, err := searchWithReferences(fhir.URL + "/fhir")
	if err != nil {
		t.Fatalf("search: %v", err)
	}
	if strings.Join(got, ",") != "Observation/o1,Patient/p1" {
		t.Fatalf("resources %v", got)
	}
}

// searchWithReferences searches base's Observations with their references
// and returns what came back as type/id.
func searchWithReferences(base string) ([]string, error) {
	s := &SMART{Name: "t"}
	call := NewCall(Connection{ID: "c", FHIRBase: base}, fixedToken("tok"), NewClient(), nil)
	var got []string
	err := s.Search(context.Background(), call, SearchRequest{ResourceType: "Observation", IncludeReferences: true}, func(p Page) error {
		for _, r := range p.Resources {
			got = append(got, r.Type+"/"+r.ID)
		}
		return nil
	})
	return got, err
}
