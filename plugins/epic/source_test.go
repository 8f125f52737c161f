package main

import (
	"testing"

	"github.com/medrelay/medrelay/internal/sandbox/sandboxtest"
	"github.com/medrelay/medrelay/plugins/sdk/sdktest"
)

// The plugin against the sandbox tenant with the matching profile.
func TestAgainstSandbox(t *testing.T) {
	sb := sandboxtest.Start(t, sandboxtest.WithOpenRegistration(), sandboxtest.WithPatients(3))
	sdktest.Run(t, newSource(), sdktest.Config{SandboxURL: sb.URL(), Tenant: "epic"})
}
