package api

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sort"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/medrelay/medrelay/internal/directory"
	"github.com/medrelay/medrelay/internal/errdefs"
	agentv1 "github.com/medrelay/medrelay/proto/gen/medrelay/agent/v1"
)

type directoryService struct {
	agentv1.UnimplementedDirectoryServiceServer
	dir *directory.Catalog
}

var _ agentv1.DirectoryServiceServer = (*directoryService)(nil)

// ErrImportProtocol: the import stream's messages came out of order.
var ErrImportProtocol = errdefs.Define(errdefs.InvalidArgument, "IMPORT_PROTOCOL", "the first message must be start (url or file_name), then only chunks")

func (s *directoryService) Search(ctx context.Context, req *agentv1.DirectoryServiceSearchRequest) (*agentv1.DirectoryServiceSearchResponse, error) {
	cursor, err := decodePageToken(req.GetPageToken())
	if err != nil {
		return nil, err
	}
	res, err := s.dir.Search(ctx, directory.SearchParams{
		Query: req.GetQuery(), Vendor: req.GetVendor(), Kind: req.GetKind(), State: req.GetState(),
		PostalPrefix: req.GetPostalCodePrefix(), ExcludeSuspended: req.GetExcludeSuspended(),
		Limit: int(req.GetPageSize()), Cursor: cursor,
	})
	if err != nil {
		return nil, err
	}
	resp := &agentv1.DirectoryServiceSearchResponse{NextPageToken: encodePageToken(res.Next)}
	for _, h := range res.Hits {
		resp.Results = append(resp.Results, &agentv1.SearchResult{Source: sourceProto(h.Entry), Score: h.Score, MatchedWords: int32(h.Matched)})
	}
	return resp, nil
}

func (s *directoryService) Get(ctx context.Context, req *agentv1.DirectoryServiceGetRequest) (*agentv1.DirectoryServiceGetResponse, error) {
	e, err := s.dir.Get(ctx, req.GetId())
	if err != nil {
		return nil, err
	}
	return &agentv1.DirectoryServiceGetResponse{Source: sourceProto(e)}, nil
}

func (s *directoryService) Discover(ctx context.Context, req *agentv1.DirectoryServiceDiscoverRequest) (*agentv1.DirectoryServiceDiscoverResponse, error) {
	e, err := s.dir.Discover(ctx, req.GetId(), req.GetForce())
	if err != nil {
		return nil, err
	}
	return &agentv1.DirectoryServiceDiscoverResponse{Source: sourceProto(e)}, nil
}

// maxChunk bounds one chunk of an uploaded list.
const maxChunk = 1 << 20

func (s *directoryService) Import(stream agentv1.DirectoryService_ImportServer) error {
	ctx := stream.Context()
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	start := first.GetStart()
	if start == nil || (start.GetUrl() == "") == (start.GetFileName() == "") {
		return fmt.Errorf("%w: give either url or file_name", ErrImportProtocol)
	}
	// The catalog reports progress on this goroutine, every few hundred
	// rows, so these sends never race the summary's.
	send := func(p directory.ImportProgress) {
		_ = stream.Send(&agentv1.DirectoryServiceImportResponse{Part: &agentv1.DirectoryServiceImportResponse_Progress{
			Progress: &agentv1.ImportProgress{Phase: p.Phase, Done: p.Done, Total: p.Total}}})
	}
	opts := directory.ImportOptions{ListID: start.GetListId(), FileName: start.GetFileName(), Format: start.GetFormat(), DryRun: start.GetDryRun()}
	var sum *directory.Summary
	if start.GetUrl() != "" {
		sum, err = s.dir.ImportURL(ctx, start.GetUrl(), opts, send)
	} else {
		var buf bytes.Buffer
		if n := start.GetSize(); n > 0 && n <= directory.MaxFetchBytes {
			buf.Grow(int(n))
		}
		for {
			msg, rerr := stream.Recv()
			if errors.Is(rerr, io.EOF) {
				break
			}
			if rerr != nil {
				return rerr
			}
			chunk := msg.GetChunk()
			if msg.GetStart() != nil || len(chunk) > maxChunk {
				return fmt.Errorf("%w", ErrImportProtocol)
			}
			if buf.Len()+len(chunk) > directory.MaxFetchBytes {
				return fmt.Errorf("%w: more than %d bytes", directory.ErrImportTooLarge, directory.MaxFetchBytes)
			}
			buf.Write(chunk)
			send(directory.ImportProgress{Phase: "receive", Done: int64(buf.Len()), Total: start.GetSize()})
		}
		opts.Origin = "upload"
		sum, err = s.dir.Import(ctx, buf.Bytes(), opts, send)
	}
	if err != nil {
		return err
	}
	return stream.Send(&agentv1.DirectoryServiceImportResponse{Part: &agentv1.DirectoryServiceImportResponse_Summary{Summary: summaryProto(sum)}})
}

func summaryProto(s *directory.Summary) *agentv1.ImportSummary {
	p := &agentv1.ImportSummary{
		ListId: s.ListID, Format: s.Format, Title: s.Title, Rows: int64(s.Rows), Entries: int64(s.Entries),
		Created: int64(s.Created), Updated: int64(s.Updated), Unchanged: int64(s.Unchanged), Reactivated: int64(s.Reactivated),
		Suspended: int64(s.Suspended), Duplicates: int64(s.Duplicates), Skipped: int64(s.Skipped), RejectedCount: int64(s.RejectedCount),
		ByVendor: map[string]int64{}, ByKind: map[string]int64{}, Endpoints: int64(s.Endpoints), Notes: s.Notes, Setups: s.Setups,
		NotModified: s.NotModified, DryRun: s.DryRun, Duration: durationpb.New(s.Duration),
	}
	for k, v := range s.ByVendor {
		p.ByVendor[k] = int64(v)
	}
	for k, v := range s.ByKind {
		p.ByKind[k] = int64(v)
	}
	for _, r := range s.Rejected {
		p.Rejected = append(p.Rejected, &agentv1.RejectedRow{Row: int64(r.Row), Ref: r.Ref, Name: r.Name, Reason: r.Reason})
	}
	return p
}

var kindProtos = map[directory.Kind]agentv1.SourceKind{
	directory.KindEHR: agentv1.SourceKind_SOURCE_KIND_EHR, directory.KindPayer: agentv1.SourceKind_SOURCE_KIND_PAYER,
	directory.KindNetwork: agentv1.SourceKind_SOURCE_KIND_NETWORK, directory.KindLab: agentv1.SourceKind_SOURCE_KIND_LAB,
	directory.KindPharmacy: agentv1.SourceKind_SOURCE_KIND_PHARMACY, directory.KindImaging: agentv1.SourceKind_SOURCE_KIND_IMAGING,
}

func sourceProto(e directory.Entry) *agentv1.Source {
	s := e.Source
	p := &agentv1.Source{
		Id: s.ID, Name: s.Name, Aliases: s.Aliases, Vendor: s.Vendor, VendorName: directory.VendorName(s.Vendor),
		Kind: kindProtos[s.Kind], Sandbox: s.Sandbox, Logo: s.Logo, Categories: s.Categories, Lists: s.Lists,
		Origin: s.Origin, UpdatedAt: timestamppb.New(s.UpdatedAt),
		Identifiers: &agentv1.Identifiers{Npi: s.Identifiers.NPI, Oid: s.Identifiers.OID, Website: s.Identifiers.Website},
	}
	switch s.Status {
	case directory.StatusActive:
		p.Status = agentv1.SourceStatus_SOURCE_STATUS_ACTIVE
	case directory.StatusSuspended:
		p.Status = agentv1.SourceStatus_SOURCE_STATUS_SUSPENDED
	}
	for _, pt := range s.Portals {
		p.Portals = append(p.Portals, &agentv1.Portal{Name: pt.Name, Url: pt.URL, Description: pt.Description, Logo: pt.Logo, EndpointIds: pt.Endpoints})
	}
	if len(s.Portals) > 0 {
		p.PortalName, p.PortalUrl = s.Portals[0].Name, s.Portals[0].URL
	}
	eps := append([]directory.EndpointEntry(nil), e.Endpoints...)
	// Primary first: patient-facing R4 before the rest, the list's order
	// otherwise.
	sort.SliceStable(eps, func(i, j int) bool { return endpointRank(eps[i]) < endpointRank(eps[j]) })
	for _, ep := range eps {
		pe := &agentv1.Endpoint{Id: ep.ID, Url: ep.URL, FhirVersion: ep.FHIRVersion, Audience: ep.Audience, Vendor: ep.Vendor, Name: ep.Name}
		if d := ep.Discovery; d != nil {
			pe.Discovery = discoveryProto(d)
		}
		p.Endpoints = append(p.Endpoints, pe)
	}
	if len(p.Endpoints) > 0 {
		p.FhirBaseUrl, p.FhirVersion = p.Endpoints[0].Url, p.Endpoints[0].FhirVersion
	}
	for _, l := range s.Locations {
		p.Locations = append(p.Locations, &agentv1.Location{Line: l.Line, City: l.City, State: l.State, PostalCode: l.PostalCode, Country: l.Country})
	}
	if st := e.Setup; st != nil {
		p.Setup = &agentv1.SetupRequirements{
			ClientAuthMethods: st.ClientAuthMethods, PkceMethods: st.PKCEMethods, PkceRequired: st.PKCERequired,
			ConfidentialRequired: st.ConfidentialRequired, DynamicRegistration: st.DynamicRegistration, Scopes: st.Scopes,
			RegistrationUrl: st.RegistrationURL, Documentation: st.Documentation, Notes: st.Notes, From: st.From,
		}
	}
	return p
}

func endpointRank(e directory.EndpointEntry) int {
	r := 0
	if e.Audience == directory.AudienceProvider {
		r += 2
	}
	if e.FHIRVersion != "" && e.FHIRVersion[0] != '4' {
		r++
	}
	return r
}

func discoveryProto(d *directory.Discovery) *agentv1.Discovery {
	p := &agentv1.Discovery{
		FetchedAt: timestamppb.New(d.FetchedAt), ExpiresAt: timestamppb.New(d.ExpiresAt), Status: d.Status,
		Problems: d.Problems, SmartEtag: d.SmartETag, MetadataEtag: d.MetaETag,
	}
	if c := d.Smart; c != nil {
		p.Smart = &agentv1.SmartConfiguration{
			Issuer: c.Issuer, JwksUri: c.JWKSURI, AuthorizationEndpoint: c.AuthorizationEndpoint, TokenEndpoint: c.TokenEndpoint,
			RegistrationEndpoint: c.RegistrationEndpoint, RevocationEndpoint: c.RevocationEndpoint,
			IntrospectionEndpoint: c.IntrospectionEndpoint, ManagementEndpoint: c.ManagementEndpoint,
			GrantTypesSupported: c.GrantTypes, ScopesSupported: c.Scopes, ResponseTypesSupported: c.ResponseTypes,
			Capabilities: c.Capabilities, CodeChallengeMethodsSupported: c.CodeChallengeMethods,
			TokenEndpointAuthMethodsSupported: c.TokenEndpointAuthMethods, TokenEndpointAuthSigningAlgValuesSupported: c.TokenEndpointAuthSigningAlgs,
			UserAccessBrandBundle: c.UserAccessBrandBundle,
		}
	}
	if c := d.Capability; c != nil {
		p.Capability = &agentv1.CapabilitySummary{
			FhirVersion: c.FHIRVersion, Software: c.Software, SoftwareVersion: c.SoftwareVersion, Formats: c.Formats,
			Resources: c.Resources, Security: c.Security, OauthAuthorize: c.OAuthAuthorize, OauthToken: c.OAuthToken,
		}
	}
	return p
}
