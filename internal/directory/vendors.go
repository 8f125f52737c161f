package directory

import (
	"net/url"
	"strings"
)

// vendorRule recognises a vendor's FHIR servers by their URL. Lists from
// aggregators (1upHealth's, brands bundles) do not say which EHR serves an
// entry; the URL usually does.
type vendorRule struct {
	vendor string
	match  func(host, path string) bool
	// tenant returns the part of the URL that names the customer, so that
	// the same customer's R4 and DSTU2, or patient and provider, endpoints
	// are recognised as one brand's.
	tenant func(host, path string) string
	// audience tells patient-facing from provider-facing hosts.
	audience func(host string) string
}

func hostIs(suffixes ...string) func(string, string) bool {
	return func(h, _ string) bool {
		for _, s := range suffixes {
			if h == s || strings.HasSuffix(h, "."+s) {
				return true
			}
		}
		return false
	}
}

var vendorRules = []vendorRule{
	{
		vendor: "oraclehealth",
		match:  hostIs("cerner.com"),
		tenant: func(_, p string) string {
			// /r4/<tenant>, /dstu2/<tenant>
			parts := strings.Split(strings.Trim(p, "/"), "/")
			if len(parts) >= 2 {
				return "oraclehealth/" + parts[1]
			}
			return ""
		},
		audience: func(h string) string {
			switch {
			case strings.HasPrefix(h, "fhir-myrecord"):
				return AudiencePatient
			case strings.HasPrefix(h, "fhir-ehr"):
				return AudienceProvider
			}
			return ""
		},
	},
	{vendor: "athenahealth", match: hostIs("athenahealth.com")},
	{
		vendor: "eclinicalworks",
		match:  hostIs("eclinicalworks.com", "healow.com"),
		tenant: func(_, p string) string {
			parts := strings.Split(strings.Trim(p, "/"), "/")
			return "eclinicalworks/" + strings.ToUpper(parts[len(parts)-1])
		},
	},
	{vendor: "bluebutton", match: hostIs("bluebutton.cms.gov")},
	{vendor: "smarthealthit", match: hostIs("smarthealthit.org")},
	{vendor: "veradigm", match: hostIs("allscripts.com", "veradigm.com")},
	{vendor: "nextgen", match: hostIs("nextgen.com")},
	{vendor: "greenway", match: hostIs("greenwayhealth.com")},
	{vendor: "modmed", match: hostIs("ema-api.com")},
	{vendor: "netsmart", match: hostIs("netsmartcloud.com")},
	{vendor: "meldrx", match: hostIs("meldrx.com")},
	{
		vendor: "practicefusion",
		match:  hostIs("practicefusion.com", "patientfusion.com"),
		tenant: func(_, p string) string { return "practicefusion" + strings.ToLower(p) },
		audience: func(h string) string {
			if strings.Contains(h, "patientfusion") {
				return AudiencePatient
			}
			return AudienceProvider
		},
	},
	{
		vendor: "meditech",
		match: func(h, p string) bool {
			return strings.HasPrefix(h, "mtrestapis") || strings.Contains(h, "-mtrestapis") ||
				strings.HasSuffix(h, "meditech.cloud") || strings.HasSuffix(h, "meditech.com")
		},
		tenant: func(h, _ string) string { return "meditech/" + h },
	},
	{
		// Epic's base URLs end in /api/FHIR/R4 or /api/FHIR/DSTU2 whatever
		// the host; the customer is everything before /api/FHIR.
		vendor: "epic",
		match: func(h, p string) bool {
			lp := strings.ToLower(p)
			return strings.Contains(lp, "/api/fhir/r4") || strings.Contains(lp, "/api/fhir/dstu2") ||
				strings.Contains(lp, "/api/fhir/stu3") || h == "fhir.epic.com"
		},
		tenant: func(h, p string) string {
			lp := strings.ToLower(p)
			if i := strings.Index(lp, "/api/fhir/"); i >= 0 {
				return "epic/" + h + lp[:i]
			}
			return ""
		},
	},
	{
		// 1upHealth hosts payers' Patient Access APIs at api.<payer>fhir.com.
		vendor: "1uphealth",
		match: func(h, _ string) bool {
			return strings.HasPrefix(h, "api.") && strings.HasSuffix(h, "fhir.com") || hostIs("1up.health", "1uphealthdemo.com")(h, "")
		},
	},
}

// endpointFacts are what a URL says about an endpoint.
type endpointFacts struct {
	vendor   string
	tenant   string // identity key part: the vendor's tenant, else the URL
	audience string
	version  string
}

// factsOf inspects a normalized FHIR base URL.
func factsOf(base string) endpointFacts {
	f := endpointFacts{tenant: strings.ToLower(base), version: versionFromPath(base)}
	u, err := url.Parse(base)
	if err != nil {
		return f
	}
	host := strings.ToLower(u.Hostname())
	for _, r := range vendorRules {
		if !r.match(host, u.Path) {
			continue
		}
		f.vendor = r.vendor
		if r.tenant != nil {
			if t := r.tenant(host, u.Path); t != "" {
				f.tenant = t
			}
		}
		if r.audience != nil {
			f.audience = r.audience(host)
		}
		break
	}
	return f
}

// versionFromPath guesses the FHIR version from the base URL's path.
func versionFromPath(base string) string {
	lp := strings.ToLower(base)
	segs := strings.Split(lp, "/")
	for i := len(segs) - 1; i >= 3; i-- {
		switch segs[i] {
		case "r4", "fhir-r4", "r4b":
			return "4.0.1"
		case "dstu2", "r2":
			return "1.0.2"
		case "stu3", "dstu3", "r3":
			return "3.0.2"
		case "r5":
			return "5.0.0"
		}
	}
	return ""
}

// vendorNames are display names of vendors the catalog knows. Vendors seen
// only in imported lists are shown by their slug.
var vendorNames = map[string]string{
	"epic": "Epic", "oraclehealth": "Oracle Health (Cerner)", "athenahealth": "athenahealth",
	"eclinicalworks": "eClinicalWorks", "bluebutton": "CMS Blue Button 2.0", "smarthealthit": "SMART Health IT",
	"meditech": "MEDITECH", "veradigm": "Veradigm (Allscripts)", "altera": "Altera Digital Health",
	"practicefusion": "Practice Fusion", "nextgen": "NextGen Healthcare", "greenway": "Greenway Health",
	"modmed": "Modernizing Medicine", "drchrono": "DrChrono", "medhost": "MEDHOST", "netsmart": "Netsmart",
	"meldrx": "MeldRx (Darena Solutions)", "1uphealth": "1upHealth", "medrelay-sandbox": "medrelay sandbox",
}

// VendorName is a vendor's display name.
func VendorName(slug string) string {
	if n, ok := vendorNames[slug]; ok {
		return n
	}
	return slug
}

// defaultKind is the kind of a vendor's sources when the list does not say.
func defaultKind(vendor string) Kind {
	switch vendor {
	case "bluebutton", "1uphealth":
		return KindPayer
	}
	return KindEHR
}
