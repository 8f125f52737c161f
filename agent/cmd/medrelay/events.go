package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/medrelay/medrelay/agent/client"
	agentv1 "github.com/medrelay/medrelay/proto/gen/medrelay/agent/v1"
)

func eventsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "events", Short: "Read the event stream"}
	var from, app string
	var types []string
	var all bool
	tail := &cobra.Command{
		Use:   "tail",
		Short: "Print events as they happen (Ctrl-C to stop)",
		Long: `Print events as they happen, following the stream until interrupted. By default only
new events; --from replays retained ones first. An app sees its own events; an administrator
sees agent-wide events, one app's (--app) or every app's (--all). With --json, one event per
line. If the agent restarts, tail reconnects and resumes after the last event printed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := &agentv1.SubscribeRequest{Types: types, AllApps: all, AppId: app}
			switch from {
			case "":
				req.FromNow = true
			case "start", "oldest":
			default:
				req.FromCursor = from
			}
			return tailEvents(cmd, g, req)
		},
	}
	f := tail.Flags()
	f.StringVar(&from, "from", "", "replay from after this event id (\"start\": every retained event) before following")
	f.StringSliceVar(&types, "type", nil, "only events of these types (repeat or comma-separate)")
	f.BoolVar(&all, "all", false, "administrators: every app's events")
	f.StringVar(&app, "app", "", "administrators: this app's events")
	cmd.AddCommand(tail)
	return cmd
}

// tailEvents follows the stream, reconnecting after the agent restarts.
func tailEvents(cmd *cobra.Command, g *globals, req *agentv1.SubscribeRequest) error {
	ctx := cmd.Context()
	reconnecting := false
	for {
		err := followOnce(cmd, g, req, &reconnecting)
		if ctx.Err() != nil {
			return nil // interrupted: not an error
		}
		if !errors.Is(err, client.ErrAgentNotRunning) && !errors.Is(err, client.ErrUnavailable) {
			return err
		}
		if !reconnecting {
			fmt.Fprintln(cmd.ErrOrStderr(), "medrelay: the agent went away; reconnecting…")
			reconnecting = true
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
}

func followOnce(cmd *cobra.Command, g *globals, req *agentv1.SubscribeRequest, reconnecting *bool) error {
	return g.withClient(cmd, func(ctx context.Context, c *client.Client) error {
		stream, err := c.Events.Subscribe(ctx, req)
		if err != nil {
			return err
		}
		return recvAll(stream, func(resp *agentv1.SubscribeResponse) error {
			*reconnecting = false
			e := resp.GetEvent()
			if err := printEvent(cmd.OutOrStdout(), e, g.json); err != nil {
				return err
			}
			// Resume after this event if the stream breaks.
			req.FromNow, req.FromCursor = false, e.GetId()
			return nil
		})
	})
}

func printEvent(w io.Writer, e *agentv1.Event, asJSON bool) error {
	if asJSON {
		b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(e)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintln(w, string(b))
		return err
	}
	parts := []string{e.GetTime().AsTime().Local().Format("2006-01-02 15:04:05"), e.GetId(), e.GetType()}
	for _, kv := range [][2]string{{"app", e.GetAppId()}, {"connection", e.GetConnectionId()}, {"session", e.GetSessionId()}, {"patient", e.GetPatientRef()}} {
		if kv[1] != "" {
			parts = append(parts, kv[0]+"="+kv[1])
		}
	}
	if e.GetData() != nil && len(e.GetData().GetFields()) > 0 {
		b, err := protojson.Marshal(e.GetData())
		if err == nil {
			parts = append(parts, compactJSON(b))
		}
	}
	_, err := fmt.Fprintln(w, strings.Join(parts, "  "))
	return err
}

// compactJSON removes the spaces protojson may put between tokens (its
// output is deliberately unstable) so lines stay short and greppable.
func compactJSON(b []byte) string {
	var sb strings.Builder
	inStr, esc := false, false
	for _, c := range string(b) {
		switch {
		case esc:
			esc = false
		case c == '\\' && inStr:
			esc = true
		case c == '"':
			inStr = !inStr
		case !inStr && (c == ' ' || c == '\n' || c == '\t'):
			continue
		}
		sb.WriteRune(c)
	}
	return sb.String()
}
