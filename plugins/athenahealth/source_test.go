package main

import (
	"testing"

	"github.com/medrelay/medrelay/internal/sandbox/sandboxtest"
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
