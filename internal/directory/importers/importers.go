// Package importers reads the endpoint lists that vendors, aggregators and
// governments publish, in every format we know, into one format-neutral
// shape (List of Entry). It decides nothing about identity, merging or
// storage: that is package directory's job. What it owns is the outside
// input: detecting the format, tolerating each publisher's quirks, and
// rejecting malformed rows one by one with a reason while keeping the rest.
package importers

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path"
	"strings"
)

// Formats Parse recognises. They are reported in import summaries and can be
// forced with Hint.Format.
const (
	// FormatBrands is a SMART App Launch 2.2 User-access Brands bundle, with
	// the final extension URLs or the earlier draft ones.
	FormatBrands = "smart-brands"
	// FormatFHIRBundle is a FHIR Bundle of Endpoint resources, with or without
	// Organizations (Epic's R4 list, Oracle Health's lists).
	FormatFHIRBundle = "fhir-endpoint-bundle"
	// FormatCernerLegacy is Cerner's older {"endpoints":[{name,baseUrl,type}]}.
	FormatCernerLegacy = "cerner-legacy-json"
	// FormatLantern is ONC Lantern's normalized {"Endpoints":[...]}.
	FormatLantern = "lantern-json"
	// FormatLanternIndex is Lantern's index of where developers publish their
	// lists ([{FormatType,URL,EndpointName,FileName}]); it holds no sources.
	FormatLanternIndex = "lantern-list-index"
	// FormatCHPLProducts is Lantern's CHPL product mapping; no sources.
	FormatCHPLProducts = "chpl-product-mapping"
	// FormatPayerBrandsCSV is 1upHealth's payer brand list (oneupdata.csv).
	FormatPayerBrandsCSV = "payer-brands-csv"
	// FormatPayerIndexCSV is the payer developer-portal index (developer,source).
	FormatPayerIndexCSV = "payer-portal-index-csv"
	// FormatMedicaidCSV is the state Medicaid list (State,endpoint,developer_name).
	FormatMedicaidCSV = "medicaid-state-csv"
	// FormatSMA is the CMS State Medicaid Agency endpoint directory (its data
	// sheet as CSV, or the original .xlsx workbook).
	FormatSMA = "cms-sma-directory"
	// FormatSMAOverview is the SMA workbook's Overview sheet exported as CSV:
	// field definitions, no data.
	FormatSMAOverview = "cms-sma-overview"
	// FormatFasten is a Fasten Health platform definition (YAML): per-vendor
	// setup requirements, no sources.
	FormatFasten = "fasten-platform-yaml"
)

// Formats lists every format, for help texts and validation of a forced one.
var Formats = []string{
	FormatBrands, FormatFHIRBundle, FormatCernerLegacy, FormatLantern, FormatLanternIndex,
	FormatCHPLProducts, FormatPayerBrandsCSV, FormatPayerIndexCSV, FormatMedicaidCSV,
	FormatSMA, FormatSMAOverview, FormatFasten,
}

// Errors.
var (
	// ErrUnknownFormat means the bytes match no format we read.
	ErrUnknownFormat = errors.New("unrecognised list format")
	// ErrMalformed means the document as a whole cannot be read (rows that
	// cannot be read are rejected one by one instead).
	ErrMalformed = errors.New("malformed list")
)

// Kinds an entry can declare. Empty means "decide from the vendor" (ehr).
const (
	KindEHR      = "ehr"
	KindPayer    = "payer"
	KindNetwork  = "network"
	KindLab      = "lab"
	KindPharmacy = "pharmacy"
	KindImaging  = "imaging"
)

// Hint tells Parse what it knows about the bytes besides their content.
type Hint struct {
	// FileName is the file's base name or the URL's last path segment. Lantern
	// names its files after the developer, which is how a row gets a vendor.
	FileName string
	// Format forces a format instead of detecting one.
	Format string
}

// List is one parsed list.
type List struct {
	Format string
	// Title names the list (the Bundle id, the file name).
	Title string
	// Vendor is set when the whole list is one developer's (Lantern files,
	// Oracle's bundles); entries may still carry their own.
	Vendor string
	// Rows is the number of rows (entries, CSV records) read, accepted or not.
	Rows     int
	Entries  []Entry
	Rejected []Rejection
	// Skipped counts rows deliberately left out that are not errors (hidden
	// brands, affiliates folded into their parent, index rows).
	Skipped int
	// Notes are facts about the list worth showing to the administrator.
	Notes []string
	// Setups are per-vendor setup requirements (Fasten platform files).
	Setups []VendorSetup
}

// Entry is one source as the list describes it.
type Entry struct {
	// Row is the 1-based position in the list (entry index, CSV line).
	Row int
	// Ref is the list's own id for the entry (Organization id, tenant).
	Ref        string
	Name       string
	Aliases    []string
	Kind       string
	Categories []string
	Vendor     string
	Logo       string
	Portals    []Portal
	// Endpoints are every FHIR endpoint of the entry, primary first.
	Endpoints []Endpoint
	Locations []Location
	NPI       []string
	OIDs      []string
	Website   string
	Sandbox   bool
	// Setup carries setup facts a list publishes per entry (CMS SMA).
	Setup *Setup
}

// Portal is a patient portal of a brand.
type Portal struct {
	Name        string
	URL         string
	Description string
	Logo        string
	// Endpoints are the FHIR base URLs the portal's accounts reach.
	Endpoints []string
}

// Endpoint is a FHIR server base.
type Endpoint struct {
	URL         string
	FHIRVersion string
	Name        string
}

// Location is a postal address.
type Location struct {
	Line       string
	City       string
	State      string
	PostalCode string
	Country    string
}

// Setup is what an app must do to be allowed to connect.
type Setup struct {
	ClientAuthMethods   []string
	PKCEMethods         []string
	Confidential        *bool
	DynamicRegistration *bool
	Scopes              []string
	GrantTypes          []string
	RegistrationInfo    string
	Documentation       string
	AuthProtocol        string
}

// VendorSetup is a vendor's setup requirements.
type VendorSetup struct {
	Vendor   string
	Platform string
	Setup    Setup
}

// Rejection is a row that was not imported, and why.
type Rejection struct {
	Row    int
	Ref    string
	Name   string
	Reason string
}

func (l *List) reject(row int, ref, name, format string, args ...any) {
	l.Rejected = append(l.Rejected, Rejection{Row: row, Ref: ref, Name: name, Reason: fmt.Sprintf(format, args...)})
}

// Progress is told how far parsing got (rows done of total, total may be 0).
type Progress func(done, total int)

// MaxBytes bounds what Parse accepts (Epic's full brands bundle is ~90 MB).
const MaxBytes = 512 << 20

// Parse detects the format of data and reads it. A document that cannot be
// read at all is an error; rows that cannot be read are in List.Rejected.
func Parse(ctx context.Context, data []byte, hint Hint, progress Progress) (*List, error) {
	if progress == nil {
		progress = func(int, int) {}
	}
	if len(data) > MaxBytes {
		return nil, fmt.Errorf("%w: %d bytes is more than the %d a list may have", ErrMalformed, len(data), MaxBytes)
	}
	format := hint.Format
	if format == "" || format == "auto" {
		var err error
		if format, err = Detect(data); err != nil {
			return nil, err
		}
	}
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
	var (
		l   *List
		err error
	)
	switch format {
	case FormatBrands, FormatFHIRBundle:
		l, err = parseBundle(ctx, data, progress)
	case FormatCernerLegacy:
		l, err = parseCernerLegacy(ctx, data, progress)
	case FormatLantern:
		l, err = parseLantern(ctx, data, hint.FileName, progress)
	case FormatLanternIndex:
		l, err = parseLanternIndex(data)
	case FormatCHPLProducts:
		l, err = parseCHPLProducts(data)
	case FormatPayerBrandsCSV, FormatPayerIndexCSV, FormatMedicaidCSV, FormatSMA, FormatSMAOverview:
		l, err = parseCSV(ctx, data, format, progress)
	case FormatFasten:
		l, err = parseFasten(data)
	case formatXLSX:
		l, err = parseXLSX(ctx, data, progress)
	default:
		return nil, fmt.Errorf("%w: %q (known: %s)", ErrUnknownFormat, format, strings.Join(Formats, ", "))
	}
	if err != nil {
		return nil, err
	}
	if l.Title == "" {
		l.Title = hint.FileName
	}
	return l, nil
}

// formatXLSX is detected from the zip signature; Parse reports the format of
// the sheet found inside (FormatSMA).
const formatXLSX = "xlsx"

// Detect names the format of data from its content.
func Detect(data []byte) (string, error) {
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
	if bytes.HasPrefix(data, []byte("PK\x03\x04")) {
		return formatXLSX, nil
	}
	trimmed := bytes.TrimLeft(data, " \t\r\n")
	if len(trimmed) == 0 {
		return "", fmt.Errorf("%w: the list is empty", ErrUnknownFormat)
	}
	switch trimmed[0] {
	case '{':
		return detectJSONObject(trimmed)
	case '[':
		return detectJSONArray(trimmed)
	}
	head := string(trimmed[:min(len(trimmed), 4096)])
	if isFasten(head) {
		return FormatFasten, nil
	}
	if f, ok := detectCSV(trimmed); ok {
		return f, nil
	}
	return "", fmt.Errorf("%w: not JSON, CSV, YAML or XLSX that we know", ErrUnknownFormat)
}

// baseName is the last element of a file path or URL path.
func baseName(p string) string {
	if i := strings.IndexAny(p, "?#"); i >= 0 {
		p = p[:i]
	}
	return path.Base(strings.ReplaceAll(p, "\\", "/"))
}

func ctxEvery(ctx context.Context, i int) error {
	if i%512 == 0 {
		return ctx.Err()
	}
	return nil
}

func appendUnique(list []string, vals ...string) []string {
	for _, v := range vals {
		v = strings.TrimSpace(v)
		if v == "" {
			continue
		}
		dup := false
		for _, x := range list {
			if strings.EqualFold(x, v) {
				dup = true
				break
			}
		}
		if !dup {
			list = append(list, v)
		}
	}
	return list
}

// cleanText collapses whitespace (names spread over lines, doubled
// spaces) and drops stray quotes and separators at either end (`"Northwell`,
// `Alaska Functional Medicine Clinic,`).
func cleanText(s string) string {
	s = strings.ReplaceAll(s, "\u00a0", " ")
	s = strings.Join(strings.Fields(s), " ")
	return strings.Trim(s, "\",;: ")
}
