package api

import (
	"context"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	syncs "github.com/medrelay/medrelay/internal/sync"
	agentv1 "github.com/medrelay/medrelay/proto/gen/medrelay/agent/v1"
)

type syncService struct {
	agentv1.UnimplementedSyncServiceServer
	engine *syncs.Engine
}

var _ agentv1.SyncServiceServer = (*syncService)(nil)

var levelToProto = map[syncs.Level]agentv1.SyncLevel{
	syncs.System: agentv1.SyncLevel_SYNC_LEVEL_SYSTEM, syncs.Patient: agentv1.SyncLevel_SYNC_LEVEL_PATIENT, syncs.Group: agentv1.SyncLevel_SYNC_LEVEL_GROUP,
}

var syncStateToProto = map[syncs.State]agentv1.SyncState{
	syncs.Queued: agentv1.SyncState_SYNC_STATE_QUEUED, syncs.Running: agentv1.SyncState_SYNC_STATE_RUNNING,
	syncs.Completed: agentv1.SyncState_SYNC_STATE_COMPLETED, syncs.Failed: agentv1.SyncState_SYNC_STATE_FAILED,
	syncs.Cancelled: agentv1.SyncState_SYNC_STATE_CANCELLED,
}

var phaseToProto = map[syncs.Phase]agentv1.SyncPhase{
	syncs.PhaseKickoff: agentv1.SyncPhase_SYNC_PHASE_KICKOFF, syncs.PhaseExporting: agentv1.SyncPhase_SYNC_PHASE_EXPORTING,
	syncs.PhaseDownloading: agentv1.SyncPhase_SYNC_PHASE_DOWNLOADING, syncs.PhaseDone: agentv1.SyncPhase_SYNC_PHASE_DONE,
}

func syncProto(v syncs.View) *agentv1.Sync {
	t := v.Totals
	p := &agentv1.Sync{
		Id: v.ID, ConnectionId: v.ConnectionID, AppId: v.AppID, Level: levelToProto[v.Request.Level],
		GroupId: v.Request.GroupID, Types: v.Request.Types, TypeFilters: v.Request.TypeFilters, Since: ts(v.Request.Since),
		State: syncStateToProto[v.State], Phase: phaseToProto[v.Phase], ScheduleId: v.ScheduleID,
		CreatedAt: ts(v.CreatedAt), StartedAt: ts(v.StartedAt), FinishedAt: ts(v.FinishedAt),
		Progress: v.Progress, NextPollAt: ts(v.NextPollAt), Polls: int32(v.Polls), Kickoffs: int32(v.Kickoffs),
		FilesTotal: int32(t.FilesTotal), FilesDone: int32(t.FilesDone), Bytes: t.Bytes, Lines: t.Lines,
		Resources: t.Resources(), Written: t.Written, Unchanged: t.Unchanged, Stale: t.Stale, Deleted: t.Deleted,
		Malformed: t.Malformed, Errors: t.Errors, ErrorMessages: v.Errors, Rate: t.Rate, Error: v.Error, Waiting: v.Waiting,
	}
	if m := v.Manifest; m != nil {
		p.TransactionTime = ts(m.TransactionTime)
		p.RequiresAccessToken = m.RequiresAccessToken
	}
	for _, m := range v.Malformed {
		p.MalformedLines = append(p.MalformedLines, &agentv1.SyncMalformedLine{File: m.File, Line: m.Line, Reason: m.Reason})
	}
	for _, f := range v.Files {
		p.Files = append(p.Files, &agentv1.SyncFile{Kind: f.Kind, Type: f.Type, Url: f.URL, Count: f.Count,
			Bytes: f.Offset, Lines: f.Line, Resources: f.Written + f.Unchanged + f.Stale + f.Deleted + f.Errors, Done: f.Done})
	}
	return p
}

func scheduleProto(s *syncs.Schedule) *agentv1.SyncSchedule {
	if s == nil {
		return nil
	}
	return &agentv1.SyncSchedule{
		Id: s.ID, ConnectionId: s.ConnectionID, Every: durationpb.New(s.Every), NextAt: ts(s.NextAt), LastSyncId: s.LastSyncID,
		Level: levelToProto[s.Request.Level], GroupId: s.Request.GroupID, Types: s.Request.Types, TypeFilters: s.Request.TypeFilters,
	}
}

func (s *syncService) StartSync(ctx context.Context, req *agentv1.StartSyncRequest) (*agentv1.StartSyncResponse, error) {
	r := syncs.StartRequest{ConnectionID: req.GetConnectionId(), Full: req.GetFull(), Every: req.GetEvery().AsDuration(),
		Request: syncs.Request{GroupID: req.GetGroupId(), Types: req.GetTypes(), TypeFilters: req.GetTypeFilters()}}
	for l, pl := range levelToProto {
		if pl == req.GetLevel() {
			r.Level = l
		}
	}
	if req.GetSince() != nil {
		r.Since = req.GetSince().AsTime()
	}
	v, sched, err := s.engine.Start(ctx, appScope(ctx), r)
	if err != nil {
		return nil, err
	}
	return &agentv1.StartSyncResponse{Sync: syncProto(v), Schedule: scheduleProto(sched)}, nil
}

func (s *syncService) GetSync(ctx context.Context, req *agentv1.GetSyncRequest) (*agentv1.GetSyncResponse, error) {
	v, err := s.engine.Get(ctx, appScope(ctx), req.GetSyncId(), req.GetFiles())
	if err != nil {
		return nil, err
	}
	return &agentv1.GetSyncResponse{Sync: syncProto(v)}, nil
}

func (s *syncService) ListSyncs(ctx context.Context, req *agentv1.ListSyncsRequest) (*agentv1.ListSyncsResponse, error) {
	after, err := decodePageToken(req.GetPageToken())
	if err != nil {
		return nil, err
	}
	f := syncs.ListFilter{AppID: appScope(ctx), ConnectionID: req.GetConnectionId()}
	for _, st := range req.GetStates() {
		for k, v := range syncStateToProto {
			if v == st {
				f.States = append(f.States, k)
			}
		}
	}
	list, next, err := s.engine.List(ctx, f, int(req.GetPageSize()), after)
	if err != nil {
		return nil, err
	}
	resp := &agentv1.ListSyncsResponse{NextPageToken: encodePageToken(next)}
	for _, v := range list {
		resp.Syncs = append(resp.Syncs, syncProto(v))
	}
	if after == "" {
		scheds, err := s.engine.Schedules(ctx, appScope(ctx), req.GetConnectionId())
		if err != nil {
			return nil, err
		}
		for i := range scheds {
			resp.Schedules = append(resp.Schedules, scheduleProto(&scheds[i]))
		}
	}
	return resp, nil
}

func (s *syncService) CancelSync(ctx context.Context, req *agentv1.CancelSyncRequest) (*agentv1.CancelSyncResponse, error) {
	v, sched, err := s.engine.Cancel(ctx, appScope(ctx), req.GetSyncId(), req.GetScheduleId())
	if err != nil {
		return nil, err
	}
	resp := &agentv1.CancelSyncResponse{Schedule: scheduleProto(sched)}
	if v != nil {
		resp.Sync = syncProto(*v)
	}
	return resp, nil
}

// watchInterval is how often WatchSync reports a running sync's progress.
const watchInterval = time.Second

func (s *syncService) WatchSync(req *agentv1.WatchSyncRequest, stream agentv1.SyncService_WatchSyncServer) error {
	ctx := stream.Context()
	app := appScope(ctx)
	var last *agentv1.Sync
	tick := time.NewTicker(watchInterval)
	defer tick.Stop()
	lastSent := time.Time{}
	for {
		changed := s.engine.Changed()
		v, err := s.engine.Get(ctx, app, req.GetSyncId(), false)
		if err != nil {
			return err
		}
		p := syncProto(v)
		// Progress counters move continuously: send a change of state or
		// phase at once, counters at most once per interval.
		stateChanged := last == nil || last.GetState() != p.GetState() || last.GetPhase() != p.GetPhase()
		if stateChanged || time.Since(lastSent) >= watchInterval && !proto.Equal(last, p) {
			if err := stream.Send(&agentv1.WatchSyncResponse{Sync: p}); err != nil {
				return err
			}
			last, lastSent = p, time.Now()
		}
		if v.State.Terminal() {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(50 * time.Millisecond):
			}
		case <-tick.C:
		}
	}
}
