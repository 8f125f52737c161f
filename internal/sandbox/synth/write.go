package synth

import (
	"encoding/base64"
	"strconv"
	"unicode/utf8"
)

// Meta overrides a generated resource's meta after a mutation. Zero fields
// keep the generated values (version 1, generated lastUpdated).
type Meta struct {
	Version     int
	LastUpdated int64 // Unix seconds
	Nanos       int   // sub-second part of LastUpdated, so mutations within one second still sort after _since
}

// Append writes ref as one line of compact FHIR JSON (no trailing newline).
func (d *Dataset) Append(b []byte, ref Ref, m Meta) []byte { return d.appendWith(b, ref, m, nil) }

func (d *Dataset) appendWith(b []byte, ref Ref, m Meta, pi *patientInfo) []byte {
	if pi == nil && !ref.Type.Shared() {
		pi = d.info(ref.Patient, nil)
	}
	h, r := d.header(ref, pi)
	b = append(b, resourceHeads[ref.Type]...) // {"resourceType":"X","id":"prefix-
	if ref.Type.Shared() {
		b = appendInt(b, ref.K)
	} else {
		b = appendInt(b, ref.Patient)
		if ref.Type != Patient {
			b = append(b, '-')
			b = appendInt(b, ref.K)
		}
	}
	if m.Version <= 1 {
		b = append(b, `","meta":{"versionId":"1","lastUpdated":"`...)
	} else {
		b = append(b, `","meta":{"versionId":"`...)
		b = strconv.AppendInt(b, int64(m.Version), 10)
		b = append(b, `","lastUpdated":"`...)
	}
	lu := h.LastUpdated
	if m.LastUpdated != 0 {
		lu = m.LastUpdated
	}
	b = appendInstantNanos(b, lu, m.Nanos)
	if ref.Type == Observation {
		return d.observation(b, ref, &h, &r)
	}
	b = append(b, `","profile":["`...)
	b = append(b, profileURL(ref.Type, h.Category)...)
	b = append(b, `"]}`...)
	switch ref.Type {
	case Patient:
		b = d.patient(b, ref.Patient, &r, pi)
	case Practitioner:
		b = practitioner(b, ref.K)
	case Organization:
		b = organization(b, ref.K)
	case Location:
		b = location(b, ref.K)
	default:
		b = d.clinical(b, ref, h, &r, pi)
	}
	return append(b, '}')
}

// Bytes returns the resource's JSON.
func (d *Dataset) Bytes(ref Ref, m Meta) []byte { return d.Append(nil, ref, m) }

const usCore = "http://hl7.org/fhir/us/core/StructureDefinition/"

var resourceHeads = func() (out [NumTypes]string) {
	for t := range out {
		out[t] = `{"resourceType":"` + typeNames[t] + `","id":"` + idPrefix[t] + "-"
	}
	return out
}()

var defaultProfiles = func() (out [NumTypes]string) {
	for t := range out {
		out[t] = usCore + "us-core-" + lower(typeNames[t])
	}
	out[ExplanationOfBenefit] = "http://hl7.org/fhir/us/carin-bb/StructureDefinition/C4BB-ExplanationOfBenefit-Professional-NonClinician"
	return out
}()

func profileURL(t Type, category string) string {
	switch t {
	case Observation:
		if category == "vital-signs" {
			return usCore + "us-core-vital-signs"
		}
		return usCore + "us-core-observation-lab"
	case Condition:
		if category == "problem-list-item" {
			return usCore + "us-core-condition-problems-health-concerns"
		}
		return usCore + "us-core-condition-encounter-diagnosis"
	case DiagnosticReport:
		return usCore + "us-core-diagnosticreport-lab"
	}
	return defaultProfiles[t]
}

func lower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + 32
		}
	}
	return string(b)
}

func (d *Dataset) patientPractitioner(p int) int {
	r := d.rng(p, NumTypes, 77)
	return r.intn(NumPractitioners)
}

func providerOrg(prac int) int { return prac % 5 }

func (d *Dataset) payer(p int) int {
	r := d.rng(p, NumTypes, 78)
	return 5 + r.intn(3)
}

func (d *Dataset) patient(b []byte, p int, r *rng, pi *patientInfo) []byte {
	male := r.next()%2 == 0
	given := givenNames[r.intn(len(givenNames))]
	family := familyNames[r.intn(len(familyNames))]
	c := cities[r.intn(len(cities))]
	birth := Anchor - int64(18*365+r.intn(70*365))*86400
	b = append(b, `,"identifier":[{"use":"usual","type":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v2-0203","code":"MR","display":"Medical Record Number"}],"text":"Medical Record Number"},"system":"urn:oid:2.16.840.1.113883.19.5","value":"MRN`...)
	b = appendPadded(b, p, 7)
	b = append(b, `"}],"active":true,"name":[{"use":"official","family":`...)
	b = appendString(b, family)
	b = append(b, `,"given":[`...)
	b = appendString(b, given)
	b = append(b, `]}],"telecom":[{"system":"phone","value":"555-01`...)
	b = appendPadded(b, p%100, 2)
	b = append(b, `","use":"home"},{"system":"email","value":"`...)
	b = append(b, lower(given)...)
	b = append(b, '.')
	b = append(b, lower(family)...)
	b = append(b, `@example.org"}],"gender":"`...)
	if male {
		b = append(b, `male`...)
	} else {
		b = append(b, `female`...)
	}
	b = append(b, `","birthDate":"`...)
	b = appendDate(b, birth)
	b = append(b, `","address":[{"use":"home","line":["`...)
	b = strconv.AppendInt(b, int64(10+r.intn(9000)), 10)
	b = append(b, ' ')
	b = append(b, streets[r.intn(len(streets))]...)
	b = append(b, `"],"city":"`...)
	b = append(b, c.city...)
	b = append(b, `","state":"`...)
	b = append(b, c.state...)
	b = append(b, `","postalCode":"`...)
	b = append(b, c.zip...)
	b = append(b, `","country":"US"}],"communication":[{"language":{"coding":[{"system":"urn:ietf:bcp:47","code":"en-US","display":"English (United States)"}]}}],"generalPractitioner":[{"reference":"Practitioner/`...)
	prac := pi.prac
	b = Ref{Type: Practitioner, K: prac}.AppendID(b)
	b = append(b, `"}],"managingOrganization":{"reference":"Organization/`...)
	b = Ref{Type: Organization, K: providerOrg(prac)}.AppendID(b)
	return append(b, `"}`...)
}

func practitioner(b []byte, k int) []byte {
	b = append(b, `,"identifier":[{"system":"http://hl7.org/fhir/sid/us-npi","value":"19`...)
	b = appendPadded(b, 12345678+k*7919, 8)
	b = append(b, `"}],"active":true,"name":[{"use":"official","family":`...)
	b = appendString(b, familyNames[(k*7+3)%len(familyNames)])
	b = append(b, `,"given":[`...)
	b = appendString(b, givenNames[(k*5+1)%len(givenNames)])
	b = append(b, `],"prefix":["Dr."]}],"telecom":[{"system":"phone","value":"555-02`...)
	b = appendPadded(b, k, 2)
	b = append(b, `","use":"work"}],"qualification":[{"code":{"text":`...)
	b = appendString(b, specialties[k%len(specialties)])
	return append(b, `}}]`...)
}

func organization(b []byte, k int) []byte {
	b = append(b, `,"identifier":[{"system":"http://hl7.org/fhir/sid/us-npi","value":"17`...)
	b = appendPadded(b, 40000000+k*104729, 8)
	b = append(b, `"}],"active":true,"type":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/organization-type","code":"`...)
	if k >= 5 {
		b = append(b, `pay","display":"Payer"`...)
	} else {
		b = append(b, `prov","display":"Healthcare Provider"`...)
	}
	b = append(b, `}]}],"name":`...)
	b = appendString(b, orgNames[k%len(orgNames)])
	c := cities[k%len(cities)]
	b = append(b, `,"telecom":[{"system":"phone","value":"555-03`...)
	b = appendPadded(b, k, 2)
	b = append(b, `"}],"address":[{"line":["1 Health Plaza"],"city":"`...)
	b = append(b, c.city...)
	b = append(b, `","state":"`...)
	b = append(b, c.state...)
	b = append(b, `","postalCode":"`...)
	b = append(b, c.zip...)
	return append(b, `","country":"US"}]`...)
}

func location(b []byte, k int) []byte {
	b = append(b, `,"status":"active","name":`...)
	b = appendString(b, orgNames[k%5]+" - "+[]string{"Main Campus", "East Clinic", "West Clinic", "Outpatient Center"}[k%4])
	b = append(b, `,"telecom":[{"system":"phone","value":"555-04`...)
	b = appendPadded(b, k, 2)
	c := cities[k%len(cities)]
	b = append(b, `"}],"address":{"line":["`...)
	b = strconv.AppendInt(b, int64(100+k*11), 10)
	b = append(b, ` Clinic Rd"],"city":"`...)
	b = append(b, c.city...)
	b = append(b, `","state":"`...)
	b = append(b, c.state...)
	b = append(b, `","postalCode":"`...)
	b = append(b, c.zip...)
	b = append(b, `","country":"US"},"managingOrganization":{"reference":"Organization/`...)
	b = Ref{Type: Organization, K: k % 5}.AppendID(b)
	return append(b, `"}`...)
}

func (d *Dataset) subject(b []byte, field string, p int) []byte {
	b = append(b, `,"`...)
	b = append(b, field...)
	b = append(b, `":{"reference":"Patient/`...)
	b = Ref{Type: Patient, Patient: p}.AppendID(b)
	return append(b, `"}`...)
}

func (d *Dataset) encounterRef(b []byte, field string, ref Ref, h *Header) []byte {
	b = append(b, `,"`...)
	b = append(b, field...)
	b = append(b, `":{"reference":"Encounter/`...)
	b = Ref{Type: Encounter, Patient: ref.Patient, K: h.enc}.AppendID(b)
	return append(b, `"}`...)
}

func appendConcept(b []byte, field string, c *code) []byte {
	b = append(b, `,"`...)
	b = append(b, field...)
	b = append(b, `":`...)
	return append(b, c.concept...)
}

func appendSimpleConcept(b []byte, field, system, c, display string) []byte {
	b = append(b, `,"`...)
	b = append(b, field...)
	b = append(b, `":{"coding":[{"system":"`...)
	b = append(b, system...)
	b = append(b, `","code":"`...)
	b = append(b, c...)
	b = append(b, `","display":"`...)
	b = append(b, display...)
	return append(b, `"}]}`...)
}

func (d *Dataset) clinical(b []byte, ref Ref, h Header, r *rng, pi *patientInfo) []byte {
	p := ref.Patient
	prac := pi.prac
	switch ref.Type {
	case Encounter:
		c := &encounterTypes[h.code]
		b = append(b, `,"status":"finished","class":{"system":"http://terminology.hl7.org/CodeSystem/v3-ActCode","code":"`...)
		if c.code == "50849002" {
			b = append(b, `EMER","display":"emergency"}`...)
		} else {
			b = append(b, `AMB","display":"ambulatory"}`...)
		}
		b = append(b, `,"type":[`...)
		b = append(b, c.concept...)
		b = append(b, ']')
		b = d.subject(b, "subject", p)
		b = append(b, `,"participant":[{"type":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v3-ParticipationType","code":"PPRF","display":"primary performer"}]}],"individual":{"reference":"Practitioner/`...)
		b = Ref{Type: Practitioner, K: prac}.AppendID(b)
		b = append(b, `"}}],"period":{"start":"`...)
		b = appendInstant(b, h.Date)
		b = append(b, `","end":"`...)
		b = appendInstant(b, h.Date+int64(900+r.intn(3600)))
		b = append(b, `"},"location":[{"location":{"reference":"Location/`...)
		b = Ref{Type: Location, K: (prac + ref.K) % NumLocations}.AppendID(b)
		b = append(b, `"}}],"serviceProvider":{"reference":"Organization/`...)
		b = Ref{Type: Organization, K: providerOrg(prac)}.AppendID(b)
		b = append(b, `"}`...)
	case Condition:
		c := &conditions[h.code]
		b = append(b, `,"clinicalStatus":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/condition-clinical","code":"`...)
		b = append(b, h.Status...)
		b = append(b, `"}]},"verificationStatus":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/condition-ver-status","code":"confirmed"}]},"category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/condition-category","code":"`...)
		b = append(b, h.Category...)
		b = append(b, `"}]}]`...)
		b = appendConcept(b, "code", c)
		b = d.subject(b, "subject", p)
		b = d.encounterRef(b, "encounter", ref, &h)
		b = append(b, `,"onsetDateTime":"`...)
		b = appendInstant(b, h.Date)
		b = append(b, `","recordedDate":"`...)
		b = appendInstant(b, h.Date)
		b = append(b, '"')
		if h.Status == "resolved" {
			b = append(b, `,"abatementDateTime":"`...)
			b = appendInstant(b, h.Date+int64(7+r.intn(60))*86400)
			b = append(b, '"')
		}
	case MedicationRequest:
		c := &medications[h.code]
		b = append(b, `,"status":"`...)
		b = append(b, h.Status...)
		b = append(b, `","intent":"order","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/medicationrequest-category","code":"community","display":"Community"}]}]`...)
		b = appendConcept(b, "medicationCodeableConcept", c)
		b = d.subject(b, "subject", p)
		b = d.encounterRef(b, "encounter", ref, &h)
		b = append(b, `,"authoredOn":"`...)
		b = appendInstant(b, h.Date)
		b = append(b, `","requester":{"reference":"Practitioner/`...)
		b = Ref{Type: Practitioner, K: prac}.AppendID(b)
		b = append(b, `"},"dosageInstruction":[{"sequence":1,"text":"Take `...)
		n := 1 + r.intn(2)
		b = strconv.AppendInt(b, int64(n), 10)
		b = append(b, ` tablet(s) by mouth daily","timing":{"repeat":{"frequency":`...)
		b = strconv.AppendInt(b, int64(n), 10)
		b = append(b, `,"period":1,"periodUnit":"d"}}}]`...)
	case AllergyIntolerance:
		c := &allergies[h.code]
		b = append(b, `,"clinicalStatus":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical","code":"active"}]},"verificationStatus":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/allergyintolerance-verification","code":"confirmed"}]},"type":"allergy","category":["`...)
		b = append(b, c.extra...)
		b = append(b, `"],"criticality":"`...)
		b = append(b, []string{"low", "high", "unable-to-assess"}[r.intn(3)]...)
		b = append(b, '"')
		b = appendConcept(b, "code", c)
		b = d.subject(b, "patient", p)
		b = append(b, `,"recordedDate":"`...)
		b = appendInstant(b, h.Date)
		b = append(b, `","reaction":[{"manifestation":[{"coding":[{"system":"http://snomed.info/sct","code":"247472004","display":"Hives"}]}],"severity":"mild"}]`...)
	case Immunization:
		c := &vaccines[h.code]
		b = append(b, `,"status":"completed"`...)
		b = appendConcept(b, "vaccineCode", c)
		b = d.subject(b, "patient", p)
		b = d.encounterRef(b, "encounter", ref, &h)
		b = append(b, `,"occurrenceDateTime":"`...)
		b = appendInstant(b, h.Date)
		b = append(b, `","primarySource":true,"lotNumber":"LOT`...)
		b = appendPadded(b, int(r.next()%100000), 5)
		b = append(b, `","performer":[{"actor":{"reference":"Practitioner/`...)
		b = Ref{Type: Practitioner, K: prac}.AppendID(b)
		b = append(b, `"}}]`...)
	case Procedure:
		c := &procedures[h.code]
		b = append(b, `,"status":"completed"`...)
		b = appendConcept(b, "code", c)
		b = d.subject(b, "subject", p)
		b = d.encounterRef(b, "encounter", ref, &h)
		b = append(b, `,"performedDateTime":"`...)
		b = appendInstant(b, h.Date)
		b = append(b, `","performer":[{"actor":{"reference":"Practitioner/`...)
		b = Ref{Type: Practitioner, K: prac}.AppendID(b)
		b = append(b, `"}}]`...)
	case DiagnosticReport:
		c := &panels[h.code]
		b = append(b, `,"status":"final","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v2-0074","code":"LAB","display":"Laboratory"}]}]`...)
		b = appendConcept(b, "code", c)
		b = d.subject(b, "subject", p)
		b = d.encounterRef(b, "encounter", ref, &h)
		b = append(b, `,"effectiveDateTime":"`...)
		b = appendInstant(b, h.Date)
		b = append(b, `","issued":"`...)
		b = appendInstant(b, h.Date+3600)
		b = append(b, `","performer":[{"reference":"Organization/`...)
		b = Ref{Type: Organization, K: providerOrg(prac)}.AppendID(b)
		b = append(b, `"}],"conclusion":"Within normal limits except as noted."`...)
	case DocumentReference:
		c := &docTypes[h.code]
		b = append(b, `,"status":"current","docStatus":"final"`...)
		b = appendConcept(b, "type", c)
		b = append(b, `,"category":[{"coding":[{"system":"http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category","code":"clinical-note","display":"Clinical Note"}]}]`...)
		b = d.subject(b, "subject", p)
		b = append(b, `,"date":"`...)
		b = appendInstant(b, h.Date)
		b = append(b, `","author":[{"reference":"Practitioner/`...)
		b = Ref{Type: Practitioner, K: prac}.AppendID(b)
		b = append(b, `"}],"custodian":{"reference":"Organization/`...)
		b = Ref{Type: Organization, K: providerOrg(prac)}.AppendID(b)
		b = append(b, `"},"content":[{"attachment":{"contentType":"text/plain","data":"`...)
		var note [96]byte
		n := copy(note[:], c.display+" for patient seen on ")
		n += len(appendDate(note[n:n], h.Date))
		b = base64.StdEncoding.AppendEncode(b, note[:n])
		b = append(b, `"},"format":{"system":"http://ihe.net/fhir/ihe.formatcode.fhir/CodeSystem/formatcode","code":"urn:ihe:iti:xds:2017:mimeTypeSufficient","display":"mimeType Sufficient"}}],"context":{"encounter":[{"reference":"Encounter/`...)
		b = Ref{Type: Encounter, Patient: p, K: h.enc}.AppendID(b)
		b = append(b, `"}]}`...)
	case Coverage:
		payer := pi.payer
		b = append(b, `,"status":"active"`...)
		b = appendSimpleConcept(b, "type", "http://terminology.hl7.org/CodeSystem/v3-ActCode", "HIP", "health insurance plan policy")
		b = append(b, `,"subscriberId":"SUB`...)
		b = appendPadded(b, p, 8)
		b = append(b, '"')
		b = d.subject(b, "beneficiary", p)
		b = append(b, `,"relationship":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/subscriber-relationship","code":"self"}]},"period":{"start":"`...)
		b = appendDate(b, h.Date)
		b = append(b, `"},"payor":[{"reference":"Organization/`...)
		b = Ref{Type: Organization, K: payer}.AppendID(b)
		b = append(b, `"}],"class":[{"type":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/coverage-class","code":"group"}]},"value":"GRP`...)
		b = appendPadded(b, payer*100+ref.K, 5)
		b = append(b, `"}]`...)
	case ExplanationOfBenefit:
		b = append(b, `,"status":"active"`...)
		b = appendSimpleConcept(b, "type", "http://terminology.hl7.org/CodeSystem/claim-type", "professional", "Professional")
		b = append(b, `,"use":"claim"`...)
		b = d.subject(b, "patient", p)
		b = append(b, `,"billablePeriod":{"start":"`...)
		b = appendInstant(b, h.Date)
		b = append(b, `","end":"`...)
		b = appendInstant(b, h.Date+3600)
		b = append(b, `"},"created":"`...)
		b = appendInstant(b, h.Date+86400)
		b = append(b, `","insurer":{"reference":"Organization/`...)
		b = Ref{Type: Organization, K: pi.payer}.AppendID(b)
		b = append(b, `"},"provider":{"reference":"Practitioner/`...)
		b = Ref{Type: Practitioner, K: prac}.AppendID(b)
		b = append(b, `"},"outcome":"complete","insurance":[{"focal":true,"coverage":{"reference":"Coverage/`...)
		b = Ref{Type: Coverage, Patient: p, K: 0}.AppendID(b)
		b = append(b, `"}}],"item":[{"sequence":1,"encounter":[{"reference":"Encounter/`...)
		b = Ref{Type: Encounter, Patient: p, K: ref.K}.AppendID(b)
		b = append(b, `"}],"productOrService":{"coding":[{"system":"http://www.ama-assn.org/go/cpt","code":"99213","display":"Office visit, established patient"}]},"servicedDate":"`...)
		b = appendDate(b, h.Date)
		amt := 80 + float64(r.next()%22000)/100
		b = append(b, `","net":{"value":`...)
		b = appendDecimal(b, amt)
		b = append(b, `,"currency":"USD"}}],"total":[{"category":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/adjudication","code":"submitted"}]},"amount":{"value":`...)
		b = appendDecimal(b, amt)
		b = append(b, `,"currency":"USD"}}]`...)
	}
	return b
}

// AppendString appends s as a JSON string (invalid UTF-8 becomes U+FFFD),
// for callers that write JSON around generated resources.
func AppendString(b []byte, s string) []byte { return appendString(b, s) }

// appendString appends s as a JSON string.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < 0x80 {
			b = append(b, c)
			i++
			continue
		}
		if c < 0x80 {
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, `\u00`...)
				b = append(b, "0123456789abcdef"[c>>4], "0123456789abcdef"[c&15])
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, `\ufffd`...)
		} else {
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return append(b, '"')
}

func appendPadded(b []byte, n, width int) []byte {
	var tmp [20]byte
	s := strconv.AppendInt(tmp[:0], int64(n), 10)
	for i := len(s); i < width; i++ {
		b = append(b, '0')
	}
	return append(b, s...)
}

// appendDecimal writes f rounded to two decimals without trailing zeros.
func appendDecimal(b []byte, f float64) []byte {
	c := int64(f*100 + 0.5)
	if f < 0 {
		c = int64(f*100 - 0.5)
		b = append(b, '-')
		c = -c
	}
	b = strconv.AppendInt(b, c/100, 10)
	frac := c % 100
	switch {
	case frac == 0:
	case frac%10 == 0:
		b = append(b, '.', byte('0'+frac/10))
	default:
		b = append(b, '.', byte('0'+frac/10), byte('0'+frac%10))
	}
	return b
}

// civil converts days since 1970-01-01 to a calendar date (Howard Hinnant's algorithm).
func civil(days int64) (y, m, d int64) {
	z := days + 719468
	era := z / 146097
	if z < 0 && z%146097 != 0 {
		era--
	}
	doe := z - era*146097
	yoe := (doe - doe/1460 + doe/36524 - doe/146096) / 365
	y = yoe + era*400
	doy := doe - (365*yoe + yoe/4 - yoe/100)
	mp := (5*doy + 2) / 153
	d = doy - (153*mp+2)/5 + 1
	if mp < 10 {
		m = mp + 3
	} else {
		m = mp - 9
	}
	if m <= 2 {
		y++
	}
	return
}

func append2(b []byte, n int64) []byte { return append(b, byte('0'+n/10), byte('0'+n%10)) }

// Dates are formatted from a table: the generator writes several per
// resource and the calendar arithmetic showed up in profiles.
const (
	tableFirstDay = -25567 // 1900-01-01
	tableDays     = 200 * 366
)

// The tables are built at package init: a sync.Once check per use showed
// up in profiles.
func init() { buildDateTable() }

var (
	dateTable  [][10]byte // per day from tableFirstDay
	numTable   []byte     // decimal digits of 0..numTableSize-1
	numOffsets []uint32
)

func buildDateTable() {
	dateTable = make([][10]byte, tableDays)
	for i := range dateTable {
		copy(dateTable[i][:], appendCivilDate(nil, int64(tableFirstDay+i)))
	}
	numTable = make([]byte, 0, numTableSize*6)
	numOffsets = make([]uint32, numTableSize+1)
	for n := range numTableSize {
		numOffsets[n] = uint32(len(numTable))
		numTable = strconv.AppendInt(numTable, int64(n), 10)
	}
	numOffsets[numTableSize] = uint32(len(numTable))
}

const numTableSize = 100000

// appendInt writes n in decimal; small non-negative numbers (every id
// part) come from a table.
func appendInt(b []byte, n int) []byte {
	if n >= 0 && n < numTableSize {
		return append(b, numTable[numOffsets[n]:numOffsets[n+1]]...)
	}
	return strconv.AppendInt(b, int64(n), 10)
}

func appendCivilDate(b []byte, days int64) []byte {
	y, m, d := civil(days)
	b = append(b, byte('0'+y/1000), byte('0'+y/100%10), byte('0'+y/10%10), byte('0'+y%10), '-')
	b = append2(b, m)
	b = append(b, '-')
	return append2(b, d)
}

// appendDate writes YYYY-MM-DD.
func appendDate(b []byte, unix int64) []byte {
	days := unix / 86400
	if unix < 0 && unix%86400 != 0 {
		days--
	}
	if i := days - tableFirstDay; i >= 0 && i < tableDays {
		return appendFixed10(b, &dateTable[i])
	}
	return appendCivilDate(b, days)
}

// appendInstant writes YYYY-MM-DDThh:mm:ssZ.
func appendInstant(b []byte, unix int64) []byte { return appendInstantNanos(b, unix, 0) }

func appendInstantNanos(b []byte, unix int64, nanos int) []byte {
	b = appendDate(b, unix)
	s := unix % 86400
	if s < 0 {
		s += 86400
	}
	// Arithmetic, not a table: a per-second table is larger than the cache
	// and its misses cost more than these divisions by constants.
	h, m, sec := s/3600, s/60%60, s%60
	clock := [9]byte{'T', byte('0' + h/10), byte('0' + h%10), ':', byte('0' + m/10), byte('0' + m%10), ':', byte('0' + sec/10), byte('0' + sec%10)}
	b = appendFixed9(b, &clock)
	if nanos > 0 {
		b = append(b, '.')
		b = appendPadded(b, nanos/1000, 6)
	}
	return append(b, 'Z')
}

// appendFixed9 and appendFixed10 copy small fixed strings without a memmove call.
func appendFixed9(b []byte, v *[9]byte) []byte {
	n := len(b)
	if cap(b)-n < 9 {
		return append(b, v[:]...)
	}
	b = b[:n+9]
	*(*[9]byte)(b[n:]) = *v
	return b
}

func appendFixed10(b []byte, v *[10]byte) []byte {
	n := len(b)
	if cap(b)-n < 10 {
		return append(b, v[:]...)
	}
	b = b[:n+10]
	*(*[10]byte)(b[n:]) = *v
	return b
}

// AppendInstant is the instant format the generator uses, for callers that
// write meta themselves.
func AppendInstant(b []byte, unix int64, nanos int) []byte { return appendInstantNanos(b, unix, nanos) }

// obsTemplate holds an Observation's constant parts for one code: everything
// from the profile up to the patient id, and everything after the value.
// Observations are most of every export, so they get a faster path.
type obsTemplate struct {
	pre  []byte // `","profile":[...]},...,"subject":{"reference":"Patient/pat-`
	post []byte // `,"unit":...}` (+ referenceRange) + `}`
}

var obsVitals, obsLabs []obsTemplate

func init() {
	build := func(tab []code, category, display string) []obsTemplate {
		out := make([]obsTemplate, len(tab))
		for i := range tab {
			c := &tab[i]
			pre := []byte(`","profile":["`)
			pre = append(pre, profileURL(Observation, category)...)
			pre = append(pre, `"]},"status":"final","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"`...)
			pre = append(pre, category...)
			pre = append(pre, `","display":"`...)
			pre = append(pre, display...)
			pre = append(pre, `"}]}],"code":`...)
			pre = append(pre, c.concept...)
			pre = append(pre, `,"subject":{"reference":"Patient/pat-`...)
			post := []byte(`,"unit":`)
			post = appendString(post, c.unit)
			post = append(post, `,"system":"http://unitsofmeasure.org","code":`...)
			post = appendString(post, c.unit)
			post = append(post, '}')
			if category == "laboratory" {
				post = append(post, `,"referenceRange":[{"low":{"value":`...)
				post = appendDecimal(post, c.lo+(c.hi-c.lo)*0.1)
				post = append(post, `},"high":{"value":`...)
				post = appendDecimal(post, c.hi-(c.hi-c.lo)*0.1)
				post = append(post, `}}]`...)
			}
			post = append(post, '}')
			out[i] = obsTemplate{pre: pre, post: post}
		}
		return out
	}
	obsVitals = build(vitals, "vital-signs", "Vital Signs")
	obsLabs = build(labs, "laboratory", "Laboratory")
}

func (d *Dataset) observation(b []byte, ref Ref, h *Header, r *rng) []byte {
	var tpl *obsTemplate
	var c *code
	if h.Category == "vital-signs" {
		tpl, c = &obsVitals[h.code], &vitals[h.code]
	} else {
		tpl, c = &obsLabs[h.code], &labs[h.code]
	}
	b = append(b, tpl.pre...)
	b = appendInt(b, ref.Patient)
	b = append(b, `"},"encounter":{"reference":"Encounter/enc-`...)
	b = appendInt(b, ref.Patient)
	b = append(b, '-')
	b = appendInt(b, h.enc)
	b = append(b, `"},"effectiveDateTime":"`...)
	b = appendInstant(b, h.Date)
	b = append(b, `","issued":"`...)
	b = appendInstant(b, h.Date+600)
	if c.code == "85354-9" {
		b = append(b, `","component":[{"code":{"coding":[{"system":"http://loinc.org","code":"8480-6","display":"Systolic blood pressure"}]},"valueQuantity":{"value":`...)
		b = appendInt(b, 100+r.intn(60))
		b = append(b, `,"unit":"mm[Hg]","system":"http://unitsofmeasure.org","code":"mm[Hg]"}},{"code":{"coding":[{"system":"http://loinc.org","code":"8462-4","display":"Diastolic blood pressure"}]},"valueQuantity":{"value":`...)
		b = appendInt(b, 60+r.intn(35))
		return append(b, `,"unit":"mm[Hg]","system":"http://unitsofmeasure.org","code":"mm[Hg]"}}]}`...)
	}
	b = append(b, `","valueQuantity":{"value":`...)
	b = appendDecimal(b, c.lo+(c.hi-c.lo)*float64(r.next()%1000)/1000)
	return append(b, tpl.post...)
}
