// Package synth generates the sandbox's synthetic patients on the fly.
//
// Every resource is a pure function of (seed, patient, type, ordinal): nothing
// is held in memory, so a 20,000-patient export streams in constant memory and
// the same seed always yields the same bytes. Resources are written by
// appending to a byte slice (no reflection) because the NDJSON serving rate is
// benchmarked against a plain file server.
package synth

import (
	"strconv"
	"strings"
)

// Type identifies a resource type the generator produces.
type Type uint8

// Resource types. Patient-compartment types first, shared ones after.
const (
	Patient Type = iota
	Encounter
	Condition
	Observation
	MedicationRequest
	AllergyIntolerance
	Immunization
	Procedure
	DiagnosticReport
	DocumentReference
	Coverage
	ExplanationOfBenefit
	Practitioner
	Organization
	Location
	NumTypes
)

var typeNames = [NumTypes]string{"Patient", "Encounter", "Condition", "Observation", "MedicationRequest",
	"AllergyIntolerance", "Immunization", "Procedure", "DiagnosticReport", "DocumentReference", "Coverage",
	"ExplanationOfBenefit", "Practitioner", "Organization", "Location"}

var idPrefix = [NumTypes]string{"pat", "enc", "cond", "obs", "medrx", "allergy", "imm", "proc", "dxr", "doc", "cov", "eob",
	"prac", "org", "loc"}

// Shared resource counts (not per patient).
const (
	NumPractitioners = 20
	NumOrganizations = 8 // 0..4 providers, 5..7 payers
	NumLocations     = 10
)

func (t Type) String() string {
	if t < NumTypes {
		return typeNames[t]
	}
	return "Unknown"
}

// Shared reports whether the type is outside any patient compartment.
func (t Type) Shared() bool { return t >= Practitioner && t < NumTypes }

// ParseType maps a FHIR resource type name to a Type.
func ParseType(name string) (Type, bool) {
	for i, n := range typeNames {
		if n == name {
			return Type(i), true
		}
	}
	return 0, false
}

// AllTypes in export order.
func AllTypes() []Type {
	out := make([]Type, NumTypes)
	for i := range out {
		out[i] = Type(i)
	}
	return out
}

// Anchor is the generated data's "now": every generated lastUpdated is at or
// before it (Unix seconds, 2025-06-30T00:00:00Z).
const Anchor int64 = 1751241600

// Dataset is one tenant's synthetic population.
type Dataset struct {
	seed     uint64
	patients int
}

// New returns the dataset for seed with n patients.
func New(seed int64, n int) *Dataset {
	return &Dataset{seed: uint64(seed)*0x9E3779B97F4A7C15 + 0x2545F4914F6CDD1D, patients: n}
}

// Patients is the number of patients.
func (d *Dataset) Patients() int { return d.patients }

type rng struct{ s uint64 }

func (r *rng) next() uint64 {
	r.s += 0x9E3779B97F4A7C15
	z := r.s
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
	z = (z ^ (z >> 27)) * 0x94D049BB133111EB
	return z ^ (z >> 31)
}

func (r *rng) intn(n int) int { return int(r.next() % uint64(n)) }

func (d *Dataset) rng(p int, t Type, k int) rng {
	r := rng{s: d.seed ^ uint64(p+1)*0xC2B2AE3D27D4EB4F ^ uint64(t)<<58 ^ uint64(k+1)*0x165667B19E3779F9}
	r.next()
	return r
}

// Count is how many resources of type t patient p has (for shared types, p is ignored).
func (d *Dataset) Count(p int, t Type) int {
	switch t {
	case Patient:
		return 1
	case Practitioner:
		return NumPractitioners
	case Organization:
		return NumOrganizations
	case Location:
		return NumLocations
	}
	r := d.rng(p, NumTypes, int(t))
	switch t {
	case Encounter, ExplanationOfBenefit:
		r = d.rng(p, NumTypes, int(Encounter))
		return 25 + r.intn(21)
	case Condition:
		return 8 + r.intn(13)
	case Observation:
		return 200 + r.intn(101)
	case MedicationRequest:
		return 10 + r.intn(16)
	case AllergyIntolerance:
		return r.intn(6)
	case Immunization:
		return 8 + r.intn(13)
	case Procedure:
		return 5 + r.intn(11)
	case DiagnosticReport:
		return 15 + r.intn(16)
	case DocumentReference:
		return 8 + r.intn(13)
	case Coverage:
		return 1 + r.intn(2)
	}
	return 0
}

// Ref names one generated resource. For shared types Patient is -1.
type Ref struct {
	Type    Type
	Patient int
	K       int
}

// ID is the resource's logical id.
func (r Ref) ID() string { return string(r.AppendID(nil)) }

// AppendID appends the logical id.
func (r Ref) AppendID(b []byte) []byte {
	b = append(b, idPrefix[r.Type]...)
	b = append(b, '-')
	if r.Type.Shared() {
		return appendInt(b, r.K)
	}
	b = appendInt(b, r.Patient)
	if r.Type == Patient {
		return b
	}
	b = append(b, '-')
	return appendInt(b, r.K)
}

// PatientID is the id of patient p.
func PatientID(p int) string { return Ref{Type: Patient, Patient: p}.ID() }

// ParseID resolves a logical id of type t; ok is false when no such resource exists.
func (d *Dataset) ParseID(t Type, id string) (Ref, bool) {
	if t >= NumTypes {
		return Ref{}, false
	}
	rest, ok := strings.CutPrefix(id, idPrefix[t]+"-")
	if !ok {
		return Ref{}, false
	}
	if t.Shared() {
		k, err := strconv.Atoi(rest)
		if err != nil || k < 0 || k >= d.Count(-1, t) || strconv.Itoa(k) != rest {
			return Ref{}, false
		}
		return Ref{Type: t, Patient: -1, K: k}, true
	}
	ps, ks := rest, "0"
	if t != Patient {
		var found bool
		ps, ks, found = strings.Cut(rest, "-")
		if !found {
			return Ref{}, false
		}
	}
	p, err1 := strconv.Atoi(ps)
	k, err2 := strconv.Atoi(ks)
	if err1 != nil || err2 != nil || p < 0 || p >= d.patients || k < 0 || k >= d.Count(p, t) ||
		strconv.Itoa(p) != ps || strconv.Itoa(k) != ks {
		return Ref{}, false
	}
	return Ref{Type: t, Patient: p, K: k}, true
}

// Header is what search and export filters need, computed without writing
// the resource.
type Header struct {
	Ref         Ref
	Date        int64 // clinical date (Unix seconds); 0 when the type has none
	LastUpdated int64 // Unix seconds
	Category    string
	Code        string // system|code of the first coding
	Status      string
	code        uint8 // index of Code in its table
	enc         int   // encounter index the resource belongs to
}

type span struct{ start, length int64 }

func (d *Dataset) span(p int) span {
	r := d.rng(p, NumTypes, 99)
	years := 2 + r.intn(11)
	length := int64(years) * 365 * 86400
	return span{start: Anchor - length - 30*86400, length: length}
}

func (d *Dataset) encounterDate(p, e int, sp span, n int) int64 {
	r := d.rng(p, Encounter, e)
	slot := sp.length / int64(n)
	return sp.start + slot*int64(e) + int64(r.next()%uint64(slot/2+1))
}

// patientInfo caches per-patient facts that every resource of the patient
// needs (a profile showed them recomputed per resource).
type patientInfo struct {
	p      int
	valid  bool
	span   span
	counts [NumTypes]int
	prac   int
	payer  int
}

func (d *Dataset) info(p int, pi *patientInfo) *patientInfo {
	if pi != nil && pi.valid && pi.p == p {
		return pi
	}
	if pi == nil {
		pi = &patientInfo{}
	}
	*pi = patientInfo{p: p, valid: true}
	if p >= 0 {
		pi.span = d.span(p)
		for t := Patient; t < NumTypes; t++ {
			pi.counts[t] = d.Count(p, t)
		}
		pi.prac = d.patientPractitioner(p)
		pi.payer = d.payer(p)
	}
	return pi
}

// Cursor makes consecutive Appends of one patient's resources cheaper by
// caching per-patient facts. Not safe for concurrent use.
type Cursor struct {
	d  *Dataset
	pi patientInfo
}

// NewCursor returns a cursor over d.
func (d *Dataset) NewCursor() *Cursor { return &Cursor{d: d} }

// Append is Dataset.Append with the cursor's cache.
func (c *Cursor) Append(b []byte, ref Ref, m Meta) []byte {
	if ref.Type.Shared() {
		return c.d.appendWith(b, ref, m, nil)
	}
	return c.d.appendWith(b, ref, m, c.d.info(ref.Patient, &c.pi))
}

// Header computes the searchable fields of ref.
func (d *Dataset) Header(ref Ref) Header {
	h, _ := d.header(ref, nil)
	return h
}

// Header is Dataset.Header with the cursor's cache.
func (c *Cursor) Header(ref Ref) Header {
	if ref.Type.Shared() {
		return c.d.Header(ref)
	}
	h, _ := c.d.header(ref, c.d.info(ref.Patient, &c.pi))
	return h
}

func (d *Dataset) header(ref Ref, pi *patientInfo) (Header, rng) {
	h := Header{Ref: ref}
	r := d.rng(ref.Patient, ref.Type, ref.K)
	switch ref.Type {
	case Practitioner, Organization, Location:
		h.LastUpdated = Anchor - int64(r.next()%(3*365*86400))
		return h, r
	case Patient:
		h.LastUpdated = Anchor - int64(r.next()%(365*86400))
		return h, r
	}
	if pi == nil {
		pi = d.info(ref.Patient, nil)
	}
	sp := pi.span
	nEnc := pi.counts[Encounter]
	var e int
	if ref.Type == Encounter || ref.Type == ExplanationOfBenefit {
		e = ref.K
	} else {
		e = ref.K * nEnc / pi.counts[ref.Type]
	}
	h.enc = e
	enc := d.encounterDate(ref.Patient, e, sp, nEnc)
	x := r.next()
	if ref.Type == Encounter {
		h.Date = enc
	} else {
		h.Date = enc + int64(x%3600)
	}
	h.LastUpdated = h.Date + int64((x>>16)%(7*86400))
	if h.LastUpdated > Anchor {
		h.LastUpdated = Anchor
	}
	c := r.next()
	switch ref.Type {
	case Encounter:
		h.code = uint8(c % uint64(len(encounterTypes)))
		h.Code = encounterTypes[h.code].sys
		h.Status = "finished"
	case Condition:
		h.code = uint8(c % uint64(len(conditions)))
		h.Code = conditions[h.code].sys
		if ref.K%3 == 0 {
			h.Category = "problem-list-item"
		} else {
			h.Category = "encounter-diagnosis"
		}
		if c>>32%4 == 0 {
			h.Status = "resolved"
		} else {
			h.Status = "active"
		}
	case Observation:
		if ref.K%5 < 3 {
			h.Category = "vital-signs"
			h.code = uint8(c % uint64(len(vitals)))
			h.Code = vitals[h.code].sys
		} else {
			h.Category = "laboratory"
			h.code = uint8(c % uint64(len(labs)))
			h.Code = labs[h.code].sys
		}
		h.Status = "final"
	case MedicationRequest:
		h.code = uint8(c % uint64(len(medications)))
		h.Code = medications[h.code].sys
		if ref.K >= pi.counts[MedicationRequest]-3 {
			h.Status = "active"
		} else {
			h.Status = "completed"
		}
	case AllergyIntolerance:
		h.code = uint8(c % uint64(len(allergies)))
		h.Code = allergies[h.code].sys
		h.Category = allergies[c%uint64(len(allergies))].extra
		h.Status = "active"
	case Immunization:
		h.code = uint8(c % uint64(len(vaccines)))
		h.Code = vaccines[h.code].sys
		h.Status = "completed"
	case Procedure:
		h.code = uint8(c % uint64(len(procedures)))
		h.Code = procedures[h.code].sys
		h.Status = "completed"
	case DiagnosticReport:
		h.code = uint8(c % uint64(len(panels)))
		h.Code = panels[h.code].sys
		h.Category = "LAB"
		h.Status = "final"
	case DocumentReference:
		h.code = uint8(c % uint64(len(docTypes)))
		h.Code = docTypes[h.code].sys
		h.Category = "clinical-note"
		h.Status = "current"
	case Coverage:
		h.Status = "active"
		h.Code = "http://terminology.hl7.org/CodeSystem/v3-ActCode|HIP"
	case ExplanationOfBenefit:
		h.Status = "active"
		h.Code = "http://terminology.hl7.org/CodeSystem/claim-type|professional"
	}
	return h, r
}
