// Command medrelay-sandbox runs a local EHR (SMART, FHIR R4, Bulk Data) with
// synthetic patients, vendor profiles and injectable faults.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/medrelay/medrelay/internal/sandbox"
)

func main() {
	if err := newRootCmd().Execute(); err != nil {
		os.Exit(1)
	}
}

type flags struct {
	addr, config, faults       string
	patients, bulkFile         int
	seed                       int64
	autoApprove, open, tls, vb bool
}

func (f *flags) register(cmd *cobra.Command) {
	fs := cmd.Flags()
	fs.StringVar(&f.addr, "addr", "127.0.0.1:9100", "address to listen on (127.0.0.1:0 picks a free port)")
	fs.IntVar(&f.patients, "patients", 10, "synthetic patients per tenant")
	fs.Int64Var(&f.seed, "seed", 1, "seed of the synthetic data (same seed, same bytes)")
	fs.BoolVar(&f.autoApprove, "auto-approve", false, "skip the login/consent page: approve at once as login_hint (or the first patient)")
	fs.BoolVar(&f.open, "open-registration", false, "accept any public client_id and redirect_uri (demos)")
	fs.BoolVar(&f.tls, "tls", false, "serve HTTPS with a self-signed certificate generated at start")
	fs.StringVar(&f.config, "config", "", "TOML or JSON config file (tenants, clients, faults, ...)")
	fs.StringVar(&f.faults, "faults", "", `faults to start with: JSON as for POST /admin/faults, or @file`)
	fs.IntVar(&f.bulkFile, "bulk-file-resources", 0, "most resources per bulk NDJSON file (default 50000)")
	fs.BoolVar(&f.vb, "verbose", false, "log at debug level")
}

// config builds the sandbox config: file first, then flags the user set.
func (f *flags) toConfig(cmd *cobra.Command) (sandbox.Config, error) {
	var cfg sandbox.Config
	if f.config != "" {
		if err := sandbox.LoadConfig(f.config, &cfg); err != nil {
			return cfg, err
		}
	}
	set := func(name string) bool { return cmd.Flags().Changed(name) }
	if set("addr") || cfg.Addr == "" {
		cfg.Addr = f.addr
	}
	if set("patients") || cfg.Patients == 0 {
		cfg.Patients = f.patients
	}
	if set("seed") || cfg.Seed == 0 {
		cfg.Seed = f.seed
	}
	if set("auto-approve") {
		cfg.AutoApprove = f.autoApprove
	}
	if set("open-registration") {
		cfg.OpenRegistration = f.open
	}
	if set("tls") {
		cfg.TLS = f.tls
	}
	if f.bulkFile > 0 {
		cfg.BulkFileResources = f.bulkFile
	}
	if f.faults != "" {
		body := []byte(f.faults)
		if path, ok := strings.CutPrefix(f.faults, "@"); ok {
			b, err := os.ReadFile(path)
			if err != nil {
				return cfg, fmt.Errorf("--faults: %w", err)
			}
			body = b
		}
		list, err := sandbox.ParseFaultsBody(body)
		if err != nil {
			return cfg, fmt.Errorf("--faults: %w", err)
		}
		cfg.Faults = append(cfg.Faults, list...)
	}
	level := slog.LevelInfo
	if f.vb {
		level = slog.LevelDebug
	}
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	return cfg, nil
}

func newRootCmd() *cobra.Command {
	var f flags
	cmd := &cobra.Command{
		Use:   "medrelay-sandbox",
		Short: "A local EHR, payer and network for demos, tests and benchmarks",
		Long: `medrelay-sandbox plays the EHR's side of SMART App Launch, Backend Services,
FHIR R4 REST and Bulk Data with synthetic patients, vendor profiles
(generic, epic, oraclehealth, bluebutton, athenahealth, eclinicalworks)
and injectable faults. It prints its base URL and serves until interrupted.`,
		SilenceUsage: true,
		Args:         cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := f.toConfig(cmd)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			s, err := sandbox.Start(ctx, cfg)
			if err != nil {
				return err
			}
			defer s.Close()
			out := cmd.OutOrStdout()
			fmt.Fprintln(out, s.URL())
			for _, t := range s.TenantInfo() {
				fmt.Fprintf(out, "  %-15s %-15s %s  (%d patients)\n", t.Name, t.Profile, t.FHIRBase, t.Patients)
			}
			fmt.Fprintf(out, "  brands: %s/brands.json   admin: %s/admin/stats\n", s.URL(), s.URL())
			<-ctx.Done()
			return nil
		},
	}
	cmd.SetContext(context.Background())
	f.register(cmd)
	cmd.AddCommand(newCDSCmd())
	return cmd
}
