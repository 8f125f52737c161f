// Package sdktest checks that a medrelay source plugin behaves, against
// medrelay-sandbox. Vendors run it in their own CI:
//
//	func TestConformance(t *testing.T) {
//		base := os.Getenv("MEDRELAY_SANDBOX_URL") // e.g. http://127.0.0.1:9100 (medrelay-sandbox --auto-approve --open-registration)
//		if base == "" {
//			t.Skip("no sandbox")
//		}
//		sdktest.Run(t, newSource(), sdktest.Config{SandboxURL: base, Tenant: "generic"})
//	}
//
// The Source runs in-process behind the SDK's real gRPC adapter (what the
// agent talks to), so batching, error mapping and token hand-off are
// exercised as in production.
package sdktest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/medrelay/medrelay/plugins/sdk"
	"github.com/medrelay/medrelay/plugins/sdk/internal/bridge"
	pluginv1 "github.com/medrelay/medrelay/proto/gen/medrelay/plugin/v1"
)

// Config says where the sandbox is and who the patient is.
type Config struct {
	// SandboxURL is the sandbox's base URL (without the tenant).
	SandboxURL string
	// Tenant whose profile matches the plugin (generic, epic, ...).
	Tenant string
	// Tokens for the patient; default: a SMART standalone launch with
	// ClientID (auto-approve must be on in the sandbox).
	Tokens sdk.TokenSource
	// PatientID goes with Tokens.
	PatientID string
	// ClientID and ClientSecret for the default login (default client id
	// "sdktest", which needs --open-registration).
	ClientID, ClientSecret string
	// Settings are passed as the connection's vendor settings.
	Settings map[string]string
	// SkipFaults leaves the sandbox's fault injection alone (a shared
	// sandbox); by default one check injects a 429 with Retry-After.
	SkipFaults bool
	// HTTPClient reaches the sandbox (TLS sandboxes); default http.DefaultClient.
	HTTPClient *http.Client
}

// Harness is a Source served through the SDK's gRPC adapter.
type Harness struct {
	Client pluginv1.SourceServiceClient
	Conn   *pluginv1.Connection
	Desc   *pluginv1.DescribeResponse
}

// Serve runs src behind the SDK's gRPC adapter in-process, handing it
// tokens from tokens, and returns a client of it.
func Serve(t testing.TB, src sdk.Source, tokens sdk.TokenSource) pluginv1.SourceServiceClient {
	t.Helper()
	srv, err := bridge.NewSourceServer(src, tokens, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("sdktest: %v", err)
	}
	lis := bufconn.Listen(4 << 20)
	gs := grpc.NewServer()
	pluginv1.RegisterSourceServiceServer(gs, srv)
	go func() { _ = gs.Serve(lis) }()
	conn, err := grpc.NewClient("passthrough:///sdktest",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
	if err != nil {
		t.Fatalf("sdktest: %v", err)
	}
	t.Cleanup(func() { conn.Close(); gs.Stop() })
	return pluginv1.NewSourceServiceClient(conn)
}

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

// Run checks src against the sandbox tenant: Describe, Read, Search with
// paging, Everything, error mapping, Retry-After handling.
func Run(t *testing.T, src sdk.Source, cfg Config) *Harness {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	base := strings.TrimSuffix(cfg.SandboxURL, "/") + "/" + cfg.Tenant + "/fhir"
	if cfg.Tokens == nil {
		id := cfg.ClientID
		if id == "" {
			id = "sdktest"
		}
		pt, err := LoginPatient(ctx, PatientLogin{FHIRBase: base, ClientID: id, ClientSecret: cfg.ClientSecret, HTTPClient: cfg.HTTPClient})
		if err != nil {
			t.Fatalf("sdktest: patient login at %s: %v", base, err)
		}
		cfg.Tokens, cfg.PatientID = pt, pt.Patient
	}
	if cfg.PatientID == "" {
		t.Fatal("sdktest: no patient id")
	}
	h := &Harness{
		Client: Serve(t, src, cfg.Tokens),
		Conn:   &pluginv1.Connection{Id: "sdktest-conn", FhirBaseUrl: base, PatientId: cfg.PatientID, Settings: cfg.Settings},
	}

	t.Run("describe", func(t *testing.T) {
		d, err := h.Client.Describe(ctx, &pluginv1.DescribeRequest{HostProtocolVersions: []uint32{1}})
		if err != nil {
			t.Fatalf("Describe: %v", err)
		}
		h.Desc = d
		if !nameRE.MatchString(d.GetName()) {
			t.Errorf("name %q: want lower-case letters, digits, - and _", d.GetName())
		}
		if d.GetVersion() == "" || d.GetVendor() == "" {
			t.Errorf("version %q, vendor %q: both are shown to administrators", d.GetVersion(), d.GetVendor())
		}
		if !slices.Contains(d.GetProtocolVersions(), 1) {
			t.Errorf("protocol versions %v lack 1", d.GetProtocolVersions())
		}
		for _, c := range []pluginv1.Capability{pluginv1.Capability_CAPABILITY_SEARCH, pluginv1.Capability_CAPABILITY_READ} {
			if !slices.Contains(d.GetCapabilities(), c) {
				t.Errorf("capabilities %v lack %v", d.GetCapabilities(), c)
			}
		}
		ap := d.GetAuthProfile()
		if len(ap.GetClientAuthMethods()) == 0 {
			t.Error("auth profile names no client authentication method")
		}
		if len(ap.GetDefaultScopesV1()) == 0 && len(ap.GetDefaultScopesV2()) == 0 {
			t.Error("auth profile has no default scopes")
		}
		if ap.GetSupportsScopesV2() && len(ap.GetDefaultScopesV2()) == 0 {
			t.Error("supports v2 scopes but lists none")
		}
		if ap.GetPkceRequired() && ap.GetPkceMethod() != "S256" {
			t.Errorf("PKCE method %q: SMART requires S256", ap.GetPkceMethod())
		}
		if ap.GetAccessTokenLifetime() == nil {
			t.Error("auth profile has no access token lifetime (the agent plans refreshes with it)")
		}
	})
	if h.Desc == nil {
		t.FailNow()
	}

	t.Run("read", func(t *testing.T) {
		r, err := h.Client.Read(ctx, &pluginv1.ReadRequest{Connection: h.Conn, ResourceType: "Patient", Id: cfg.PatientID})
		if err != nil {
			t.Fatalf("Read Patient/%s: %v", cfg.PatientID, err)
		}
		if got := r.GetResource(); got.GetType() != "Patient" || got.GetId() != cfg.PatientID || !strings.Contains(string(got.GetJson()), `"resourceType"`) {
			t.Fatalf("Read returned %s/%s (%d bytes)", got.GetType(), got.GetId(), len(got.GetJson()))
		}
	})

	t.Run("read-missing-is-not-found", func(t *testing.T) {
		_, err := h.Client.Read(ctx, &pluginv1.ReadRequest{Connection: h.Conn, ResourceType: "Patient", Id: "sdktest-no-such-patient"})
		if status.Code(err) != codes.NotFound {
			t.Fatalf("Read of a missing patient: %v, want NotFound", err)
		}
	})

	t.Run("read-invalid-is-invalid-argument", func(t *testing.T) {
		_, err := h.Client.Read(ctx, &pluginv1.ReadRequest{Connection: h.Conn, ResourceType: "../admin", Id: "x"})
		if status.Code(err) != codes.InvalidArgument {
			t.Fatalf("Read of a bad type: %v, want InvalidArgument", err)
		}
	})

	types := patientTypes(h.Desc)
	perType := map[string]map[string]bool{}
	t.Run("search-by-patient", func(t *testing.T) {
		for _, typ := range types {
			param := "patient"
			switch typ {
			case "Patient":
				param = "_id"
			case "Coverage":
				param = "beneficiary"
			}
			got, pages, err := h.search(ctx, typ, []*pluginv1.SearchParam{{Name: param, Value: cfg.PatientID}}, 0)
			if err != nil {
				t.Errorf("search %s?%s=%s: %v", typ, param, cfg.PatientID, err)
				continue
			}
			if pages < 1 {
				t.Errorf("search %s: no page sent (an empty result still sends one)", typ)
			}
			perType[typ] = got
		}
		if len(perType["Patient"]) != 1 {
			t.Errorf("Patient?_id=%s found %d patients", cfg.PatientID, len(perType["Patient"]))
		}
	})

	t.Run("search-paging", func(t *testing.T) {
		typ := ""
		for _, ty := range types {
			if len(perType[ty]) >= 3 {
				typ = ty
				break
			}
		}
		if typ == "" {
			t.Skip("no type with three or more resources for this patient")
		}
		param := "patient"
		if typ == "Coverage" {
			param = "beneficiary"
		}
		got, pages, err := h.search(ctx, typ, []*pluginv1.SearchParam{{Name: param, Value: cfg.PatientID}}, 2)
		if err != nil {
			t.Fatalf("paged search: %v", err)
		}
		if pages < 2 {
			t.Errorf("%d resources in pages of 2 came in %d page(s): next links not followed", len(got), pages)
		}
		if !sameSet(got, perType[typ]) {
			t.Errorf("paged search found %d %s, unpaged %d", len(got), typ, len(perType[typ]))
		}
	})

	if slices.Contains(h.Desc.GetCapabilities(), pluginv1.Capability_CAPABILITY_EVERYTHING) {
		t.Run("everything", func(t *testing.T) {
			st, err := h.Client.Everything(ctx, &pluginv1.EverythingRequest{Connection: h.Conn})
			if err != nil {
				t.Fatal(err)
			}
			all := map[string]bool{}
			for {
				m, err := st.Recv()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					t.Fatalf("Everything: %v", err)
				}
				for _, r := range m.GetResources() {
					k := r.GetType() + "/" + r.GetId()
					if all[k] && r.GetSearchMode() != "include" {
						t.Errorf("Everything sent %s twice", k)
					}
					all[k] = true
				}
			}
			if !all["Patient/"+cfg.PatientID] {
				t.Error("Everything lacks the Patient")
			}
			for typ, ids := range perType {
				for k := range ids {
					if !all[k] {
						t.Errorf("Everything lacks %s, which a %s search by patient finds", k, typ)
						break
					}
				}
			}
		})
	}

	if !cfg.SkipFaults {
		t.Run("retry-after-429", func(t *testing.T) {
			hc := cfg.HTTPClient
			if hc == nil {
				hc = http.DefaultClient
			}
			body := fmt.Sprintf(`{"tenant":%q,"status":429,"endpoints":["read"],"count":1,"retry_after":1}`, cfg.Tenant)
			if err := adminPost(ctx, hc, cfg.SandboxURL+"/admin/faults", body); err != nil {
				t.Skipf("cannot inject faults: %v", err)
			}
			defer adminDelete(ctx, hc, cfg.SandboxURL+"/admin/faults")
			_, err := h.Client.Read(ctx, &pluginv1.ReadRequest{Connection: h.Conn, ResourceType: "Patient", Id: cfg.PatientID})
			if err != nil {
				t.Fatalf("Read after a 429 with Retry-After: 1: %v (the SDK client waits and retries)", err)
			}
		})
	}
	return h
}

func (h *Harness) search(ctx context.Context, typ string, params []*pluginv1.SearchParam, pageSize int32) (map[string]bool, int, error) {
	st, err := h.Client.Search(ctx, &pluginv1.SearchRequest{Connection: h.Conn, ResourceType: typ, Params: params, PageSize: pageSize})
	if err != nil {
		return nil, 0, err
	}
	got := map[string]bool{}
	pages := map[int32]bool{}
	last := int32(0)
	for {
		m, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return got, len(pages), nil
		}
		if err != nil {
			return nil, 0, err
		}
		if m.GetPage() < last {
			return nil, 0, fmt.Errorf("page %d after page %d", m.GetPage(), last)
		}
		last = m.GetPage()
		pages[m.GetPage()] = true
		for _, r := range m.GetResources() {
			if r.GetSearchMode() == "outcome" || r.GetSearchMode() == "include" {
				continue
			}
			if r.GetType() != typ {
				return nil, 0, fmt.Errorf("search for %s returned a %s", typ, r.GetType())
			}
			k := typ + "/" + r.GetId()
			if got[k] {
				return nil, 0, fmt.Errorf("%s returned twice", k)
			}
			got[k] = true
		}
	}
}

// patientTypes are the profile's types that belong to a patient.
func patientTypes(d *pluginv1.DescribeResponse) []string {
	shared := map[string]bool{"Practitioner": true, "PractitionerRole": true, "Organization": true, "Location": true, "Medication": true, "Device": true}
	types := d.GetResourceTypes()
	if len(types) == 0 {
		types = []string{"Patient", "Condition", "Observation", "Encounter", "MedicationRequest", "AllergyIntolerance", "Immunization"}
	}
	var out []string
	for _, t := range types {
		if !shared[t] {
			out = append(out, t)
		}
	}
	return out
}

func sameSet(a, b map[string]bool) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if !b[k] {
			return false
		}
	}
	return true
}

func adminPost(ctx context.Context, hc *http.Client, url, body string) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return fmt.Errorf("%d %s", resp.StatusCode, b)
	}
	return nil
}

func adminDelete(ctx context.Context, hc *http.Client, url string) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodDelete, url, nil)
	if resp, err := hc.Do(req); err == nil {
		resp.Body.Close()
	}
}
