package api

import (
	"context"
	"fmt"
	"unsafe"

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
	p := &agentv1.Record{}
	fillRecord(p, r, nil)
	return p
}

// fillRecord sets p from r; ts (may be nil) is where its timestamp goes.
func fillRecord(p *agentv1.Record, r *records.Record, ts *timestamppb.Timestamp) {
	p.ResourceType, p.Id, p.VersionId, p.Deleted = r.Type, r.ID, r.VersionID, r.Deleted
	p.Json = r.JSON
	if p.Cursor == "" {
		p.Cursor = r.Cursor()
	}
	if !r.LastUpdated.IsZero() {
		if ts == nil {
			ts = &timestamppb.Timestamp{}
		}
		ts.Seconds, ts.Nanos = r.LastUpdated.Unix(), int32(r.LastUpdated.Nanosecond())
		p.LastUpdated = ts
	}
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
	// Reuse: each message is encoded by stream.Send before it returns.
	q := records.Query{Types: req.GetTypes(), After: after, Limit: int(req.GetLimit()),
		PageRecords: max(page, storeReadRecords), PageBytes: storeReadBytes, Reuse: true}
	sent := false
	send := func(rs []records.Record, cursor uint64) error {
		msg := &agentv1.ListRecordsResponse{Cursor: records.FormatCursor(cursor), Records: make([]*agentv1.Record, len(rs))}
		// A message's records and timestamps in two allocations, not
		// two per record: a large list is mostly this loop.
		recs, stamps := make([]agentv1.Record, len(rs)), make([]timestamppb.Timestamp, len(rs))
		cursors := make([]byte, 0, 20*len(rs)) // never grows: its strings alias it
		for i := range rs {
			at := len(cursors)
			if cursors = records.AppendCursor(cursors, rs[i].Seq); len(cursors) > at {
				recs[i].Cursor = unsafe.String(&cursors[at], len(cursors)-at)
			}
			fillRecord(&recs[i], &rs[i], &stamps[i])
			msg.Records[i] = &recs[i]
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
