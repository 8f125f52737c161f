package sandbox

import (
	"net/url"
	"strings"
)

// scope is one parsed SMART resource scope, v1 (patient/Observation.read) or
// v2 (patient/Observation.rs?category=laboratory).
type scope struct {
	raw     string
	context string // patient, user, system
	typ     string // resource type or "*"
	read    bool
	search  bool
	v2      bool
	query   url.Values // v2 fine-grained restriction; nil = none
}

// parseScope returns false for anything that is not a resource scope
// (openid, launch/patient, offline_access...) or is malformed.
func parseScope(s string) (scope, bool) {
	ctx, rest, ok := strings.Cut(s, "/")
	if !ok || (ctx != "patient" && ctx != "user" && ctx != "system") {
		return scope{}, false
	}
	var query string
	rest, query, _ = strings.Cut(rest, "?")
	typ, perm, ok := strings.Cut(rest, ".")
	if !ok || typ == "" || perm == "" {
		return scope{}, false
	}
	if typ != "*" && !validResourceType(typ) {
		return scope{}, false
	}
	sc := scope{raw: s, context: ctx, typ: typ}
	switch perm {
	case "read":
		sc.read, sc.search = true, true
	case "*":
		sc.read, sc.search = true, true
	case "write":
	default:
		// v2: ordered subset of c r u d s
		order := "cruds"
		i := 0
		for _, c := range perm {
			j := strings.IndexRune(order[i:], c)
			if j < 0 {
				return scope{}, false
			}
			i += j + 1
			switch c {
			case 'r':
				sc.read = true
			case 's':
				sc.search = true
			}
		}
		sc.v2 = true
	}
	if query != "" {
		if !sc.v2 {
			return scope{}, false
		}
		q, err := url.ParseQuery(query)
		if err != nil {
			return scope{}, false
		}
		sc.query = q
	}
	return sc, true
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

func parseScopes(s string) []scope {
	var out []scope
	for _, f := range strings.Fields(s) {
		if sc, ok := parseScope(f); ok {
			out = append(out, sc)
		}
	}
	return out
}

func hasScope(scopes string, want string) bool {
	for _, f := range strings.Fields(scopes) {
		if f == want {
			return true
		}
	}
	return false
}

// allows reports whether the scopes permit interaction (read or search) on
// typ, returning the v2 query restrictions that apply (nil = unrestricted).
func allows(scopes []scope, typ string, search bool) (bool, []url.Values) {
	var restrictions []url.Values
	any := false
	for _, sc := range scopes {
		if sc.typ != "*" && sc.typ != typ {
			continue
		}
		if search && !sc.search || !search && !sc.read {
			continue
		}
		if sc.query == nil {
			return true, nil
		}
		any = true
		restrictions = append(restrictions, sc.query)
	}
	return any, restrictions
}

// grantScopes narrows the requested scopes to what the client may have and
// the profile understands.
func grantScopes(requested, allowed string, v2 bool) string {
	var out []string
	seen := map[string]bool{}
	for _, f := range strings.Fields(requested) {
		if seen[f] {
			continue
		}
		seen[f] = true
		if sc, ok := parseScope(f); ok {
			if sc.v2 && !v2 {
				continue
			}
			if allowed != "" && !scopeAllowed(sc, allowed) {
				continue
			}
			out = append(out, f)
			continue
		}
		switch {
		case f == "openid", f == "fhirUser", f == "profile", f == "offline_access", f == "online_access",
			f == "launch", strings.HasPrefix(f, "launch/"):
			if allowed != "" && !hasScope(allowed, f) && f != "openid" && f != "fhirUser" && !strings.HasPrefix(f, "launch") {
				continue
			}
			out = append(out, f)
		}
	}
	return strings.Join(out, " ")
}

func scopeAllowed(sc scope, allowed string) bool {
	for _, a := range parseScopes(allowed) {
		if a.context != sc.context || (a.typ != "*" && a.typ != sc.typ) {
			continue
		}
		if (sc.read && !a.read) || (sc.search && !a.search) {
			continue
		}
		return true
	}
	return false
}
