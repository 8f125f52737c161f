package webhooks

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

// noDNS fails every lookup at once: fuzzing must not reach the network.
var noDNS = &net.Resolver{PreferGo: true, Dial: func(context.Context, string, string) (net.Conn, error) {
	return nil, errors.New("no DNS in tests")
}}

func FuzzValidateURL(f *testing.F) {
	for _, s := range []string{
		"https://example.org/hook", "http://127.0.0.1:8080/x?token=a", "http://[::1]/", "http://10.0.0.1",
		"http://93.184.216.34/", "ftp://x", "https://user:pw@h/", "https://h/#f", "http://localhost", "http://internal.corp/hook",
		"", "%zz", "http://[fe80::1%25eth0]/", "HTTPS://EXAMPLE.ORG", "http://0x7f.1/",
	} {
		f.Add(s, false)
	}
	f.Fuzz(func(t *testing.T, raw string, allow bool) {
		u, err := validateURL(context.Background(), raw, allow, noDNS)
		if err != nil {
			if !errors.Is(err, ErrBadURL) && !errors.Is(err, ErrInsecureURL) {
				t.Fatalf("%q: unclassified error %v", raw, err)
			}
			return
		}
		if u.Scheme != "http" && u.Scheme != "https" || u.Hostname() == "" || u.User != nil || u.Fragment != "" {
			t.Fatalf("accepted %q as %#v", raw, u)
		}
		if _, err := url.Parse(u.String()); err != nil {
			t.Fatalf("accepted %q, which does not parse back: %v", raw, err)
		}
		if u.Scheme == "http" && !allow {
			ip := net.ParseIP(u.Hostname())
			if !strings.EqualFold(u.Hostname(), "localhost") && (ip == nil || !privateIP(ip)) {
				t.Fatalf("accepted plain http to %q", u.Hostname())
			}
		}
	})
}

// The plain-http client refuses a public address when it connects, not
// only when the URL is registered: DNS answers change.
func TestPlainHTTPDialerRefusesPublicAddresses(t *testing.T) {
	c := newClient(timeoutForTest, true, false)
	_, err := c.Post("http://93.184.216.34/hook", "application/json", strings.NewReader("{}"))
	if !errors.Is(err, ErrInsecureURL) {
		t.Fatalf("plain http to a public address: %v", err)
	}
	open := newClient(timeoutForTest, true, true)
	req, _ := http.NewRequest(http.MethodPost, "http://127.0.0.1:1/hook", nil)
	if _, err := open.Do(req); errors.Is(err, ErrInsecureURL) {
		t.Fatalf("loopback refused: %v", err)
	}
}

const timeoutForTest = 2 * time.Second
