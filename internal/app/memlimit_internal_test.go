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
