// Package directory owns the catalog of sources: the model, the catalog
// compiled into the agent, importing vendors' published lists into the
// store, the in-memory search index built from both at start, and endpoint
// discovery (.well-known/smart-configuration and metadata).
//
// The model follows SMART App Launch 2.2 User-access Brands: a source is a
// brand people recognise (name, aliases, logo, locations); it has patient
// portals, and portals reach FHIR endpoints. Endpoints are kept apart from
// brands because they are shared: every athenahealth practice reaches the
// same base URL, and one brand may have an R4 and a DSTU2 endpoint, or a
// patient-facing and a provider-facing one.
package directory

import (
	"time"

	"github.com/medrelay/medrelay/internal/errdefs"
)

// Kind is what sort of system a source is.
type Kind string

// Kinds.
const (
	KindEHR      Kind = "ehr"
	KindPayer    Kind = "payer"
	KindNetwork  Kind = "network"
	KindLab      Kind = "lab"
	KindPharmacy Kind = "pharmacy"
	KindImaging  Kind = "imaging"
)

// Status of a source.
type Status string

// Statuses. A source missing from a newer copy of every list that named it
// becomes suspended; it is never deleted (connections may refer to it).
const (
	StatusActive    Status = "active"
	StatusSuspended Status = "suspended"
)

// Audiences of an endpoint.
const (
	AudiencePatient  = "patient"
	AudienceProvider = "provider"
)

// Source is a brand in the directory.
type Source struct {
	ID         string   `json:"id"`
	Name       string   `json:"name"`
	Aliases    []string `json:"aliases,omitempty"`
	Vendor     string   `json:"vendor,omitempty"`
	Kind       Kind     `json:"kind"`
	Categories []string `json:"categories,omitempty"`
	Status     Status   `json:"status"`
	Sandbox    bool     `json:"sandbox,omitempty"`
	// Logo is an https URL or a data: URI.
	Logo    string   `json:"logo,omitempty"`
	Portals []Portal `json:"portals,omitempty"`
	// Endpoints are endpoint ids, primary first.
	Endpoints   []string    `json:"endpoints,omitempty"`
	Locations   []Location  `json:"locations,omitempty"`
	Identifiers Identifiers `json:"identifiers,omitempty"`
	// Setup holds facts about this source's setup that its list published
	// (a state Medicaid agency's registration page). The vendor's
	// requirements are not copied here: see Catalog.Setup.
	Setup *Setup `json:"setup,omitempty"`
	// Lists are the ids of the imported lists that currently contain the
	// source.
	Lists []string `json:"lists,omitempty"`
	// Origin is the list the source first came from ("builtin" for the
	// catalog compiled into the agent).
	Origin string `json:"origin"`
	// Builtin sources come from the embedded catalog and are never
	// suspended by imports.
	Builtin bool `json:"builtin,omitempty"`
	// Priority of the list that last set the display fields (builtin >
	// brands bundles > vendors' lists > aggregators).
	Priority int `json:"priority,omitempty"`
	// DisplayFrom is the list that set the display fields (name, vendor,
	// logo, portals, kind, setup): a newer copy of it may change them.
	// Empty for builtin sources and for sources stored before it was
	// recorded.
	DisplayFrom string    `json:"display_from,omitempty"`
	CreatedAt   time.Time `json:"created_at"`
	UpdatedAt   time.Time `json:"updated_at"`
}

// Portal is a patient portal of a brand.
type Portal struct {
	Name        string   `json:"name,omitempty"`
	URL         string   `json:"url,omitempty"`
	Description string   `json:"description,omitempty"`
	Logo        string   `json:"logo,omitempty"`
	Endpoints   []string `json:"endpoints,omitempty"`
}

// Endpoint is a FHIR server base, shared by every brand that reaches it.
type Endpoint struct {
	ID          string `json:"id"`
	URL         string `json:"url"`
	FHIRVersion string `json:"fhir_version,omitempty"`
	// Audience is "patient", "provider" or "" (both or unknown).
	Audience string `json:"audience,omitempty"`
	Vendor   string `json:"vendor,omitempty"`
	Name     string `json:"name,omitempty"`
}

// Location is a postal address of the brand.
type Location struct {
	Line       string `json:"line,omitempty"`
	City       string `json:"city,omitempty"`
	State      string `json:"state,omitempty"`
	PostalCode string `json:"postal_code,omitempty"`
	Country    string `json:"country,omitempty"`
}

// Identifiers of a brand.
type Identifiers struct {
	NPI     []string `json:"npi,omitempty"`
	OID     []string `json:"oid,omitempty"`
	Website string   `json:"website,omitempty"`
}

// Setup is what an app must do before it may connect: the vendor's
// requirements, and facts a list publishes about one source.
type Setup struct {
	// ClientAuthMethods are token endpoint authentication methods
	// (private_key_jwt, client_secret_basic, none).
	ClientAuthMethods []string `json:"client_auth_methods,omitempty"`
	// PKCEMethods the server accepts; PKCERequired when it insists.
	PKCEMethods  []string `json:"pkce_methods,omitempty"`
	PKCERequired bool     `json:"pkce_required,omitempty"`
	// ConfidentialRequired: public clients are refused.
	ConfidentialRequired bool     `json:"confidential_required,omitempty"`
	DynamicRegistration  bool     `json:"dynamic_registration,omitempty"`
	Scopes               []string `json:"scopes,omitempty"`
	RegistrationURL      string   `json:"registration_url,omitempty"`
	Documentation        string   `json:"documentation,omitempty"`
	Notes                string   `json:"notes,omitempty"`
	// From says where these facts come from: "catalog" (compiled in),
	// "import:<list>", "plugin:<name>" (a vendor plugin's profile).
	From string `json:"from,omitempty"`
}

// Errors.
var (
	ErrNotFound       = errdefs.Define(errdefs.NotFound, "SOURCE_NOT_FOUND", "no such source")
	ErrBadQuery       = errdefs.Define(errdefs.InvalidArgument, "SOURCE_QUERY_INVALID", "invalid search")
	ErrBadCursor      = errdefs.Define(errdefs.InvalidArgument, "SOURCE_CURSOR_INVALID", "invalid page token")
	ErrImportFormat   = errdefs.Define(errdefs.InvalidArgument, "IMPORT_FORMAT_UNKNOWN", "the list's format is not one we read")
	ErrImportInvalid  = errdefs.Define(errdefs.InvalidArgument, "IMPORT_INVALID", "the list cannot be read")
	ErrImportTooLarge = errdefs.Define(errdefs.ResourceExhausted, "IMPORT_TOO_LARGE", "the list is too large")
	ErrImportURL      = errdefs.Define(errdefs.InvalidArgument, "IMPORT_URL_INVALID", "lists are fetched over https only")
	ErrImportFetch    = errdefs.Define(errdefs.Unavailable, "IMPORT_FETCH_FAILED", "the list could not be fetched")
	ErrImportBusy     = errdefs.Define(errdefs.Aborted, "IMPORT_BUSY", "another import is running")
	ErrNoEndpoint     = errdefs.Define(errdefs.FailedPrecondition, "SOURCE_NO_ENDPOINT", "the source has no FHIR endpoint")
	ErrDiscoveryURL   = errdefs.Define(errdefs.FailedPrecondition, "DISCOVERY_INSECURE", "refusing plain http to a server that is not on this machine")
	ErrUnreachable    = errdefs.Define(errdefs.Unavailable, "DISCOVERY_UNREACHABLE", "the FHIR server is unreachable")
	ErrNonConformant  = errdefs.Define(errdefs.FailedPrecondition, "DISCOVERY_NONCONFORMANT", "the FHIR server's metadata is not conformant")
)
