package main

import (
	"time"

	"github.com/medrelay/medrelay/plugins/sdk"
)

// Epic's documented behaviour (fhir.epic.com), as data:
//   - new confidential apps must use private_key_jwt (RS384 or ES384);
//   - offline_access is granted without being echoed in the token
//     response's scope; refresh tokens are not rotated;
//   - no Patient/$everything for patient apps: search type by type;
//   - Observation and Condition searches need a category;
//   - Bulk Data for Backend Services apps.
func newSource() *sdk.SMART {
	return &sdk.SMART{
		Name:    "epic",
		Vendor:  "Epic",
		Version: version,
		Profile: sdk.Profile{
			Discovery:            sdk.DiscoverSMARTConfiguration,
			Aud:                  sdk.AudFHIRBase,
			ClientAuth:           []sdk.ClientAuth{sdk.ClientAuthNone, sdk.ClientAuthPrivateKeyJWT},
			JWTAlgorithms:        []string{"RS384", "ES384"},
			ScopesV2:             []string{"openid", "fhirUser", "launch/patient", "offline_access", "patient/*.rs"},
			ScopesV1:             []string{"openid", "fhirUser", "launch/patient", "offline_access", "patient/*.read"},
			BackendScopes:        []string{"system/*.rs"},
			SupportsScopesV2:     true,
			PKCERequired:         true,
			PKCEMethod:           "S256",
			IssuesRefreshTokens:  true,
			RotatesRefreshTokens: false,
			EchoesOfflineAccess:  false,
			AccessTokenLifetime:  time.Hour,
			ResourceTypes: []string{"Patient", "AllergyIntolerance", "Condition", "Observation", "MedicationRequest",
				"Immunization", "Procedure", "DiagnosticReport", "DocumentReference", "Encounter", "Coverage",
				"ExplanationOfBenefit", "Practitioner", "Organization", "Location"},
			Everything: false,
			Bulk:       true,
			TypeSearches: map[string][]string{
				"Observation": {"category=laboratory", "category=vital-signs", "category=social-history"},
				"Condition":   {"category=problem-list-item", "category=encounter-diagnosis", "category=health-concern"},
			},
			MaxPageSize:     1000,
			DefaultPageSize: 100,
			RateLimit:       sdk.RateLimit{RequestsPerSecond: 10, Burst: 10, MaxConcurrency: 4},
			Quirks: []string{"offline-access-not-echoed", "private-key-jwt-only", "no-everything",
				"category-required-for-observation-and-condition"},
		},
	}
}
