package importers

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// detectJSONObject looks at the top-level keys of a JSON object without
// decoding the (possibly 90 MB) arrays inside it.
func detectJSONObject(data []byte) (string, error) {
	var (
		resourceType  string
		hasEndpoints  bool // Cerner legacy
		hasEndpointsU bool // Lantern
		brandish      bool
		platformType  bool
	)
	dec := json.NewDecoder(bytes.NewReader(data))
	err := walkObject(dec, func(key string) error {
		switch key {
		case "resourceType":
			return dec.Decode(&resourceType)
		case "endpoints":
			hasEndpoints = true
		case "Endpoints":
			hasEndpointsU = true
		case "platform_type":
			platformType = true
		case "entry":
			// Brand extensions appear early in any brands bundle; a cheap scan
			// of the raw bytes is enough to name the format.
			brandish = bytes.Contains(data, []byte("organization-brand")) ||
				bytes.Contains(data, []byte("organization-portal")) ||
				bytes.Contains(data, []byte("smart-app-launch/StructureDefinition/brand")) ||
				bytes.Contains(data, []byte("patient-access-url")) ||
				bytes.Contains(data, []byte("patient-access-name"))
		}
		var skip json.RawMessage
		return dec.Decode(&skip)
	})
	if err != nil {
		return "", fmt.Errorf("%w: invalid JSON: %v", ErrMalformed, err)
	}
	switch {
	case resourceType == "Bundle" && brandish:
		return FormatBrands, nil
	case resourceType == "Bundle":
		return FormatFHIRBundle, nil
	case resourceType != "":
		return "", fmt.Errorf("%w: a FHIR %s, not a Bundle", ErrUnknownFormat, resourceType)
	case hasEndpointsU:
		return FormatLantern, nil
	case hasEndpoints:
		return FormatCernerLegacy, nil
	case platformType:
		return FormatFasten, nil
	}
	return "", fmt.Errorf("%w: a JSON object with none of resourceType, endpoints or Endpoints", ErrUnknownFormat)
}

func detectJSONArray(data []byte) (string, error) {
	var first []map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&first); err != nil {
		return "", fmt.Errorf("%w: invalid JSON array: %v", ErrMalformed, err)
	}
	if len(first) == 0 {
		return "", fmt.Errorf("%w: an empty JSON array", ErrUnknownFormat)
	}
	has := func(k string) bool { _, ok := first[0][k]; return ok }
	switch {
	case has("FormatType") || (has("FileName") && has("URL")):
		return FormatLanternIndex, nil
	case has("CHPLID"):
		return FormatCHPLProducts, nil
	}
	return "", fmt.Errorf("%w: a JSON array of unknown objects", ErrUnknownFormat)
}

// walkObject calls fn for each key of the object dec is about to read; fn
// must consume the value.
func walkObject(dec *json.Decoder, fn func(key string) error) error {
	t, err := dec.Token()
	if err != nil {
		return err
	}
	if d, ok := t.(json.Delim); !ok || d != '{' {
		return fmt.Errorf("expected an object, found %v", t)
	}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return err
		}
		key, ok := t.(string)
		if !ok {
			return fmt.Errorf("expected a key, found %v", t)
		}
		if err := fn(key); err != nil {
			return err
		}
	}
	t, err = dec.Token()
	if err != nil {
		return err
	}
	if d, ok := t.(json.Delim); !ok || d != '}' {
		return fmt.Errorf("expected end of object, found %v", t)
	}
	return nil
}

// walkArray calls fn with each element of the array dec is about to read,
// as raw JSON, so one bad element cannot derail the decoder. A null is an
// empty array.
func walkArray(ctx context.Context, dec *json.Decoder, fn func(i int, raw json.RawMessage) error) error {
	t, err := dec.Token()
	if err != nil {
		return err
	}
	if t == nil {
		return nil
	}
	if d, ok := t.(json.Delim); !ok || d != '[' {
		return fmt.Errorf("expected an array, found %v", t)
	}
	for i := 0; dec.More(); i++ {
		if err := ctxEvery(ctx, i); err != nil {
			return err
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return err
		}
		if err := fn(i, raw); err != nil {
			return err
		}
	}
	_, err = dec.Token()
	return err
}

// countTopLevel estimates the number of rows for a progress bar by counting
// the occurrences of a field every row has (cheaper than decoding).
func countTopLevel(data []byte, key string) int {
	return bytes.Count(data, []byte(key))
}

// eachRow reads the array under key of data's top-level object (other keys
// are skipped), counting rows and reporting progress; a row that does not
// decode into T is rejected and the rest read on. countKey is a field every
// row has, for the progress total.
func eachRow[T any](ctx context.Context, data []byte, key, countKey string, l *List, progress Progress, fn func(row int, r T)) error {
	total := countTopLevel(data, countKey)
	dec := json.NewDecoder(bytes.NewReader(data))
	err := walkObject(dec, func(k string) error {
		if k != key {
			var skip json.RawMessage
			return dec.Decode(&skip)
		}
		return walkArray(ctx, dec, func(i int, raw json.RawMessage) error {
			row := i + 1
			l.Rows++
			progress(row, total)
			var r T
			if err := json.Unmarshal(raw, &r); err != nil {
				l.reject(row, "", "", "malformed row: %s", jsonErr(err))
				return nil
			}
			fn(row, r)
			return nil
		})
	})
	if err != nil {
		return fmt.Errorf("%w: %s", ErrMalformed, jsonErr(err))
	}
	return nil
}

func jsonErr(err error) string {
	if err == io.ErrUnexpectedEOF {
		return "truncated JSON"
	}
	s := err.Error()
	return strings.TrimPrefix(s, "json: ")
}

// lanternRow is a row of Lantern's normalized lists.
type lanternRow struct {
	URL                 string `json:"URL"`
	OrganizationName    string `json:"OrganizationName"`
	NPIID               string `json:"NPIID"`
	OrganizationZipCode string `json:"OrganizationZipCode"`
}

func parseLantern(ctx context.Context, data []byte, fileName string, progress Progress) (*List, error) {
	l := &List{Format: FormatLantern, Title: baseName(fileName)}
	dev := lanternDeveloper(baseName(fileName))
	l.Vendor = dev.vendor
	var nameless []Entry
	err := eachRow(ctx, data, "Endpoints", `"URL"`, l, progress, func(row int, r lanternRow) {
		name := cleanText(r.OrganizationName)
		if dev.medicaid && name != "" {
			name = medicaidName(name)
		}
		u, err := NormalizeBaseURL(r.URL)
		if name == "" {
			if err == nil {
				nameless = append(nameless, Entry{Row: row, Kind: dev.kind, Vendor: dev.vendor, Endpoints: []Endpoint{{URL: u}}})
			}
			l.reject(row, "", "", "no organization name")
			return
		}
		if err != nil {
			l.reject(row, "", name, "%v: %q", err, strings.TrimSpace(r.URL))
			return
		}
		e := Entry{Row: row, Name: name, Kind: dev.kind, Vendor: dev.vendor, Endpoints: []Endpoint{{URL: u}}}
		if npi := strings.TrimSpace(r.NPIID); npi != "" {
			e.NPI = []string{npi}
		}
		if zip := strings.TrimSpace(r.OrganizationZipCode); zip != "" {
			e.Locations = []Location{{PostalCode: zip}}
		}
		if dev.medicaid {
			if st := StateCode(strings.TrimSuffix(name, " Medicaid")); st != "" {
				e.Locations = []Location{{State: st}}
			}
		}
		l.Entries = append(l.Entries, e)
	})
	if err != nil {
		return nil, err
	}
	// A developer that publishes one or two endpoints without organization
	// names is publishing its own service (a payer's API, a product's shared
	// base): those rows are named after the developer.
	if len(l.Entries) == 0 && len(nameless) > 0 && len(nameless) == len(l.Rejected) && l.Rows <= 3 && dev.display != "" {
		l.Rejected = nil
		for _, e := range nameless {
			e.Name = dev.display
			l.Entries = append(l.Entries, e)
		}
		l.Notes = append(l.Notes, fmt.Sprintf("rows without an organization name are named after the developer (%s)", dev.display))
	}
	return l, nil
}

// developer is what a Lantern file name says about its rows.
type developer struct {
	display  string
	vendor   string
	kind     string
	medicaid bool
}

// lanternFiles maps Lantern's developer file names (without
// "_EndpointSources.json" and a trailing "_N") to our vendor slugs. Files not
// listed get a slug made from the name.
var lanternFiles = map[string]string{
	"Epic_Systems_Corporation":                    "epic",
	"Cerner_Corporation":                          "oraclehealth",
	"athenahealth_Inc":                            "athenahealth",
	"AthenaClinicals":                             "athenahealth",
	"eClinicalWorks_LLC":                          "eclinicalworks",
	"Medical_Information_Technology_Inc_MEDITECH": "meditech",
	"Veradigm":                                    "veradigm",
	"Altera_Digital_Health_Inc":                   "altera",
	"Practice_Fusion":                             "practicefusion",
	"NextGen_Healthcare":                          "nextgen",
	"Greenway_Health_LLC":                         "greenway",
	"Modernizing_Medicine":                        "modmed",
	"Drchrono_Inc":                                "drchrono",
	"MEDHOST":                                     "medhost",
	"Netsmart_Technologies":                       "netsmart",
	"Darena_Solutions_LLC":                        "meldrx",
	"Office_Practicum":                            "officepracticum",
	"First_Insight_Corporation":                   "firstinsight",
	"Azalea_Health":                               "azalea",
	"CareEvolution":                               "careevolution",
	"Carepaths_EHR":                               "carepaths",
	"Carepaths_Inc":                               "carepaths",
	// 1upHealth's list spans many EHRs: rows get their vendor from the URL.
	"1Up": "",
}

func lanternDeveloper(file string) developer {
	name := strings.TrimSuffix(file, ".json")
	name = strings.TrimSuffix(name, "EndpointSources")
	name = strings.TrimSuffix(name, "_")
	if i := strings.LastIndexByte(name, '_'); i > 0 && isDigits(name[i+1:]) {
		name = name[:i]
	}
	switch {
	case name == "MedicaidState":
		return developer{kind: KindPayer, medicaid: true}
	case strings.HasPrefix(name, "Medicare_"):
		p := payerName(strings.TrimPrefix(name, "Medicare_"))
		return developer{kind: KindPayer, vendor: slug(p), display: p}
	}
	display := strings.ReplaceAll(trimCompanySuffix(name), "_", " ")
	if v, ok := lanternFiles[name]; ok {
		if v == "" {
			display = ""
		}
		return developer{vendor: v, display: display}
	}
	if name == "" {
		return developer{}
	}
	return developer{vendor: slug(trimCompanySuffix(name)), display: display}
}

// payerName turns "ElevanceHealth(Anthem)" into "ElevanceHealth".
func payerName(s string) string {
	if i := strings.IndexByte(s, '('); i > 0 {
		s = s[:i]
	}
	return s
}

func trimCompanySuffix(s string) string {
	for {
		t := s
		for _, suf := range []string{"_Inc", "_LLC", "_Corporation", "_Corp", "_Ltd", "_Co", "_LP", "_PC", "_BV", "_O"} {
			t = strings.TrimSuffix(t, suf)
		}
		if t == s {
			return s
		}
		s = t
	}
}

// slug lower-cases and keeps letters and digits, "-" between words.
func slug(s string) string {
	var b strings.Builder
	dash := false
	for _, r := range strings.ToLower(s) {
		switch {
		case r >= 'a' && r <= 'z' || r >= '0' && r <= '9':
			if dash && b.Len() > 0 {
				b.WriteByte('-')
			}
			b.WriteRune(r)
			dash = false
		default:
			dash = true
		}
	}
	return b.String()
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// medicaidName names a state's Medicaid program from the state's name.
func medicaidName(state string) string {
	state = cleanText(state)
	if strings.Contains(strings.ToLower(state), "medicaid") {
		return state
	}
	return state + " Medicaid"
}

type cernerLegacyRow struct {
	Name    string `json:"name"`
	BaseURL string `json:"baseUrl"`
	Type    string `json:"type"`
}

func parseCernerLegacy(ctx context.Context, data []byte, progress Progress) (*List, error) {
	l := &List{Format: FormatCernerLegacy, Vendor: "oraclehealth"}
	err := eachRow(ctx, data, "endpoints", `"baseUrl"`, l, progress, func(row int, r cernerLegacyRow) {
		name := cleanText(r.Name)
		if name == "" {
			l.reject(row, "", "", "no organization name")
			return
		}
		u, err := NormalizeBaseURL(r.BaseURL)
		if err != nil {
			l.reject(row, "", name, "%v: %q", err, strings.TrimSpace(r.BaseURL))
			return
		}
		l.Entries = append(l.Entries, Entry{
			Row: row, Name: name, Vendor: "oraclehealth",
			Endpoints: []Endpoint{{URL: u}},
			Sandbox:   strings.EqualFold(r.Type, "sandbox") || strings.EqualFold(r.Type, "test"),
		})
	})
	if err != nil {
		return nil, err
	}
	return l, nil
}

func parseLanternIndex(data []byte) (*List, error) {
	var rows []struct {
		FormatType   string `json:"FormatType"`
		URL          string `json:"URL"`
		EndpointName string `json:"EndpointName"`
		FileName     string `json:"FileName"`
	}
	if err := json.Unmarshal(data, &rows); err != nil {
		return nil, fmt.Errorf("%w: %s", ErrMalformed, jsonErr(err))
	}
	l := &List{Format: FormatLanternIndex, Rows: len(rows), Skipped: len(rows)}
	l.Notes = append(l.Notes, fmt.Sprintf("an index of %d published lists (developer → where its list is published), not a list of sources: import the lists themselves", len(rows)))
	return l, nil
}

func parseCHPLProducts(data []byte) (*List, error) {
	var rows []map[string]any
	if err := json.Unmarshal(data, &rows); err != nil {
		return nil, fmt.Errorf("%w: %s", ErrMalformed, jsonErr(err))
	}
	l := &List{Format: FormatCHPLProducts, Rows: len(rows), Skipped: len(rows)}
	l.Notes = append(l.Notes, fmt.Sprintf("a mapping of %d certified products to CHPL ids, not a list of sources", len(rows)))
	return l, nil
}
