package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/medrelay/medrelay/agent/client"
	agentv1 "github.com/medrelay/medrelay/proto/gen/medrelay/agent/v1"
)

func connectionsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "connections", Aliases: []string{"conn"}, Short: "List, inspect, refresh and delete connections"}

	var patientRef, source, app string
	var states []string
	list := &cobra.Command{
		Use:   "list",
		Short: "List connections",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := &agentv1.ListConnectionsRequest{PatientRef: patientRef, SourceId: source, AppId: app, PageSize: 500}
			for _, s := range states {
				v, ok := agentv1.ConnectionState_value["CONNECTION_STATE_"+strings.ToUpper(s)]
				if !ok {
					return fmt.Errorf("--state %q: want pending, active, failed, refresh_failed, expired or revoked", s)
				}
				req.States = append(req.States, agentv1.ConnectionState(v))
			}
			return g.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				var all []*agentv1.Connection
				for {
					resp, err := c.Connections.ListConnections(ctx, req)
					if err != nil {
						return err
					}
					all = append(all, resp.GetConnections()...)
					if req.PageToken = resp.GetNextPageToken(); req.PageToken == "" {
						break
					}
				}
				return g.printResult(cmd, &agentv1.ListConnectionsResponse{Connections: all}, func(out io.Writer) error {
					t := newTable(out, "ID", "STATE", "SOURCE", "PATIENT REF", "PATTERN", "SINCE", "REASON")
					for _, x := range all {
						t.row(x.GetId(), stateName(x.GetState()), x.GetSourceId(), x.GetPatientRef(), x.GetPattern(), ago(x.GetStateChangedAt()), x.GetReason())
					}
					return t.flush()
				})
			})
		},
	}
	list.Flags().StringVar(&patientRef, "patient-ref", "", "only this patient")
	list.Flags().StringVar(&source, "source", "", "only this source")
	list.Flags().StringVar(&app, "app", "", "administrators: only this app")
	list.Flags().StringSliceVar(&states, "state", nil, "only these states")

	show := &cobra.Command{
		Use:   "show ID",
		Short: "Show a connection and its history",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.Connections.GetConnection(ctx, &agentv1.GetConnectionRequest{ConnectionId: args[0], History: true})
				if err != nil {
					return err
				}
				return g.printResult(cmd, resp, func(out io.Writer) error { return printConnection(out, resp.GetConnection()) })
			})
		},
	}

	refresh := &cobra.Command{
		Use:   "refresh ID",
		Short: "Refresh a connection's tokens now",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.Connections.RefreshConnection(ctx, &agentv1.RefreshConnectionRequest{ConnectionId: args[0]})
				if err != nil {
					return err
				}
				return g.printResult(cmd, resp, func(out io.Writer) error {
					x := resp.GetConnection()
					fmt.Fprintf(out, "%s is %s; access token expires %s.\n", x.GetId(), stateName(x.GetState()), ago(x.GetAccessTokenExpiresAt()))
					return nil
				})
			})
		},
	}

	del := &cobra.Command{
		Use:   "delete ID",
		Short: "Revoke a connection and delete its stored records",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.Connections.DeleteConnection(ctx, &agentv1.DeleteConnectionRequest{ConnectionId: args[0]})
				if err != nil {
					return err
				}
				return g.printResult(cmd, resp, func(out io.Writer) error {
					fmt.Fprintf(out, "%s is %s.\n", resp.GetConnection().GetId(), stateName(resp.GetConnection().GetState()))
					return nil
				})
			})
		},
	}

	var wPatient string
	watch := &cobra.Command{
		Use:   "watch [ID]",
		Short: "Print connections, then every change, until interrupted",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := &agentv1.WatchConnectionsRequest{PatientRef: wPatient}
			if len(args) == 1 {
				req.ConnectionId = args[0]
			}
			return g.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				stream, err := c.Connections.WatchConnections(ctx, req)
				if err != nil {
					return err
				}
				out := cmd.OutOrStdout()
				for {
					msg, err := stream.Recv()
					if err != nil {
						if ctx.Err() != nil {
							return nil
						}
						return err
					}
					if g.json {
						if err := printJSONLine(cmd, msg); err != nil {
							return err
						}
						continue
					}
					x := msg.GetConnection()
					fmt.Fprintf(out, "%s  %-14s %s  %s\n", x.GetStateChangedAt().AsTime().Local().Format("15:04:05"), stateName(x.GetState()), x.GetId(), x.GetReason())
				}
			})
		},
	}
	watch.Flags().StringVar(&wPatient, "patient-ref", "", "only this patient")

	cmd.AddCommand(list, show, refresh, del, watch)
	return cmd
}

// printConnection shows a connection and its history of states.
func printConnection(out io.Writer, x *agentv1.Connection) error {
	t := newTable(out, "CONNECTION", x.GetId())
	t.row("State", stateName(x.GetState())+" ("+x.GetReason()+")")
	t.row("Source", x.GetSourceId()+" "+x.GetVendor())
	t.row("FHIR base", x.GetFhirBaseUrl())
	t.row("Pattern", x.GetPattern())
	t.row("Patient", fmt.Sprintf("ref %s, id at source %s", x.GetPatientRef(), x.GetPatientId()))
	t.row("fhirUser", x.GetFhirUser())
	t.row("Scopes", strings.Join(x.GetScopes(), " "))
	t.row("Access token", "expires "+ago(x.GetAccessTokenExpiresAt()))
	if x.GetGrantExpiresAt() != nil {
		t.row("Grant", "ends "+ago(x.GetGrantExpiresAt()))
	}
	t.row("Last refresh", ago(x.GetLastRefreshAt()))
	t.row("Next refresh", ago(x.GetNextRefreshAt()))
	if x.GetLastError() != "" {
		t.row("Last error", x.GetLastError())
	}
	if err := t.flush(); err != nil {
		return err
	}
	fmt.Fprintln(out)
	h := newTable(out, "WHEN", "FROM", "TO", "REASON")
	for _, tr := range x.GetHistory() {
		from := ""
		if tr.GetFrom() != agentv1.ConnectionState_CONNECTION_STATE_UNSPECIFIED {
			from = stateName(tr.GetFrom())
		}
		h.row(tr.GetTime().AsTime().Local().Format("2006-01-02 15:04:05"), from, stateName(tr.GetTo()), tr.GetReason())
	}
	return h.flush()
}
