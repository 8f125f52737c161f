package oauth

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
)

// Discover reads {fhirBase}/.well-known/smart-configuration with an Accept
// header for JSON (smart-2.2-client #29, #226, #227) and returns the
// server's endpoints. hc nil uses a default client (TLS 1.2 or later).
func Discover(ctx context.Context, hc *http.Client, fhirBase string) (Endpoints, error) {
	if err := CheckSecureURL(fhirBase); err != nil {
		return Endpoints{}, fmt.Errorf("%w: FHIR base URL: %w", ErrConfig, err)
	}
	if hc == nil {
		hc = defaultHTTPClient
	}
	b, err := getJSON(ctx, hc, strings.TrimRight(fhirBase, "/")+"/.well-known/smart-configuration")
	if err != nil {
		return Endpoints{}, fmt.Errorf("oauth: discovery: %w", err)
	}
	return ParseSMARTConfiguration(fhirBase, b)
}

// ParseSMARTConfiguration parses a .well-known/smart-configuration
// document. Relative endpoint URLs (legacy servers) are resolved against
// the FHIR base URL, taken as a directory (smart-2.2-client #379). It is a
// parser of outside input (fuzzed).
func ParseSMARTConfiguration(fhirBase string, body []byte) (Endpoints, error) {
	if len(body) > maxBody {
		return Endpoints{}, fmt.Errorf("%w: smart-configuration larger than %d bytes", ErrBadResponse, maxBody)
	}
	var doc struct {
		Issuer           string `json:"issuer"`
		JWKSURI          string `json:"jwks_uri"`
		Authorize        string `json:"authorization_endpoint"`
		Token            string `json:"token_endpoint"`
		Revoke           string `json:"revocation_endpoint"`
		Introspect       string `json:"introspection_endpoint"`
		Scopes           list   `json:"scopes_supported"`
		Challenge        list   `json:"code_challenge_methods_supported"`
		AuthMethods      list   `json:"token_endpoint_auth_methods_supported"`
		SigningAlgs      list   `json:"token_endpoint_auth_signing_alg_values_supported"`
		Capabilities     list   `json:"capabilities"`
		GrantTypes       list   `json:"grant_types_supported"`
		IssParamSupports bool   `json:"authorization_response_iss_parameter_supported"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return Endpoints{}, fmt.Errorf("%w: smart-configuration is not a JSON object: %v", ErrBadResponse, err)
	}
	base, err := url.Parse(strings.TrimRight(fhirBase, "/") + "/")
	if err != nil || !base.IsAbs() {
		return Endpoints{}, fmt.Errorf("%w: FHIR base URL %q", ErrConfig, fhirBase)
	}
	resolve := func(name, v string) (string, error) {
		v = strings.TrimSpace(v)
		if v == "" {
			return "", nil
		}
		u, err := url.Parse(v)
		if err != nil {
			return "", fmt.Errorf("%w: %s %q: %v", ErrBadResponse, name, clean(v, 200), err)
		}
		return base.ResolveReference(u).String(), nil
	}
	e := Endpoints{
		Issuer:                doc.Issuer,
		ScopesSupported:       doc.Scopes,
		CodeChallengeMethods:  doc.Challenge,
		TokenAuthMethods:      doc.AuthMethods,
		SigningAlgs:           doc.SigningAlgs,
		Capabilities:          doc.Capabilities,
		GrantTypes:            doc.GrantTypes,
		IssParameterSupported: doc.IssParamSupports,
	}
	for _, f := range []struct {
		name string
		in   string
		out  *string
	}{
		{"authorization_endpoint", doc.Authorize, &e.AuthorizeURL}, {"token_endpoint", doc.Token, &e.TokenURL},
		{"revocation_endpoint", doc.Revoke, &e.RevokeURL}, {"introspection_endpoint", doc.Introspect, &e.IntrospectURL},
		{"jwks_uri", doc.JWKSURI, &e.JWKSURL},
	} {
		if *f.out, err = resolve(f.name, f.in); err != nil {
			return Endpoints{}, err
		}
	}
	if e.TokenURL == "" {
		return Endpoints{}, fmt.Errorf("%w: smart-configuration has no token_endpoint", ErrBadResponse)
	}
	return e, nil
}

// list is a JSON array of strings that tolerates junk elements (dropped)
// and a bare string.
type list []string

func (l *list) UnmarshalJSON(b []byte) error {
	var s string
	if json.Unmarshal(b, &s) == nil {
		*l = strings.Fields(s)
		return nil
	}
	var raw []json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		*l = nil
		return nil
	}
	out := make(list, 0, len(raw))
	for _, r := range raw {
		var e string
		if json.Unmarshal(r, &e) == nil && e != "" {
			out = append(out, e)
		}
	}
	*l = out
	return nil
}
