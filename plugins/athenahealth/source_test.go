package main

import (
	"errors"
	"slices"
	"testing"

	"github.com/medrelay/medrelay/internal/sandbox/sandboxtest"
	"github.com/medrelay/medrelay/plugins/sdk"
	"github.com/medrelay/medrelay/plugins/sdk/sdktest"
	pluginv1 "github.com/medrelay/medrelay/proto/gen/medrelay/plugin/v1"
)

// The plugin against the sandbox tenant with the matching profile.
func TestAgainstSandbox(t *testing.T) {
	sb := sandboxtest.Start(t, sandboxtest.WithOpenRegistration(), sandboxtest.WithPatients(3))
	sdktest.Run(t, newSource(), sdktest.Config{SandboxURL: sb.URL(), Tenant: "athenahealth"})
}

func TestPracticeOf(t *testing.T) {
	for id, want := range map[string]string{"a-195901.E-12": "195901", "a-1.E-5": "1", "pat-0": "", "a-x.E-1": "", "a-.E-1": "", "a-12": ""} {
		if got := PracticeOf(id); got != want {
			t.Errorf("PracticeOf(%q) = %q, want %q", id, got, want)
		}
	}
}

// A search that names no patient carries the practice from the
// connection's settings, and the sandbox's athenahealth tenant accepts it.
// (With a patient token the sandbox would also accept it without; a system
// token test belongs with the backend flow.)
func TestSearchWithoutPatientNamesThePractice(t *testing.T) {
	sb := sandboxtest.Start(t, sandboxtest.WithOpenRegistration(), sandboxtest.WithPatients(3))
	h := sdktest.Run(t, newSource(), sdktest.Config{SandboxURL: sb.URL(), Tenant: "athenahealth", Settings: map[string]string{"practice_id": "195900"}, SkipFaults: true})
	st, err := h.Client.Search(t.Context(), &pluginv1.SearchRequest{Connection: h.Conn, ResourceType: "Condition", Params: []*pluginv1.SearchParam{{Name: "status", Value: "active"}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); err != nil {
		t.Fatalf("search without patient: %v", err)
	}
}

// The search hook itself: the sandbox test above passes with or without the
// parameter (a patient token is enough there), so what the hook adds is
// checked here. The practice comes from the setting, else from the
// patient id; a search that names a patient, or a shared type, gets none.
func TestPrepareSearchAddsThePractice(t *testing.T) {
	prepare := newSource().PrepareSearch
	practice := sdk.Param{Name: "ah-practice", Value: "Organization/a-1.Practice-195900"}
	for _, c := range []struct {
		name    string
		conn    sdk.Connection
		req     sdk.SearchRequest
		want    bool
		wantErr error
	}{
		{"setting", sdk.Connection{Settings: map[string]string{"practice_id": "195900"}}, sdk.SearchRequest{ResourceType: "Condition"}, true, nil},
		{"patient id", sdk.Connection{PatientID: "a-195900.E-7"}, sdk.SearchRequest{ResourceType: "Encounter"}, true, nil},
		{"names a patient", sdk.Connection{PatientID: "a-195900.E-7"}, sdk.SearchRequest{ResourceType: "Condition", Params: []sdk.Param{{Name: "patient", Value: "a-195900.E-7"}}}, false, nil},
		{"Patient by _id", sdk.Connection{PatientID: "a-195900.E-7"}, sdk.SearchRequest{ResourceType: "Patient", Params: []sdk.Param{{Name: "_id", Value: "a-195900.E-7"}}}, false, nil},
		{"shared type", sdk.Connection{}, sdk.SearchRequest{ResourceType: "Practitioner"}, false, nil},
		{"no practice", sdk.Connection{PatientID: "pat-1"}, sdk.SearchRequest{ResourceType: "Condition"}, false, sdk.ErrInvalid},
	} {
		req := c.req
		err := prepare(sdk.NewCall(c.conn, nil, nil, nil), &req)
		if !errors.Is(err, c.wantErr) {
			t.Errorf("%s: err %v, want %v", c.name, err, c.wantErr)
			continue
		}
		if got := slices.Contains(req.Params, practice); got != c.want {
			t.Errorf("%s: params %v, ah-practice added %v, want %v", c.name, req.Params, got, c.want)
		}
	}
}
