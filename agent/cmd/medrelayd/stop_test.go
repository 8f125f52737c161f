package main

import (
	"testing"
	"time"

	"github.com/medrelay/medrelay/internal/config"
)

// The installed unit's stop timeout outlasts the configured shutdown (a
// longer shutdown_timeout must not get the agent killed mid-stop).
func TestStopTimeoutOutlastsShutdown(t *testing.T) {
	var cfg config.Config
	cfg.ShutdownTimeout.Duration = 8 * time.Second
	if got := stopTimeout(cfg); got != 15*time.Second {
		t.Fatalf("default: %v, want the packaged unit's 15s", got)
	}
	cfg.ShutdownTimeout.Duration = 30 * time.Second
	if got := stopTimeout(cfg); got <= 30*time.Second {
		t.Fatalf("shutdown_timeout 30s: stop timeout %v", got)
	}
}
