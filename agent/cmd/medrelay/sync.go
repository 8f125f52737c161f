package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/medrelay/medrelay/agent/client"
	agentv1 "github.com/medrelay/medrelay/proto/gen/medrelay/agent/v1"
)

func syncCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "sync",
		Short: "Sync backend connections with FHIR Bulk Data",
		Long: "Sync a backend connection's data into the agent's store with FHIR Bulk Data ($export).\n" +
			"Syncs run in the agent and survive restarts; each sync after the first asks only for what\n" +
			"changed since the previous one. Read the synced records with `medrelay records list` or\n" +
			"write them to files with `medrelay sync export`.",
	}
	cmd.AddCommand(syncStartCmd(g), syncStatusCmd(g), syncListCmd(g), syncCancelCmd(g), syncWatchCmd(g), syncExportCmd(g))
	return cmd
}

var levels = map[string]agentv1.SyncLevel{
	"system": agentv1.SyncLevel_SYNC_LEVEL_SYSTEM, "patient": agentv1.SyncLevel_SYNC_LEVEL_PATIENT, "group": agentv1.SyncLevel_SYNC_LEVEL_GROUP,
}

func syncStartCmd(g *globals) *cobra.Command {
	var level, group, since string
	var types, filters []string
	var full, wait bool
	var every time.Duration
	cmd := &cobra.Command{
		Use:   "start CONNECTION",
		Short: "Start a sync of a backend connection",
		Long: "Start a Bulk Data sync of a backend connection. Without --since the sync asks for what changed\n" +
			"since the last completed sync of the same scope (level, group, types, filters); the first\n" +
			"exports everything. --every keeps the connection current: the agent syncs again that long\n" +
			"after each sync ends.",
		Example: "  medrelay sync start conn_123 --wait\n" +
			"  medrelay sync start conn_123 --group diabetes-cohort --type Patient,Observation,Condition\n" +
			"  medrelay sync start conn_123 --type-filter 'Observation?category=laboratory' --every 6h",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := &agentv1.StartSyncRequest{ConnectionId: args[0], GroupId: group, Types: splitList(types), TypeFilters: filters, Full: full}
			if level != "" {
				l, ok := levels[strings.ToLower(level)]
				if !ok {
					return fmt.Errorf("--level %q: want system, patient or group", level)
				}
				req.Level = l
			}
			if since != "" {
				t, err := parseSince(since, time.Now())
				if err != nil {
					return err
				}
				req.Since = timestamppb.New(t)
			}
			if every > 0 {
				req.Every = durationpb.New(every)
			}
			return g.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.Sync.StartSync(ctx, req)
				if err != nil {
					return err
				}
				s := resp.GetSync()
				if g.json && !wait {
					return printJSON(cmd, resp)
				}
				if !g.json {
					what := "everything"
					if s.GetSince() != nil {
						what = "changes since " + s.GetSince().AsTime().Local().Format(time.RFC3339)
					}
					fmt.Fprintf(cmd.OutOrStdout(), "Sync %s queued (%s export, %s).\n", s.GetId(), levelName(s.GetLevel()), what)
					if sc := resp.GetSchedule(); sc != nil {
						fmt.Fprintf(cmd.OutOrStdout(), "Schedule %s: again %s after each sync ends.\n", sc.GetId(), sc.GetEvery().AsDuration())
					}
				}
				if !wait {
					if !g.json {
						fmt.Fprintf(cmd.OutOrStdout(), "Follow it with: medrelay sync watch %s\n", s.GetId())
					}
					return nil
				}
				return watchSync(cmd, g, c, s.GetId())
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&level, "level", "", "system, patient or group (default: group with --group, else system)")
	f.StringVar(&group, "group", "", "export this Group's patients")
	f.StringSliceVar(&types, "type", nil, "only these resource types (comma-separated or repeated)")
	f.StringArrayVar(&filters, "type-filter", nil, "a _typeFilter, e.g. 'Observation?category=laboratory' (repeatable)")
	f.StringVar(&since, "since", "", "only resources changed since (RFC 3339, a date, or a duration ago)")
	f.BoolVar(&full, "full", false, "export everything, not only what changed since the last sync")
	f.DurationVar(&every, "every", 0, "sync again this long after each sync ends (e.g. 6h)")
	f.BoolVar(&wait, "wait", false, "follow the sync until it ends (exit status 1 if it fails)")
	return cmd
}

func levelName(l agentv1.SyncLevel) string {
	return strings.ToLower(strings.TrimPrefix(l.String(), "SYNC_LEVEL_"))
}

func syncStateName(s agentv1.SyncState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "SYNC_STATE_"))
}

func phaseName(p agentv1.SyncPhase) string {
	return strings.ToLower(strings.TrimPrefix(p.String(), "SYNC_PHASE_"))
}

func syncStatusCmd(g *globals) *cobra.Command {
	var files bool
	cmd := &cobra.Command{
		Use:   "status SYNC",
		Short: "Show a sync and its progress",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.Sync.GetSync(ctx, &agentv1.GetSyncRequest{SyncId: args[0], Files: files})
				if err != nil {
					return err
				}
				return g.printResult(cmd, resp, func(out io.Writer) error {
					printSync(out, resp.GetSync())
					return nil
				})
			})
		},
	}
	cmd.Flags().BoolVar(&files, "files", false, "show each file's progress")
	return cmd
}

func printSync(w io.Writer, s *agentv1.Sync) {
	kv := func(k, v string) {
		if v != "" {
			fmt.Fprintf(w, "  %-16s %s\n", k+":", v)
		}
	}
	fmt.Fprintf(w, "Sync %s: %s", s.GetId(), syncStateName(s.GetState()))
	if s.GetState() == agentv1.SyncState_SYNC_STATE_RUNNING {
		fmt.Fprintf(w, " (%s)", phaseName(s.GetPhase()))
	}
	fmt.Fprintln(w)
	kv("connection", s.GetConnectionId())
	scope := levelName(s.GetLevel())
	if s.GetGroupId() != "" {
		scope += " " + s.GetGroupId()
	}
	if len(s.GetTypes()) > 0 {
		scope += ", types " + strings.Join(s.GetTypes(), ",")
	}
	if len(s.GetTypeFilters()) > 0 {
		scope += ", filters " + strings.Join(s.GetTypeFilters(), " ")
	}
	kv("export", scope)
	if s.GetSince() != nil {
		kv("since", s.GetSince().AsTime().Local().Format(time.RFC3339))
	}
	kv("schedule", s.GetScheduleId())
	kv("created", ago(s.GetCreatedAt()))
	kv("finished", ago(s.GetFinishedAt()))
	if s.GetPhase() == agentv1.SyncPhase_SYNC_PHASE_EXPORTING {
		kv("source says", s.GetProgress())
		if s.GetNextPollAt() != nil {
			kv("next poll", s.GetNextPollAt().AsTime().Local().Format(time.TimeOnly))
		}
	}
	kv("waiting", s.GetWaiting())
	if s.GetKickoffs() > 1 {
		kv("exports started", fmt.Sprint(s.GetKickoffs()))
	}
	if s.GetFilesTotal() > 0 {
		kv("files", fmt.Sprintf("%d of %d stored (%s)", s.GetFilesDone(), s.GetFilesTotal(), bytesHuman(s.GetBytes())))
		kv("resources", fmt.Sprintf("%d (%d new or changed, %d unchanged, %d older than stored)", s.GetResources(), s.GetWritten(), s.GetUnchanged(), s.GetStale()))
		if s.GetRate() > 0 {
			kv("rate", fmt.Sprintf("%.0f resources/s", s.GetRate()))
		}
	}
	if s.GetDeleted() > 0 {
		kv("deleted", fmt.Sprintf("%d tombstones", s.GetDeleted()))
	}
	if s.GetTransactionTime() != nil {
		kv("transaction", s.GetTransactionTime().AsTime().Local().Format(time.RFC3339))
	}
	if s.GetMalformed() > 0 {
		kv("malformed", fmt.Sprintf("%d lines skipped", s.GetMalformed()))
		for _, m := range s.GetMalformedLines() {
			fmt.Fprintf(w, "    %s line %d: %s\n", m.GetFile(), m.GetLine(), m.GetReason())
		}
	}
	if s.GetErrors() > 0 {
		kv("source errors", fmt.Sprintf("%d in the export's error files", s.GetErrors()))
		for _, m := range s.GetErrorMessages() {
			fmt.Fprintf(w, "    %s\n", m)
		}
	}
	kv("error", s.GetError())
	if len(s.GetFiles()) > 0 {
		fmt.Fprintln(w)
		t := newTable(w, "KIND", "TYPE", "DONE", "LINES", "BYTES", "FILE")
		for _, f := range s.GetFiles() {
			done := "no"
			if f.GetDone() {
				done = "yes"
			}
			t.row(f.GetKind(), f.GetType(), done, fmt.Sprint(f.GetLines()), bytesHuman(f.GetBytes()), filepath.Base(f.GetUrl()))
		}
		_ = t.flush()
	}
}

func syncListCmd(g *globals) *cobra.Command {
	var conn string
	var states []string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List syncs (newest first) and schedules",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := &agentv1.ListSyncsRequest{ConnectionId: conn, PageSize: 200}
			for _, s := range splitList(states) {
				v, ok := agentv1.SyncState_value["SYNC_STATE_"+strings.ToUpper(s)]
				if !ok {
					return fmt.Errorf("--state %q: want queued, running, completed, failed or cancelled", s)
				}
				req.States = append(req.States, agentv1.SyncState(v))
			}
			return g.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.Sync.ListSyncs(ctx, req)
				if err != nil {
					return err
				}
				return g.printResult(cmd, resp, func(out io.Writer) error { return printSyncList(out, resp) })
			})
		},
	}
	cmd.Flags().StringVar(&conn, "connection", "", "only this connection's syncs")
	cmd.Flags().StringSliceVar(&states, "state", nil, "only these states")
	return cmd
}

// printSyncList shows syncs, newest first, and the schedules.
func printSyncList(out io.Writer, resp *agentv1.ListSyncsResponse) error {
	t := newTable(out, "ID", "STATE", "CONNECTION", "EXPORT", "RESOURCES", "FILES", "CREATED", "ERROR")
	for _, s := range resp.GetSyncs() {
		state := syncStateName(s.GetState())
		if s.GetState() == agentv1.SyncState_SYNC_STATE_RUNNING {
			state += "/" + phaseName(s.GetPhase())
		}
		t.row(s.GetId(), state, s.GetConnectionId(), levelName(s.GetLevel()), fmt.Sprint(s.GetResources()),
			fmt.Sprintf("%d/%d", s.GetFilesDone(), s.GetFilesTotal()), ago(s.GetCreatedAt()), s.GetError())
	}
	if err := t.flush(); err != nil {
		return err
	}
	if len(resp.GetSchedules()) > 0 {
		fmt.Fprintln(out)
		t := newTable(out, "SCHEDULE", "CONNECTION", "EVERY", "NEXT", "LAST SYNC")
		for _, s := range resp.GetSchedules() {
			next := "after the running sync"
			if s.GetNextAt() != nil {
				next = s.GetNextAt().AsTime().Local().Format(time.DateTime)
			}
			t.row(s.GetId(), s.GetConnectionId(), s.GetEvery().AsDuration().String(), next, s.GetLastSyncId())
		}
		return t.flush()
	}
	return nil
}

func syncCancelCmd(g *globals) *cobra.Command {
	var schedule string
	cmd := &cobra.Command{
		Use:   "cancel [SYNC] [--schedule ID]",
		Short: "Cancel a sync (the export is deleted at the source) or remove a schedule",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := &agentv1.CancelSyncRequest{ScheduleId: schedule}
			if len(args) == 1 {
				req.SyncId = args[0]
			}
			if req.SyncId == "" && req.ScheduleId == "" {
				return errors.New("name a sync, or a schedule with --schedule")
			}
			return g.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.Sync.CancelSync(ctx, req)
				if err != nil {
					return err
				}
				return g.printResult(cmd, resp, func(out io.Writer) error {
					if s := resp.GetSchedule(); s != nil {
						fmt.Fprintf(out, "Schedule %s removed.\n", s.GetId())
					}
					if s := resp.GetSync(); s != nil {
						fmt.Fprintf(out, "Sync %s is %s.\n", s.GetId(), syncStateName(s.GetState()))
					}
					return nil
				})
			})
		},
	}
	cmd.Flags().StringVar(&schedule, "schedule", "", "remove this schedule")
	return cmd
}

func syncWatchCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "watch SYNC",
		Short: "Follow a sync's progress until it ends",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withClient(cmd, func(_ context.Context, c *client.Client) error {
				return watchSync(cmd, g, c, args[0])
			})
		},
	}
}

// watchSync follows a sync: a live progress bar on a terminal, a line per
// change of phase and every few seconds otherwise, JSON lines with --json.
// It fails when the sync does not complete.
func watchSync(cmd *cobra.Command, g *globals, c *client.Client, id string) error {
	st, err := c.Sync.WatchSync(cmd.Context(), &agentv1.WatchSyncRequest{SyncId: id})
	if err != nil {
		return err
	}
	out := cmd.OutOrStdout()
	var view *syncView
	if !g.json {
		view = newSyncView(out)
	}
	var last *agentv1.Sync
	err = recvAll(st, func(m *agentv1.WatchSyncResponse) error {
		last = m.GetSync()
		if g.json {
			return printJSONLine(cmd, last)
		}
		view.update(last)
		return nil
	})
	if view != nil {
		view.close()
	}
	if err != nil {
		return err
	}
	if last == nil {
		return errors.New("the agent ended the watch without a status")
	}
	if !g.json {
		printSync(out, last)
	}
	if last.GetState() != agentv1.SyncState_SYNC_STATE_COMPLETED {
		return fmt.Errorf("sync %s %s: %s", last.GetId(), syncStateName(last.GetState()), last.GetError())
	}
	return nil
}

// syncView shows a running sync.
type syncView struct {
	w     io.Writer
	tty   bool
	bar   *progressbar.ProgressBar
	phase agentv1.SyncPhase
	last  time.Time
}

func newSyncView(w io.Writer) *syncView {
	v := &syncView{w: w}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		v.tty = true
	}
	return v
}

func (v *syncView) describe(s *agentv1.Sync) string {
	switch s.GetPhase() {
	case agentv1.SyncPhase_SYNC_PHASE_KICKOFF:
		return "starting the export"
	case agentv1.SyncPhase_SYNC_PHASE_EXPORTING:
		d := "source preparing files"
		if s.GetProgress() != "" {
			d += ": " + s.GetProgress()
		}
		if s.GetWaiting() != "" {
			d += " (" + s.GetWaiting() + ")"
		}
		return d
	}
	d := fmt.Sprintf("%d resources, %s", s.GetResources(), bytesHuman(s.GetBytes()))
	if s.GetRate() > 0 {
		d += fmt.Sprintf(", %.0f/s", s.GetRate())
	}
	if s.GetMalformed()+s.GetErrors() > 0 {
		d += fmt.Sprintf(", %d problems", s.GetMalformed()+s.GetErrors())
	}
	if s.GetWaiting() != "" {
		d += " (" + s.GetWaiting() + ")"
	}
	return d
}

func (v *syncView) update(s *agentv1.Sync) {
	phaseChanged := s.GetPhase() != v.phase
	v.phase = s.GetPhase()
	if !v.tty {
		if phaseChanged || time.Since(v.last) >= 5*time.Second {
			v.last = time.Now()
			if s.GetPhase() == agentv1.SyncPhase_SYNC_PHASE_DOWNLOADING {
				fmt.Fprintf(v.w, "%s: files %d/%d, %s\n", phaseName(s.GetPhase()), s.GetFilesDone(), s.GetFilesTotal(), v.describe(s))
			} else if s.GetPhase() != agentv1.SyncPhase_SYNC_PHASE_DONE {
				fmt.Fprintf(v.w, "%s: %s\n", phaseName(s.GetPhase()), v.describe(s))
			}
		}
		return
	}
	if phaseChanged {
		v.close()
		if s.GetPhase() == agentv1.SyncPhase_SYNC_PHASE_DONE {
			return
		}
		max := int64(-1) // a spinner until the files are known
		if s.GetPhase() == agentv1.SyncPhase_SYNC_PHASE_DOWNLOADING {
			max = int64(s.GetFilesTotal())
		}
		v.bar = progressbar.NewOptions64(max,
			progressbar.OptionSetWriter(v.w), progressbar.OptionSetWidth(30),
			progressbar.OptionShowCount(), progressbar.OptionSetItsString("files"),
			progressbar.OptionThrottle(100*time.Millisecond), progressbar.OptionSetPredictTime(true),
			progressbar.OptionOnCompletion(func() { fmt.Fprintln(v.w) }))
	}
	if v.bar != nil {
		v.bar.Describe(v.describe(s))
		if s.GetPhase() == agentv1.SyncPhase_SYNC_PHASE_DOWNLOADING {
			_ = v.bar.Set64(int64(s.GetFilesDone()))
		} else {
			_ = v.bar.Add(1)
		}
	}
}

func (v *syncView) close() {
	if v.bar != nil {
		_ = v.bar.Finish()
		v.bar = nil
	}
}

func syncExportCmd(g *globals) *cobra.Command {
	var out, since string
	var types []string
	cmd := &cobra.Command{
		Use:   "export CONNECTION --out DIR",
		Short: "Write a connection's stored records as NDJSON files, one per resource type",
		Long: "Write the records the agent stored for a connection into DIR as <Type>.ndjson files, each\n" +
			"resource exactly as the source sent it, for tools that want files. Deleted resources are\n" +
			"listed in _deleted.txt (Type/id per line). The cursor printed at the end continues the export:\n" +
			"pass it as --since-cursor to write only what changed since.",
		Example: "  medrelay sync export conn_123 --out ./export\n" +
			"  medrelay sync export conn_123 --out ./changes --since-cursor 48213",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if out == "" {
				return errors.New("--out DIR is required")
			}
			if err := os.MkdirAll(out, 0o750); err != nil {
				return err
			}
			return g.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				cursor, counts, err := exportRecords(ctx, c, args[0], splitList(types), since, out)
				if err != nil {
					return err
				}
				w := cmd.OutOrStdout()
				if g.json {
					total := 0
					for _, n := range counts {
						total += n
					}
					return json.NewEncoder(w).Encode(map[string]any{"out": out, "cursor": cursor, "records": total, "files": counts})
				}
				names := make([]string, 0, len(counts))
				for n := range counts {
					names = append(names, n)
				}
				sort.Strings(names)
				total := 0
				for _, n := range names {
					fmt.Fprintf(w, "  %-28s %d\n", n, counts[n])
					total += counts[n]
				}
				fmt.Fprintf(w, "Wrote %d records to %s. Continue later with --since-cursor %s\n", total, out, cursor)
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "directory to write the files into (created if needed)")
	cmd.Flags().StringSliceVar(&types, "type", nil, "only these resource types")
	cmd.Flags().StringVar(&since, "since-cursor", "", "only records changed after this cursor (from a previous export)")
	return cmd
}

// exportRecords streams a connection's records into per-type files (each
// file written to a temporary name and renamed when complete) and returns
// the final cursor and the count per file.
func exportRecords(ctx context.Context, c *client.Client, conn string, types []string, since, dir string) (string, map[string]int, error) {
	st, err := c.Records.ListRecords(ctx, &agentv1.ListRecordsRequest{ConnectionId: conn, Types: types, SinceCursor: since, PageSize: 5000})
	if err != nil {
		return "", nil, err
	}
	type file struct {
		f *os.File
		w *bufio.Writer
	}
	files := map[string]*file{}
	counts := map[string]int{}
	closeAll := func(keep bool) error {
		var first error
		for name, f := range files {
			err := f.w.Flush()
			if cerr := f.f.Close(); err == nil {
				err = cerr
			}
			if keep && err == nil {
				err = os.Rename(f.f.Name(), filepath.Join(dir, name))
			} else {
				os.Remove(f.f.Name())
			}
			if err != nil && first == nil {
				first = err
			}
		}
		return first
	}
	open := func(name string) (*file, error) {
		if f, ok := files[name]; ok {
			return f, nil
		}
		f, err := os.CreateTemp(dir, "."+name+".*")
		if err != nil {
			return nil, err
		}
		fl := &file{f: f, w: bufio.NewWriterSize(f, 256<<10)}
		files[name] = fl
		return fl, nil
	}
	cursor := since
	err = recvAll(st, func(m *agentv1.ListRecordsResponse) error {
		for _, r := range m.GetRecords() {
			name := r.GetResourceType() + ".ndjson"
			line := r.GetJson()
			if r.GetDeleted() {
				name, line = "_deleted.txt", []byte(r.GetResourceType()+"/"+r.GetId())
			}
			f, err := open(name)
			if err == nil {
				_, err = f.w.Write(line)
			}
			if err == nil {
				err = f.w.WriteByte('\n')
			}
			if err != nil {
				return err
			}
			counts[name]++
		}
		if m.GetCursor() != "" {
			cursor = m.GetCursor()
		}
		return nil
	})
	if err != nil {
		_ = closeAll(false)
		return "", nil, err
	}
	return cursor, counts, closeAll(true)
}

// connectBackend creates a backend connection (connect --backend).
func connectBackend(cmd *cobra.Command, g *globals, source string, scopes []string) error {
	return g.withClient(cmd, func(ctx context.Context, c *client.Client) error {
		resp, err := c.Connections.CreateBackendConnection(ctx, &agentv1.CreateBackendConnectionRequest{SourceId: source, Scopes: splitList(scopes)})
		if err != nil {
			return err
		}
		conn := resp.GetConnection()
		active := conn.GetState() == agentv1.ConnectionState_CONNECTION_STATE_ACTIVE
		err = g.printResult(cmd, resp, func(out io.Writer) error {
			if active {
				fmt.Fprintf(out, "Connection %s to %s is active (scopes %s); the agent renews its token before it expires.\n"+
					"Sync it with: medrelay sync start %s --wait\n", conn.GetId(), conn.GetSourceId(), strings.Join(conn.GetScopes(), " "), conn.GetId())
			}
			return nil
		})
		if err != nil {
			return err
		}
		if !active {
			return fmt.Errorf("connection %s %s: %s", conn.GetId(), stateName(conn.GetState()), conn.GetReason())
		}
		return nil
	})
}
