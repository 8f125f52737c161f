package sdk

import (
	"time"
)

// Version is the SDK's version, reported to the agent in Describe.
const Version = "0.2.0"

// ProtocolVersions are the plugin protocol majors this SDK speaks.
var ProtocolVersions = []int{1}

// Connection is what a data call is for. The plugin never sees a refresh
// token: Call.AccessToken asks the agent for a short-lived access token.
type Connection struct {
	ID string
	// FHIRBase is the source's FHIR base URL, without a trailing slash
	// unless the source insists on one.
	FHIRBase string
	// PatientID is the patient of a patient-access connection.
	PatientID string
	// Settings are vendor-specific (e.g. athenahealth's "practice_id").
	Settings map[string]string
}

// Resource is one FHIR resource exactly as the source sent it.
type Resource struct {
	Type string
	ID   string
	JSON []byte
	// SearchMode is the Bundle entry's search.mode: "match", "include" or
	// "outcome"; empty outside searches.
	SearchMode string
}

// Param is one search parameter; order and repetition are kept.
type Param struct{ Name, Value string }

// SearchRequest is a FHIR search.
type SearchRequest struct {
	ResourceType string
	Params       []Param
	// PageSize is _count; 0 uses the profile's default.
	PageSize int
	// MaxPages stops paging after that many pages; 0 is no limit.
	MaxPages int
	// IncludeReferences also fetches resources the results refer to.
	IncludeReferences bool
}

// Page is one page of search results.
type Page struct {
	// Number is 1-based.
	Number int
	// Total is Bundle.total when the source reports it, else -1.
	Total     int64
	Resources []Resource
}

// ReadRequest reads one resource.
type ReadRequest struct {
	ResourceType string
	ID           string
}

// EverythingRequest asks for everything about a patient.
type EverythingRequest struct {
	// PatientID defaults to the connection's patient.
	PatientID string
	// Since limits to resources changed since (zero: everything).
	Since time.Time
	// Types limits the resource types; empty is every type of the profile.
	Types             []string
	IncludeReferences bool
}

// BulkLevel is the level of a Bulk Data export.
type BulkLevel int

// Export levels.
const (
	BulkSystem BulkLevel = iota + 1
	BulkPatient
	BulkGroup
)

// BulkKickoffRequest starts a Bulk Data export.
type BulkKickoffRequest struct {
	Level        BulkLevel
	GroupID      string
	Types        []string
	Since        time.Time
	TypeFilters  []string
	OutputFormat string
}

// BulkState is where an export stands.
type BulkState int

// Export states.
const (
	BulkInProgress BulkState = iota + 1
	BulkComplete
	BulkFailed
)

// BulkStatus is the answer to one status poll.
type BulkStatus struct {
	State BulkState
	// Progress is X-Progress, while in progress.
	Progress string
	// RetryAfter is what the server asked for, uncapped.
	RetryAfter time.Duration
	// Manifest is set when complete.
	Manifest *BulkManifest
	// Error is the OperationOutcome JSON when failed.
	Error []byte
}

// BulkManifest is a completed export's manifest.
type BulkManifest struct {
	TransactionTime     time.Time
	Request             string
	RequiresAccessToken bool
	Output              []BulkFile
	Deleted             []BulkFile
	Error               []BulkFile
	// JSON is the manifest as the server sent it.
	JSON []byte
}

// BulkFile is one file of a manifest.
type BulkFile struct {
	Type  string
	URL   string
	Count int64
}

// BulkDownloadRequest downloads one export file from Offset.
type BulkDownloadRequest struct {
	URL                 string
	Offset              int64
	RequiresAccessToken bool
}

// Description is what a plugin tells the agent about itself: who it is and
// how its vendor behaves, as data.
type Description struct {
	// Name is short and lower-case: the binary is medrelay-plugin-<Name>.
	Name    string
	Vendor  string
	Version string
	Profile Profile
	// Capabilities; nil lets the SDK derive them from the Source's methods
	// and the profile.
	Capabilities []Capability
}

// Capability is a feature flag the agent negotiates on.
type Capability int

// Capabilities.
const (
	CapSearch Capability = iota + 1
	CapRead
	CapEverything
	// CapEverythingOperation: Everything uses Patient/$everything.
	CapEverythingOperation
	CapBulkExport
	CapBulkCancel
	CapReferenceFollowing
	// CapDownloadSink: BulkDownload writes to the agent's local socket
	// (the SDK does this for every BulkSource).
	CapDownloadSink
	// CapDownloadRing: BulkDownload reads the file straight into memory
	// shared with the agent (Linux; since SDK 0.2.0). The SDK declares it
	// itself wherever CapDownloadSink is declared and the system allows;
	// listing it has no effect.
	CapDownloadRing
)

// Discovery is how endpoints are found.
type Discovery int

// Discovery methods.
const (
	DiscoverSMARTConfiguration Discovery = iota + 1
	DiscoverCapabilityStatement
	DiscoverStatic
)

// AudRule is what the aud parameter of the authorize request must be.
type AudRule int

// aud rules.
const (
	AudFHIRBase AudRule = iota + 1
	AudFHIRBaseNoTrailingSlash
	AudIgnored
)

// ClientAuth is a token-endpoint client authentication method.
type ClientAuth int

// Client authentication methods.
const (
	ClientAuthNone ClientAuth = iota + 1
	ClientAuthSecretBasic
	ClientAuthSecretPost
	ClientAuthPrivateKeyJWT
)

// RateLimit is how hard the plugin may hit one source.
type RateLimit struct {
	// RequestsPerSecond; 0 is unlimited.
	RequestsPerSecond float64
	Burst             int
	// MaxConcurrency is requests in flight at once; 0 is unlimited.
	MaxConcurrency int
	// MaxRetryAfter is the longest Retry-After waited in place; a longer
	// one fails the call with a RetryAfterError so the agent can come back
	// later. Default 2 minutes.
	MaxRetryAfter time.Duration
}

// Profile is a vendor's documented behaviour, as data. The default SMART
// implementation reads it; vendors mostly only fill it in.
type Profile struct {
	// Authorization.
	Discovery            Discovery
	AuthorizeURL         string
	TokenURL             string
	RevokeURL            string
	Aud                  AudRule
	ClientAuth           []ClientAuth
	ScopesV1             []string
	ScopesV2             []string
	BackendScopes        []string
	SupportsScopesV2     bool
	PKCERequired         bool
	PKCEMethod           string
	IssuesRefreshTokens  bool
	RotatesRefreshTokens bool
	// EchoesOfflineAccess is false when offline_access is granted but not
	// listed in the token response's scope (Epic).
	EchoesOfflineAccess    bool
	AccessTokenLifetime    time.Duration
	RefreshTokenLifetime   time.Duration
	TrailingSlash          bool
	ReportsGrantExpiration bool
	SharedBaseURL          bool
	ConfidentialOnly       bool
	JWTAlgorithms          []string

	// Data.
	// ResourceTypes the source serves (and Everything fetches by default).
	ResourceTypes []string
	// Everything: the source answers Patient/$everything. When false,
	// Everything searches type by type.
	Everything bool
	// Bulk: the source serves Bulk Data $export.
	Bulk bool
	// MaxPageSize caps _count.
	MaxPageSize int
	// DefaultPageSize is _count when the caller gives none; 0 sends none.
	DefaultPageSize int
	// PatientParams names the search parameter that selects a patient's
	// resources of a type, where it is not "patient" (Coverage:
	// "beneficiary", Patient: "_id").
	PatientParams map[string]string
	// TypeSearches splits one type's per-patient search into several
	// (vendors that require a category on Observation): each entry is extra
	// query parameters, e.g. "category=laboratory".
	TypeSearches map[string][]string
	// Accept is the Accept header of FHIR requests; default application/fhir+json.
	Accept    string
	RateLimit RateLimit
	// Quirks names the vendor behaviours the plugin handles, for people.
	Quirks []string
}
