package api

import (
	"context"
	"fmt"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/medrelay/medrelay/internal/connections"
	"github.com/medrelay/medrelay/internal/errdefs"
	"github.com/medrelay/medrelay/internal/records"
	agentv1 "github.com/medrelay/medrelay/proto/gen/medrelay/agent/v1"
)

// RecordOwner decides who may read a connection's records. appID "" is an
// administrator, who may read every connection. It returns the connection's
// patient (for the audit entry) or an error: a connection of another app
// must look like one that does not exist.
type RecordOwner interface {
	CheckAccess(ctx context.Context, appID, connectionID string) (patientRef string, err error)
}

// ConnectionOwner answers RecordOwner from the connections component: an
// app owns the connections its sessions created.
func ConnectionOwner(m *connections.Manager) RecordOwner { return connectionOwner{m} }

type connectionOwner struct{ m *connections.Manager }

func (o connectionOwner) CheckAccess(ctx context.Context, appID, id string) (string, error) {
	c, err := o.m.GetForApp(ctx, appID, id)
	if err != nil {
		return "", err
	}
	return c.PatientRef, nil
}

// Errors of RecordService.
var (
	ErrNoOwnerCheck = errdefs.Define(errdefs.Unavailable, "CONNECTIONS_UNAVAILABLE", "connection ownership cannot be checked: the connections component is not running")
	ErrBadLimit     = errdefs.Define(errdefs.InvalidArgument, "LIMIT_INVALID", "limit must not be negative")
)

const (
	defaultRecordPage = 500
	maxRecordPage     = 5000
	// messageBytes cuts a message at about this much JSON (a single
	// larger resource goes alone).
	messageBytes = 1 << 20
	// One read of the store: records and bytes.
	storeReadRecords = 4096
	storeReadBytes   = 4 << 20
)

type recordService struct {
	agentv1.UnimplementedRecordServiceServer
	records *records.Store
	owner   RecordOwner
	live    LiveSearch
}

var _ agentv1.RecordServiceServer = (*recordService)(nil)

// access checks that the caller may read conn and names the connection's
// patient in the call's audit entry.
func (s *recordService) access(ctx context.Context, conn string) error {
	if conn == "" {
		return fmt.Errorf("%w: connection_id is required", records.ErrBadConnection)
	}
	app := appScope(ctx)
	if s.owner == nil {
		if app != "" {
			return ErrNoOwnerCheck
		}
		return nil
	}
	ref, err := s.owner.CheckAccess(ctx, app, conn)
	if err != nil {
		return err
	}
	NoteAuditPatient(ctx, ref)
	return nil
}

func recordProto(r *records.Record) *agentv1.Record {
	p := &agentv1.Record{
		ResourceType: r.Type, Id: r.ID, VersionId: r.VersionID, Deleted: r.Deleted,
		Json: r.JSON, Cursor: r.Cursor(),
	}
	if !r.LastUpdated.IsZero() {
		p.LastUpdated = timestamppb.New(r.LastUpdated)
	}
	return p
}

func (s *recordService) ListRecords(req *agentv1.ListRecordsRequest, stream agentv1.RecordService_ListRecordsServer) error {
	ctx := stream.Context()
	after, err := records.ParseCursor(req.GetSinceCursor())
	if err != nil {
		return err
	}
	if req.GetLimit() < 0 {
		return ErrBadLimit
	}
	if err := s.access(ctx, req.GetConnectionId()); err != nil {
		return err
	}
	page := int(req.GetPageSize())
	if page <= 0 {
		page = defaultRecordPage
	}
	page = min(page, maxRecordPage)
	// The store is read in large pages (fewer read transactions and
	// iterators), sent in messages of the caller's page size.
	q := records.Query{Types: req.GetTypes(), After: after, Limit: int(req.GetLimit()),
		PageRecords: max(page, storeReadRecords), PageBytes: storeReadBytes}
	sent := false
	send := func(rs []records.Record, cursor uint64) error {
		msg := &agentv1.ListRecordsResponse{Cursor: records.FormatCursor(cursor), Records: make([]*agentv1.Record, len(rs))}
		for i := range rs {
			msg.Records[i] = recordProto(&rs[i])
		}
		sent = true
		return stream.Send(msg)
	}
	cursor, err := s.records.List(ctx, req.GetConnectionId(), q, func(rs []records.Record, cursor uint64) error {
		if len(rs) == 0 {
			return send(nil, cursor) // only superseded entries were passed over
		}
		for len(rs) > 0 {
			n, size := 0, 0
			for n < len(rs) && n < page && (n == 0 || size+len(rs[n].JSON) <= messageBytes) {
				size += len(rs[n].JSON)
				n++
			}
			c := cursor
			if n < len(rs) {
				c = rs[n-1].Seq
			}
			if err := send(rs[:n], c); err != nil {
				return err
			}
			rs = rs[n:]
		}
		return nil
	})
	if err != nil {
		return err
	}
	if !sent {
		// Nothing changed: still tell the caller where it stands.
		return stream.Send(&agentv1.ListRecordsResponse{Cursor: records.FormatCursor(cursor)})
	}
	return nil
}

func (s *recordService) GetRecord(ctx context.Context, req *agentv1.GetRecordRequest) (*agentv1.GetRecordResponse, error) {
	if err := s.access(ctx, req.GetConnectionId()); err != nil {
		return nil, err
	}
	r, err := s.records.Get(ctx, req.GetConnectionId(), req.GetResourceType(), req.GetId())
	if err != nil {
		return nil, err
	}
	return &agentv1.GetRecordResponse{Record: recordProto(&r)}, nil
}
