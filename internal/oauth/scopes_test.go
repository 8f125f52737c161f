package oauth_test

import (
	"slices"
	"testing"

	"github.com/medrelay/medrelay/internal/oauth"
)

// TestScopeSyntax: the SMART scope language, v1 and v2. smart-2.2-client
// #120-#125, #132, #135, #137, #141, #143, #146.
func TestScopeSyntax(t *testing.T) {
	cases := []struct {
		in     string
		ok     bool
		v2, v1 string
	}{
		{"patient/Observation.rs", true, "patient/Observation.rs", "patient/Observation.read"},
		{"patient/Observation.read", true, "patient/Observation.rs", "patient/Observation.read"},
		{"user/Encounter.cruds", true, "user/Encounter.cruds", "user/Encounter.*"},
		{"system/*.rs", true, "system/*.rs", "system/*.read"},
		{"patient/*.cud", true, "patient/*.cud", "patient/*.write"},
		{"patient/*.write", true, "patient/*.cud", "patient/*.write"},
		{"patient/*.*", true, "patient/*.cruds", "patient/*.*"},
		{"patient/Condition.c", true, "patient/Condition.c", "patient/Condition.write"},
		{"patient/Observation.rs?category=laboratory", true, "patient/Observation.rs?category=laboratory", ""},
		{"patient/Observation.rs?category=a&code=b", true, "patient/Observation.rs?category=a&code=b", ""},
		// Malformed.
		{"patient/Observation.sr", false, "", ""},       // out of order
		{"patient/Observation.rr", false, "", ""},       // repeated
		{"patient/Observation.x", false, "", ""},        // unknown letter
		{"patient/observation.rs", false, "", ""},       // not a resource type
		{"practitioner/Patient.rs", false, "", ""},      // unknown context
		{"patient/Observation", false, "", ""},          // no permissions
		{"patient/Observation.read?x=1", false, "", ""}, // v1 with a query
		{"patient/Observation.rs?", false, "", ""},      // empty query
		{"patient/Observation.rs?nope", false, "", ""},
		{"launch/patient", false, "", ""},
		{"openid", false, "", ""},
	}
	for _, tc := range cases {
		sc, ok := oauth.ParseScope(tc.in)
		if ok != tc.ok {
			t.Errorf("%s: ok %v", tc.in, ok)
			continue
		}
		if !ok {
			continue
		}
		if sc.V2String() != tc.v2 {
			t.Errorf("%s: v2 %q, want %q", tc.in, sc.V2String(), tc.v2)
		}
		v1, ok := sc.V1String()
		if (tc.v1 == "") == ok || v1 != tc.v1 {
			t.Errorf("%s: v1 %q %v, want %q", tc.in, v1, ok, tc.v1)
		}
	}
}

// TestConvertScopes: other scopes pass through, duplicates go.
func TestConvertScopes(t *testing.T) {
	got, err := oauth.ConvertScopes([]string{"openid fhirUser", "patient/Observation.read", "patient/Observation.rs", "launch/patient"}, true)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"openid", "fhirUser", "patient/Observation.rs", "launch/patient"}; !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

// TestDefaultScopes: the base scopes (identity, patient context, offline
// access) and one read+search scope per type served, not a wildcard, when
// the types are known. smart-2.2-client #46, #47, #148, #150-#152, #166,
// #195, #196, #216.
func TestDefaultScopes(t *testing.T) {
	v2 := oauth.Endpoints{Capabilities: []string{"permission-v2"}}
	v1 := oauth.Endpoints{Capabilities: []string{"permission-v1"}}
	got := oauth.DefaultScopes(oauth.Profile{}, v2, []string{"Observation", "Condition", "Observation", "bad type"})
	want := []string{"launch/patient", "openid", "fhirUser", "offline_access", "patient/Condition.rs", "patient/Observation.rs"}
	if !slices.Equal(got, want) {
		t.Errorf("v2 with types: %v", got)
	}
	got = oauth.DefaultScopes(oauth.Profile{}, v1, []string{"Observation"})
	if !slices.Equal(got, []string{"launch/patient", "openid", "fhirUser", "offline_access", "patient/Observation.read"}) {
		t.Errorf("v1 with types: %v", got)
	}
	got = oauth.DefaultScopes(oauth.Profile{DefaultScopesV2: []string{"patient/Patient.rs", "openid"}}, v2, nil)
	if !slices.Equal(got, []string{"launch/patient", "openid", "fhirUser", "offline_access", "patient/Patient.rs"}) {
		t.Errorf("profile defaults: %v", got)
	}
	got = oauth.DefaultScopes(oauth.Profile{}, v1, nil)
	if !slices.Equal(got, []string{"launch/patient", "openid", "fhirUser", "offline_access", "patient/*.read"}) {
		t.Errorf("no types, v1: %v", got)
	}
	if got := oauth.BackendScopes(oauth.Profile{}, v2); !slices.Equal(got, []string{"system/*.rs"}) {
		t.Errorf("backend v2: %v", got)
	}
	if got := oauth.BackendScopes(oauth.Profile{}, v1); !slices.Equal(got, []string{"system/*.read"}) {
		t.Errorf("backend v1: %v", got)
	}
	if got := oauth.BackendScopes(oauth.Profile{BackendScopes: []string{"system/Patient.rs"}}, v2); !slices.Equal(got, []string{"system/Patient.rs"}) {
		t.Errorf("backend profile: %v", got)
	}
}
