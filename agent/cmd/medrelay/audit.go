package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/medrelay/medrelay/agent/client"
	agentv1 "github.com/medrelay/medrelay/proto/gen/medrelay/agent/v1"
)

func auditCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "audit", Short: "Read the audit log (administrators)"}
	var since string
	var app string
	var limit int
	list := &cobra.Command{
		Use:   "list",
		Short: "List audit entries, oldest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := &agentv1.ListAuditRequest{AppId: app}
			if since != "" {
				t, err := parseSince(since, time.Now())
				if err != nil {
					return err
				}
				req.Since = timestamppb.New(t)
			}
			return g.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				var entries []*agentv1.AuditEntry
				for {
					req.PageSize = 500
					resp, err := c.Admin.ListAudit(ctx, req)
					if err != nil {
						return err
					}
					entries = append(entries, resp.GetEntries()...)
					req.PageToken = resp.GetNextPageToken()
					if req.PageToken == "" || (limit > 0 && len(entries) >= limit) {
						break
					}
				}
				if limit > 0 && len(entries) > limit {
					entries = entries[:limit]
				}
				return g.printResult(cmd, &agentv1.ListAuditResponse{Entries: entries}, func(out io.Writer) error {
					t := newTable(out, "TIME", "CALLER", "METHOD", "CONNECTION", "PATIENT", "OUTCOME")
					for _, e := range entries {
						t.row(e.GetTime().AsTime().Local().Format(time.DateTime), auditCaller(e.GetCaller()), e.GetMethod(), e.GetConnectionId(), e.GetPatientRef(), e.GetOutcome())
					}
					return t.flush()
				})
			})
		},
	}
	list.Flags().StringVar(&since, "since", "", "only entries after this time: RFC 3339 (2026-11-23T10:00:00Z), a date (2026-11-23) or a duration ago (24h)")
	list.Flags().StringVar(&app, "app", "", "only entries of this app id")
	list.Flags().IntVar(&limit, "limit", 0, "at most this many entries")
	cmd.AddCommand(list)
	return cmd
}

func auditCaller(c *agentv1.Caller) string {
	if c.GetKind() == agentv1.Caller_KIND_APP {
		return "app:" + c.GetAppName()
	}
	if c.GetKind() == agentv1.Caller_KIND_ADMIN {
		return fmt.Sprintf("admin:uid=%d", c.GetUid())
	}
	return fmt.Sprintf("uid=%d", c.GetUid())
}

// parseSince accepts RFC 3339, a date, or a duration meaning "that long ago".
func parseSince(s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	if t, err := time.ParseInLocation(time.DateOnly, s, time.Local); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, fmt.Errorf("--since %q: want RFC 3339 (2026-11-23T10:00:00Z), a date (2026-11-23) or a duration (24h)", s)
}
