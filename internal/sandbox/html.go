package sandbox

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"html/template"
	"net/http"
	"strings"
	"time"

	"github.com/medrelay/medrelay/internal/sandbox/synth"
)

const pageStyle = `body{font-family:system-ui,sans-serif;max-width:46rem;margin:2rem auto;padding:0 1rem;color:#222}
h1{font-size:1.4rem}fieldset{border:1px solid #ccc;border-radius:6px;margin:1rem 0}label{display:block;margin:.3rem 0}
button{font-size:1rem;padding:.5rem 1.2rem;margin-right:.5rem;border-radius:4px;border:1px solid #888}
button.primary{background:{{.Color}};color:#fff;border-color:{{.Color}}}code{background:#f3f3f3;padding:0 .2rem}
.err{color:#a00}table{border-collapse:collapse}td,th{padding:.2rem .6rem;border-bottom:1px solid #ddd;text-align:left}`

var consentTmpl = template.Must(template.New("consent").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>Sign in to {{.Portal}}</title><style>` + pageStyle + `</style></head>
<body><main>
<h1>Sign in to {{.Portal}}</h1>
<p>{{.Vendor}} sandbox · tenant <code>{{.Tenant}}</code>. This is a test system with synthetic patients; there is no password.</p>
<p><strong>{{.ClientID}}</strong> is asking for access to your health record.</p>
<form method="post" action="{{.Action}}">
<input type="hidden" name="request_id" value="{{.RequestID}}">
{{if .Launch}}<p>Patient in context: <code>{{.Launch}}</code></p>{{else}}
<fieldset><legend>Sign in as</legend>
{{range $i, $p := .Patients}}<label><input type="radio" name="patient" value="{{$p.ID}}" {{if eq $p.ID $.Selected}}checked{{end}}> {{$p.Name}} <small>({{$p.ID}})</small></label>
{{end}}</fieldset>{{end}}
<fieldset><legend>Allow the app to</legend>
{{range .Scopes}}<label><input type="checkbox" name="scope_item" value="{{.Scope}}" checked> {{.Text}} <code>{{.Scope}}</code></label>
{{end}}{{range .Other}}<p>{{.Text}} <code>{{.Scope}}</code></p>{{end}}</fieldset>
<button class="primary" type="submit" name="decision" value="approve">Allow</button>
<button type="submit" name="decision" value="deny">Deny</button>
</form></main></body></html>`))

var errorTmpl = template.Must(template.New("err").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign-in problem</title></head>
<body><main><h1>We could not start the sign-in</h1><p class="err">{{.}}</p>
<p>The app that sent you here is misconfigured. Go back to it and try again, or contact its support.</p></main></body></html>`))

var indexTmpl = template.Must(template.New("index").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>medrelay sandbox</title><style>` + strings.ReplaceAll(pageStyle, "{{.Color}}", "#2c6e49") + `</style></head>
<body><main><h1>medrelay sandbox</h1>
<p>A local EHR with synthetic patients. Brands bundle: <a href="{{.Base}}/brands.json">{{.Base}}/brands.json</a>.
Admin: <code>{{.Base}}/admin/stats</code>, <code>/admin/faults</code>, <code>/admin/clients</code>, <code>/admin/mutate</code>.</p>
<table><tr><th>tenant</th><th>profile</th><th>FHIR base</th><th>patients</th></tr>
{{range .Tenants}}<tr><td>{{.Name}}</td><td>{{.Profile}}</td><td><a href="{{.FHIRBase}}/.well-known/smart-configuration">{{.FHIRBase}}</a></td><td>{{.Patients}}</td></tr>
{{end}}</table></main></body></html>`))

type consentPatient struct{ ID, Name string }

type scopeText struct{ Scope, Text string }

// describeScope says in plain words what a resource scope allows.
func describeScope(sc scope) string {
	what := "your " + sc.typ + " records"
	if sc.typ == "*" {
		what = "all of your health record"
	}
	if sc.context != "patient" {
		what = strings.Replace(what, "your ", "", 1) + " (any patient you can see)"
	}
	verb := "Read"
	switch {
	case sc.read && sc.search:
		verb = "Read and search"
	case sc.search:
		verb = "Search"
	case !sc.read:
		verb = "Change"
	}
	if sc.query != nil {
		what += " where " + sc.query.Encode()
	}
	return verb + " " + what
}

func describeOther(s string) string {
	switch {
	case s == "openid" || s == "fhirUser" || s == "profile":
		return "Know who you are"
	case s == "offline_access":
		return "Keep access while you are not using the app"
	case s == "online_access":
		return "Keep access while you are signed in"
	case strings.HasPrefix(s, "launch"):
		return "Know which patient record you opened"
	}
	return "Other permission"
}

func (s *Sandbox) renderConsent(w http.ResponseWriter, t *tenant, id string, req *authRequest) {
	var scopes, other []scopeText
	for _, f := range strings.Fields(req.scope) {
		if sc, ok := parseScope(f); ok {
			scopes = append(scopes, scopeText{f, describeScope(sc)})
		} else {
			other = append(other, scopeText{f, describeOther(f)})
		}
	}
	data := map[string]any{
		"Portal": t.prof.Portal, "Vendor": t.prof.Vendor, "Tenant": t.name, "ClientID": req.client.cfg.ClientID,
		"Action": t.authURL("authorize"), "RequestID": id, "Scopes": scopes, "Other": other,
		"Selected": t.patientFromHint(req.loginHint), "Patients": t.patientList(50),
	}
	if req.launch != nil {
		data["Launch"] = req.launch.patient
	}
	data["Color"] = template.CSS(t.prof.Color)
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("X-Frame-Options", "DENY")
	if err := consentTmpl.Execute(w, data); err != nil {
		http.Error(w, "template: "+err.Error(), http.StatusInternalServerError)
	}
}

// patientList names the first n patients (for the login page).
func (t *tenant) patientList(n int) []consentPatient {
	if n > t.data.Patients() {
		n = t.data.Patients()
	}
	out := make([]consentPatient, 0, n)
	for p := range n {
		var pt struct {
			Name []struct {
				Family string   `json:"family"`
				Given  []string `json:"given"`
			} `json:"name"`
		}
		ref := synth.Ref{Type: synth.Patient, Patient: p}
		_ = json.Unmarshal(t.data.Bytes(ref, synth.Meta{}), &pt)
		name := ref.ID()
		if len(pt.Name) > 0 {
			name = strings.Join(append(pt.Name[0].Given, pt.Name[0].Family), " ")
		}
		out = append(out, consentPatient{ID: ref.ID(), Name: name})
	}
	return out
}

func authErrorPage(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_ = errorTmpl.Execute(w, msg)
}

func (s *Sandbox) serveIndex(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_ = indexTmpl.Execute(w, map[string]any{"Base": s.base, "Tenants": s.TenantInfo()})
}

// serveBrands publishes the tenants as a SMART 2.2 User-access Brands bundle.
func (s *Sandbox) serveBrands(w http.ResponseWriter, r *http.Request) {
	var entries []map[string]any
	for _, n := range s.order {
		t := s.tenants[n]
		epID := "ep-" + n
		entries = append(entries, map[string]any{
			"fullUrl": s.base + "/brands/Endpoint/" + epID,
			"resource": map[string]any{
				"resourceType": "Endpoint", "id": epID, "status": "active",
				"connectionType": map[string]string{"system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type", "code": "hl7-fhir-rest"},
				"name":           t.prof.Vendor + " sandbox (" + n + ")",
				"payloadType":    []any{map[string]any{"coding": []map[string]string{{"system": "http://terminology.hl7.org/CodeSystem/endpoint-payload-type", "code": "none"}}}},
				"address":        t.fhirBase(),
				"extension":      []map[string]string{{"url": "http://hl7.org/fhir/StructureDefinition/endpoint-fhir-version", "valueCode": "4.0.1"}},
			},
		})
		orgs := 1
		if t.prof.Practices > 0 {
			orgs = t.prof.Practices
		}
		for i := range orgs {
			orgID, name := "org-"+n, t.prof.Vendor+" Sandbox Health"
			ident := s.base + "/" + n
			if t.prof.Practices > 0 {
				orgID = "org-" + n + "-" + strings.TrimPrefix(practiceRef(i), "Organization/")
				name = t.prof.Vendor + " Sandbox Practice " + string(rune('A'+i))
				ident = practiceRef(i)
			}
			entries = append(entries, map[string]any{
				"fullUrl": s.base + "/brands/Organization/" + orgID,
				"resource": map[string]any{
					"resourceType": "Organization", "id": orgID, "active": true, "name": name,
					"identifier": []map[string]string{{"system": "urn:ietf:rfc:3986", "value": ident}},
					"extension": []any{
						map[string]any{"url": "http://hl7.org/fhir/StructureDefinition/organization-brand",
							"extension": []map[string]string{{"url": "brandLogo", "valueUrl": logo(t.prof.Color)}}},
						map[string]any{"url": "http://hl7.org/fhir/StructureDefinition/organization-portal",
							"extension": []any{
								map[string]string{"url": "portalName", "valueString": t.prof.Portal},
								map[string]string{"url": "portalUrl", "valueUrl": s.base + "/" + n + "/portal"},
								map[string]any{"url": "portalEndpoint", "valueReference": map[string]string{"reference": "Endpoint/" + epID}},
							}},
					},
					"telecom":  []map[string]string{{"system": "url", "value": s.base + "/" + n + "/portal"}},
					"address":  []map[string]string{{"city": "Springfield", "state": "IL", "country": "US"}},
					"endpoint": []map[string]string{{"reference": "Endpoint/" + epID}},
				},
			})
		}
	}
	bundle := map[string]any{"resourceType": "Bundle", "id": "medrelay-sandbox-brands", "type": "collection",
		"timestamp": time.Unix(synth.Anchor, 0).UTC().Format(time.RFC3339), "entry": entries}
	b, _ := json.Marshal(bundle)
	sum := sha256.Sum256(b)
	etag := `"` + hex.EncodeToString(sum[:8]) + `"`
	w.Header().Set("ETag", etag)
	w.Header().Set("Cache-Control", "max-age=3600")
	if r.Header.Get("If-None-Match") == etag {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	w.Header().Set("Content-Type", "application/fhir+json")
	_, _ = w.Write(b)
}

func logo(color string) string {
	return "data:image/svg+xml;utf8,<svg%20xmlns='http://www.w3.org/2000/svg'%20width='64'%20height='64'><rect%20width='64'%20height='64'%20rx='12'%20fill='" +
		strings.ReplaceAll(color, "#", "%23") + "'/></svg>"
}
