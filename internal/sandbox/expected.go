package sandbox

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/medrelay/medrelay/internal/sandbox/synth"
)

// ExportDigest is an order-independent digest of (type, id, versionId)
// triples: the count and the sum (mod 2^64) of the first eight bytes,
// big-endian, of SHA-256("Type/id/versionId") of each resource. A sync
// engine computes the same over what it stored and compares strings.
type ExportDigest struct {
	N   int
	Sum uint64
}

// Add counts one resource.
func (d *ExportDigest) Add(typ, id, versionID string) {
	h := sha256.Sum256([]byte(typ + "/" + id + "/" + versionID))
	d.Sum += binary.BigEndian.Uint64(h[:8])
	d.N++
}

// String is "N:hex".
func (d ExportDigest) String() string { return fmt.Sprintf("%d:%016x", d.N, d.Sum) }

// ExportParams describe an export as a kick-off would.
type ExportParams struct {
	Tenant      string
	Level       string // system (default), patient, group
	Group       string // for level group
	Types       []string
	Since       time.Time
	TypeFilters []string // "Observation?category=laboratory"
}

// ExportExpectation is what an export with those params must return.
type ExportExpectation struct {
	Counts  map[string]int // resource type -> resources
	Total   int
	Digest  string   // ExportDigest over every exported resource
	Deleted []string // "Type/id" listed in the manifest's deleted files, sorted
}

// ExpectedExport computes, straight from the data and its changes (not
// through the export machinery or HTTP), what an export would contain now.
// Types the tenant does not serve are an error; token scopes are not applied.
func (s *Sandbox) ExpectedExport(p ExportParams) (ExportExpectation, error) {
	t, err := s.tenant(p.Tenant)
	if err != nil {
		return ExportExpectation{}, err
	}
	var types []synth.Type
	for _, n := range p.Types {
		ty, ok := synth.ParseType(n)
		if !ok || !t.serves(ty) {
			return ExportExpectation{}, fmt.Errorf("%w: type %q", ErrBadConfig, n)
		}
		types = append(types, ty)
	}
	if len(types) == 0 {
		for _, ty := range t.served {
			if (p.Level == "" || p.Level == "system") || !ty.Shared() {
				types = append(types, ty)
			}
		}
	}
	members := map[int]bool{}
	all := true
	if p.Level == "group" {
		ps, ok := t.groupPatients(p.Group)
		if !ok {
			return ExportExpectation{}, fmt.Errorf("%w: %s", errNoGroup, p.Group)
		}
		if ps != nil {
			all = false
			for _, x := range ps {
				members[x] = true
			}
		}
	}
	filters := map[synth.Type][]*filter{}
	for _, tf := range p.TypeFilters {
		name, q, _ := strings.Cut(tf, "?")
		ty, ok := synth.ParseType(name)
		vals, err := url.ParseQuery(q)
		if !ok || err != nil {
			return ExportExpectation{}, fmt.Errorf("%w: _typeFilter %q", ErrBadConfig, tf)
		}
		f, err := t.parseTypeFilter(vals)
		if err != nil {
			return ExportExpectation{}, err
		}
		filters[ty] = append(filters[ty], f)
	}
	ov := t.ov.load()
	exp := ExportExpectation{Counts: map[string]int{}}
	var dg ExportDigest
	for _, ty := range dedupTypes(types) {
		for p0 := -1; p0 < t.data.Patients(); p0++ {
			if ty.Shared() != (p0 == -1) || p0 >= 0 && !all && !members[p0] {
				continue
			}
			for k := range t.data.Count(p0, ty) {
				ref := synth.Ref{Type: ty, Patient: p0, K: k}
				st := ov.state(t.data, ref)
				if !p.Since.IsZero() && !st.lastUpdated.After(p.Since) {
					continue
				}
				if st.deleted {
					if !p.Since.IsZero() {
						exp.Deleted = append(exp.Deleted, ty.String()+"/"+ref.ID())
					}
					continue
				}
				if fs := filters[ty]; len(fs) > 0 {
					ok := false
					for _, f := range fs {
						ok = ok || f.match(&st)
					}
					if !ok {
						continue
					}
				}
				exp.Counts[ty.String()]++
				exp.Total++
				dg.Add(ty.String(), ref.ID(), fmt.Sprint(st.meta.Version))
			}
		}
	}
	sort.Strings(exp.Deleted)
	exp.Digest = dg.String()
	return exp, nil
}
