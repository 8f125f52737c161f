package oauth

import (
	"fmt"
	"slices"
	"strings"
)

// Scope is one SMART resource scope: context/Type.permissions[?query].
// smart-2.2-client #135.
type Scope struct {
	// Context is patient, user or system.
	Context string
	// Type is a FHIR resource type or "*".
	Type string
	// Perms are the v2 permission letters in canonical order (a subset of
	// "cruds"), also for a v1 scope (read is "rs", write "cud", * "cruds").
	Perms string
	// Query is the v2 fine-grained restriction after "?", without it.
	Query string
	// V2 reports whether the scope was written in v2 syntax.
	V2 bool
}

// ParseScope parses a resource scope; ok is false for anything else
// (openid, launch/patient, offline_access, malformed input).
func ParseScope(s string) (Scope, bool) {
	ctx, rest, ok := strings.Cut(s, "/")
	if !ok || (ctx != "patient" && ctx != "user" && ctx != "system") {
		return Scope{}, false
	}
	rest, query, hasQuery := strings.Cut(rest, "?")
	typ, perm, ok := strings.Cut(rest, ".")
	if !ok || typ == "" || perm == "" {
		return Scope{}, false
	}
	if typ != "*" && !validResourceType(typ) {
		return Scope{}, false
	}
	sc := Scope{Context: ctx, Type: typ}
	switch perm {
	case "read":
		sc.Perms = "rs"
	case "write":
		sc.Perms = "cud"
	case "*":
		sc.Perms = "cruds"
	default:
		// v2: an ordered, non-empty subset of c r u d s.
		const order = "cruds"
		i := 0
		for _, c := range perm {
			j := strings.IndexRune(order[i:], c)
			if j < 0 {
				return Scope{}, false
			}
			i += j + 1
		}
		sc.Perms, sc.V2 = perm, true
	}
	if hasQuery {
		// smart-2.2-client #132: only v2 scopes take a query, and it needs
		// at least one param=value pair.
		if !sc.V2 || query == "" || !strings.Contains(query, "=") {
			return Scope{}, false
		}
		sc.Query = query
	}
	return sc, true
}

// String writes the scope in v2 syntax.
func (s Scope) String() string { return s.V2String() }

// V2String writes the scope in SMART v2 syntax (patient/Observation.rs).
func (s Scope) V2String() string {
	out := s.Context + "/" + s.Type + "." + s.Perms
	if s.Query != "" {
		out += "?" + s.Query
	}
	return out
}

// V1String writes the scope in SMART v1 syntax (patient/Observation.read).
// v1 cannot express a query restriction or a mix of read and write
// permissions narrower than "*"; ok is false for a query.
func (s Scope) V1String() (string, bool) {
	if s.Query != "" {
		return "", false
	}
	read := strings.ContainsAny(s.Perms, "rs")
	write := strings.ContainsAny(s.Perms, "cud")
	perm := "read"
	switch {
	case read && write:
		perm = "*"
	case write:
		perm = "write"
	}
	return s.Context + "/" + s.Type + "." + perm, true
}

func validResourceType(s string) bool {
	if s == "" || len(s) > 64 || s[0] < 'A' || s[0] > 'Z' {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}

// ConvertScopes rewrites resource scopes into v2 or v1 syntax, leaving
// other scopes (openid, launch/patient, offline_access) alone and dropping
// duplicates. A v2 query restriction cannot be written in v1: that is an
// error rather than a silently broader grant.
func ConvertScopes(scopes []string, v2 bool) ([]string, error) {
	out := make([]string, 0, len(scopes))
	for _, s := range scopes {
		for _, f := range strings.Fields(s) {
			sc, ok := ParseScope(f)
			switch {
			case !ok:
			case v2:
				f = sc.V2String()
			default:
				v1, ok := sc.V1String()
				if !ok {
					return nil, fmt.Errorf("%w: scope %q has a query restriction, which this server's SMART v1 scopes cannot express", ErrConfig, f)
				}
				f = v1
			}
			if !slices.Contains(out, f) {
				out = append(out, f)
			}
		}
	}
	return out, nil
}

// Scopes medrelay asks for on every patient-access authorization: the
// patient in context (smart-2.2-client #152, #166), the user's identity
// (#47, #196) and a refresh token that works while the patient is away
// (#216).
var patientBaseScopes = []string{"launch/patient", "openid", "fhirUser", "offline_access"}

// DefaultScopes is what a patient-access authorization requests: the base
// scopes and read+search on each resource type the source serves, in the
// server's syntax. With no resource types it uses the vendor's default
// scopes, or patient/*.rs. smart-2.2-client #46, #148: one scope per type
// served, not a wildcard, when the types are known.
func DefaultScopes(p Profile, e Endpoints, resourceTypes []string) []string {
	v2 := useV2(p, e)
	out := slices.Clone(patientBaseScopes)
	add := func(s string) {
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	types := slices.Clone(resourceTypes)
	slices.Sort(types)
	for _, t := range types {
		if !validResourceType(t) {
			continue
		}
		sc := Scope{Context: "patient", Type: t, Perms: "rs", V2: true}
		if v2 {
			add(sc.V2String())
		} else {
			v1, _ := sc.V1String()
			add(v1)
		}
	}
	if len(out) > len(patientBaseScopes) {
		return out
	}
	def := p.DefaultScopesV1
	if v2 {
		def = p.DefaultScopesV2
	}
	if len(def) == 0 {
		def = []string{"patient/*.read"}
		if v2 {
			def = []string{"patient/*.rs"}
		}
	}
	for _, s := range def {
		add(s)
	}
	return out
}

// BackendScopes is what a backend (client_credentials) token requests when
// the caller names none: the vendor's backend scopes or system/*.rs (v1:
// system/*.read), in the server's syntax. smart-2.2-client #239.
func BackendScopes(p Profile, e Endpoints) []string {
	if len(p.BackendScopes) > 0 {
		return slices.Clone(p.BackendScopes)
	}
	if useV2(p, e) {
		return []string{"system/*.rs"}
	}
	return []string{"system/*.read"}
}
