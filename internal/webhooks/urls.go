package webhooks

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"time"
)

// validateURL checks a webhook URL as registered: absolute http(s), no
// credentials or fragment, and plain http only to loopback or private
// addresses unless allowPublicHTTP. A host name given with plain http is
// resolved now, and every address it resolves to must be private; the
// dialer checks again at every delivery (DNS answers change).
func validateURL(ctx context.Context, raw string, allowPublicHTTP bool, resolver *net.Resolver) (*url.URL, error) {
	if raw == "" {
		return nil, fmt.Errorf("%w: a URL is required", ErrBadURL)
	}
	if len(raw) > 2048 {
		return nil, fmt.Errorf("%w: longer than 2048 characters", ErrBadURL)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: %q does not parse", ErrBadURL, raw)
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("%w: only http and https URLs are allowed, not %q", ErrBadURL, u.Scheme)
	case u.Host == "" || u.Hostname() == "":
		return nil, fmt.Errorf("%w: %q has no host", ErrBadURL, raw)
	case u.User != nil:
		return nil, fmt.Errorf("%w: credentials in the URL are not allowed (verify the signature instead)", ErrBadURL)
	case u.Fragment != "" || strings.Contains(raw, "#"):
		return nil, fmt.Errorf("%w: a URL with a fragment is not allowed", ErrBadURL)
	}
	if u.Scheme == "https" || allowPublicHTTP {
		return u, nil
	}
	host := u.Hostname()
	if ip := net.ParseIP(host); ip != nil {
		if !privateIP(ip) {
			return nil, fmt.Errorf("%w: plain http to the public address %s; use https (or set webhooks_allow_public_http)", ErrInsecureURL, host)
		}
		return u, nil
	}
	if strings.EqualFold(host, "localhost") {
		return u, nil
	}
	rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	addrs, err := resolver.LookupIPAddr(rctx, host)
	if err != nil || len(addrs) == 0 {
		return nil, fmt.Errorf("%w: cannot resolve %s to check that plain http stays on a private network; use https", ErrInsecureURL, host)
	}
	for _, a := range addrs {
		if !privateIP(a.IP) {
			return nil, fmt.Errorf("%w: plain http to %s, which resolves to the public address %s; use https (or set webhooks_allow_public_http)", ErrInsecureURL, host, a.IP)
		}
	}
	return u, nil
}

// privateIP: loopback, RFC 1918 / RFC 4193 private ranges. Link-local is not
// private (cloud metadata services live there).
func privateIP(ip net.IP) bool {
	return ip.IsLoopback() || ip.IsPrivate()
}

// errPublicHTTP is what the plain-http dialer answers for a public address.
var errPublicHTTP = fmt.Errorf("%w: plain http to a public address is not allowed", ErrInsecureURL)

// newClient returns the HTTP client deliveries use. Redirects are never
// followed (a 3xx is a failed attempt); plain http connects only to private
// addresses unless allowPublicHTTP; proxies from the environment are not
// used (receivers are usually on the same network as the agent, and a proxy
// would hide the address the plain-http rule checks).
func newClient(timeout time.Duration, plainHTTP, allowPublicHTTP bool) *http.Client {
	d := &net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}
	if plainHTTP && !allowPublicHTTP {
		d.Control = func(_, address string, _ syscall.RawConn) error {
			host, _, err := net.SplitHostPort(address)
			if err != nil {
				return err
			}
			if ip := net.ParseIP(host); ip == nil || !privateIP(ip) {
				return errPublicHTTP
			}
			return nil
		}
	}
	tr := &http.Transport{
		Proxy:                 nil,
		DialContext:           d.DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          256,
		MaxIdleConnsPerHost:   4,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   timeout,
		ResponseHeaderTimeout: timeout,
	}
	return &http.Client{
		Transport:     tr,
		Timeout:       timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// redactURL drops the query (it may hold a receiver's token) for logs.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparseable URL)"
	}
	if u.RawQuery != "" {
		u.RawQuery = "…"
	}
	u.User = nil
	return u.String()
}
