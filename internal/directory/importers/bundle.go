package importers

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
)

// FHIR shapes, only the fields we read. Endpoint.address is a string and
// Organization.address a list, so address stays raw until the type is known.
type resource struct {
	ResourceType         string          `json:"resourceType"`
	ID                   string          `json:"id"`
	Name                 string          `json:"name"`
	Alias                []string        `json:"alias"`
	Address              json.RawMessage `json:"address"`
	Extension            []extension     `json:"extension"`
	Identifier           []identifier    `json:"identifier"`
	Telecom              []contactPoint  `json:"telecom"`
	Type                 []concept       `json:"type"`
	PartOf               *reference      `json:"partOf"`
	Endpoint             []reference     `json:"endpoint"`
	ManagingOrganization *reference      `json:"managingOrganization"`
	Contained            []resource      `json:"contained"`
	Status               string          `json:"status"`
	Active               *bool           `json:"active"`
}

type extension struct {
	URL            string      `json:"url"`
	ValueString    string      `json:"valueString"`
	ValueURL       string      `json:"valueUrl"`
	ValueURI       string      `json:"valueUri"`
	ValueCode      string      `json:"valueCode"`
	ValueMarkdown  string      `json:"valueMarkdown"`
	ValueReference *reference  `json:"valueReference"`
	Extension      []extension `json:"extension"`
}

func (e extension) str() string {
	for _, s := range []string{e.ValueString, e.ValueURL, e.ValueURI, e.ValueCode, e.ValueMarkdown} {
		if s != "" {
			return s
		}
	}
	return ""
}

type identifier struct {
	System string `json:"system"`
	Value  string `json:"value"`
}

type contactPoint struct {
	System string `json:"system"`
	Value  string `json:"value"`
}

type concept struct {
	Coding []struct {
		System string `json:"system"`
		Code   string `json:"code"`
	} `json:"coding"`
}

type reference struct {
	Reference string `json:"reference"`
	Display   string `json:"display"`
}

type address struct {
	Line       []string `json:"line"`
	City       string   `json:"city"`
	State      string   `json:"state"`
	PostalCode string   `json:"postalCode"`
	Country    string   `json:"country"`
}

// Extension URLs, final (SMART 2.2) and draft (2022-2023 connectathons).
const (
	extBrand          = "http://hl7.org/fhir/StructureDefinition/organization-brand"
	extPortal         = "http://hl7.org/fhir/StructureDefinition/organization-portal"
	draftPrefix       = "http://hl7.org/fhir/smart-app-launch/StructureDefinition/"
	npiSystem         = "http://hl7.org/fhir/sid/us-npi"
	urlIdentifierSys  = "urn:ietf:rfc:3986"
	brandCategoryHint = "access-category"
)

type bundleEntry struct {
	row     int
	fullURL string
	res     resource
}

// parseBundle reads a FHIR Bundle of Organizations and Endpoints: a SMART
// brands bundle or a vendor's endpoint list.
func parseBundle(ctx context.Context, data []byte, progress Progress) (*List, error) {
	l := &List{}
	var (
		rt      string
		id      string
		entries []bundleEntry
	)
	total := countTopLevel(data, `"resourceType"`)
	dec := json.NewDecoder(bytes.NewReader(data))
	err := walkObject(dec, func(key string) error {
		switch key {
		case "resourceType":
			return dec.Decode(&rt)
		case "id":
			return dec.Decode(&id)
		case "entry":
			return walkArray(ctx, dec, func(i int, raw json.RawMessage) error {
				row := i + 1
				l.Rows++
				progress(row, total)
				var e struct {
					FullURL  string   `json:"fullUrl"`
					Resource resource `json:"resource"`
				}
				if err := json.Unmarshal(raw, &e); err != nil {
					l.reject(row, "", "", "malformed entry: %s", jsonErr(err))
					return nil
				}
				entries = append(entries, bundleEntry{row: row, fullURL: e.FullURL, res: e.Resource})
				return nil
			})
		}
		var skip json.RawMessage
		return dec.Decode(&skip)
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %s", ErrMalformed, jsonErr(err))
	}
	if rt != "Bundle" {
		return nil, fmt.Errorf("%w: resourceType is %q, not Bundle", ErrMalformed, rt)
	}
	l.Title = id
	interpretBundle(l, entries)
	return l, nil
}

// refKeys are the ways an entry can be referred to within a bundle.
func refKeys(e bundleEntry) []string {
	keys := []string{}
	if e.fullURL != "" {
		keys = append(keys, e.fullURL)
	}
	if e.res.ID != "" {
		keys = append(keys, e.res.ResourceType+"/"+e.res.ID, e.res.ID, "urn:uuid:"+e.res.ID)
	}
	return keys
}

// refTail reduces an absolute reference to "Type/id" so that
// "https://x/Endpoint/a" matches an entry whose fullUrl differs in host.
func refTail(ref string) string {
	parts := strings.Split(strings.TrimRight(ref, "/"), "/")
	if len(parts) >= 2 {
		return parts[len(parts)-2] + "/" + parts[len(parts)-1]
	}
	return ref
}

type parsedEndpoint struct {
	row int
	ep  Endpoint
	err error
	raw string
	// managingOrg is the reference an Endpoint makes to its Organization
	// (Epic's lists, the draft brands bundles).
	managingOrg string
	// containedName names an Endpoint whose Organization is contained.
	containedName string
	used          bool
}

func interpretBundle(l *List, entries []bundleEntry) {
	endpoints := map[string]*parsedEndpoint{}
	var epOrder []*parsedEndpoint
	var orgs []bundleEntry
	orgByRef := map[string]int{}
	draft := false
	for _, e := range entries {
		switch e.res.ResourceType {
		case "Endpoint":
			pe := &parsedEndpoint{row: e.row, raw: rawString(e.res.Address)}
			u, err := NormalizeBaseURL(pe.raw)
			pe.err = err
			pe.ep = Endpoint{URL: u, Name: cleanText(e.res.Name), FHIRVersion: fhirVersionExt(e.res.Extension)}
			if e.res.ManagingOrganization != nil {
				pe.managingOrg = e.res.ManagingOrganization.Reference
			}
			for _, c := range e.res.Contained {
				if c.ResourceType == "Organization" && c.Name != "" {
					pe.containedName = cleanText(c.Name)
				}
			}
			for _, k := range refKeys(e) {
				endpoints[k] = pe
			}
			epOrder = append(epOrder, pe)
		case "Organization":
			for _, k := range refKeys(e) {
				orgByRef[k] = len(orgs)
			}
			orgs = append(orgs, e)
			for _, x := range e.res.Extension {
				if strings.HasPrefix(x.URL, draftPrefix) {
					draft = true
				}
			}
		case "":
			l.reject(e.row, "", "", "entry has no resource")
		default:
			l.Skipped++
		}
	}
	lookupEP := func(ref string) *parsedEndpoint {
		if ref == "" {
			return nil
		}
		if pe, ok := endpoints[ref]; ok {
			return pe
		}
		return endpoints[refTail(ref)]
	}
	lookupOrg := func(ref string) int {
		if ref == "" {
			return -1
		}
		if i, ok := orgByRef[ref]; ok {
			return i
		}
		if i, ok := orgByRef[refTail(ref)]; ok {
			return i
		}
		return -1
	}
	// Endpoints that name their managing Organization.
	byOrg := map[int][]*parsedEndpoint{}
	for _, pe := range epOrder {
		if i := lookupOrg(pe.managingOrg); i >= 0 {
			byOrg[i] = append(byOrg[i], pe)
		}
	}
	isBrands := false
	for _, o := range orgs {
		if hasBrandExtensions(o.res) {
			isBrands = true
		}
	}
	if isBrands {
		l.Format = FormatBrands
		if draft {
			l.Notes = append(l.Notes, "uses the draft (pre-2.2) brand extension URLs")
		}
	} else {
		l.Format = FormatFHIRBundle
	}

	// Each Organization is an entry. Affiliates (partOf) with no access
	// details of their own get their parent's portals and endpoints.
	type built struct {
		e      Entry
		ok     bool
		skip   bool
		parent int
	}
	b := make([]built, len(orgs))
	for i := range orgs {
		o := &orgs[i]
		e, reason := orgEntry(o, lookupEP, byOrg[i])
		b[i] = built{e: e, parent: -1}
		switch {
		case reason == "":
			b[i].ok = true
		case reason == "hidden":
			b[i].skip = true
			l.Skipped++
			l.Notes = appendUnique(l.Notes, "brands flagged hidden are not listed")
		case reason == "no FHIR endpoint" && o.res.PartOf != nil:
			b[i].parent = lookupOrg(o.res.PartOf.Reference)
			if b[i].parent < 0 {
				l.reject(o.row, o.res.ID, e.Name, "partOf %q is not in the bundle", o.res.PartOf.Reference)
				b[i].skip = true
			}
		default:
			l.reject(o.row, o.res.ID, e.Name, "%s", reason)
			b[i].skip = true
		}
	}
	for i := range orgs {
		if b[i].ok || b[i].skip || b[i].parent < 0 {
			continue
		}
		// SMART 2.2: the "access provided by" chain is at most two deep, so
		// the parent must give access itself.
		p := b[b[i].parent]
		if !p.ok {
			l.reject(orgs[i].row, orgs[i].res.ID, b[i].e.Name, "partOf %q, which gives no FHIR endpoint", orgs[i].res.PartOf.Reference)
			continue
		}
		b[i].e.Endpoints = p.e.Endpoints
		if len(b[i].e.Portals) == 0 {
			b[i].e.Portals = p.e.Portals
		}
		if b[i].e.Kind == "" {
			b[i].e.Kind = p.e.Kind
		}
		b[i].ok = true
	}
	for i := range orgs {
		if b[i].ok {
			l.Entries = append(l.Entries, b[i].e)
		}
	}
	// Endpoints no Organization claims are sources of their own, named by the
	// Endpoint (Epic's R4 list) or its contained Organization.
	for _, pe := range epOrder {
		if pe.used {
			continue
		}
		if lookupOrg(pe.managingOrg) >= 0 {
			continue
		}
		name := pe.ep.Name
		if name == "" {
			name = pe.containedName
		}
		switch {
		case pe.err != nil:
			l.reject(pe.row, "", name, "%v: %q", pe.err, pe.raw)
		case name == "":
			l.reject(pe.row, "", "", "Endpoint has no name and no Organization refers to it")
		default:
			e := Entry{Row: pe.row, Name: name, Endpoints: []Endpoint{pe.ep}}
			if pe.containedName != "" && !strings.EqualFold(pe.containedName, name) {
				e.Aliases = append(e.Aliases, pe.containedName)
			}
			l.Entries = append(l.Entries, e)
		}
	}
}

func rawString(m json.RawMessage) string {
	var s string
	if json.Unmarshal(m, &s) == nil {
		return s
	}
	return ""
}

func hasBrandExtensions(r resource) bool {
	for _, x := range r.Extension {
		if x.URL == extBrand || x.URL == extPortal || strings.HasPrefix(x.URL, draftPrefix) {
			return true
		}
	}
	return false
}

func fhirVersionExt(exts []extension) string {
	for _, x := range exts {
		u := strings.ToLower(x.URL)
		if strings.HasSuffix(u, "endpoint-fhir-version") || strings.HasSuffix(u, "fhirversion") {
			return strings.TrimSpace(x.str())
		}
	}
	return ""
}

// orgEntry builds the entry of one Organization. reason is "" when it is
// usable, "hidden" for brands that ask not to be shown, or why not.
func orgEntry(o *bundleEntry, lookupEP func(string) *parsedEndpoint, managed []*parsedEndpoint) (Entry, string) {
	r := o.res
	e := Entry{Row: o.row, Ref: r.ID, Name: cleanText(r.Name)}
	for _, a := range r.Alias {
		if a = cleanText(a); a != "" && !strings.EqualFold(a, e.Name) {
			e.Aliases = appendUnique(e.Aliases, a)
		}
	}
	var epErrs []string
	addEP := func(pe *parsedEndpoint) string {
		if pe == nil {
			return ""
		}
		pe.used = true
		if pe.err != nil {
			epErrs = append(epErrs, fmt.Sprintf("%v: %q", pe.err, pe.raw))
			return ""
		}
		for _, x := range e.Endpoints {
			if x.URL == pe.ep.URL {
				return x.URL
			}
		}
		e.Endpoints = append(e.Endpoints, pe.ep)
		return pe.ep.URL
	}
	draftPortal := Portal{}
	for _, x := range r.Extension {
		switch {
		case x.URL == extBrand:
			for _, s := range x.Extension {
				if s.URL == "brandLogo" && e.Logo == "" {
					e.Logo = s.str()
				}
			}
		case x.URL == extPortal:
			p := Portal{}
			for _, s := range x.Extension {
				switch s.URL {
				case "portalName":
					p.Name = cleanText(s.str())
				case "portalUrl":
					p.URL = strings.TrimSpace(s.str())
				case "portalDescription":
					p.Description = strings.TrimSpace(s.str())
				case "portalLogo":
					p.Logo = strings.TrimSpace(s.str())
				case "portalEndpoint":
					if s.ValueReference != nil {
						if u := addEP(lookupEP(s.ValueReference.Reference)); u != "" {
							p.Endpoints = append(p.Endpoints, u)
						}
					}
				}
			}
			e.Portals = append(e.Portals, p)
		case strings.HasPrefix(x.URL, draftPrefix):
			switch strings.TrimPrefix(x.URL, draftPrefix) {
			case "brand-logo":
				e.Logo = strings.TrimSpace(x.str())
			case "patient-access-name":
				draftPortal.Name = cleanText(x.str())
			case "patient-access-url":
				draftPortal.URL = strings.TrimSpace(x.str())
			case "patient-access-description":
				draftPortal.Description = strings.TrimSpace(x.str())
			case "brand-flags":
				if x.str() == "hidden" {
					return e, "hidden"
				}
			}
		}
	}
	for _, ref := range r.Endpoint {
		addEP(lookupEP(ref.Reference))
	}
	for _, pe := range managed {
		addEP(pe)
	}
	if draftPortal.Name != "" || draftPortal.URL != "" || draftPortal.Description != "" {
		for _, x := range e.Endpoints {
			draftPortal.Endpoints = append(draftPortal.Endpoints, x.URL)
		}
		e.Portals = append(e.Portals, draftPortal)
	}
	for _, id := range r.Identifier {
		sys, val := strings.TrimSpace(id.System), strings.TrimSpace(id.Value)
		// Epic's connectathon bundle swaps system and value for NPIs.
		if val == npiSystem && isDigits(sys) {
			sys, val = val, sys
		}
		switch {
		case sys == npiSystem && val != "":
			e.NPI = appendUnique(e.NPI, val)
		case strings.HasPrefix(strings.ToLower(val), "urn:oid:"):
			e.OIDs = appendUnique(e.OIDs, val[len("urn:oid:"):])
		case sys == urlIdentifierSys && strings.HasPrefix(val, "http") && e.Website == "":
			e.Website = val
		}
	}
	if e.Website == "" {
		for _, t := range r.Telecom {
			if t.System == "url" && strings.HasPrefix(t.Value, "http") {
				e.Website = strings.TrimSpace(t.Value)
				break
			}
		}
	}
	var addrs []address
	if len(r.Address) > 0 && json.Unmarshal(r.Address, &addrs) == nil {
		for _, a := range addrs {
			loc := Location{
				Line: cleanText(strings.Join(a.Line, ", ")), City: cleanText(a.City),
				State: cleanText(a.State), PostalCode: cleanText(a.PostalCode), Country: cleanText(a.Country),
			}
			if loc != (Location{}) {
				e.Locations = append(e.Locations, loc)
			}
		}
	}
	for _, t := range r.Type {
		for _, c := range t.Coding {
			if strings.Contains(c.System, brandCategoryHint) && c.Code != "" {
				e.Categories = appendUnique(e.Categories, c.Code)
			}
		}
	}
	e.Kind = kindFromCategories(e.Categories)
	switch {
	case e.Name == "":
		return e, "Organization has no name"
	case len(e.Endpoints) == 0 && len(epErrs) > 0:
		return e, strings.Join(epErrs, "; ")
	case len(e.Endpoints) == 0:
		return e, "no FHIR endpoint"
	}
	return e, ""
}

// kindFromCategories maps User Access Brand categories to our kinds.
func kindFromCategories(cats []string) string {
	for _, c := range cats {
		switch strings.ToLower(c) {
		case "insurance":
			return KindPayer
		case "lab":
			return KindLab
		case "pharmacy":
			return KindPharmacy
		case "imaging":
			return KindImaging
		case "network":
			return KindNetwork
		}
	}
	return ""
}
