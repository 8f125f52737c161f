package oauth

import (
	"fmt"
	"net/url"
	"strings"

	"github.com/medrelay/medrelay/internal/secrets"
)

// Callback is an authorization response, as the browser brought it to the
// redirect URI.
type Callback struct {
	Code  secrets.Value
	State string
	// Iss is the RFC 9207 issuer identifier, when the server sent one.
	Iss string
	// Error, ErrorDescription and ErrorURI when the server refused
	// (access_denied: the user declined). The description is cleaned for
	// display but is still outside text: escape it in HTML.
	Error            string
	ErrorDescription string
	ErrorURI         string
}

// callback parameter bounds: generous for real servers, small enough that
// a hostile query cannot make us store much.
const (
	maxState = 512
	maxCode  = 4096
	maxIss   = 2048
)

// ParseCallback validates the query of a request to the redirect URI. It
// refuses repeated parameters (RFC 6749 §3.1), a missing state
// (smart-2.2-client #4, #60), oversized values, and a response with neither
// code nor error. An error response parses (Callback.Error is set) and also
// returns an *Error, so errors.Is(err, ErrAccessDenied) tells a declined
// authorization. It is a parser of outside input (fuzzed).
func ParseCallback(q url.Values) (Callback, error) {
	var cb Callback
	for k, vs := range q {
		if len(vs) > 1 {
			return cb, fmt.Errorf("%w: parameter %s is repeated", ErrBadCallback, clean(k, 40))
		}
	}
	cb.State = q.Get("state")
	cb.Iss = q.Get("iss")
	code := q.Get("code")
	switch {
	case cb.State == "":
		return cb, fmt.Errorf("%w: no state", ErrBadCallback)
	case len(cb.State) > maxState:
		return cb, fmt.Errorf("%w: state too long", ErrBadCallback)
	case len(code) > maxCode:
		return cb, fmt.Errorf("%w: code too long", ErrBadCallback)
	case len(cb.Iss) > maxIss:
		return cb, fmt.Errorf("%w: iss too long", ErrBadCallback)
	case !printableASCII(cb.State):
		return cb, fmt.Errorf("%w: state has characters no state of ours has", ErrBadCallback)
	}
	cb.Code = secrets.Value(code)
	if e := q.Get("error"); e != "" {
		cb.Error = clean(e, 64)
		cb.ErrorDescription = clean(q.Get("error_description"), 300)
		cb.ErrorURI = clean(q.Get("error_uri"), 300)
		cb.Code = ""
		return cb, &Error{Code: cb.Error, Description: cb.ErrorDescription}
	}
	if code == "" {
		return cb, fmt.Errorf("%w: neither code nor error", ErrBadCallback)
	}
	return cb, nil
}

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// CheckIssuer applies RFC 9207 to a callback's iss: when present it must be
// the server's issuer (compared exactly; when the issuer was not
// discovered, the FHIR base URL stands in, ignoring a trailing slash); when
// absent it is refused only if the server said it always sends one. This is
// what stops a code minted by one server from being redeemed at another
// (mix-up attack).
func (c *Client) CheckIssuer(iss string) error {
	if iss == "" {
		if c.cfg.Endpoints.IssParameterSupported {
			return fmt.Errorf("%w: the server sends iss on every response and this one has none", ErrBadCallback)
		}
		return nil
	}
	if want := c.cfg.Endpoints.Issuer; want != "" {
		if iss != want {
			return fmt.Errorf("%w: the response comes from issuer %q, not %q", ErrBadCallback, clean(iss, 200), want)
		}
		return nil
	}
	if strings.TrimRight(iss, "/") != strings.TrimRight(c.cfg.FHIRBase, "/") {
		return fmt.Errorf("%w: the response comes from issuer %q, not %q", ErrBadCallback, clean(iss, 200), c.cfg.FHIRBase)
	}
	return nil
}
