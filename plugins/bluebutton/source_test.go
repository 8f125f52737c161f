package main

import (
	"testing"

	"github.com/medrelay/medrelay/internal/sandbox"
	"github.com/medrelay/medrelay/internal/sandbox/sandboxtest"
	"github.com/medrelay/medrelay/plugins/sdk/sdktest"
)

// Blue Button takes confidential clients only (with PKCE, which the
// harness's login always sends).
func TestAgainstSandbox(t *testing.T) {
	sb := sandboxtest.Start(t, sandboxtest.WithPatients(3), sandboxtest.WithClients(sandbox.ClientConfig{
		Tenant: "bluebutton", ClientID: "bb-app", ClientSecret: "bb-secret", RedirectURIs: []string{"http://127.0.0.1/callback"},
	}))
	h := sdktest.Run(t, newSource(), sdktest.Config{SandboxURL: sb.URL(), Tenant: "bluebutton", ClientID: "bb-app", ClientSecret: "bb-secret"})
	if !h.Desc.GetAuthProfile().GetTrailingSlash() || !h.Desc.GetAuthProfile().GetConfidentialOnly() {
		t.Error("the Blue Button profile must say trailing slash and confidential only")
	}
}
