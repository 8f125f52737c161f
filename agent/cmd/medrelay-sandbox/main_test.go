package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
)

func cdsServer(t *testing.T, cards string) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/cds-services" {
			_, _ = io.WriteString(w, `{"services":[{"hook":"patient-view","id":"svc","description":"d","prefetch":{"p":"Patient/{{context.patientId}}"}}]}`)
			return
		}
		if !strings.HasPrefix(r.Header.Get("Authorization"), "Bearer ey") {
			http.Error(w, "no jwt", 401)
			return
		}
		_, _ = io.WriteString(w, cards)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func run(t *testing.T, args ...string) (string, error) {
	cmd := newRootCmd()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := cmd.ExecuteContext(ctx)
	return out.String(), err
}

func TestCDSCallCommand(t *testing.T) {
	good := cdsServer(t, `{"cards":[{"summary":"Flu shot due","indicator":"warning","source":{"label":"Immunizer"}}]}`)
	out, err := run(t, "cds", "call", good.URL+"/cds-services/svc", "--hook", "patient-view", "--tenant", "epic", "--patient", "pat-1", "--prefetch")
	if err != nil || !strings.Contains(out, "[warning] Flu shot due") {
		t.Fatalf("good service: %v\n%s", err, out)
	}
	bad := cdsServer(t, `{"cards":[{"summary":"x","indicator":"loud","source":{}}]}`)
	out, err = run(t, "cds", "call", bad.URL+"/cds-services/svc")
	if err == nil || !strings.Contains(out, "INVALID") {
		t.Fatalf("invalid cards not reported: %v\n%s", err, out)
	}
}

func TestFlagsToConfig(t *testing.T) {
	cmd := &cobra.Command{Use: "x"}
	var f flags
	f.register(cmd)
	if err := cmd.Flags().Parse([]string{"--patients", "3", "--auto-approve", "--faults", `{"tenant":"epic","refuse_refresh":true}`}); err != nil {
		t.Fatal(err)
	}
	cfg, err := f.toConfig(cmd)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Patients != 3 || !cfg.AutoApprove || len(cfg.Faults) != 1 || !cfg.Faults[0].RefuseRefresh || cfg.Addr != "127.0.0.1:9100" {
		t.Fatalf("config %+v", cfg)
	}
	if err := cmd.Flags().Parse([]string{"--faults", `{"status":42}`}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.toConfig(cmd); err == nil {
		t.Fatal("bad --faults accepted")
	}
}
