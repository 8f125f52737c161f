//go:build unix

package app

import (
	"testing"

	"github.com/medrelay/medrelay/internal/directory"
)

// Patients are authorized at the patient-facing endpoint, backend services
// at the provider-facing one (Oracle Health lists one of each per tenant).
func TestPickEndpointByAudience(t *testing.T) {
	disc := func() *directory.Discovery {
		return &directory.Discovery{Status: directory.DiscoveryOK, Smart: &directory.SmartConfig{
			AuthorizationEndpoint: "https://auth.example/authorize", TokenEndpoint: "https://auth.example/token"}}
	}
	e := directory.Entry{Source: &directory.Source{ID: "s"}, Endpoints: []directory.EndpointEntry{
		{Endpoint: &directory.Endpoint{ID: "prov", URL: "https://ehr.example/provider/r4", FHIRVersion: "4.0.1", Audience: directory.AudienceProvider}, Discovery: disc()},
		{Endpoint: &directory.Endpoint{ID: "pat-dstu2", URL: "https://ehr.example/patient/dstu2", FHIRVersion: "1.0.2", Audience: directory.AudiencePatient}, Discovery: disc()},
		{Endpoint: &directory.Endpoint{ID: "pat", URL: "https://ehr.example/patient/r4", FHIRVersion: "4.0.1", Audience: directory.AudiencePatient}, Discovery: disc()},
		{Endpoint: &directory.Endpoint{ID: "broken", URL: "https://ehr.example/broken", Audience: directory.AudiencePatient}, Discovery: &directory.Discovery{Status: directory.DiscoveryUnreachable}},
	}}
	if ep, err := pickEndpoint(e, directory.AudiencePatient); err != nil || ep.ID != "pat" {
		t.Errorf("patient: %v %v", ep.Endpoint, err)
	}
	if ep, err := pickEndpoint(e, directory.AudienceProvider); err != nil || ep.ID != "prov" {
		t.Errorf("backend: %v %v", ep.Endpoint, err)
	}
	none := directory.Entry{Source: &directory.Source{ID: "x"}, Endpoints: e.Endpoints[3:]}
	if _, err := pickEndpoint(none, directory.AudiencePatient); err == nil {
		t.Error("an unreachable endpoint was picked")
	}
}
