package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/medrelay/medrelay/internal/sandbox"
)

var errInvalidCards = errors.New("the service's response is not valid CDS Hooks 2.0")

func newCDSCmd() *cobra.Command {
	cds := &cobra.Command{Use: "cds", Short: "Act as a CDS Hooks client (the EHR side)"}
	var call sandbox.CDSCall
	var remote string
	var asJSON bool
	callCmd := &cobra.Command{
		Use:   "call SERVICE_URL",
		Short: "Send a CDS Hooks 2.0 request to SERVICE_URL ({baseUrl}/cds-services/{id}) and print the cards",
		Long: `Sends a real CDS Hooks 2.0 request: an ES384-signed bearer JWT whose jku points
at the sandbox's JWKS, fhirServer, fhirAuthorization and (with --prefetch) the
service's prefetch templates filled from the sandbox's data. Prints the cards
and checks their shape; exits non-zero when the response is invalid.

Without --sandbox it starts an in-process sandbox for the duration of the call
(its JWKS stays reachable while the service verifies the JWT). With --sandbox
URL it asks a running sandbox to make the call.`,
		Args:         cobra.ExactArgs(1),
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			call.ServiceURL = args[0]
			ctx, cancel := context.WithTimeout(cmd.Context(), 60*time.Second)
			defer cancel()
			var res *sandbox.CDSResult
			var err error
			if remote != "" {
				res, err = remoteCall(ctx, strings.TrimSuffix(remote, "/"), call)
			} else {
				var s *sandbox.Sandbox
				s, err = sandbox.Start(ctx, sandbox.Config{Addr: "127.0.0.1:0"})
				if err != nil {
					return err
				}
				defer s.Close()
				res, err = s.CallCDS(ctx, call)
			}
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				_ = enc.Encode(res)
			} else {
				fmt.Fprintf(out, "HTTP %d, %d card(s)\n", res.Status, len(res.Cards))
				for i, c := range res.Cards {
					fmt.Fprintf(out, "%d. [%s] %s  (source: %s)\n", i+1, c.Indicator, c.Summary, c.Source)
					if c.Detail != "" {
						fmt.Fprintf(out, "   %s\n", strings.ReplaceAll(c.Detail, "\n", "\n   "))
					}
				}
				for _, p := range res.Problems {
					fmt.Fprintf(out, "INVALID: %s\n", p)
				}
			}
			if len(res.Problems) > 0 {
				return errInvalidCards
			}
			return nil
		},
	}
	fs := callCmd.Flags()
	fs.StringVar(&call.Hook, "hook", "patient-view", "hook name")
	fs.StringVar(&call.Tenant, "tenant", "generic", "tenant whose FHIR server and patient the request carries")
	fs.StringVar(&call.Patient, "patient", "", "patient id (default: the first patient)")
	fs.StringVar(&call.Encounter, "encounter", "", "encounter id for the context")
	fs.BoolVar(&call.Prefetch, "prefetch", false, "fill the service's prefetch templates (from its discovery endpoint)")
	fs.StringVar(&remote, "sandbox", "", "base URL of a running sandbox to make the call (default: start one in-process)")
	fs.BoolVar(&asJSON, "json", false, "print the whole result as JSON")
	cds.AddCommand(callCmd)
	return cds
}

func remoteCall(ctx context.Context, base string, call sandbox.CDSCall) (*sandbox.CDSResult, error) {
	body, _ := json.Marshal(call)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/admin/cds-call", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("sandbox at %s: %w", base, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("sandbox at %s: HTTP %d: %s", base, resp.StatusCode, bytes.TrimSpace(b))
	}
	var res sandbox.CDSResult
	if err := json.Unmarshal(b, &res); err != nil {
		return nil, fmt.Errorf("sandbox at %s: %w", base, err)
	}
	return &res, nil
}
