package app

// Adapters between components. Each component declares the small interface
// it needs; this file is where the agent satisfies them from the others, so
// no component imports another just to read one field.

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/medrelay/medrelay/internal/authorize"
	"github.com/medrelay/medrelay/internal/connections"
	"github.com/medrelay/medrelay/internal/credentials"
	"github.com/medrelay/medrelay/internal/directory"
	"github.com/medrelay/medrelay/internal/errdefs"
	"github.com/medrelay/medrelay/internal/oauth"
	"github.com/medrelay/medrelay/internal/pluginhost"
	"github.com/medrelay/medrelay/internal/records"
	"github.com/medrelay/medrelay/internal/sessions"
	pluginv1 "github.com/medrelay/medrelay/proto/gen/medrelay/plugin/v1"
)

// ErrSourceNotReady: discovery found no usable SMART endpoint for a source.
var ErrSourceNotReady = errdefs.Define(errdefs.FailedPrecondition, "SOURCE_NOT_READY", "the source has no usable SMART endpoint")

// dirSources resolves a directory source to its discovered OAuth endpoints
// (authorize.Sources).
type dirSources struct{ cat *directory.Catalog }

func (d dirSources) Resolve(ctx context.Context, id string, aud authorize.Audience) (authorize.Source, error) {
	e, err := d.cat.EnsureDiscovered(ctx, id)
	if err != nil {
		return authorize.Source{}, err
	}
	want := directory.AudiencePatient
	if aud == authorize.ForBackend {
		want = directory.AudienceProvider
	}
	ep, err := pickEndpoint(e, want)
	if err != nil {
		return authorize.Source{}, err
	}
	// What the server says it runs (its CapabilityStatement's software)
	// decides the plugin; lists often do not say, or name the company that
	// hosts the server rather than the behaviour it has (the sandbox's
	// tenants are "medrelay-sandbox" in the catalog, each with a vendor's
	// profile).
	vendor := ""
	if ep.Discovery != nil && ep.Discovery.Capability != nil {
		vendor = vendorFromSoftware(ep.Discovery.Capability.Software)
	}
	vendor = cmp.Or(vendor, e.Source.Vendor, ep.Vendor)
	return authorize.Source{ID: e.Source.ID, Vendor: vendor, FHIRBase: ep.URL, Endpoints: endpointsOf(ep.Discovery)}, nil
}

// pickEndpoint picks the endpoint to authorize at: of those (primary
// first) whose discovery found a token endpoint, one for the wanted
// audience (or for any), then R4 over older versions. An endpoint meant
// only for the other audience is used only when there is nothing else.
func pickEndpoint(e directory.Entry, want string) (directory.EndpointEntry, error) {
	var best *directory.EndpointEntry
	score := func(ep directory.EndpointEntry) int {
		s := 0
		switch ep.Audience {
		case want:
			s += 4
		case "":
			s += 2
		}
		if strings.HasPrefix(ep.FHIRVersion, "4") {
			s++
		}
		return s
	}
	var problems []string
	for i := range e.Endpoints {
		ep := e.Endpoints[i]
		d := ep.Discovery
		eps := endpointsOf(d)
		if d == nil || eps.TokenURL == "" || (want == directory.AudiencePatient && eps.AuthorizeURL == "") {
			if d != nil {
				problems = append(problems, fmt.Sprintf("%s: %s %s", ep.URL, d.Status, strings.Join(d.Problems, "; ")))
			}
			continue
		}
		if best == nil || score(ep) > score(*best) {
			best = &e.Endpoints[i]
		}
	}
	if best == nil {
		return directory.EndpointEntry{}, fmt.Errorf("%w: %s: %s", ErrSourceNotReady, e.Source.ID, strings.Join(problems, " | "))
	}
	return *best, nil
}

func endpointsOf(d *directory.Discovery) oauth.Endpoints {
	var e oauth.Endpoints
	if d == nil {
		return e
	}
	if s := d.Smart; s != nil {
		e = oauth.Endpoints{
			Issuer: s.Issuer, AuthorizeURL: s.AuthorizationEndpoint, TokenURL: s.TokenEndpoint,
			RevokeURL: s.RevocationEndpoint, IntrospectURL: s.IntrospectionEndpoint, JWKSURL: s.JWKSURI,
			ScopesSupported: s.Scopes, CodeChallengeMethods: s.CodeChallengeMethods,
			TokenAuthMethods: s.TokenEndpointAuthMethods, Capabilities: s.Capabilities,
			GrantTypes: s.GrantTypes, SigningAlgs: s.TokenEndpointAuthSigningAlgs,
			IssParameterSupported: s.IssParameterSupported,
		}
	}
	if c := d.Capability; c != nil && e.AuthorizeURL == "" {
		// SMART 1.0 servers: the CapabilityStatement's oauth-uris.
		e.AuthorizeURL, e.TokenURL = c.OAuthAuthorize, c.OAuthToken
	}
	return e
}

// softwareVendors maps words in a CapabilityStatement's software name to
// vendor keys (plugin names).
var softwareVendors = []struct{ word, vendor string }{
	{"epic", "epic"},
	{"cerner", "oraclehealth"}, {"millennium", "oraclehealth"}, {"oracle", "oraclehealth"}, {"oraclehealth", "oraclehealth"},
	{"athena", "athenahealth"},
	{"eclinicalworks", "eclinicalworks"}, {"ecw", "eclinicalworks"},
	{"bluebutton", "bluebutton"}, {"blue button", "bluebutton"},
}

func vendorFromSoftware(software string) string {
	s := strings.ToLower(software)
	for _, v := range softwareVendors {
		if strings.Contains(s, v.word) {
			return v.vendor
		}
	}
	return ""
}

// pickerDirectory is the directory as the patient picker sees it.
type pickerDirectory struct{ cat *directory.Catalog }

func sessionSource(e directory.Entry) sessions.Source {
	s := e.Source
	out := sessions.Source{ID: s.ID, Name: s.Name, Vendor: s.Vendor, Logo: s.Logo, Active: s.Status == directory.StatusActive}
	if len(s.Portals) > 0 {
		out.PortalName = s.Portals[0].Name
		if out.Logo == "" {
			out.Logo = s.Portals[0].Logo
		}
	}
	if len(s.Locations) > 0 {
		out.City, out.State = s.Locations[0].City, s.Locations[0].State
	}
	if len(e.Endpoints) > 0 {
		out.FHIRBase = e.Endpoints[0].URL
	}
	return out
}

func (p pickerDirectory) Source(ctx context.Context, id string) (sessions.Source, error) {
	e, err := p.cat.Get(ctx, id)
	if err != nil {
		return sessions.Source{}, err
	}
	return sessionSource(e), nil
}

func (p pickerDirectory) Search(ctx context.Context, q string, limit int) ([]sessions.Source, error) {
	res, err := p.cat.Search(ctx, directory.SearchParams{Query: q, ExcludeSuspended: true, Limit: limit})
	if err != nil {
		return nil, err
	}
	out := make([]sessions.Source, 0, len(res.Hits))
	for _, h := range res.Hits {
		out = append(out, sessionSource(h.Entry))
	}
	return out, nil
}

// credentialAdapter is the credential store as the authorizer sees it.
type credentialAdapter struct{ s *credentials.Store }

func (c credentialAdapter) Resolve(ctx context.Context, sourceID, vendor string) (authorize.Credential, error) {
	cred, auth, err := c.s.Resolve(ctx, sourceID, vendor)
	if errors.Is(err, credentials.ErrNotFound) {
		// One reason for "nothing is set up for this source", whichever
		// path asked.
		return authorize.Credential{}, fmt.Errorf("%w: source %s (vendor %q): set one with `medrelay credentials set`", authorize.ErrNoCredential, sourceID, vendor)
	}
	if err != nil {
		return authorize.Credential{}, err
	}
	return authorize.Credential{ID: cred.ID, ClientID: cred.ClientID, Auth: auth, Scopes: cred.Scopes}, nil
}

func (c credentialAdapter) ByID(ctx context.Context, id string) (authorize.Credential, error) {
	cred, auth, err := c.s.ByID(ctx, id)
	if err != nil {
		return authorize.Credential{}, err
	}
	return authorize.Credential{ID: cred.ID, ClientID: cred.ClientID, Auth: auth, Scopes: cred.Scopes}, nil
}

// genericPlugin serves every vendor without a plugin of its own.
const genericPlugin = "smart"

// pluginVendors finds the plugin of a vendor and its auth profile.
type pluginVendors struct{ host *pluginhost.Host }

// pluginFor returns the plugin serving vendor: the plugin named after it,
// else one whose Describe names it, else the generic SMART plugin.
func (p pluginVendors) pluginFor(vendor string) (pluginhost.Info, bool) {
	key := strings.ToLower(strings.ReplaceAll(vendor, " ", ""))
	var generic *pluginhost.Info
	for _, in := range p.host.List() {
		if in.Name == key || (in.Describe != nil && strings.EqualFold(in.Describe.GetVendor(), vendor)) {
			return in, true
		}
		if in.Name == genericPlugin {
			g := in
			generic = &g
		}
	}
	if generic != nil {
		return *generic, true
	}
	return pluginhost.Info{}, false
}

func (p pluginVendors) Vendor(ctx context.Context, vendor string) (authorize.Vendor, error) {
	in, ok := p.pluginFor(vendor)
	if !ok {
		// No plugins installed: authorize with SMART defaults; data calls
		// will fail with a clear "no plugin" error.
		return authorize.Vendor{Profile: oauth.Profile{EchoesOfflineAccess: true}}, nil
	}
	if in.Describe == nil {
		if err := p.host.WaitRunning(ctx, in.Name); err != nil {
			return authorize.Vendor{}, err
		}
		if in, ok = p.pluginFor(vendor); !ok || in.Describe == nil {
			return authorize.Vendor{}, fmt.Errorf("plugin %s has not described itself", in.Name)
		}
	}
	d := in.Describe
	return authorize.Vendor{Plugin: in.Name, Profile: oauth.ProfileFromPlugin(d.GetAuthProfile()), ResourceTypes: d.GetResourceTypes()}, nil
}

// VendorSetup gives the directory a vendor's setup requirements from its
// plugin's profile (directory.SetupProvider).
func (p pluginVendors) VendorSetup(ctx context.Context, vendor string) (directory.Setup, bool) {
	in, ok := p.pluginFor(vendor)
	if !ok || in.Describe == nil || in.Name == genericPlugin && !strings.EqualFold(vendor, genericPlugin) {
		return directory.Setup{}, false
	}
	prof := oauth.ProfileFromPlugin(in.Describe.GetAuthProfile())
	s := directory.Setup{ClientAuthMethods: prof.ClientAuthMethods, PKCERequired: prof.PKCERequired, ConfidentialRequired: prof.ConfidentialOnly, From: "plugin:" + in.Name}
	if prof.PKCERequired {
		s.PKCEMethods = []string{"S256"}
	}
	if prof.ScopesV2 {
		s.Scopes = prof.DefaultScopesV2
	} else {
		s.Scopes = prof.DefaultScopesV1
	}
	return s, true
}

// custody hands plugins access tokens from the connections' custody.
type custody struct{ conns *connections.Manager }

func (c custody) AccessToken(ctx context.Context, id string, rejected bool) (pluginhost.Token, error) {
	if c.conns == nil {
		return pluginhost.Token{}, errors.New("connections are not available")
	}
	tok, exp, err := c.conns.AccessToken(ctx, id, rejected)
	if err != nil {
		return pluginhost.Token{}, err
	}
	return pluginhost.Token{AccessToken: tok.Reveal(), TokenType: "Bearer", Expiry: exp}, nil
}

// liveSearch runs RecordService.SearchRecords: a FHIR search at the
// connection's source through its plugin, with the connection's patient.
type liveSearch struct {
	conns   *connections.Manager
	plugins *pluginhost.Host
}

func (l liveSearch) Search(ctx context.Context, id, typ string, params map[string]string, pageSize, maxPages int32,
	fn func(resources [][]byte, page int32, total int64) error) error {
	c, err := l.conns.Get(ctx, id)
	if err != nil {
		return err
	}
	if c.State != connections.Active {
		return fmt.Errorf("%w: %s is %s", connections.ErrNotUsable, id, c.State)
	}
	if !records.ValidType(typ) {
		return fmt.Errorf("%w: %q", ErrBadResourceType, typ)
	}
	req := &pluginv1.SearchRequest{
		Connection:   &pluginv1.Connection{Id: c.ID, FhirBaseUrl: c.FHIRBase, PatientId: c.PatientID, Settings: c.Settings},
		ResourceType: typ, PageSize: pageSize, MaxPages: maxPages,
	}
	keys := make([]string, 0, len(params))
	for k := range params {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		req.Params = append(req.Params, &pluginv1.SearchParam{Name: k, Value: params[k]})
	}
	if c.Pattern == connections.PatientAccess && c.PatientID != "" {
		// A patient connection reads its own patient's data only.
		if typ == "Patient" {
			req.Params = append(req.Params, &pluginv1.SearchParam{Name: "_id", Value: c.PatientID})
		} else if _, ok := params["patient"]; !ok {
			req.Params = append(req.Params, &pluginv1.SearchParam{Name: "patient", Value: c.PatientID})
		}
	}
	return l.plugins.Search(ctx, c.Plugin, req, func(r *pluginv1.SearchResponse) error {
		raw := make([][]byte, 0, len(r.GetResources()))
		for _, rs := range r.GetResources() {
			if rs.GetSearchMode() != "outcome" {
				raw = append(raw, rs.GetJson())
			}
		}
		return fn(raw, r.GetPage(), r.GetTotal())
	})
}

// ErrBadResourceType: not a FHIR resource type name.
var ErrBadResourceType = errdefs.Define(errdefs.InvalidArgument, "RESOURCE_TYPE_INVALID", "not a FHIR resource type")
