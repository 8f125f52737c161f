package records

import (
	"os"
	"sync"
)

// groupSync coalesces the fsyncs of a file that several commits in flight
// wrote to: a commit waits for a sync that begins after its write ended, or
// begins one, so commits that finish writing while a sync runs share the
// next one. Measured: with each commit syncing its segment, log and journal
// on its own, a 1M-resource sync took 5.3-5.5 s, against 4.0-4.4 s with the
// journal's sync kept under the connection's lock (fewer syncs at once).
type groupSync struct {
	mu      sync.Mutex
	cond    *sync.Cond
	started uint64 // syncs begun
	done    uint64 // syncs ended
	running bool
	failed  uint64 // the last sync that failed (0: none)
	err     error  // its error
}

// sync returns once a sync of f that began after the call has ended.
func (g *groupSync) sync(f *os.File) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.cond == nil {
		g.cond = sync.NewCond(&g.mu)
	}
	// A sync running now may have begun before the caller's write ended.
	target := g.started + 1
	for g.done < target {
		if g.running {
			g.cond.Wait()
			continue
		}
		g.started++
		n := g.started
		g.running = true
		g.mu.Unlock()
		err := f.Sync()
		g.mu.Lock()
		g.running = false
		g.done = n
		if err != nil {
			g.failed, g.err = n, err
		}
		g.cond.Broadcast()
	}
	// Conservative: a failure of this sync or of any after it fails the
	// caller too.
	if g.failed >= target {
		return g.err
	}
	return nil
}
