package sessions

import (
	"net/url"
	"strings"
	"testing"
)

// Return URLs come from apps; the agent only ever sends a patient to an
// absolute http(s) URL, with the outcome added and the app's query kept.
func FuzzReturnURL(f *testing.F) {
	for _, s := range []string{"https://app.example/done?x=1", "javascript:alert(1)", "//evil.example", "/relative", "http://user:pw@host/",
		"https://app.example/#frag", "HTTPS://APP.EXAMPLE", "data:text/html,hi", "https://[::1]:8443/cb"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		if validReturnURL(raw) != nil {
			return
		}
		out := returnURL(Session{ID: "ses_1", PatientRef: "p<1>", ReturnURL: raw, Success: true, ConnectionID: "conn_1"})
		u, err := url.Parse(out)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil {
			t.Fatalf("%q → %q", raw, out)
		}
		q := u.Query()
		if q.Get("session_id") != "ses_1" || q.Get("patient_ref") != "p<1>" || q.Get("success") != "true" {
			t.Fatalf("%q → %q lost the outcome", raw, out)
		}
	})
}

func TestValidReturnURL(t *testing.T) {
	for raw, ok := range map[string]bool{
		"https://app.example/done": true, "http://127.0.0.1:9000/cb": true,
		"javascript:alert(1)": false, "/done": false, "//evil.example/x": false, "https://u:p@app.example/": false, "ftp://x/": false,
	} {
		if err := validReturnURL(raw); (err == nil) != ok {
			t.Errorf("%s: %v", raw, err)
		}
	}
	if strings.Contains(returnURL(Session{ReturnURL: "https://a.example/x?keep=1", ID: "s"}), "keep=1") == false {
		t.Error("the app's own query was dropped")
	}
}
