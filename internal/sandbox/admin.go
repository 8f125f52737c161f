package sandbox

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
)

const maxAdminBody = 1 << 20

// decodeStrict decodes one JSON value, refusing unknown fields and trailing data.
func decodeStrict(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data after JSON value")
	}
	return nil
}

// ParseFaultsBody reads the body of POST /admin/faults: one Faults object or
// an array of them.
func ParseFaultsBody(b []byte) ([]Faults, error) {
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return nil, fmt.Errorf("%w: empty body", ErrBadFaults)
	}
	var list []Faults
	if b[0] == '[' {
		if err := decodeStrict(b, &list); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrBadFaults, err)
		}
	} else {
		var f Faults
		if err := decodeStrict(b, &f); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrBadFaults, err)
		}
		list = []Faults{f}
	}
	for i := range list {
		if err := list[i].validate(); err != nil {
			return nil, err
		}
	}
	return list, nil
}

// ParseClientBody reads the body of POST /admin/clients.
func ParseClientBody(b []byte) (ClientConfig, error) {
	var c ClientConfig
	if err := decodeStrict(b, &c); err != nil {
		return c, fmt.Errorf("%w: %w", ErrBadClient, err)
	}
	if c.ClientID == "" {
		return c, fmt.Errorf("%w: client_id required", ErrBadClient)
	}
	if len(c.JWKS) > 0 && c.JWKSURL != "" {
		return c, fmt.Errorf("%w: give jwks_url or jwks, not both", ErrBadClient)
	}
	return c, nil
}

// ParseMutateBody reads the body of POST /admin/mutate.
func ParseMutateBody(b []byte) (MutateRequest, error) {
	var m MutateRequest
	if err := decodeStrict(b, &m); err != nil {
		return m, fmt.Errorf("%w: %w", ErrBadConfig, err)
	}
	if m.Update < 0 || m.Delete < 0 {
		return m, fmt.Errorf("%w: negative counts", ErrBadConfig)
	}
	return m, nil
}

func readBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxAdminBody))
	if err != nil {
		writeJSON(w, http.StatusBadRequest, "", map[string]string{"error": "body: " + err.Error()})
		return nil, false
	}
	return b, true
}

// serveAdmin answers {base}/admin/...: stats, faults, clients, mutate, revoke, tenants.
func (s *Sandbox) serveAdmin(w http.ResponseWriter, r *http.Request, path string) {
	s.count(nil, "admin", "")
	bad := func(err error) { writeJSON(w, http.StatusBadRequest, "", map[string]string{"error": err.Error()}) }
	switch {
	case path == "stats" && r.Method == http.MethodGet:
		writeJSON(w, http.StatusOK, "", s.Stats())
	case path == "stats/reset" && r.Method == http.MethodPost:
		s.ResetStats()
		w.WriteHeader(http.StatusNoContent)
	case path == "faults" && r.Method == http.MethodGet:
		writeJSON(w, http.StatusOK, "", s.Faults())
	case path == "faults" && r.Method == http.MethodDelete:
		_ = s.SetFaults()
		w.WriteHeader(http.StatusNoContent)
	case path == "faults" && r.Method == http.MethodPost:
		b, ok := readBody(w, r)
		if !ok {
			return
		}
		list, err := ParseFaultsBody(b)
		if err == nil {
			err = s.SetFaults(list...)
		}
		if err != nil {
			bad(err)
			return
		}
		writeJSON(w, http.StatusOK, "", s.Faults())
	case path == "clients" && r.Method == http.MethodPost:
		b, ok := readBody(w, r)
		if !ok {
			return
		}
		c, err := ParseClientBody(b)
		if err == nil {
			err = s.RegisterClient(c.Tenant, c)
		}
		if err != nil {
			bad(err)
			return
		}
		writeJSON(w, http.StatusCreated, "", map[string]any{"client_id": c.ClientID, "tenant": c.Tenant})
	case path == "clients" && r.Method == http.MethodGet:
		writeJSON(w, http.StatusOK, "", s.clientList(r.URL.Query().Get("tenant")))
	case path == "mutate" && r.Method == http.MethodPost:
		b, ok := readBody(w, r)
		if !ok {
			return
		}
		m, err := ParseMutateBody(b)
		if err != nil {
			bad(err)
			return
		}
		res, err := s.Mutate(m)
		if err != nil {
			bad(err)
			return
		}
		writeJSON(w, http.StatusOK, "", res)
	case path == "revoke" && r.Method == http.MethodPost:
		b, ok := readBody(w, r)
		if !ok {
			return
		}
		var req struct {
			Tenant  string `json:"tenant"`
			Patient string `json:"patient"`
		}
		if err := decodeStrict(b, &req); err != nil {
			bad(err)
			return
		}
		n, err := s.RevokePatient(req.Tenant, req.Patient)
		if err != nil {
			bad(err)
			return
		}
		writeJSON(w, http.StatusOK, "", map[string]int{"revoked_grants": n})
	case path == "cds-call" && r.Method == http.MethodPost:
		b, ok := readBody(w, r)
		if !ok {
			return
		}
		var c CDSCall
		if err := decodeStrict(b, &c); err != nil {
			bad(err)
			return
		}
		res, err := s.CallCDS(r.Context(), c)
		if err != nil {
			bad(err)
			return
		}
		writeJSON(w, http.StatusOK, "", res)
	case path == "tenants" && r.Method == http.MethodGet:
		writeJSON(w, http.StatusOK, "", s.TenantInfo())
	default:
		writeJSON(w, http.StatusNotFound, "", map[string]string{"error": "unknown admin endpoint " + r.Method + " /admin/" + path})
	}
}

// RevokePatient revokes every grant of a patient at a tenant: refreshes
// answer invalid_grant and issued access tokens stop working.
func (s *Sandbox) RevokePatient(tenantName, patient string) (int, error) {
	t, err := s.tenant(tenantName)
	if err != nil {
		return 0, err
	}
	return t.revokePatient(strings.TrimPrefix(patient, "Patient/")), nil
}

// TenantSummary describes one tenant for /admin/tenants and the CLI banner.
type TenantSummary struct {
	Name     string `json:"name"`
	Profile  string `json:"profile"`
	FHIRBase string `json:"fhir_base"`
	Patients int    `json:"patients"`
}

// TenantInfo lists the tenants.
func (s *Sandbox) TenantInfo() []TenantSummary {
	var out []TenantSummary
	for _, n := range s.order {
		t := s.tenants[n]
		out = append(out, TenantSummary{Name: n, Profile: t.prof.Name, FHIRBase: t.fhirBase(), Patients: t.data.Patients()})
	}
	return out
}

type clientSummary struct {
	Tenant       string   `json:"tenant"`
	ClientID     string   `json:"client_id"`
	RedirectURIs []string `json:"redirect_uris,omitempty"`
	Scope        string   `json:"scope,omitempty"`
	Auth         string   `json:"auth"`
}

func (s *Sandbox) clientList(only string) []clientSummary {
	var out []clientSummary
	for _, n := range s.order {
		if only != "" && only != n {
			continue
		}
		t := s.tenants[n]
		t.mu.Lock()
		for _, id := range sortedKeys(t.clients) {
			c := t.clients[id].cfg
			auth := "public"
			switch {
			case c.JWKSURL != "" || len(c.JWKS) > 0:
				auth = "private_key_jwt"
			case c.ClientSecret != "":
				auth = "client_secret" // the secret itself is never shown
			}
			out = append(out, clientSummary{Tenant: n, ClientID: id, RedirectURIs: c.RedirectURIs, Scope: c.Scope, Auth: auth})
		}
		t.mu.Unlock()
	}
	return out
}
