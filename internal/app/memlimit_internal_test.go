package app

import (
	"log/slog"
	"runtime/debug"
	"testing"
)

// GOMEMLIMIT in the environment wins over memory_limit (docs/administrators.md,
// Memory), and no memory_limit leaves the runtime's limit alone. The runtime
// read GOMEMLIMIT at start, so setting it here only tells applyMemoryLimit
// to keep its hands off.
func TestMemoryLimitYieldsToGOMEMLIMIT(t *testing.T) {
	old := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(old) })
	log := slog.New(slog.DiscardHandler)

	t.Setenv("GOMEMLIMIT", "")
	applyMemoryLimit(0, log)
	if got := debug.SetMemoryLimit(-1); got != old {
		t.Fatalf("no memory_limit changed the soft limit to %d (was %d)", got, old)
	}

	t.Setenv("GOMEMLIMIT", "1GiB")
	applyMemoryLimit(3<<30, log)
	if got := debug.SetMemoryLimit(-1); got != old {
		t.Fatalf("memory_limit set the soft limit to %d though GOMEMLIMIT is set", got)
	}
}

// The agent collects at GOGC=50 unless GOGC is set in its environment.
func TestGCPercentYieldsToGOGC(t *testing.T) {
	old := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(old) })
	log := slog.New(slog.DiscardHandler)

	t.Setenv("GOGC", "")
	applyGCPercent(log)
	if got := debug.SetGCPercent(100); got != gcPercent {
		t.Fatalf("GOGC unset: the agent collects at %d, want %d", got, gcPercent)
	}
	t.Setenv("GOGC", "200")
	applyGCPercent(log)
	if got := debug.SetGCPercent(100); got != 100 {
		t.Fatalf("GOGC set: the agent changed the collector's target to %d", got)
	}
}
