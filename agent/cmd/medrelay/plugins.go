package main

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

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
			c, err := g.dial(cmd.Context())
			if err != nil {
				return err
			}
			defer c.Close()
			resp, err := c.Plugins.ListPlugins(cmd.Context(), &agentv1.ListPluginsRequest{})
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(cmd, resp)
			}
			out := cmd.OutOrStdout()
			if len(resp.GetPlugins()) == 0 {
				fmt.Fprintln(out, "No plugins. Install plugins (binary and manifest) into the agent's plugin directory; see docs/plugins.md.")
				return nil
			}
			t := newTable(out, "NAME", "VERSION", "VENDOR", "STATE", "PID", "RESTARTS", "CAPABILITIES", "LAST ERROR")
			for _, p := range resp.GetPlugins() {
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
				for _, p := range resp.GetPlugins() {
					if p.GetLastError() == "" && len(p.GetLastStderr()) == 0 {
						continue
					}
					fmt.Fprintf(out, "\n%s (%s):\n  %s\n", p.GetName(), p.GetPath(), strings.ReplaceAll(p.GetLastError(), "\n", "\n  "))
				}
			}
			return nil
		},
	}
	list.Flags().BoolVarP(&long, "long", "l", false, "also print each plugin's full last error and stderr lines")

	verify := &cobra.Command{
		Use:   "verify [NAME...]",
		Short: "Re-check manifests, permissions and checksums, and ask each plugin to describe itself",
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.dial(cmd.Context())
			if err != nil {
				return err
			}
			defer c.Close()
			resp, err := c.Plugins.VerifyPlugins(cmd.Context(), &agentv1.VerifyPluginsRequest{Names: args})
			if err != nil {
				return err
			}
			if g.json {
				if err := printJSON(cmd, resp); err != nil {
					return err
				}
			} else {
				out := cmd.OutOrStdout()
				for _, r := range resp.GetResults() {
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
			for _, r := range resp.GetResults() {
				if !r.GetOk() {
					return fmt.Errorf("plugin %s did not verify", r.GetName())
				}
			}
			return nil
		},
	}
	cmd.AddCommand(list, verify)
	return cmd
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
