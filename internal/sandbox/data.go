package sandbox

import (
	"fmt"
	"sync/atomic"
	"time"

	"github.com/medrelay/medrelay/internal/sandbox/synth"
)

// overlay is an immutable snapshot of the changes made to the generated
// data (updates and deletions). Mutate swaps in a new one; readers load it
// once per request, so serving never takes a lock per resource.
type overlay struct {
	m         map[synth.Ref]override
	byPatient map[int]int
	shared    int
}

var emptyOverlay = &overlay{m: map[synth.Ref]override{}, byPatient: map[int]int{}}

type overlayHolder struct{ p atomic.Pointer[overlay] }

func (h *overlayHolder) load() *overlay {
	if o := h.p.Load(); o != nil {
		return o
	}
	return emptyOverlay
}

// get returns the override of ref, if any.
func (o *overlay) get(ref synth.Ref) (override, bool) {
	if len(o.m) == 0 {
		return override{}, false
	}
	if ref.Type.Shared() {
		if o.shared == 0 {
			return override{}, false
		}
	} else if o.byPatient[ref.Patient] == 0 {
		return override{}, false
	}
	ov, ok := o.m[ref]
	return ov, ok
}

// resourceState is a resource's current meta.
type resourceState struct {
	meta        synth.Meta
	lastUpdated time.Time
	deleted     bool
	header      synth.Header
}

func (o *overlay) state(d *synth.Dataset, ref synth.Ref) resourceState {
	return o.stateWith(d.Header(ref), ref)
}

func (o *overlay) stateC(c *synth.Cursor, ref synth.Ref) resourceState {
	return o.stateWith(c.Header(ref), ref)
}

func (o *overlay) stateWith(h synth.Header, ref synth.Ref) resourceState {
	st := resourceState{header: h, meta: synth.Meta{Version: 1}, lastUpdated: time.Unix(h.LastUpdated, 0).UTC()}
	if ov, ok := o.get(ref); ok {
		st.meta = ov.meta
		st.deleted = ov.deleted
		st.lastUpdated = time.Unix(ov.meta.LastUpdated, int64(ov.meta.Nanos)).UTC()
	}
	return st
}

// MutateRequest changes a tenant's data as time passes in a real EHR.
type MutateRequest struct {
	Tenant string `json:"tenant"`
	// Update this many resources: new versionId, lastUpdated = now.
	Update int `json:"update"`
	// Delete this many resources (never Patient or shared resources).
	Delete int `json:"delete"`
	// Types limits the choice; empty = every patient-compartment type served.
	Types []string `json:"types,omitempty"`
}

// MutateResult lists what changed, as "Type/id".
type MutateResult struct {
	Updated []string  `json:"updated"`
	Deleted []string  `json:"deleted"`
	At      time.Time `json:"at"`
}

// Mutate updates and deletes resources (POST {base}/admin/mutate). Reads of
// a deleted resource answer 410; an export with _since before At returns the
// updated ones and lists the deleted ones in the manifest's deleted array.
func (s *Sandbox) Mutate(req MutateRequest) (MutateResult, error) {
	t, err := s.tenant(req.Tenant)
	if err != nil {
		return MutateResult{}, err
	}
	if req.Update < 0 || req.Delete < 0 || req.Update+req.Delete > 100000 {
		return MutateResult{}, fmt.Errorf("%w: update/delete out of range", ErrBadConfig)
	}
	var types []synth.Type
	if len(req.Types) > 0 {
		for _, n := range req.Types {
			ty, ok := synth.ParseType(n)
			if !ok || ty.Shared() || !t.serves(ty) {
				return MutateResult{}, fmt.Errorf("%w: type %q cannot be mutated", ErrBadConfig, n)
			}
			types = append(types, ty)
		}
	} else {
		for _, ty := range t.served {
			if !ty.Shared() {
				types = append(types, ty)
			}
		}
	}
	now := s.now().UTC().Truncate(time.Microsecond)
	t.mu.Lock()
	defer t.mu.Unlock()
	old := t.ov.load()
	next := &overlay{m: make(map[synth.Ref]override, len(old.m)+req.Update+req.Delete), byPatient: map[int]int{}, shared: old.shared}
	for k, v := range old.m {
		next.m[k] = v
	}
	for k, v := range old.byPatient {
		next.byPatient[k] = v
	}
	t.mutations++
	r := mutRNG(uint64(s.cfg.Seed), t.mutations)
	res := MutateResult{At: now}
	pick := func(allowPatient bool) (synth.Ref, bool) {
		for range 1000 {
			ty := types[r.intn(len(types))]
			if ty == synth.Patient && !allowPatient {
				continue
			}
			p := r.intn(t.data.Patients())
			n := t.data.Count(p, ty)
			if n == 0 {
				continue
			}
			ref := synth.Ref{Type: ty, Patient: p, K: r.intn(n)}
			if ov, ok := next.m[ref]; ok && ov.deleted {
				continue
			}
			return ref, true
		}
		return synth.Ref{}, false
	}
	apply := func(ref synth.Ref, del bool) {
		ov, existed := next.m[ref]
		v := 1
		if existed {
			v = ov.meta.Version
		}
		next.m[ref] = override{meta: synth.Meta{Version: v + 1, LastUpdated: now.Unix(), Nanos: now.Nanosecond()}, deleted: del}
		if !existed {
			next.byPatient[ref.Patient]++
		}
		name := ref.Type.String() + "/" + ref.ID()
		if del {
			res.Deleted = append(res.Deleted, name)
		} else {
			res.Updated = append(res.Updated, name)
		}
	}
	for range req.Update {
		if ref, ok := pick(true); ok {
			apply(ref, false)
		}
	}
	for range req.Delete {
		if ref, ok := pick(false); ok {
			apply(ref, true)
		}
	}
	t.ov.p.Store(next)
	return res, nil
}

// mutRNG is a splitmix64 stream for choosing what to mutate.
type mutRand struct{ s uint64 }

func mutRNG(seed, n uint64) *mutRand {
	return &mutRand{s: seed*0x9E3779B97F4A7C15 ^ n*0xD1B54A32D192ED03}
}

func (r *mutRand) intn(n int) int {
	r.s += 0x9E3779B97F4A7C15
	z := r.s
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
	z = (z ^ (z >> 27)) * 0x94D049BB133111EB
	z ^= z >> 31
	return int(z % uint64(n))
}
