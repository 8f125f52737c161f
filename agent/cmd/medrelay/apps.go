package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/medrelay/medrelay/agent/client"
	agentv1 "github.com/medrelay/medrelay/proto/gen/medrelay/agent/v1"
)

func appsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "apps", Short: "Manage the identities of host apps (administrators)"}

	create := &cobra.Command{
		Use:   "create NAME",
		Short: "Create an app and print its token (shown once)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.Apps.CreateApp(ctx, &agentv1.CreateAppRequest{Name: args[0]})
				if err != nil {
					return err
				}
				return g.printResult(cmd, resp, func(out io.Writer) error {
					fmt.Fprintf(out, "Created app %s (%s).\n\n", resp.GetApp().GetName(), resp.GetApp().GetId())
					fmt.Fprintf(out, "Token (shown once; the agent keeps only its hash):\n\n  %s\n\n", resp.GetToken())
					fmt.Fprintf(out, "Give it to the app as MEDRELAY_APP_TOKEN, or pass it with client.WithAppToken.\n")
					return nil
				})
			})
		},
	}

	var all bool
	list := &cobra.Command{
		Use:   "list",
		Short: "List apps",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				var apps []*agentv1.App
				token := ""
				for {
					resp, err := c.Apps.ListApps(ctx, &agentv1.ListAppsRequest{IncludeRevoked: all, PageSize: 500, PageToken: token})
					if err != nil {
						return err
					}
					apps = append(apps, resp.GetApps()...)
					if token = resp.GetNextPageToken(); token == "" {
						break
					}
				}
				return g.printResult(cmd, &agentv1.ListAppsResponse{Apps: apps}, func(out io.Writer) error {
					t := newTable(out, "ID", "NAME", "TOKEN", "CREATED", "LAST SEEN", "REVOKED")
					for _, a := range apps {
						t.row(a.GetId(), a.GetName(), a.GetTokenPrefix()+"…", ago(a.GetCreatedAt()), ago(a.GetLastSeenAt()), ago(a.GetRevokedAt()))
					}
					return t.flush()
				})
			})
		},
	}
	list.Flags().BoolVar(&all, "all", false, "include revoked apps")

	revoke := &cobra.Command{
		Use:   "revoke ID|NAME",
		Short: "Revoke an app: its token stops working at once",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.Apps.RevokeApp(ctx, &agentv1.RevokeAppRequest{App: args[0]})
				if err != nil {
					return err
				}
				return g.printResult(cmd, resp, func(out io.Writer) error {
					fmt.Fprintf(out, "Revoked app %s (%s).\n", resp.GetApp().GetName(), resp.GetApp().GetId())
					return nil
				})
			})
		},
	}
	cmd.AddCommand(create, list, revoke)
	return cmd
}
