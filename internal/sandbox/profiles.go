package sandbox

import "time"

// profile is a vendor's documented behaviour, as data.
type profile struct {
	Name   string
	Vendor string // display
	// TrailingSlash: the authorize and token URLs end in "/" and only answer there (Blue Button).
	TrailingSlash bool
	// EchoOfflineAccess: false = offline_access is granted but not listed in the token response's scope (Epic).
	EchoOfflineAccess bool
	// Everything: Patient/$everything is supported.
	Everything bool
	// AsymmetricOnly: confidential clients must use private_key_jwt (Epic).
	AsymmetricOnly bool
	// ConfidentialOnly: public clients are refused (Blue Button).
	ConfidentialOnly bool
	// GrantExpiration: the token response carries access_grant_expiration (Blue Button).
	GrantExpiration time.Duration
	// AccessTokenLifetime default.
	AccessTokenLifetime time.Duration
	// RotateRefresh default.
	RotateRefresh bool
	// Types served; nil = all synthetic types.
	Types []string
	// ScopesV2: the server advertises and accepts v2 scopes (.rs); v1 (.read) always works.
	ScopesV2 bool
	// Practices > 0: that many practices share one base URL (athenahealth);
	// patients are partitioned among them.
	Practices int
	// MaxCount caps _count.
	MaxCount int
	// Bulk: the tenant serves $export.
	Bulk bool
	// Portal is the patient portal name shown in brands.json and the login page.
	Portal string
	Color  string
}

var profiles = map[string]*profile{
	ProfileGeneric: {
		Name: ProfileGeneric, Vendor: "Generic SMART 2.2", EchoOfflineAccess: true, Everything: true,
		AccessTokenLifetime: time.Hour, RotateRefresh: true, ScopesV2: true, MaxCount: 1000, Bulk: true,
		Portal: "Sandbox Health Portal", Color: "#2c6e49",
	},
	// Epic: offline_access is granted without being echoed; no $everything;
	// new confidential apps must use private_key_jwt; refresh tokens are not
	// rotated (they keep working until the grant ends).
	ProfileEpic: {
		Name: ProfileEpic, Vendor: "Epic", Everything: false, AsymmetricOnly: true,
		AccessTokenLifetime: time.Hour, RotateRefresh: false, ScopesV2: true, MaxCount: 1000, Bulk: true,
		Portal: "MyChart", Color: "#c8102e",
	},
	// Oracle Health (Cerner Millennium): access tokens of about ten minutes,
	// refresh tokens rotated on every use.
	ProfileOracleHealth: {
		Name: ProfileOracleHealth, Vendor: "Oracle Health", EchoOfflineAccess: true, Everything: false,
		AccessTokenLifetime: 570 * time.Second, RotateRefresh: true, ScopesV2: true, MaxCount: 100, Bulk: true,
		Portal: "HealtheLife", Color: "#c74634",
	},
	// CMS Blue Button 2.0: OAuth URLs need the trailing slash, PKCE S256,
	// confidential clients only, access_grant_expiration (13 months for
	// research/ongoing access), only Patient, Coverage and ExplanationOfBenefit.
	ProfileBlueButton: {
		Name: ProfileBlueButton, Vendor: "CMS Blue Button 2.0", TrailingSlash: true, EchoOfflineAccess: true,
		ConfidentialOnly: true, GrantExpiration: 13 * 30 * 24 * time.Hour,
		AccessTokenLifetime: 10 * time.Hour, RotateRefresh: true, ScopesV2: true, MaxCount: 50,
		Types:  []string{"Patient", "Coverage", "ExplanationOfBenefit"},
		Portal: "Medicare.gov", Color: "#112e51",
	},
	// athenahealth: every practice shares one FHIR base URL; the practice is
	// part of every id (a-{practice}.E-{n}) and searches without a patient
	// name the practice with ah-practice.
	ProfileAthenahealth: {
		Name: ProfileAthenahealth, Vendor: "athenahealth", EchoOfflineAccess: true, Everything: false,
		AccessTokenLifetime: 5 * time.Minute, RotateRefresh: false, ScopesV2: true, MaxCount: 100, Bulk: true,
		Practices: 3, Portal: "athenaPatient", Color: "#5c2d91",
	},
	// eClinicalWorks (assumed from its public FHIR developer docs): one base URL
	// per practice, SMART v1 scopes only (patient/X.read), access tokens of one
	// hour, refresh tokens issued for offline_access and not rotated, no
	// $everything, no Bulk Data for patient apps (bulk on the backend flow).
	ProfileEClinicalWorks: {
		Name: ProfileEClinicalWorks, Vendor: "eClinicalWorks", EchoOfflineAccess: true, Everything: false,
		AccessTokenLifetime: time.Hour, RotateRefresh: false, ScopesV2: false, MaxCount: 100, Bulk: true,
		Portal: "healow", Color: "#0072bc",
	},
}
