package sandbox_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/medrelay/medrelay/internal/sandbox"
	"github.com/medrelay/medrelay/internal/sandbox/sandboxtest"
)

// cdsService is a minimal CDS Hooks 2.0 service that authenticates the
// sandbox the way a real service would: the bearer JWT, verified with the
// key found at its jku (cds-hooks-2.0-service #176 #195 #201).
type cdsService struct {
	t       *testing.T
	srv     *httptest.Server
	cards   string
	mu      sync.Mutex
	got     map[string]any
	authErr string
}

func newCDSService(t *testing.T, trustedPrefix string, cards string) *cdsService {
	c := &cdsService{t: t, cards: cards}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /cds-services", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, `{"services":[{"hook":"patient-view","id":"greeter","title":"Greeter","description":"says hello",
			"prefetch":{"patient":"Patient/{{context.patientId}}","conditions":"Condition?patient={{context.patientId}}&_count=5"}}]}`)
	})
	mux.HandleFunc("POST /cds-services/greeter", func(w http.ResponseWriter, r *http.Request) {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.authErr = c.verify(r, trustedPrefix)
		if c.authErr != "" {
			http.Error(w, c.authErr, http.StatusUnauthorized)
			return
		}
		_ = json.NewDecoder(r.Body).Decode(&c.got)
		_, _ = io.WriteString(w, c.cards)
	})
	c.srv = httptest.NewServer(mux)
	t.Cleanup(c.srv.Close)
	return c
}

func (c *cdsService) verify(r *http.Request, trustedPrefix string) string {
	raw, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return "no bearer"
	}
	obj, err := jose.ParseSigned(raw, []jose.SignatureAlgorithm{jose.ES384, jose.RS384})
	if err != nil {
		return "parse: " + err.Error()
	}
	jku, _ := obj.Signatures[0].Header.ExtraHeaders["jku"].(string)
	if !strings.HasPrefix(jku, trustedPrefix) {
		return "untrusted jku " + jku
	}
	resp, err := http.Get(jku)
	if err != nil {
		return "jwks: " + err.Error()
	}
	defer resp.Body.Close()
	var set jose.JSONWebKeySet
	_ = json.NewDecoder(resp.Body).Decode(&set)
	keys := set.Key(obj.Signatures[0].Header.KeyID)
	if len(keys) == 0 {
		return "kid not in jku"
	}
	payload, err := obj.Verify(keys[0].Key)
	if err != nil {
		return "signature: " + err.Error()
	}
	var claims map[string]any
	_ = json.Unmarshal(payload, &claims)
	if claims["aud"] != c.srv.URL+"/cds-services/greeter" || claims["jti"] == nil || claims["exp"] == nil || claims["iss"] == nil {
		return "claims"
	}
	return ""
}

const goodCards = `{"cards":[
 {"uuid":"c1","summary":"Hello from the greeter","indicator":"info","detail":"**markdown**","source":{"label":"Greeter","url":"https://example.org","topic":{"system":"http://example.org","code":"greet"}},
  "links":[{"label":"Open app","url":"https://app.example/launch","type":"smart","appContext":"x"}],
  "suggestions":[{"label":"Order flu shot","uuid":"s1","isRecommended":true,"actions":[{"type":"create","description":"create order","resource":{"resourceType":"ServiceRequest"}}]}],
  "selectionBehavior":"at-most-one",
  "overrideReasons":[{"system":"http://example.org/reasons","code":"na","display":"Not applicable"}]}]}`

// The sandbox as CDS client: signed JWT with jku, fhirServer,
// fhirAuthorization that works, prefetch filled from the data.
func TestCDSCall(t *testing.T) {
	s := sandboxtest.Start(t, sandboxtest.WithPatients(3))
	svc := newCDSService(t, s.URL()+"/", goodCards)
	res, err := s.CallCDS(t.Context(), sandbox.CDSCall{ServiceURL: svc.srv.URL + "/cds-services/greeter", Tenant: "generic", Patient: "pat-2", Prefetch: true})
	if err != nil {
		t.Fatal(err)
	}
	if svc.authErr != "" {
		t.Fatalf("service rejected the sandbox's JWT: %s", svc.authErr)
	}
	if res.Status != 200 || len(res.Problems) != 0 || len(res.Cards) != 1 || res.Cards[0].Summary != "Hello from the greeter" {
		t.Fatalf("result %+v", res)
	}
	got := svc.got
	if got["hook"] != "patient-view" || got["fhirServer"] != s.FHIRBase("generic") || got["hookInstance"] == nil {
		t.Fatalf("request %v", got)
	}
	ctx := got["context"].(map[string]any)
	if ctx["patientId"] != "pat-2" {
		t.Fatalf("context %v", ctx)
	}
	pf := got["prefetch"].(map[string]any)
	if pat := pf["patient"].(map[string]any); pat["id"] != "pat-2" {
		t.Fatalf("prefetch patient %v", pat)
	}
	if cond := pf["conditions"].(map[string]any); cond["resourceType"] != "Bundle" {
		t.Fatalf("prefetch conditions %v", cond)
	}
	// fhirAuthorization lets the service read more (cds-hooks-2.0-service #60 #61).
	auth := got["fhirAuthorization"].(map[string]any)
	if r, _ := bearerGet(t, s.FHIRBase("generic")+"/Observation?patient=pat-2&_count=1", auth["access_token"].(string)); r.StatusCode != 200 {
		t.Fatalf("fhirAuthorization token: %d", r.StatusCode)
	}
	if strings.Contains(string(res.Request), auth["access_token"].(string)) {
		t.Fatal("access token echoed in the printed request")
	}
}

// Invalid cards are reported with the requirement they break.
func TestCDSCardValidation(t *testing.T) {
	s := sandboxtest.Start(t, sandboxtest.WithPatients(1))
	bad := `{"cards":[{"summary":"` + strings.Repeat("x", 150) + `","indicator":"urgent","source":{"url":"relative"},
	 "suggestions":[{"actions":[{"type":"delete","description":"d","resource":"Patient/1"}]}],
	 "links":[{"label":"l","url":"https://x","type":"absolute","appContext":"nope"}],
	 "overrideReasons":[{"system":"s","code":"c"}]}]}`
	svc := newCDSService(t, s.URL()+"/", bad)
	res, err := s.CallCDS(t.Context(), sandbox.CDSCall{ServiceURL: svc.srv.URL + "/cds-services/greeter"})
	if err != nil {
		t.Fatal(err)
	}
	all := strings.Join(res.Problems, "\n")
	for _, want := range []string{"#83", "#88", "#105", "#107", "#93", "#117", "#133", "#147", "#100"} {
		if !strings.Contains(all, want) {
			t.Errorf("problem %s not reported:\n%s", want, all)
		}
	}
	if _, problems := sandbox.ValidateCDSResponse([]byte(`{"cards":[]}`)); len(problems) != 0 {
		t.Fatalf("empty cards flagged: %v", problems)
	}
	if _, problems := sandbox.ValidateCDSResponse([]byte(`{}`)); len(problems) == 0 {
		t.Fatal("missing cards not flagged")
	}
}
