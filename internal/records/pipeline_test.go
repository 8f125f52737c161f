package records

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/medrelay/medrelay/internal/store"
)

// Writers committing to one connection at once, one of their commits
// failing (its marker refuses) while others are in flight: the commits
// planned after the failure fail too (they may have been planned against
// it), later ones succeed, and the store holds exactly what the successful
// commits wrote, each resource once, before and after a restart.
func TestPipelineFailureFailsWhatFollowsAndLosesNothing(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	open := reopener(t, dir)
	s := open()
	const writers, commits, ids = 4, 30, 20
	boom := errors.New("boom")
	var mu sync.Mutex
	last := map[int]int{}         // writer → its last successful commit
	okShared := map[string]bool{} // versions of "shared" committed
	failed, followers := 0, 0
	var wg sync.WaitGroup
	for g := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for v := 1; v <= commits; v++ {
				w, _ := s.NewWriter("c")
				for i := range ids {
					w.Put(res("Patient", fmt.Sprintf("g%d-%d", g, i), fmt.Sprint(v), ""))
				}
				shared := fmt.Sprintf("%d.%d", g, v)
				w.Put(res("Patient", "shared", shared, ""))
				var marker Marker
				refused := g == 0 && (v == 10 || v == 20)
				if refused {
					marker = func(*store.Batch, Counts) error { return boom }
				}
				_, err := w.Commit(ctx, marker)
				mu.Lock()
				switch {
				case err == nil:
					last[g] = v
					okShared[shared] = true
				case refused && errors.Is(err, boom):
					failed++
				case refused:
					t.Errorf("commit %d.%d: %v, want its marker's error", g, v, err)
				default:
					// Failed behind an earlier failure, which it names.
					if !errors.Is(err, boom) {
						t.Errorf("commit %d.%d: %v", g, v, err)
					}
					followers++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if failed != 2 {
		t.Fatalf("%d commits failed with their marker's error, want 2", failed)
	}
	t.Logf("%d commits failed behind a failed one", followers)
	// Writer 0's commits after a refused one of its own were planned once
	// that failure had ended, so they succeed.
	if last[0] != commits {
		t.Fatalf("writer 0's last successful commit is %d of %d", last[0], commits)
	}
	check := func(s *Store) {
		t.Helper()
		got, _ := list(t, s, "c", Query{})
		seen := map[string]string{}
		for _, r := range got {
			if _, dup := seen[r.ID]; dup {
				t.Fatalf("%s listed twice", r.ID)
			}
			seen[r.ID] = r.VersionID
		}
		for g := range writers {
			for i := range ids {
				id := fmt.Sprintf("g%d-%d", g, i)
				if want := fmt.Sprint(last[g]); last[g] > 0 && seen[id] != want {
					t.Fatalf("%s at version %q, want %q (writer %d's last commit)", id, seen[id], want, g)
				}
			}
		}
		if !okShared[seen["shared"]] {
			t.Fatalf("shared at version %q, which no successful commit wrote", seen["shared"])
		}
		if n, _ := s.Count(ctx, "c"); n != len(got) {
			t.Fatalf("Count %d, listed %d", n, len(got))
		}
		for id, v := range seen {
			if r, err := s.Get(ctx, "c", "Patient", id); err != nil || r.VersionID != v {
				t.Fatalf("Get %s = %q, %v; listed at %q", id, r.VersionID, err, v)
			}
		}
	}
	check(s)
	s.Close()
	s = open()
	defer s.Close()
	check(s)
}

// Two resources in flight with one hash (forced here): each finds its own
// planned change, before and after the other's commit ends and is pruned.
func TestPipelineHeadsWithASharedHash(t *testing.T) {
	p := newPipeline()
	const h = 42
	t1 := p.begin()
	p.plan(t1, h, "Patient", "a", head{seq: 1})
	t2 := p.begin()
	p.plan(t2, h, "Patient", "b", head{seq: 2})
	p.plan(t2, h, "Patient", "a", head{seq: 3})
	for _, c := range []struct {
		id   string
		want uint64
	}{{"a", 3}, {"b", 2}} {
		if got, ok := p.head(h, "Patient", c.id); !ok || got.seq != c.want {
			t.Fatalf("%s: %+v %v, want seq %d", c.id, got, ok, c.want)
		}
	}
	if _, ok := p.head(h, "Patient", "c"); ok {
		t.Fatal("c was never planned")
	}
	p.end(nil) // t1
	t3 := p.begin()
	p.plan(t3, h, "Patient", "b", head{seq: 4})
	if got, ok := p.head(h, "Patient", "b"); !ok || got.seq != 4 {
		t.Fatalf("b after t1 ended: %+v %v", got, ok)
	}
	if got, ok := p.head(h, "Patient", "a"); !ok || got.seq != 3 {
		t.Fatalf("a after t1 ended: %+v %v", got, ok)
	}
	p.end(nil) // t2
	p.end(nil) // t3
	p.begin()
	if len(p.heads) != 0 || len(p.clash) != 0 {
		t.Fatalf("after every commit ended: %d heads, %d clashing", len(p.heads), len(p.clash))
	}
}
