package records

import (
	"fmt"
	"sync"
)

// Commits to one connection are pipelined. A commit is planned under the
// connection's lock (what each change does, its sequence, where its body and
// log blocks will go, its key index entries), then its bodies are sealed and
// written and its log blocks written, both synced, outside the lock and
// while the next commits are planned; it is then committed (the Badger
// transaction, then published to readers) strictly in the order planned.
// Why: with the whole commit under the lock, a bulk sync's eight writers
// took turns and the agent used one of the machine's two cores (a
// 1M-resource sync spent 2.3 s planning and 2.6 s writing and syncing, one
// after the other).
//
// A commit is planned against the commits planned before it, published or
// not: heads holds the newest planned change of each resource a commit in
// flight touched. If a commit fails, the ones planned after it depend on
// it: they fail too (broken), and planning waits until every commit in
// flight has ended, then starts again from what is published.
type pipeline struct {
	mu     sync.Mutex
	turn   *sync.Cond
	issued uint64 // tickets handed out; the next is issued+1
	done   uint64 // tickets ended (committed or failed), in order
	broken error  // the first failure since the pipeline was last empty

	// Under the connection's lock. heads is keyed by the key index's hash
	// of type/id (computed anyway); a resource whose hash another resource
	// in flight holds goes to clash, by type/id.
	heads  map[uint64]flight
	clash  map[string]flight
	byTurn []turnKeys // keys each ticket in flight put in heads and clash
}

type flight struct {
	h       head
	ticket  uint64
	typ, id string
}

type turnKeys struct {
	ticket uint64
	hashes []uint64
	clash  []string
}

func newPipeline() *pipeline {
	p := &pipeline{heads: map[uint64]flight{}, clash: map[string]flight{}}
	p.turn = sync.NewCond(&p.mu)
	return p
}

// pipe returns conn's pipeline.
func (s *Store) pipe(conn string) *pipeline {
	if p, ok := s.pipes.Load(conn); ok {
		return p.(*pipeline)
	}
	p, _ := s.pipes.LoadOrStore(conn, newPipeline())
	return p.(*pipeline)
}

// begin issues the next ticket, once the pipeline is healthy: after a
// failure it waits for every commit in flight to end and forgets what they
// planned. It also forgets the heads of commits that have ended (readers of
// the log find those). Callers hold the connection's lock.
func (p *pipeline) begin() uint64 {
	p.mu.Lock()
	if p.broken != nil {
		for p.done != p.issued {
			p.turn.Wait()
		}
		p.broken = nil
		clear(p.heads)
		clear(p.clash)
		p.byTurn = p.byTurn[:0]
	}
	done := p.done
	p.issued++
	t := p.issued
	p.mu.Unlock()
	// Prune what ended. A key planned again later stays (its newer ticket).
	i := 0
	for ; i < len(p.byTurn) && p.byTurn[i].ticket <= done; i++ {
		for _, h := range p.byTurn[i].hashes {
			if f, ok := p.heads[h]; ok && f.ticket <= done {
				delete(p.heads, h)
			}
		}
		for _, k := range p.byTurn[i].clash {
			if f, ok := p.clash[k]; ok && f.ticket <= done {
				delete(p.clash, k)
			}
		}
	}
	p.byTurn = p.byTurn[i:]
	return t
}

// head is the newest planned change of a resource in flight (h is its
// keyOf hash).
func (p *pipeline) head(h uint64, typ, id string) (head, bool) {
	if f, ok := p.heads[h]; ok && f.typ == typ && f.id == id {
		return f.h, true
	}
	if len(p.clash) > 0 {
		if f, ok := p.clash[typ+"/"+id]; ok {
			return f.h, true
		}
	}
	return head{}, false
}

// plan records that ticket t changes the resource to hd. Callers hold the
// connection's lock.
func (p *pipeline) plan(t, h uint64, typ, id string, hd head) {
	if n := len(p.byTurn); n == 0 || p.byTurn[n-1].ticket != t {
		p.byTurn = append(p.byTurn, turnKeys{ticket: t})
	}
	tk := &p.byTurn[len(p.byTurn)-1]
	f := flight{h: hd, ticket: t, typ: typ, id: id}
	if o, ok := p.heads[h]; !ok || o.typ == typ && o.id == id {
		p.heads[h] = f
		tk.hashes = append(tk.hashes, h)
		return
	}
	k := typ + "/" + id
	p.clash[k] = f
	tk.clash = append(tk.clash, k)
}

// await waits for ticket t's turn to commit and returns the failure of an
// earlier commit, if any (then t must not commit).
func (p *pipeline) await(t uint64) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for p.done+1 != t {
		p.turn.Wait()
	}
	if p.broken != nil {
		return fmt.Errorf("records: an earlier commit failed: %w", p.broken)
	}
	return nil
}

// end ends ticket t's turn; err is its failure (nil: committed).
func (p *pipeline) end(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil && p.broken == nil {
		p.broken = err
	}
	p.done++
	p.turn.Broadcast()
}

// idle waits until no commit is in flight. Callers hold the connection's
// lock (so none starts).
func (p *pipeline) idle() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for p.done != p.issued {
		p.turn.Wait()
	}
}
