package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/medrelay/medrelay/plugins/sdk"
)

// athenahealth (athenaOne) behaviour:
//   - every practice shares one FHIR base URL; the practice is part of every
//     id (a-{practice}.E-{n}) and a search that names no patient must name
//     the practice with ah-practice=Organization/a-1.Practice-{id};
//   - five-minute access tokens; refresh tokens not rotated;
//   - no Patient/$everything; Bulk Data for Backend Services.
//
// The practice comes from the connection's "practice_id" setting, else from
// the patient id.
func newSource() *sdk.SMART {
	s := &sdk.SMART{
		Name:    "athenahealth",
		Vendor:  "athenahealth",
		Version: version,
		Profile: sdk.Profile{
			Discovery:            sdk.DiscoverSMARTConfiguration,
			Aud:                  sdk.AudFHIRBase,
			ClientAuth:           []sdk.ClientAuth{sdk.ClientAuthNone, sdk.ClientAuthSecretBasic, sdk.ClientAuthPrivateKeyJWT},
			JWTAlgorithms:        []string{"RS384", "ES384"},
			ScopesV2:             []string{"openid", "fhirUser", "launch/patient", "offline_access", "patient/*.rs"},
			ScopesV1:             []string{"openid", "fhirUser", "launch/patient", "offline_access", "patient/*.read"},
			BackendScopes:        []string{"system/*.rs"},
			SupportsScopesV2:     true,
			PKCERequired:         true,
			PKCEMethod:           "S256",
			IssuesRefreshTokens:  true,
			RotatesRefreshTokens: false,
			EchoesOfflineAccess:  true,
			AccessTokenLifetime:  5 * time.Minute,
			SharedBaseURL:        true,
			Everything:           false,
			Bulk:                 true,
			MaxPageSize:          100,
			DefaultPageSize:      100,
			RateLimit:            sdk.RateLimit{RequestsPerSecond: 10, Burst: 10, MaxConcurrency: 4},
			Quirks:               []string{"shared-base-url", "ah-practice-parameter", "practice-in-ids", "five-minute-access-tokens"},
		},
	}
	s.PrepareSearch = addPractice
	return s
}

// patientSelectors name a patient; with one of them athena needs no
// practice.
var patientSelectors = map[string]bool{"patient": true, "subject": true, "beneficiary": true}

func addPractice(call *sdk.Call, req *sdk.SearchRequest) error {
	if shared[req.ResourceType] {
		return nil
	}
	for _, p := range req.Params {
		if patientSelectors[p.Name] || p.Name == "ah-practice" || (req.ResourceType == "Patient" && p.Name == "_id") {
			return nil
		}
	}
	practice := call.Conn.Settings["practice_id"]
	if practice == "" {
		practice = PracticeOf(call.Conn.PatientID)
	}
	if practice == "" {
		return fmt.Errorf("%w: athenahealth searches need the connection's practice_id setting or a patient", sdk.ErrInvalid)
	}
	req.Params = append(req.Params, sdk.Param{Name: "ah-practice", Value: "Organization/a-1.Practice-" + practice})
	return nil
}

var shared = map[string]bool{"Practitioner": true, "Organization": true, "Location": true}

// PracticeOf reads the practice out of an athenahealth id "a-{practice}.E-{n}"
// (or any "a-{practice}.X-{n}"); "" when it has none.
func PracticeOf(id string) string {
	rest, ok := strings.CutPrefix(id, "a-")
	if !ok {
		return ""
	}
	practice, _, ok := strings.Cut(rest, ".")
	if !ok || practice == "" {
		return ""
	}
	for _, r := range practice {
		if r < '0' || r > '9' {
			return ""
		}
	}
	return practice
}
