package connections

import (
	"container/heap"
	"context"
	"sync"
	"time"
)

// scheduler keeps every refreshable connection in a heap ordered by its
// next refresh time and hands due ones to a few workers. It is rebuilt from
// the store at start, so schedules survive restarts.
type scheduler struct {
	mu    sync.Mutex
	h     refreshHeap
	pos   map[string]*item
	wake  chan struct{}
	queue chan string
}

type item struct {
	id    string
	at    time.Time
	index int
}

type refreshHeap []*item

func (h refreshHeap) Len() int           { return len(h) }
func (h refreshHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h refreshHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i]; h[i].index, h[j].index = i, j }
func (h *refreshHeap) Push(x any)        { it := x.(*item); it.index = len(*h); *h = append(*h, it) }
func (h *refreshHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	it.index = -1
	return it
}

func newScheduler() *scheduler {
	return &scheduler{pos: map[string]*item{}, wake: make(chan struct{}, 1), queue: make(chan string, 1024)}
}

// consider (re)schedules c according to its NextRefreshAt, or drops it when
// it has nothing left to refresh.
func (s *scheduler) consider(c Connection) {
	if (c.State != Active && c.State != RefreshFailed) || c.NextRefreshAt.IsZero() {
		s.forget(c.ID)
		return
	}
	s.mu.Lock()
	if it, ok := s.pos[c.ID]; ok {
		it.at = c.NextRefreshAt
		heap.Fix(&s.h, it.index)
	} else {
		it := &item{id: c.ID, at: c.NextRefreshAt}
		heap.Push(&s.h, it)
		s.pos[c.ID] = it
	}
	first := s.h[0].id == c.ID
	s.mu.Unlock()
	if first {
		s.poke()
	}
}

func (s *scheduler) forget(id string) {
	s.mu.Lock()
	if it, ok := s.pos[id]; ok {
		heap.Remove(&s.h, it.index)
		delete(s.pos, id)
	}
	s.mu.Unlock()
}

func (s *scheduler) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Scheduled reports how many connections are waiting for a refresh.
func (m *Manager) Scheduled() int {
	m.sched.mu.Lock()
	defer m.sched.mu.Unlock()
	return len(m.sched.h)
}

// Run refreshes connections in the background until ctx ends; it returns
// once every worker has stopped and every refresh whose caller left early
// has ended (no refresh is left half done when the store closes).
func (m *Manager) Run(ctx context.Context) {
	s := m.sched
	var wg sync.WaitGroup
	for range m.policy.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-ctx.Done():
					return
				case id := <-s.queue:
					m.refreshNow(ctx, id)
				}
			}
		}()
	}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		wait := s.dispatch(ctx, m.now())
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			wg.Wait()
			m.detached.wait()
			return
		case <-s.wake:
		case <-timer.C:
		}
	}
}

// dispatch queues every due connection and returns how long to sleep.
func (s *scheduler) dispatch(ctx context.Context, now time.Time) time.Duration {
	for {
		s.mu.Lock()
		if len(s.h) == 0 {
			s.mu.Unlock()
			return time.Hour
		}
		next := s.h[0]
		if next.at.After(now) {
			// Cap the sleep so a clock jump is noticed within a minute.
			wait := min(next.at.Sub(now), time.Minute)
			s.mu.Unlock()
			return wait
		}
		heap.Pop(&s.h)
		delete(s.pos, next.id)
		s.mu.Unlock()
		select {
		case s.queue <- next.id:
		case <-ctx.Done():
			return 0
		}
	}
}
