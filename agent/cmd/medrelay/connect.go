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

func connectCmd(g *globals) *cobra.Command {
	var patientRef, returnURL string
	var recommend []string
	var meta map[string]string
	var backend bool
	var scopes []string
	cmd := &cobra.Command{
		Use:   "connect [SOURCE] --patient-ref P --return-url U",
		Short: "Start a patient-access session and print the URL to send the patient to",
		Long: `Start a patient-access session. With SOURCE the session URL redirects straight to that
source's portal (direct mode); without it the patient gets the hosted picker, with --recommend
sources shown first. The patient returns to --return-url with patient_ref, session_id, success,
connection_id, error and error_description.

With --backend, connect the agent itself to SOURCE (SMART Backend Services: no patient, the
source's credential with its key) for Bulk Data syncs.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if backend {
				if len(args) != 1 {
					return fmt.Errorf("--backend needs the SOURCE to connect to")
				}
				return connectBackend(cmd, g, args[0], scopes)
			}
			if patientRef == "" || returnURL == "" {
				return fmt.Errorf("--patient-ref and --return-url are required (or --backend)")
			}
			req := &agentv1.CreateSessionRequest{PatientRef: patientRef, ReturnUrl: returnURL, RecommendedSourceIds: recommend, Metadata: meta}
			if len(args) == 1 {
				req.SourceId = args[0]
			}
			return g.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.Sessions.CreateSession(ctx, req)
				if err != nil {
					return err
				}
				return g.printResult(cmd, resp, func(out io.Writer) error {
					s := resp.GetSession()
					mode := "picker"
					if s.GetSourceId() != "" {
						mode = "direct to " + s.GetSourceId()
					}
					fmt.Fprintf(out, "Session %s (%s), open until %s.\nSend the patient to:\n\n  %s\n",
						s.GetId(), mode, s.GetExpiresAt().AsTime().Local().Format("15:04:05"), s.GetUrl())
					return nil
				})
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&patientRef, "patient-ref", "", "your reference for the patient (required)")
	f.StringVar(&returnURL, "return-url", "", "where the patient returns with the outcome (required)")
	f.StringSliceVar(&recommend, "recommend", nil, "picker mode: source ids to show first")
	f.StringToStringVar(&meta, "meta", nil, "metadata kept with the session (key=value,...)")
	f.BoolVar(&backend, "backend", false, "connect the agent itself to SOURCE with SMART Backend Services")
	f.StringSliceVar(&scopes, "scopes", nil, "with --backend: scopes to ask for (default: the credential's system/ scopes, else system/*.rs)")
	return cmd
}

func stateName(s agentv1.ConnectionState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "CONNECTION_STATE_"))
}
