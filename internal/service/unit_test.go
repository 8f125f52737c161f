package service_test

import (
	"strings"
	"testing"

	"github.com/medrelay/medrelay/internal/service"
)

func TestUnitStopsPluginsAndRestartsOnFailure(t *testing.T) {
	u := service.SystemdUnit(15)
	for _, want := range []string{
		"KillMode=control-group", // plugins die with the agent
		"TimeoutStopSec=15",
		"Restart={{Restart}}",
		"NoNewPrivileges=true",
		"ProtectSystem=strict",
		"ReadWritePaths=/var/lib/medrelay /run/medrelay",
		"ExecStart={{Path | cmdEscape}}{{range Arguments}}",
	} {
		if !strings.Contains(u, want) {
			t.Errorf("unit lacks %q", want)
		}
	}
}
