// Command medrelayd is the medrelay agent. It parses flags and hands over to
// internal/app; nothing else happens here.
//
//	medrelayd run [--home DIR] [--config FILE] [--http-addr A] [--admin-addr A] [--public-url U]
//	medrelayd service install|uninstall|start|stop|restart|status
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/medrelay/medrelay/internal/app"
	"github.com/medrelay/medrelay/internal/config"
	"github.com/medrelay/medrelay/internal/home"
	"github.com/medrelay/medrelay/internal/service"
	"github.com/medrelay/medrelay/internal/version"
)

func main() {
	if err := root().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "medrelayd:", err)
		os.Exit(1)
	}
}

type runFlags struct {
	home, configFile                      string
	httpAddr, adminAddr, publicURL, level string
	pluginDir                             string
}

func (f *runFlags) bind(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.home, "home", "", "keep everything of this agent under DIR (store, master.key, medrelay.sock, medrelay.toml)")
	fl.StringVar(&f.configFile, "config", "", "configuration file (default DIR/medrelay.toml with --home, else /etc/medrelay/medrelay.toml)")
	fl.StringVar(&f.httpAddr, "http-addr", "", "public HTTP listener (config http_addr, default 127.0.0.1:8750)")
	fl.StringVar(&f.adminAddr, "admin-addr", "", "loopback listener for /metrics and /healthz (config admin_addr, default 127.0.0.1:8751)")
	fl.StringVar(&f.publicURL, "public-url", "", "URL browsers and EHRs use to reach the public listener (config public_url)")
	fl.StringVar(&f.level, "log-level", "", "debug, info, warn or error (config log.level)")
	fl.StringVar(&f.pluginDir, "plugin-dir", "", "source plugins directory (config plugin_dir; default DIR/plugins with --home, else /usr/lib/medrelay/plugins)")
}

// args turns the flags back into a command line for the installed service.
func (f *runFlags) args() ([]string, error) {
	a := []string{"run"}
	add := func(name, v string) { a = append(a, "--"+name, v) }
	if f.home != "" {
		abs, err := filepath.Abs(f.home)
		if err != nil {
			return nil, err
		}
		add("home", abs)
	}
	if f.configFile != "" {
		abs, err := filepath.Abs(f.configFile)
		if err != nil {
			return nil, err
		}
		add("config", abs)
	}
	if f.pluginDir != "" {
		abs, err := filepath.Abs(f.pluginDir)
		if err != nil {
			return nil, err
		}
		add("plugin-dir", abs)
	}
	for _, kv := range [][2]string{{"http-addr", f.httpAddr}, {"admin-addr", f.adminAddr}, {"public-url", f.publicURL}, {"log-level", f.level}} {
		if kv[1] != "" {
			add(kv[0], kv[1])
		}
	}
	return a, nil
}

// resolve loads the layout and configuration the flags describe.
// stopTimeout is how long a service manager waits for the agent to stop:
// its own shutdown deadline and a margin, and never under the 15 s the
// packaged unit gives.
func stopTimeout(cfg config.Config) time.Duration {
	return max(cfg.ShutdownTimeout.Duration+5*time.Second, 15*time.Second)
}

func (f *runFlags) resolve() (home.Layout, config.Config, error) {
	layout := home.Default()
	if f.home != "" {
		var err error
		if layout, err = home.ForHome(f.home); err != nil {
			return layout, config.Config{}, err
		}
	}
	cfgFile, optional := f.configFile, f.configFile == ""
	if cfgFile == "" {
		cfgFile = layout.ConfigFile
	}
	cfg, err := config.Load(cfgFile, optional)
	if err != nil {
		return layout, cfg, err
	}
	for _, o := range []struct {
		flag string
		dst  *string
	}{{f.httpAddr, &cfg.HTTPAddr}, {f.adminAddr, &cfg.AdminAddr}, {f.publicURL, &cfg.PublicURL}, {f.level, &cfg.Log.Level}} {
		if o.flag != "" {
			*o.dst = o.flag
		}
	}
	if cfg.PluginDir != "" {
		layout.PluginDir = cfg.PluginDir
	}
	if f.pluginDir != "" {
		abs, err := filepath.Abs(f.pluginDir)
		if err != nil {
			return layout, cfg, err
		}
		layout.PluginDir = abs
	}
	return layout, cfg, cfg.Validate()
}

func newLogger(c config.Log) *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(c.Level))
	ho := &slog.HandlerOptions{Level: lvl}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, ho))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, ho))
}

func root() *cobra.Command {
	cmd := &cobra.Command{
		Use:           "medrelayd",
		Short:         "The medrelay agent",
		Version:       version.String(),
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	cmd.AddCommand(runCmd(), serviceCmd())
	return cmd
}

func runCmd() *cobra.Command {
	var f runFlags
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the agent in the foreground (or under a service manager)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			layout, cfg, err := f.resolve()
			if err != nil {
				return err
			}
			log := newLogger(cfg.Log)
			runAgent := func(ctx context.Context) error {
				return app.Run(ctx, app.Options{Layout: layout, Config: cfg, Logger: log})
			}
			if service.Interactive() {
				ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
				defer stop()
				err := runAgent(ctx)
				if errors.Is(err, home.ErrAlreadyRunning) {
					return fmt.Errorf("%w\n  Use that agent (medrelay status), stop it, or pick another --home", err)
				}
				return err
			}
			return service.Run(runAgent, log, service.Options{StopTimeout: stopTimeout(cfg)})
		},
	}
	f.bind(cmd)
	return cmd
}

func serviceCmd() *cobra.Command {
	var f runFlags
	var userName string
	cmd := &cobra.Command{
		Use:       "service install|uninstall|start|stop|restart|status",
		Short:     "Manage medrelayd as an OS service (systemd, launchd, Windows)",
		Args:      cobra.ExactArgs(1),
		ValidArgs: service.Actions,
		RunE: func(cmd *cobra.Command, args []string) error {
			action := args[0]
			if !slices.Contains(service.Actions, action) {
				return fmt.Errorf("unknown action %q (want %s)", action, strings.Join(service.Actions, ", "))
			}
			runArgs, err := f.args()
			if err != nil {
				return err
			}
			opts := service.Options{Arguments: runArgs, UserName: userName}
			if action == "install" {
				// Fail now, not at the service's first start.
				_, cfg, err := f.resolve()
				if err != nil {
					return err
				}
				// The unit's TimeoutStopSec must outlast the configured
				// shutdown, or systemd kills a graceful stop.
				opts.StopTimeout = stopTimeout(cfg)
			}
			out, err := service.Control(action, opts)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: %s\n", action, out)
			return nil
		},
	}
	f.bind(cmd)
	cmd.Flags().StringVar(&userName, "user", "", "OS user the service runs as (default: medrelay when it exists)")
	return cmd
}
