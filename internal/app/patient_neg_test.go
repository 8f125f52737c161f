//go:build unix

package app_test

// What goes wrong in patient access, and what the agent does about it.

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/medrelay/medrelay/internal/config"
	"github.com/medrelay/medrelay/internal/sandbox"
	"github.com/medrelay/medrelay/internal/sandbox/sandboxtest"
	agentv1 "github.com/medrelay/medrelay/proto/gen/medrelay/agent/v1"
)

// stopAtCallback follows a session's redirects up to (not into) the agent's
// OAuth callback and returns the callback URL the portal sent the patient to.
func (f *patientFixture) stopAtCallback(t *testing.T, src, patientRef string, edit ...func(*url.URL)) *url.URL {
	t.Helper()
	resp, err := f.app.Sessions.CreateSession(context.Background(), &agentv1.CreateSessionRequest{
		PatientRef: patientRef, ReturnUrl: f.ret.URL + "/done", SourceId: src,
	})
	if err != nil {
		t.Fatal(err)
	}
	var cb *url.URL
	hc := &http.Client{CheckRedirect: func(req *http.Request, via []*http.Request) error {
		if req.URL.Path == "/oauth/callback" {
			cb = req.URL
			return http.ErrUseLastResponse
		}
		for _, e := range edit {
			e(req.URL)
		}
		return nil
	}}
	r, err := hc.Get(resp.GetSession().GetUrl())
	if err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
	if cb == nil {
		t.Fatalf("never reached the callback (HTTP %d at %s)", r.StatusCode, r.Request.URL)
	}
	return cb
}

// get fetches u without following redirects.
func get(t *testing.T, u string) (*http.Response, string) {
	t.Helper()
	hc := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	r, err := hc.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(r.Body)
	r.Body.Close()
	return r, string(b)
}

func onAuthorize(f func(q url.Values)) func(*url.URL) {
	return func(u *url.URL) {
		if strings.HasSuffix(u.Path, "/authorize") || strings.HasSuffix(u.Path, "/authorize/") {
			q := u.Query()
			f(q)
			u.RawQuery = q.Encode()
		}
	}
}

// smart-2.2-client #4: the state is validated on every request to the
// redirect URL: missing, unknown, reused and expired states are refused
// with a page the patient understands, and nothing changes.
func TestCallbackRefusesBadState(t *testing.T) {
	f := newPatientFixture(t)
	src := f.register(t, "generic")
	base := f.a.info.PublicURL + "/oauth/callback"
	for name, q := range map[string]string{
		"missing": "?code=abc",
		"unknown": "?code=abc&state=" + strings.Repeat("A", 43),
		"garbage": "?code=abc&state=%3Cscript%3E",
		"twice":   "?code=abc&state=x&state=y",
	} {
		r, body := get(t, base+q)
		if r.StatusCode != http.StatusBadRequest || !strings.Contains(body, "could not be finished") {
			t.Errorf("%s state: HTTP %d %q", name, r.StatusCode, body)
		}
		if r.Header.Get("Location") != "" {
			t.Errorf("%s state redirected to %s", name, r.Header.Get("Location"))
		}
	}

	// Reused: the first use completes the connection, the replay is refused
	// and changes nothing.
	cb := f.stopAtCallback(t, src, "p-reuse")
	r, _ := get(t, cb.String())
	if r.StatusCode != http.StatusFound {
		t.Fatalf("first callback: HTTP %d", r.StatusCode)
	}
	ret, _ := url.Parse(r.Header.Get("Location"))
	id := ret.Query().Get("connection_id")
	if ret.Query().Get("success") != "true" {
		t.Fatalf("first callback returned %v", ret.Query())
	}
	r, body := get(t, cb.String())
	if r.StatusCode != http.StatusBadRequest || !strings.Contains(body, "already used") {
		t.Fatalf("replayed callback: HTTP %d %q", r.StatusCode, body)
	}
	if c := f.connection(t, f.app, id); c.GetState() != agentv1.ConnectionState_CONNECTION_STATE_ACTIVE {
		t.Fatalf("replay hurt the connection: %s", c.GetState())
	}
}

func TestCallbackRefusesExpiredState(t *testing.T) {
	f := &patientFixture{}
	f.sb = sandboxtest.Start(t, sandboxtest.WithPatients(2))
	f.a = startAgentWith(t, agentOptions{pluginDir: pluginDir(t), mutate: []func(*config.Config){func(c *config.Config) {
		c.PatientAccess.AuthorizationTTL = config.Duration{Duration: time.Second}
	}}})
	f.admin = f.a.dial(t)
	f.source = importSandbox(t, f.admin, f.sb)
	f.app = f.admin
	f.ret = newReturnServer(t)
	src := f.register(t, "generic")
	cb := f.stopAtCallback(t, src, "p-slow")
	time.Sleep(2100 * time.Millisecond) // the patient took longer than allowed
	r, body := get(t, cb.String())
	if r.StatusCode != http.StatusBadRequest || !strings.Contains(body, "expired") {
		t.Fatalf("expired state: HTTP %d %q", r.StatusCode, body)
	}
}

// A code minted by one source, presented with the state of an
// authorization at another, is never exchanged there (RFC 9207 iss, and
// the state binds the authorization to its source).
func TestCodeForAnotherSourceIsRefused(t *testing.T) {
	f := newPatientFixture(t)
	srcA := f.register(t, "generic")
	srcB := f.register(t, "oraclehealth")
	cbA := f.stopAtCallback(t, srcA, "p-a")
	cbB := f.stopAtCallback(t, srcB, "p-b")
	mixed := *cbB
	q := cbB.Query()
	q.Set("code", cbA.Query().Get("code"))
	q.Set("iss", cbA.Query().Get("iss"))
	mixed.RawQuery = q.Encode()
	before := f.sb.Stats().Endpoints["token:authorization_code"]
	r, _ := get(t, mixed.String())
	ret, _ := url.Parse(r.Header.Get("Location"))
	if r.StatusCode != http.StatusFound || ret.Query().Get("success") != "false" || ret.Query().Get("error") != "invalid_request" {
		t.Fatalf("mixed-up callback: HTTP %d → %s", r.StatusCode, r.Header.Get("Location"))
	}
	if got := f.sb.Stats().Endpoints["token:authorization_code"]; got != before {
		t.Errorf("the code was presented to a token endpoint (%d exchanges)", got-before)
	}
	c := f.connection(t, f.app, ret.Query().Get("connection_id"))
	if c.GetState() != agentv1.ConnectionState_CONNECTION_STATE_FAILED || !strings.Contains(c.GetReason(), "issuer") {
		t.Fatalf("connection %s %q", c.GetState(), c.GetReason())
	}
}

// Failures at the portal or the token endpoint make the connection failed
// with the reason and bring the patient back to the app with the error.
func TestAuthorizationFailuresReturnToTheApp(t *testing.T) {
	cases := []struct {
		name      string
		edit      func(*url.URL)
		faults    *sandbox.Faults
		wantError string
	}{
		{name: "patient declines", edit: onAuthorize(func(q url.Values) { q.Set("login_hint", "deny") }), wantError: "access_denied"},
		// smart-2.2-client #13: PKCE; a challenge that does not match the
		// agent's verifier makes the exchange fail.
		{name: "pkce mismatch", edit: onAuthorize(func(q url.Values) { q.Set("code_challenge", strings.Repeat("x", 43)) }), wantError: "invalid_grant"},
		{name: "token endpoint 5xx", faults: &sandbox.Faults{Tenant: "generic", Status: 503, Endpoints: []string{sandbox.EndpointToken}}, wantError: "temporarily_unavailable"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newPatientFixture(t)
			src := f.register(t, "generic")
			if tc.faults != nil {
				f.sb.SetFaults(*tc.faults)
			}
			var edits []func(*url.URL)
			if tc.edit != nil {
				edits = append(edits, tc.edit)
			}
			q := f.connect(t, src, "p-fail", edits...)
			if q.Get("success") != "false" || q.Get("connection_id") == "" {
				t.Fatalf("outcome %v", q)
			}
			if !strings.Contains(q.Get("error")+" "+q.Get("error_description"), tc.wantError) && q.Get("error") != "token_exchange_failed" {
				t.Errorf("error %q (%q), want %s", q.Get("error"), q.Get("error_description"), tc.wantError)
			}
			c := f.connection(t, f.app, q.Get("connection_id"))
			if c.GetState() != agentv1.ConnectionState_CONNECTION_STATE_FAILED || c.GetReason() == "" {
				t.Fatalf("connection %s %q", c.GetState(), c.GetReason())
			}
			s, err := f.app.Sessions.GetSession(context.Background(), &agentv1.GetSessionRequest{SessionId: q.Get("session_id")})
			if err != nil || s.GetSession().GetState() != agentv1.Session_STATE_COMPLETE || s.GetSession().GetSuccess() {
				t.Fatalf("session %v %v", s, err)
			}
		})
	}
}

// The grant is revoked at the source: the next refresh fails with
// invalid_grant, the connection becomes refresh_failed (never deleted) and
// the app hears of it on its event stream.
func TestGrantRevokedAtSourceDuringRefresh(t *testing.T) {
	f := newPatientFixture(t)
	src := f.register(t, "oraclehealth")
	q := f.connect(t, src, "p-revoked")
	id := q.Get("connection_id")
	f.sb.SetFaults(sandbox.Faults{Tenant: "oraclehealth", RefuseRefresh: true})
	_, err := f.app.Connections.RefreshConnection(context.Background(), &agentv1.RefreshConnectionRequest{ConnectionId: id})
	if err == nil {
		t.Fatal("refresh of a revoked grant succeeded")
	}
	c := f.connection(t, f.app, id)
	if c.GetState() != agentv1.ConnectionState_CONNECTION_STATE_REFRESH_FAILED || !strings.Contains(c.GetReason(), "invalid_grant") {
		t.Fatalf("connection %s %q", c.GetState(), c.GetReason())
	}
	// The app's event stream says so.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := f.app.Events.Subscribe(ctx, &agentv1.SubscribeRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for {
		e, err := st.Recv()
		if err != nil {
			t.Fatalf("no refresh_failed event: %v", err)
		}
		ev := e.GetEvent()
		if ev.GetType() == "connection.state_changed" && ev.GetConnectionId() == id && strings.Contains(ev.GetData().String(), "refresh_failed") {
			break
		}
	}
	// The source recovers: a manual refresh brings the connection back.
	f.sb.SetFaults()
	r, err := f.app.Connections.RefreshConnection(context.Background(), &agentv1.RefreshConnectionRequest{ConnectionId: id})
	if err != nil {
		t.Fatalf("refresh after recovery: %v", err)
	}
	if r.GetConnection().GetState() != agentv1.ConnectionState_CONNECTION_STATE_ACTIVE {
		t.Fatalf("not recovered: %v", r.GetConnection())
	}
}

// Tokens issued by the source and the client secret appear neither in the
// agent's log nor in any file it writes.
func TestSentinelTokensNotInLogsOrStore(t *testing.T) {
	var logs syncBuffer
	f := &patientFixture{}
	f.sb = sandboxtest.Start(t, sandboxtest.WithPatients(2), sandboxtest.WithConfig(func(c *sandbox.Config) { c.TokenPrefix = "SENTINEL-tok-" }))
	f.a = startAgentWith(t, agentOptions{pluginDir: pluginDir(t), logs: &logs})
	f.admin = f.a.dial(t)
	f.source = importSandbox(t, f.admin, f.sb)
	f.app = f.admin
	f.ret = newReturnServer(t)
	src := f.register(t, "bluebutton") // confidential client: its secret is a sentinel too
	q := f.connect(t, src, "p-sentinel")
	if q.Get("success") != "true" {
		t.Fatalf("outcome %v", q)
	}
	f.waitRecords(t, q.Get("connection_id"))
	f.app.Connections.RefreshConnection(context.Background(), &agentv1.RefreshConnectionRequest{ConnectionId: q.Get("connection_id")})
	// Deleting revokes the grant at the source: the revocation (and
	// what is logged about it) carries the refresh token only to the source.
	before := f.sb.Stats().Endpoints[sandbox.EndpointRevoke]
	if _, err := f.app.Connections.DeleteConnection(context.Background(), &agentv1.DeleteConnectionRequest{ConnectionId: q.Get("connection_id")}); err != nil {
		t.Fatal(err)
	}
	if f.sb.Stats().Endpoints[sandbox.EndpointRevoke] == before {
		t.Error("no revocation request at the source")
	}
	if err := f.a.stop(); err != nil {
		t.Fatal(err)
	}
	for _, sentinel := range []string{"SENTINEL-tok-", "SENTINEL-bb-secret"} {
		if strings.Contains(logs.String(), sentinel) {
			t.Errorf("%s appears in the agent's log", sentinel)
		}
		filepath.WalkDir(f.a.layout.Home, func(p string, d os.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return err
			}
			b, _ := os.ReadFile(p)
			if bytes.Contains(b, []byte(sentinel)) {
				t.Errorf("%s appears in %s", sentinel, p)
			}
			return nil
		})
	}
	if logs.Len() == 0 {
		t.Fatal("no log captured")
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (s *syncBuffer) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Len()
}

// smart-2.2-client #7: no page of the agent sets a cookie, let alone one
// carrying a token: the whole patient flow runs without any.
func TestPublicPagesSetNoCookies(t *testing.T) {
	f := newPatientFixture(t)
	src := f.register(t, "generic")
	jar := &recordingJar{}
	resp, err := f.app.Sessions.CreateSession(context.Background(), &agentv1.CreateSessionRequest{
		PatientRef: "p-cookie", ReturnUrl: f.ret.URL + "/done", RecommendedSourceIds: []string{src},
	})
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Jar: jar}
	pages := []string{resp.GetSession().GetUrl(), resp.GetSession().GetUrl() + "/search?q=generic", resp.GetSession().GetUrl() + "?q=sandbox",
		f.a.info.PublicURL + "/oauth/callback?state=x&code=y"}
	for _, u := range pages {
		r, err := hc.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		r.Body.Close()
	}
	r, err := hc.PostForm(resp.GetSession().GetUrl()+"/go", url.Values{"source": {src}})
	if err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
	if q := <-f.ret.hits; q.Get("success") != "true" {
		t.Fatalf("flow did not complete: %v", q)
	}
	if jar.agentCookies(f.a.info.PublicURL) > 0 {
		t.Fatal("the agent set a cookie")
	}
}

type recordingJar struct {
	mu  sync.Mutex
	set map[string]int
}

func (j *recordingJar) SetCookies(u *url.URL, cs []*http.Cookie) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.set == nil {
		j.set = map[string]int{}
	}
	j.set[u.Host] += len(cs)
}

func (j *recordingJar) Cookies(*url.URL) []*http.Cookie { return nil }

func (j *recordingJar) agentCookies(public string) int {
	u, _ := url.Parse(public)
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.set[u.Host]
}
