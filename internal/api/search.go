package api

import (
	"context"

	"github.com/medrelay/medrelay/internal/errdefs"
	"github.com/medrelay/medrelay/internal/records"
	agentv1 "github.com/medrelay/medrelay/proto/gen/medrelay/agent/v1"
)

var errLiveUnavailable = errdefs.Define(errdefs.Unavailable, "LIVE_SEARCH_UNAVAILABLE", "live search is not available in this agent")

// LiveSearch runs a FHIR search at a connection's source through its
// plugin; fn receives each page's resources (raw JSON).
type LiveSearch interface {
	Search(ctx context.Context, connectionID, resourceType string, params map[string]string, pageSize, maxPages int32,
		fn func(resources [][]byte, page int32, total int64) error) error
}

func (s *recordService) SearchRecords(req *agentv1.SearchRecordsRequest, stream agentv1.RecordService_SearchRecordsServer) error {
	ctx := stream.Context()
	if err := s.access(ctx, req.GetConnectionId()); err != nil {
		return err
	}
	if s.live == nil {
		return errLiveUnavailable
	}
	return s.live.Search(ctx, req.GetConnectionId(), req.GetResourceType(), req.GetParams(), req.GetPageSize(), req.GetMaxPages(),
		func(resources [][]byte, page int32, total int64) error {
			resp := &agentv1.SearchRecordsResponse{Page: page, Total: total}
			for _, raw := range resources {
				h, err := records.ScanHeader(raw)
				if err != nil {
					continue // the plugin checked it; a resource we cannot key is skipped
				}
				r := recordProto(&records.Record{Type: h.Type, ID: h.ID, VersionID: h.VersionID, LastUpdated: h.LastUpdated, JSON: raw})
				r.Cursor = "" // live results are not in the change index
				resp.Records = append(resp.Records, r)
			}
			return stream.Send(resp)
		})
}
