package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/medrelay/medrelay/agent/client"
	agentv1 "github.com/medrelay/medrelay/proto/gen/medrelay/agent/v1"
)

func recordsSearchCmd(g *globals) *cobra.Command {
	var params map[string]string
	var pageSize, maxPages int32
	var ndjson bool
	cmd := &cobra.Command{
		Use:   "search CONNECTION TYPE [--param name=value ...]",
		Short: "Search live at the source (nothing is stored)",
		Long: "Run a FHIR search at the connection's source, through its vendor plugin, and print the\n" +
			"results as they arrive, page by page. For patient connections the agent adds the patient.",
		Example: "  medrelay records search conn_123 Observation --param category=laboratory --param date=ge2024-01-01\n" +
			"  medrelay records search conn_123 Condition --ndjson > conditions.ndjson",
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if ndjson && g.json {
				return errors.New("--json and --ndjson are different outputs: choose one")
			}
			return g.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				st, err := c.Records.SearchRecords(ctx, &agentv1.SearchRecordsRequest{
					ConnectionId: args[0], ResourceType: args[1], Params: params, PageSize: pageSize, MaxPages: maxPages,
				})
				if err != nil {
					return err
				}
				out := newRecordOutput(cmd.OutOrStdout(), ndjson, g.json)
				n, pages, total := 0, int32(0), int64(-1)
				err = recvAll(st, func(m *agentv1.SearchRecordsResponse) error {
					pages = max(pages, m.GetPage())
					if m.GetTotal() > 0 {
						total = m.GetTotal()
					}
					for _, r := range m.GetRecords() {
						n++
						if err := out.print(r); err != nil {
							return err
						}
					}
					return nil
				})
				if err != nil {
					err = out.failed(err)
					if n > 0 {
						fmt.Fprintf(cmd.ErrOrStderr(), "%d resources from %d pages received before the error\n", n, pages)
					}
					return err
				}
				if err := out.flush(); err != nil {
					return err
				}
				msg := fmt.Sprintf("%d resources from %d pages", n, pages)
				if total >= 0 {
					msg += fmt.Sprintf(" (the source reports %d matches)", total)
				}
				fmt.Fprintln(cmd.ErrOrStderr(), msg)
				return nil
			})
		},
	}
	f := cmd.Flags()
	f.StringToStringVar(&params, "param", nil, "a FHIR search parameter, name=value (repeat for more)")
	f.Int32Var(&pageSize, "page-size", 0, "_count per page at the source")
	f.Int32Var(&maxPages, "max-pages", 0, "stop after this many pages (0: all)")
	f.BoolVar(&ndjson, "ndjson", false, "print the resources as NDJSON, as the source sent them")
	return cmd
}
