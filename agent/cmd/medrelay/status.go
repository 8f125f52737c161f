package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/medrelay/medrelay/agent/client"
	agentv1 "github.com/medrelay/medrelay/proto/gen/medrelay/agent/v1"
)

func statusCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show whether the agent runs, where it listens, and who you are to it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				st, err := c.Admin.GetStatus(ctx, &agentv1.GetStatusRequest{})
				if err != nil {
					return err
				}
				return g.printResult(cmd, st, func(out io.Writer) error { return printStatus(out, st) })
			})
		},
	}
}

func printStatus(out io.Writer, st *agentv1.GetStatusResponse) error {
	t := newTable(out, "AGENT", fmt.Sprintf("running, version %s, up %s", st.GetVersion(), roundDur(st.GetUptime().AsDuration())))
	if st.GetHome() != "" {
		t.row("Home", st.GetHome())
	}
	l := st.GetListeners()
	t.row("Socket", l.GetSocket())
	t.row("Public URL", fmt.Sprintf("%s (listening on %s)", l.GetPublicUrl(), l.GetHttpAddr()))
	t.row("Admin", fmt.Sprintf("http://%s/metrics, /healthz", l.GetAdminAddr()))
	s := st.GetStore()
	enc := "not encrypted"
	if s.GetEncrypted() {
		enc = "encrypted"
	}
	t.row("Store", fmt.Sprintf("%s (%s, %s)", s.GetPath(), enc, bytesHuman(s.GetLsmBytes()+s.GetVlogBytes())))
	if s.GetRecordsPath() != "" {
		t.row("Records", fmt.Sprintf("%s (%s, %s)", s.GetRecordsPath(), enc, bytesHuman(s.GetRecordsBytes())))
	}
	t.row("Plugins", fmt.Sprint(st.GetPluginCount()))
	t.row("Connections", fmt.Sprint(st.GetConnectionCount()))
	t.row("You", callerString(st.GetCaller()))
	return t.flush()
}

func callerString(c *agentv1.Caller) string {
	switch c.GetKind() {
	case agentv1.Caller_KIND_ADMIN:
		return fmt.Sprintf("administrator (uid %d, pid %d)", c.GetUid(), c.GetPid())
	case agentv1.Caller_KIND_APP:
		return fmt.Sprintf("app %s (%s)", c.GetAppName(), c.GetAppId())
	}
	return "unknown"
}
