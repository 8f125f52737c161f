package sdk

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"
)

// Sentinel errors a Source returns (wrapped with %w); the SDK maps them to
// the status codes the agent understands.
var (
	// ErrUnsupported: the source or plugin cannot do this (Unimplemented).
	ErrUnsupported = errors.New("not supported by this source")
	// ErrNotFound: the resource does not exist (NotFound).
	ErrNotFound = errors.New("not found at the source")
	// ErrInvalid: the request cannot be sent as given (InvalidArgument).
	ErrInvalid = errors.New("invalid request")
	// ErrNoToken: no access token could be had for the connection.
	ErrNoToken = errors.New("no access token for the connection")
	// ErrBadResponse: the source answered something that is not what FHIR
	// says it should be (Unavailable: another try may work).
	ErrBadResponse = errors.New("unexpected response from the source")
)

// HTTPError is a non-success answer from the source.
type HTTPError struct {
	Method string
	// URL without its query (which may carry identifiers).
	URL        string
	StatusCode int
	// Diagnostics from an OperationOutcome or an OAuth error body, trimmed.
	Diagnostics string
	// RetryAfter is the server's Retry-After, when it sent one.
	RetryAfter time.Duration
}

func (e *HTTPError) Error() string {
	s := fmt.Sprintf("%s %s: %d %s", e.Method, e.URL, e.StatusCode, http.StatusText(e.StatusCode))
	if e.Diagnostics != "" {
		s += ": " + e.Diagnostics
	}
	if e.RetryAfter > 0 {
		s += fmt.Sprintf(" (retry after %s)", e.RetryAfter)
	}
	return s
}

// Is lets errors.Is(err, ErrNotFound) match 404 and 410.
func (e *HTTPError) Is(target error) bool {
	return target == ErrNotFound && (e.StatusCode == http.StatusNotFound || e.StatusCode == http.StatusGone)
}

// RetryAfterError is returned when the source asked to wait longer than the
// plugin waits in place (RateLimit.MaxRetryAfter): the agent should retry
// the call after RetryAfter.
type RetryAfterError struct {
	RetryAfter time.Duration
	Err        *HTTPError
}

func (e *RetryAfterError) Error() string {
	return fmt.Sprintf("source asked to retry after %s: %v", e.RetryAfter, e.Err)
}

func (e *RetryAfterError) Unwrap() error { return e.Err }

// redactURL drops the query and any user info, which can carry identifiers
// or credentials, from a URL used in errors and logs.
func redactURL(u *url.URL) string {
	if u == nil {
		return ""
	}
	c := *u
	c.User = nil
	c.RawQuery = ""
	c.ForceQuery = false
	c.Fragment = ""
	return c.String()
}
