package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/medrelay/medrelay/agent/client"
	agentv1 "github.com/medrelay/medrelay/proto/gen/medrelay/agent/v1"
)

func pluginsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "plugins", Short: "Show and verify the agent's source plugins (administrators)"}

	var long bool
	list := &cobra.Command{
		Use:   "list",
		Short: "List plugins: name, version, capabilities, state, pid, restarts, last error",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.Plugins.ListPlugins(ctx, &agentv1.ListPluginsRequest{})
				if err != nil {
					return err
				}
				return g.printResult(cmd, resp, func(out io.Writer) error { return printPlugins(out, resp.GetPlugins(), long) })
			})
		},
	}
	list.Flags().BoolVarP(&long, "long", "l", false, "also print each plugin's full last error and stderr lines")

	verify := &cobra.Command{
		Use:   "verify [NAME...]",
		Short: "Re-check manifests, permissions and checksums, and ask each plugin to describe itself",
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.Plugins.VerifyPlugins(ctx, &agentv1.VerifyPluginsRequest{Names: args})
				if err != nil {
					return err
				}
				err = g.printResult(cmd, resp, func(out io.Writer) error {
					printVerified(out, resp.GetResults())
					return nil
				})
				if err != nil {
					return err
				}
				for _, r := range resp.GetResults() {
					if !r.GetOk() {
						return fmt.Errorf("plugin %s did not verify", r.GetName())
					}
				}
				return nil
			})
		},
	}
	cmd.AddCommand(list, verify)
	return cmd
}

func printPlugins(out io.Writer, plugins []*agentv1.Plugin, long bool) error {
	if len(plugins) == 0 {
		fmt.Fprintln(out, "No plugins. Install plugins (binary and manifest) into the agent's plugin directory; see docs/plugins.md.")
		return nil
	}
	t := newTable(out, "NAME", "VERSION", "VENDOR", "STATE", "PID", "RESTARTS", "CAPABILITIES", "LAST ERROR")
	for _, p := range plugins {
		pid := ""
		if p.GetPid() > 0 {
			pid = strconv.FormatInt(p.GetPid(), 10)
		}
		t.row(p.GetName(), p.GetVersion(), p.GetVendor(), pluginState(p.GetState()), pid,
			strconv.Itoa(int(p.GetRestarts())), strings.Join(p.GetCapabilities(), ","), firstLine(p.GetLastError()))
	}
	if err := t.flush(); err != nil {
		return err
	}
	if long {
		for _, p := range plugins {
			if p.GetLastError() == "" && len(p.GetLastStderr()) == 0 {
				continue
			}
			fmt.Fprintf(out, "\n%s (%s):\n", p.GetName(), p.GetPath())
			if p.GetLastError() != "" {
				fmt.Fprintf(out, "  %s\n", strings.ReplaceAll(p.GetLastError(), "\n", "\n  "))
			}
			if len(p.GetLastStderr()) > 0 {
				fmt.Fprintf(out, "  last stderr lines:\n")
				for _, l := range p.GetLastStderr() {
					fmt.Fprintf(out, "    %s\n", l)
				}
			}
		}
	}
	return nil
}

func printVerified(out io.Writer, results []*agentv1.PluginVerification) {
	for _, r := range results {
		verdict := "ok"
		if !r.GetOk() {
			verdict = "FAILED"
		}
		fmt.Fprintf(out, "%s: %s\n", r.GetName(), verdict)
		for _, c := range r.GetChecks() {
			fmt.Fprintf(out, "  ✓ %s\n", c)
		}
		if r.GetError() != "" {
			fmt.Fprintf(out, "  ✗ %s\n", strings.ReplaceAll(r.GetError(), "\n", "\n    "))
		}
	}
}

func pluginState(s agentv1.Plugin_State) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "STATE_"))
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	if len(line) > 80 {
		line = line[:79] + "…"
	}
	return line
}
