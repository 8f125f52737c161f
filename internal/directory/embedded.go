package directory

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"time"

	"github.com/medrelay/medrelay/internal/directory/importers"
)

// The catalog compiled into the agent: each supported vendor's public
// sandbox, the local medrelay-sandbox tenants, a curated set of well-known
// sources, and each vendor's setup requirements. Written by us from public
// facts (catalog/catalog.json says which).
//
//go:embed catalog/catalog.json
var embeddedCatalog []byte

// BuiltinList is the list id of the embedded catalog.
const BuiltinList = "builtin"

type embeddedFile struct {
	Updated time.Time `json:"updated"`
	Vendors []struct {
		Slug  string `json:"slug"`
		Name  string `json:"name"`
		Setup Setup  `json:"setup"`
	} `json:"vendors"`
	Sources []struct {
		ID        string   `json:"id"`
		Name      string   `json:"name"`
		Aliases   []string `json:"aliases"`
		Vendor    string   `json:"vendor"`
		Kind      Kind     `json:"kind"`
		Sandbox   bool     `json:"sandbox"`
		Logo      string   `json:"logo"`
		Website   string   `json:"website"`
		Endpoints []struct {
			URL         string `json:"url"`
			FHIRVersion string `json:"fhir_version"`
			Audience    string `json:"audience"`
		} `json:"endpoints"`
		Portals []struct {
			Name string `json:"name"`
			URL  string `json:"url"`
		} `json:"portals"`
		Locations []Location `json:"locations"`
	} `json:"sources"`
}

type embedded struct {
	sources   []*Source
	endpoints []*Endpoint
	setups    map[string]Setup
}

func loadEmbedded() (*embedded, error) {
	var f embeddedFile
	if err := json.Unmarshal(embeddedCatalog, &f); err != nil {
		return nil, fmt.Errorf("directory: embedded catalog: %w", err)
	}
	out := &embedded{setups: map[string]Setup{}}
	for _, v := range f.Vendors {
		s := v.Setup
		s.From = "catalog"
		out.setups[v.Slug] = s
	}
	seen := map[string]bool{}
	for _, es := range f.Sources {
		if es.ID == "" || es.Name == "" || seen[es.ID] {
			return nil, fmt.Errorf("directory: embedded catalog: source %q: missing or duplicate id/name", es.ID)
		}
		seen[es.ID] = true
		s := &Source{
			ID: es.ID, Name: es.Name, Aliases: es.Aliases, Vendor: es.Vendor, Kind: es.Kind, Status: StatusActive,
			Sandbox: es.Sandbox, Logo: es.Logo, Locations: es.Locations, Identifiers: Identifiers{Website: es.Website},
			Origin: BuiltinList, Builtin: true, Priority: builtinPriority, CreatedAt: f.Updated, UpdatedAt: f.Updated,
		}
		if s.Kind == "" {
			s.Kind = defaultKind(s.Vendor)
		}
		for _, e := range es.Endpoints {
			u, err := importers.NormalizeBaseURL(e.URL)
			if err != nil {
				return nil, fmt.Errorf("directory: embedded catalog: source %s: %v", es.ID, err)
			}
			f := factsOf(u)
			ep := &Endpoint{ID: endpointID(u), URL: u, FHIRVersion: e.FHIRVersion, Audience: e.Audience, Vendor: es.Vendor}
			if ep.Audience == "" {
				ep.Audience = f.audience
			}
			if ep.FHIRVersion == "" {
				ep.FHIRVersion = f.version
			}
			out.endpoints = append(out.endpoints, ep)
			s.Endpoints = append(s.Endpoints, ep.ID)
		}
		for _, p := range es.Portals {
			s.Portals = append(s.Portals, Portal{Name: p.Name, URL: p.URL, Endpoints: s.Endpoints})
		}
		out.sources = append(out.sources, s)
	}
	return out, nil
}
