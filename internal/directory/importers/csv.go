package importers

import (
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"strings"
)

const smaTitle = "state medicaid agency"

// detectCSV names a CSV list from its header row.
func detectCSV(data []byte) (string, bool) {
	r := csv.NewReader(bytes.NewReader(data))
	r.FieldsPerRecord = -1
	r.LazyQuotes = true
	first, err := r.Read()
	if err != nil || len(first) < 2 {
		return "", false
	}
	h := normHeader(first)
	switch {
	case strings.HasPrefix(h[0], smaTitle) && strings.Contains(h[0], "workbook"):
		return FormatSMAOverview, true
	case strings.HasPrefix(h[0], smaTitle):
		return FormatSMA, true
	case h[0] == "state" && len(h) > 1 && strings.HasPrefix(h[1], "information as of"):
		return FormatSMA, true
	case h[0] == "state" && h[1] == "endpoint":
		return FormatMedicaidCSV, true
	case h[0] == "developer" && h[1] == "source":
		return FormatPayerIndexCSV, true
	case strings.HasPrefix(h[0], "parent organization") && len(h) >= 3 && strings.Contains(h[2], "fhir url"):
		return FormatPayerBrandsCSV, true
	}
	return "", false
}

func normHeader(rec []string) []string {
	out := make([]string, len(rec))
	for i, c := range rec {
		out[i] = strings.ToLower(cleanText(c))
	}
	return out
}

// csvRecord is a record with the line it started on.
type csvRecord struct {
	line   int
	fields []string
}

func readCSV(ctx context.Context, data []byte) ([]csvRecord, error) {
	r := csv.NewReader(bytes.NewReader(data))
	r.FieldsPerRecord = -1
	r.LazyQuotes = true
	var out []csvRecord
	for i := 0; ; i++ {
		if err := ctxEvery(ctx, i); err != nil {
			return nil, err
		}
		rec, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			var pe *csv.ParseError
			if errors.As(err, &pe) {
				return nil, fmt.Errorf("%w: CSV line %d: %v", ErrMalformed, pe.StartLine, pe.Err)
			}
			return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
		}
		line, _ := r.FieldPos(0)
		out = append(out, csvRecord{line: line, fields: rec})
	}
	return out, nil
}

func field(rec []string, i int) string {
	if i >= 0 && i < len(rec) {
		return strings.TrimSpace(strings.ReplaceAll(rec[i], "\u00a0", " "))
	}
	return ""
}

func parseCSV(ctx context.Context, data []byte, format string, progress Progress) (*List, error) {
	recs, err := readCSV(ctx, data)
	if err != nil {
		return nil, err
	}
	if len(recs) == 0 {
		return nil, fmt.Errorf("%w: empty CSV", ErrMalformed)
	}
	l := &List{Format: format}
	switch format {
	case FormatPayerBrandsCSV:
		parsePayerBrands(l, recs[1:], progress)
	case FormatPayerIndexCSV:
		n := 0
		for _, r := range recs[1:] {
			if field(r.fields, 0) != "" {
				n++
			}
		}
		l.Rows, l.Skipped = n, n
		l.Notes = append(l.Notes, fmt.Sprintf("an index of %d payers' developer portals (documentation pages, not FHIR bases): nothing to import; the payers' endpoints come from their own lists", n))
	case FormatMedicaidCSV:
		parseMedicaid(l, recs[1:], progress)
	case FormatSMA:
		parseSMA(l, recs, progress)
	case FormatSMAOverview:
		l.Rows = len(recs)
		l.Skipped = len(recs)
		l.Notes = append(l.Notes, "this is the SMA workbook's Overview sheet (field definitions), not its data: import SMAEndpointDirectory.xlsx or its 'SMA Endpoint Directory' sheet")
	default:
		return nil, fmt.Errorf("%w: %s is not a CSV format", ErrUnknownFormat, format)
	}
	return l, nil
}

// parsePayerBrands reads "Parent Organization Name, Brand Name(s), Prod FHIR
// URL, Notes". A cell may name several brands, one per line: each becomes its
// own entry on the shared endpoint (several brands, one endpoint).
func parsePayerBrands(l *List, recs []csvRecord, progress Progress) {
	for i, r := range recs {
		progress(i+1, len(recs))
		parent := cleanText(field(r.fields, 0))
		brands := strings.FieldsFunc(field(r.fields, 1), func(c rune) bool { return c == '\n' || c == '\r' })
		raw := field(r.fields, 2)
		if parent == "" && len(brands) == 0 && raw == "" {
			continue
		}
		l.Rows++
		if len(brands) == 0 {
			brands = []string{parent}
		}
		u, err := NormalizeBaseURL(raw)
		if err != nil {
			l.reject(r.line, "", cleanText(brands[0]), "%v: %q", err, raw)
			continue
		}
		for _, b := range brands {
			name := cleanText(b)
			if name == "" {
				continue
			}
			e := Entry{Row: r.line, Name: name, Kind: KindPayer, Vendor: "1uphealth", Endpoints: []Endpoint{{URL: u}}}
			if parent != "" && !strings.EqualFold(parent, name) {
				e.Aliases = []string{parent}
			}
			l.Entries = append(l.Entries, e)
		}
	}
}

// medicaidVendors maps the developer_name column to vendor slugs.
var medicaidVendors = map[string]string{
	"1up (gainwell)":   "1uphealth",
	"safhir from onyx": "onyx",
	"conduent":         "conduent",
	"salesforce/mihin": "mihin",
	"edifecs":          "edifecs",
}

func parseMedicaid(l *List, recs []csvRecord, progress Progress) {
	for i, r := range recs {
		progress(i+1, len(recs))
		state := cleanText(field(r.fields, 0))
		raw := field(r.fields, 1)
		if state == "" && raw == "" {
			continue
		}
		l.Rows++
		name := medicaidName(state)
		if state == "" {
			l.reject(r.line, "", "", "no state")
			continue
		}
		u, err := NormalizeBaseURL(trimResourceSuffix(raw))
		if err != nil {
			l.reject(r.line, "", name, "%v: %q", err, raw)
			continue
		}
		e := Entry{Row: r.line, Name: name, Aliases: []string{state + " Medicaid Patient Access"}, Kind: KindPayer,
			Vendor: medicaidVendors[strings.ToLower(field(r.fields, 2))], Endpoints: []Endpoint{{URL: u}}}
		if st := StateCode(state); st != "" {
			e.Locations = []Location{{State: st}}
		}
		l.Entries = append(l.Entries, e)
	}
}

// SMA columns by header text (the sheet has no stable column ids).
type smaColumns struct {
	state, status, claims, capability, fhirVersion, authProtocol, authDetails, registration, support, phone, email int
}

func findSMAColumns(h []string) (smaColumns, bool) {
	c := smaColumns{-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1}
	first := func(dst *int, pred func(string) bool) {
		for i, x := range h {
			if *dst < 0 && pred(x) {
				*dst = i
			}
		}
	}
	first(&c.state, func(x string) bool { return x == "state" })
	first(&c.status, func(x string) bool { return strings.HasPrefix(x, "status") })
	first(&c.claims, func(x string) bool { return strings.HasPrefix(x, "production base url for claims") })
	first(&c.capability, func(x string) bool { return strings.HasPrefix(x, "fhir capability statement") })
	first(&c.fhirVersion, func(x string) bool { return strings.HasPrefix(x, "fhir version") })
	first(&c.authProtocol, func(x string) bool { return strings.HasPrefix(x, "authentication protocol") })
	first(&c.authDetails, func(x string) bool { return strings.HasPrefix(x, "authentication implementation") })
	first(&c.registration, func(x string) bool { return strings.HasPrefix(x, "api registration") })
	first(&c.support, func(x string) bool { return strings.HasPrefix(x, "developer support") })
	first(&c.phone, func(x string) bool { return strings.HasPrefix(x, "member support contact phone") })
	first(&c.email, func(x string) bool { return strings.HasPrefix(x, "member support contact email") })
	return c, c.state >= 0 && c.claims >= 0 && c.status >= 0
}

// parseSMA reads the CMS State Medicaid Agency directory: a group header
// row, a header row, then one row per state or territory. The Patient Access
// API's base comes from its CapabilityStatement link (minus /metadata) when
// there is one, else from the claims URL minus a trailing resource type.
func parseSMA(l *List, recs []csvRecord, progress Progress) {
	hdr := -1
	var cols smaColumns
	for i := 0; i < len(recs) && i < 5; i++ {
		if c, ok := findSMAColumns(normHeader(recs[i].fields)); ok {
			hdr, cols = i, c
			break
		}
	}
	if hdr < 0 {
		l.Notes = append(l.Notes, "no header row with State, Status and Production Base URL columns was found")
		return
	}
	rows := recs[hdr+1:]
	for i, r := range rows {
		progress(i+1, len(rows))
		state := cleanText(field(r.fields, cols.state))
		if state == "" {
			continue
		}
		l.Rows++
		name := medicaidName(state)
		status := cleanText(field(r.fields, cols.status))
		var base string
		var bad []string
		for _, u := range extractURLs(field(r.fields, cols.capability)) {
			if strings.HasSuffix(strings.ToLower(strings.TrimRight(u, "/")), "/metadata") {
				if n, err := NormalizeBaseURL(trimResourceSuffix(u)); err == nil {
					base = n
					break
				} else {
					bad = append(bad, fmt.Sprintf("%v: %q", err, u))
				}
			}
		}
		if base == "" {
			for _, u := range extractURLs(field(r.fields, cols.claims)) {
				n, err := NormalizeBaseURL(trimResourceSuffix(u))
				if err == nil {
					base = n
					break
				}
				bad = append(bad, fmt.Sprintf("%v: %q", err, u))
			}
		}
		switch {
		case !strings.EqualFold(status, "active"):
			if status == "" {
				status = "no status"
			}
			l.reject(r.line, "", name, "Patient Access API status is %q, not Active", status)
			continue
		case base == "" && len(bad) > 0:
			l.reject(r.line, "", name, "%s", bad[0])
			continue
		case base == "":
			l.reject(r.line, "", name, "%v", ErrNoURL)
			continue
		}
		e := Entry{Row: r.line, Name: name, Aliases: []string{state + " Medicaid Patient Access"}, Kind: KindPayer,
			Endpoints: []Endpoint{{URL: base, FHIRVersion: smaVersion(field(r.fields, cols.fhirVersion))}}}
		if st := StateCode(state); st != "" {
			e.Locations = []Location{{State: st}}
		}
		s := &Setup{
			RegistrationInfo: cleanText(field(r.fields, cols.registration)),
			AuthProtocol:     cleanText(field(r.fields, cols.authProtocol)),
			Documentation:    cleanText(field(r.fields, cols.support)),
		}
		if s.RegistrationInfo != "" || s.AuthProtocol != "" || s.Documentation != "" {
			e.Setup = s
		}
		l.Entries = append(l.Entries, e)
	}
}

func smaVersion(s string) string {
	s = cleanText(s)
	if s == "" || strings.EqualFold(s, "n/a") {
		return ""
	}
	return s
}
