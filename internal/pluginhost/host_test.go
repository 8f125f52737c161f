//go:build unix

package pluginhost

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/medrelay/medrelay/plugins/sdk"
	pluginv1 "github.com/medrelay/medrelay/proto/gen/medrelay/plugin/v1"
)

func TestLoadsDescribesAndReads(t *testing.T) {
	t.Setenv("MEDRELAY_TEST_AGENT_SECRET", "do-not-leak")
	sb := newSandbox(t)
	tokens, patient := patientLogin(t, sb, "generic")
	o, _ := testOptions(t, installDir(t, "smart"), tokens)
	h := startHost(t, o)

	infos := h.List()
	if len(infos) != 1 || infos[0].State != StateRunning {
		t.Fatalf("plugins: %+v", infos)
	}
	i := infos[0]
	if i.Describe.GetName() != "smart" || i.PID <= 0 || len(i.Describe.GetCapabilities()) == 0 {
		t.Fatalf("info: %+v", i)
	}
	// The plugin does not inherit the agent's environment.
	if env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", i.PID)); err == nil {
		if strings.Contains(string(env), "MEDRELAY_TEST_AGENT_SECRET") || strings.Contains(string(env), "PATH=") {
			t.Errorf("plugin environment carries the agent's: %q", strings.ReplaceAll(string(env), "\x00", " "))
		}
		if !strings.Contains(string(env), MagicCookieKey) {
			t.Errorf("plugin environment lacks the handshake cookie")
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn := &pluginv1.Connection{Id: "c1", FhirBaseUrl: sb.FHIRBase("generic"), PatientId: patient}
	r, err := h.Read(ctx, "smart", &pluginv1.ReadRequest{Connection: conn, ResourceType: "Patient", Id: patient})
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if r.GetType() != "Patient" || r.GetId() != patient || len(r.GetJson()) == 0 {
		t.Fatalf("read: %+v", r)
	}
	_, err = h.Read(ctx, "smart", &pluginv1.ReadRequest{Connection: conn, ResourceType: "Patient", Id: "no-such-patient"})
	if !errors.Is(err, ErrSourceGone) {
		t.Fatalf("read missing: %v", err)
	}
	var n int
	err = h.Search(ctx, "smart", &pluginv1.SearchRequest{Connection: conn, ResourceType: "Observation", Params: []*pluginv1.SearchParam{{Name: "patient", Value: patient}}, PageSize: 3}, func(r *pluginv1.SearchResponse) error {
		n += len(r.GetResources())
		return nil
	})
	if err != nil || n == 0 {
		t.Fatalf("search: %d %v", n, err)
	}
}

// The agent and the SDK agree on the handshake.
func TestHandshakeMatchesSDK(t *testing.T) {
	if sdk.MagicCookieKey != MagicCookieKey || sdk.MagicCookieValue != MagicCookieValue {
		t.Fatal("handshake cookie differs between pluginhost and plugins/sdk")
	}
	for i, v := range sdk.ProtocolVersions {
		if i >= len(ProtocolVersions) || ProtocolVersions[i] != v {
			t.Fatalf("protocol versions: sdk %v, host %v", sdk.ProtocolVersions, ProtocolVersions)
		}
	}
}
