package sandbox

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/medrelay/medrelay/internal/sandbox/synth"
)

// ErrCDS is returned when a CDS Hooks call cannot be made or the service's
// answer is not a valid CDS Hooks 2.0 response.
var ErrCDS = errors.New("cds hooks call failed")

// CDSCall is one CDS Hooks request the sandbox makes as the CDS client (EHR).
type CDSCall struct {
	ServiceURL string `json:"service_url"` // {baseUrl}/cds-services/{id}
	Hook       string `json:"hook"`        // default patient-view
	Tenant     string `json:"tenant"`      // default generic
	Patient    string `json:"patient"`     // default first patient
	Encounter  string `json:"encounter,omitempty"`
	Prefetch   bool   `json:"prefetch"` // fill the service's prefetch templates from discovery
	// NoAuthorization leaves fhirAuthorization out of the request.
	NoAuthorization bool `json:"no_authorization,omitempty"`
}

// CDSResult is what the service answered and what is wrong with it.
type CDSResult struct {
	Status   int             `json:"status"`
	Request  json.RawMessage `json:"request"`
	Response json.RawMessage `json:"response,omitempty"`
	Cards    []CDSCard       `json:"cards,omitempty"`
	Problems []string        `json:"problems,omitempty"` // shape violations; empty = valid
}

// CDSCard is the part of a card the CLI prints.
type CDSCard struct {
	Summary   string `json:"summary"`
	Indicator string `json:"indicator"`
	Source    string `json:"source"`
	Detail    string `json:"detail,omitempty"`
}

// CallCDS sends a CDS Hooks 2.0 request: an ES384-signed bearer JWT whose
// jku is the tenant's JWKS URL, fhirServer, fhirAuthorization (a fresh
// access token for the patient) and, if asked, prefetch.
func (s *Sandbox) CallCDS(ctx context.Context, c CDSCall) (*CDSResult, error) {
	if c.Hook == "" {
		c.Hook = "patient-view"
	}
	if c.Tenant == "" {
		c.Tenant = ProfileGeneric
	}
	t, err := s.tenant(c.Tenant)
	if err != nil {
		return nil, err
	}
	su, err := url.Parse(c.ServiceURL)
	if err != nil || !su.IsAbs() || !strings.Contains(su.Path, "/cds-services/") {
		return nil, fmt.Errorf("%w: service URL must be {baseUrl}/cds-services/{id}", ErrCDS)
	}
	patient := t.patientFromHint(c.Patient)
	if patient == "" {
		return nil, fmt.Errorf("%w: no such patient %q", ErrCDS, c.Patient)
	}
	now := s.now()
	const cdsClient = "medrelay-sandbox-cds"
	tok := randomToken(32)
	scope := "user/*.read patient/*.read"
	t.mu.Lock()
	t.access[tok] = &accessToken{client: cdsClient, scope: scope, scopes: parseScopes(scope), patient: patient, exp: now.Add(5 * time.Minute)}
	t.mu.Unlock()
	context := map[string]any{"userId": "Practitioner/" + synth.Ref{Type: synth.Practitioner}.ID(), "patientId": patient}
	if c.Encounter != "" {
		context["encounterId"] = c.Encounter
	}
	if c.Hook == "order-select" || c.Hook == "order-sign" {
		context["draftOrders"] = map[string]any{"resourceType": "Bundle", "type": "collection", "entry": []any{}}
	}
	req := map[string]any{
		"hookInstance": uuid(),
		"hook":         c.Hook,
		"fhirServer":   t.fhirBase(),
		"context":      context,
	}
	if !c.NoAuthorization {
		req["fhirAuthorization"] = map[string]any{"access_token": tok, "token_type": "Bearer", "expires_in": 300,
			"scope": scope, "subject": cdsClient, "patient": patient}
	}
	if c.Prefetch {
		pf, err := s.prefetch(ctx, t, su, tok, context)
		if err != nil {
			return nil, err
		}
		req["prefetch"] = pf
	}
	body, _ := json.Marshal(req)
	jwt, err := s.keys.signES384(map[string]any{
		"iss": s.base + "/" + t.name, "sub": cdsClient, "aud": c.ServiceURL,
		"exp": now.Add(5 * time.Minute).Unix(), "iat": now.Unix(), "jti": randomToken(16),
	}, t.authURL("jwks"))
	if err != nil {
		return nil, err
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, c.ServiceURL, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCDS, err)
	}
	hr.Header.Set("Content-Type", "application/json")
	hr.Header.Set("Accept", "application/json")
	hr.Header.Set("Authorization", "Bearer "+jwt)
	resp, err := s.client.Do(hr)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCDS, err)
	}
	defer resp.Body.Close()
	rb, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return nil, fmt.Errorf("%w: reading response: %w", ErrCDS, err)
	}
	redacted := bytes.ReplaceAll(body, []byte(tok), []byte("[access token]"))
	res := &CDSResult{Status: resp.StatusCode, Request: redacted}
	if json.Valid(rb) {
		res.Response = rb
	}
	if resp.StatusCode != http.StatusOK {
		res.Problems = append(res.Problems, fmt.Sprintf("service answered HTTP %d (412 means it needs prefetch or FHIR access)", resp.StatusCode))
		return res, nil
	}
	res.Cards, res.Problems = ValidateCDSResponse(rb)
	return res, nil
}

func (s *Sandbox) prefetch(ctx context.Context, t *tenant, su *url.URL, tok string, hookCtx map[string]any) (map[string]any, error) {
	base, id, _ := strings.Cut(su.String(), "/cds-services/")
	disc, err := s.get(ctx, base+"/cds-services", "")
	if err != nil {
		return nil, fmt.Errorf("%w: discovery: %w", ErrCDS, err)
	}
	var d struct {
		Services []struct {
			ID       string            `json:"id"`
			Prefetch map[string]string `json:"prefetch"`
		} `json:"services"`
	}
	if err := json.Unmarshal(disc, &d); err != nil {
		return nil, fmt.Errorf("%w: discovery is not JSON: %w", ErrCDS, err)
	}
	out := map[string]any{}
	for _, svc := range d.Services {
		if svc.ID != strings.Trim(id, "/") {
			continue
		}
		for key, tmpl := range svc.Prefetch {
			q := tmpl
			for k, v := range hookCtx {
				if sv, ok := v.(string); ok {
					q = strings.ReplaceAll(q, "{{context."+k+"}}", strings.TrimPrefix(sv, "Patient/"))
				}
			}
			q = strings.ReplaceAll(q, "{{userPractitionerId}}", strings.TrimPrefix(hookCtx["userId"].(string), "Practitioner/"))
			if strings.Contains(q, "{{") {
				out[key] = nil // a token we cannot fill: the service must fetch it itself
				continue
			}
			b, err := s.get(ctx, t.fhirBase()+"/"+strings.TrimPrefix(q, "/"), tok)
			if err != nil {
				out[key] = nil
				continue
			}
			out[key] = json.RawMessage(b)
		}
	}
	return out, nil
}

func (s *Sandbox) get(ctx context.Context, u, tok string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: HTTP %d", u, resp.StatusCode)
	}
	return b, nil
}

// uuid returns a random (version 4) UUID for hookInstance.
func uuid() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// ValidateCDSResponse checks a CDS service response against CDS Hooks 2.0
// (cds-hooks-2.0-service.tsv #74-#147, #216-#220) and returns the cards and
// every violation found. It parses outside input and is fuzzed.
func ValidateCDSResponse(b []byte) ([]CDSCard, []string) {
	var problems []string
	bad := func(format string, a ...any) { problems = append(problems, fmt.Sprintf(format, a...)) }
	var resp map[string]json.RawMessage
	if err := json.Unmarshal(b, &resp); err != nil {
		return nil, []string{"response is not a JSON object: " + err.Error()}
	}
	rawCards, ok := resp["cards"]
	if !ok {
		return nil, []string{"response has no cards array (#74)"}
	}
	var cards []map[string]json.RawMessage
	if err := json.Unmarshal(rawCards, &cards); err != nil || cards == nil && string(rawCards) != "[]" {
		return nil, []string{"cards must be an array of objects (#74)"}
	}
	if sa, ok := resp["systemActions"]; ok {
		var actions []map[string]json.RawMessage
		if err := json.Unmarshal(sa, &actions); err != nil {
			bad("systemActions must be an array of actions (#75)")
		}
		for i, a := range actions {
			validateAction(a, fmt.Sprintf("systemActions[%d]", i), bad)
		}
	}
	var out []CDSCard
	for i, c := range cards {
		at := fmt.Sprintf("cards[%d]", i)
		var card CDSCard
		if s, ok := str(c, "uuid"); !ok && c["uuid"] != nil {
			bad("%s.uuid must be a string (#80)", at)
		} else {
			_ = s
		}
		summary, ok := str(c, "summary")
		switch {
		case !ok || summary == "":
			bad("%s.summary is required and must be a string (#83)", at)
		case len([]rune(summary)) >= 140:
			bad("%s.summary must be shorter than 140 characters (#83)", at)
		}
		card.Summary = summary
		if d, ok := str(c, "detail"); ok {
			card.Detail = d
		} else if c["detail"] != nil {
			bad("%s.detail must be a (markdown) string (#85)", at)
		}
		ind, _ := str(c, "indicator")
		if ind != "info" && ind != "warning" && ind != "critical" {
			bad("%s.indicator must be info, warning or critical (#87, #88)", at)
		}
		card.Indicator = ind
		var src map[string]json.RawMessage
		if err := json.Unmarshal(c["source"], &src); err != nil || src == nil {
			bad("%s.source is required and must be an object (#90)", at)
		} else {
			label, ok := str(src, "label")
			if !ok || label == "" {
				bad("%s.source.label is required (#105)", at)
			}
			card.Source = label
			for _, f := range []string{"url", "icon"} {
				if src[f] != nil {
					u, ok := str(src, f)
					if pu, err := url.Parse(u); !ok || err != nil || !pu.IsAbs() {
						bad("%s.source.%s must be an absolute URL (#107, #111)", at, f)
					}
				}
			}
			if src["topic"] != nil {
				validateCoding(src["topic"], at+".source.topic", false, bad)
			}
		}
		if c["suggestions"] != nil {
			var sugs []map[string]json.RawMessage
			if err := json.Unmarshal(c["suggestions"], &sugs); err != nil {
				bad("%s.suggestions must be an array (#92)", at)
			}
			sb, ok := str(c, "selectionBehavior")
			if len(sugs) > 0 && !ok {
				bad("%s.selectionBehavior is required when suggestions are present (#93, #96)", at)
			} else if ok && sb != "at-most-one" && sb != "any" {
				bad("%s.selectionBehavior must be at-most-one or any (#95)", at)
			}
			for j, sg := range sugs {
				sat := fmt.Sprintf("%s.suggestions[%d]", at, j)
				if l, ok := str(sg, "label"); !ok || l == "" {
					bad("%s.label is required (#117)", sat)
				}
				if sg["uuid"] != nil {
					if _, ok := str(sg, "uuid"); !ok {
						bad("%s.uuid must be a string (#119)", sat)
					}
				}
				if sg["isRecommended"] != nil {
					var bv bool
					if json.Unmarshal(sg["isRecommended"], &bv) != nil {
						bad("%s.isRecommended must be a boolean (#121)", sat)
					}
				}
				if sg["actions"] != nil {
					var actions []map[string]json.RawMessage
					if err := json.Unmarshal(sg["actions"], &actions); err != nil {
						bad("%s.actions must be an array (#124)", sat)
					}
					for k, a := range actions {
						validateAction(a, fmt.Sprintf("%s.actions[%d]", sat, k), bad)
					}
				}
			}
		}
		if c["overrideReasons"] != nil {
			var reasons []json.RawMessage
			if err := json.Unmarshal(c["overrideReasons"], &reasons); err != nil {
				bad("%s.overrideReasons must be an array of codings (#98)", at)
			}
			for j, r := range reasons {
				validateCoding(r, fmt.Sprintf("%s.overrideReasons[%d]", at, j), true, bad)
			}
		}
		if c["links"] != nil {
			var links []map[string]json.RawMessage
			if err := json.Unmarshal(c["links"], &links); err != nil {
				bad("%s.links must be an array (#103)", at)
			}
			for j, l := range links {
				lat := fmt.Sprintf("%s.links[%d]", at, j)
				if lb, ok := str(l, "label"); !ok || lb == "" {
					bad("%s.label is required (#138)", lat)
				}
				u, _ := str(l, "url")
				if pu, err := url.Parse(u); err != nil || !pu.IsAbs() {
					bad("%s.url must be an absolute URL (#139)", lat)
				}
				typ, _ := str(l, "type")
				if typ != "absolute" && typ != "smart" {
					bad("%s.type must be absolute or smart (#141, #142)", lat)
				}
				if l["appContext"] != nil {
					if _, ok := str(l, "appContext"); !ok {
						bad("%s.appContext must be a string (#144)", lat)
					}
					if typ == "absolute" {
						bad("%s.appContext is not allowed on absolute links (#147)", lat)
					}
				}
			}
		}
		out = append(out, card)
	}
	return out, problems
}

func str(m map[string]json.RawMessage, k string) (string, bool) {
	raw, ok := m[k]
	if !ok {
		return "", false
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", false
	}
	return s, true
}

func validateCoding(raw json.RawMessage, at string, needDisplay bool, bad func(string, ...any)) {
	var c map[string]json.RawMessage
	if err := json.Unmarshal(raw, &c); err != nil || c == nil {
		bad("%s must be a Coding object (#115, #98)", at)
		return
	}
	if v, ok := str(c, "code"); !ok || v == "" {
		bad("%s.code is required (#216)", at)
	}
	if v, ok := str(c, "system"); !ok || v == "" {
		bad("%s.system is required (#217)", at)
	}
	if d, ok := str(c, "display"); needDisplay && (!ok || d == "") {
		bad("%s.display is required for override reasons (#100, #136, #219)", at)
	}
}

func validateAction(a map[string]json.RawMessage, at string, bad func(string, ...any)) {
	typ, _ := str(a, "type")
	if typ != "create" && typ != "update" && typ != "delete" {
		bad("%s.type must be create, update or delete (#127)", at)
	}
	if d, ok := str(a, "description"); !ok || d == "" {
		bad("%s.description is required (#128)", at)
	}
	switch typ {
	case "create", "update":
		var res map[string]any
		if err := json.Unmarshal(a["resource"], &res); err != nil || res["resourceType"] == nil {
			bad("%s.resource must be a FHIR resource (#130, #131, #132)", at)
		}
	case "delete":
		if a["resource"] != nil {
			var s string
			if json.Unmarshal(a["resource"], &s) == nil {
				bad("%s.resource must not carry an id for delete; use resourceId (#133)", at)
			}
		}
		if a["resourceId"] == nil {
			bad("%s.resourceId should be provided for delete (#134)", at)
		} else {
			var ids []string
			var one string
			if json.Unmarshal(a["resourceId"], &ids) != nil && json.Unmarshal(a["resourceId"], &one) != nil {
				bad("%s.resourceId must be a string or strings (#135)", at)
			}
		}
	}
}
