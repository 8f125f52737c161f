package importers

import (
	"errors"
	"net"
	"net/url"
	"strings"
)

// Reasons a FHIR base URL is refused. They end up in import summaries, row by
// row, so they say what is wrong in words an administrator can act on.
var (
	ErrNoURL        = errors.New("no FHIR base URL")
	ErrNoScheme     = errors.New("FHIR base URL is not absolute (no https://)")
	ErrPlainHTTP    = errors.New("FHIR base URL uses plain http (only https is allowed, except to loopback)")
	ErrBadScheme    = errors.New("FHIR base URL scheme is not https")
	ErrBadHost      = errors.New("FHIR base URL has no valid host name")
	ErrQuery        = errors.New("FHIR base URL carries a query string")
	ErrUserinfo     = errors.New("FHIR base URL carries credentials")
	ErrURLSyntax    = errors.New("FHIR base URL is not a valid URL")
	ErrURLTooLong   = errors.New("FHIR base URL is longer than 2048 characters")
	ErrURLHasSpaces = errors.New("FHIR base URL contains spaces")
)

// NormalizeBaseURL validates a FHIR base URL and returns it in a canonical
// form: scheme and host lower-cased, default port dropped, no trailing
// slash, path case kept (servers differ on whether it matters).
func NormalizeBaseURL(raw string) (string, error) {
	s := strings.TrimSpace(strings.ReplaceAll(raw, "\u00a0", " "))
	switch {
	case s == "":
		return "", ErrNoURL
	case len(s) > 2048:
		return "", ErrURLTooLong
	case strings.ContainsAny(s, " \t\r\n"):
		return "", ErrURLHasSpaces
	}
	scheme, _, ok := strings.Cut(s, "://")
	if !ok || scheme == "" || strings.ContainsAny(scheme, "/.") {
		return "", ErrNoScheme
	}
	u, err := url.Parse(s)
	if err != nil {
		return "", ErrURLSyntax
	}
	u.Scheme = strings.ToLower(u.Scheme)
	host := strings.ToLower(u.Hostname())
	if !validHost(host) {
		return "", ErrBadHost
	}
	switch u.Scheme {
	case "https":
	case "http":
		if !IsLoopback(host) {
			return "", ErrPlainHTTP
		}
	default:
		return "", ErrBadScheme
	}
	if u.User != nil {
		return "", ErrUserinfo
	}
	if u.RawQuery != "" || u.ForceQuery {
		return "", ErrQuery
	}
	port := u.Port()
	if (u.Scheme == "https" && port == "443") || (u.Scheme == "http" && port == "80") {
		port = ""
	}
	if port != "" {
		host = net.JoinHostPort(host, port)
	} else if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	p := strings.TrimRight(u.EscapedPath(), "/")
	return u.Scheme + "://" + host + p, nil
}

// IsLoopback reports whether host (no port) is this machine: localhost or a
// loopback address. Plain http is allowed only there.
func IsLoopback(host string) bool {
	host = strings.TrimSuffix(strings.Trim(host, "[]"), ".")
	if strings.EqualFold(host, "localhost") || strings.HasSuffix(strings.ToLower(host), ".localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// validHost accepts DNS names with at least one dot, IP addresses and
// localhost. A single label ("api", "INSCMQAES51") is a typo or an intranet
// name, neither of which a published list should contain.
func validHost(h string) bool {
	if h == "" || len(h) > 253 {
		return false
	}
	if net.ParseIP(h) != nil || h == "localhost" {
		return true
	}
	if !strings.Contains(h, ".") || strings.HasPrefix(h, ".") || strings.Contains(h, "..") {
		return false
	}
	for _, label := range strings.Split(strings.TrimSuffix(h, "."), ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// fhirResourceSuffixes are resource paths some lists append to the base
// ("…/r4/ExplanationOfBenefit", "…/1.0.0/Patient", "…/metadata").
var fhirResourceSuffixes = []string{
	"metadata", "patient", "explanationofbenefit", "explanationofbenefits", "coverage",
	"practitioner", "organization", "location", "medicationknowledge", "list",
	"insuranceplan", "healthcareservice", "practitionerrole",
}

// trimResourceSuffix drops a trailing FHIR resource type or /metadata.
func trimResourceSuffix(u string) string {
	u = strings.TrimRight(u, "/")
	i := strings.LastIndex(u, "/")
	if i < len("https://x") {
		return u
	}
	last := strings.ToLower(u[i+1:])
	for _, s := range fhirResourceSuffixes {
		if last == s {
			return u[:i]
		}
	}
	return u
}

// extractURLs finds http(s) URLs in free text (spreadsheet cells with
// several URLs, labels and line breaks).
func extractURLs(s string) []string {
	var out []string
	for _, f := range strings.FieldsFunc(s, func(r rune) bool {
		return r == ' ' || r == '\n' || r == '\r' || r == '\t' || r == '\u00a0' || r == ',' || r == ';'
	}) {
		lf := strings.ToLower(f)
		i := strings.Index(lf, "http://")
		if j := strings.Index(lf, "https://"); j >= 0 && (i < 0 || j < i) {
			i = j
		}
		if i < 0 {
			continue
		}
		out = append(out, strings.TrimRight(f[i:], ".)"))
	}
	return out
}
