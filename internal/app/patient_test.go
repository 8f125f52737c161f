//go:build unix

package app_test

// End-to-end patient access against medrelay-sandbox, the way an app and an
// administrator use the agent: import the sandbox's brands bundle, set the
// workspace's credential, register the client at the "EHR", create a
// session, follow the patient's redirects through the (auto-approving)
// portal back to the app's return URL, then read the connection and its
// pulled records, restart the agent and refresh.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/medrelay/medrelay/agent/client"
	"github.com/medrelay/medrelay/internal/config"
	"github.com/medrelay/medrelay/internal/sandbox"
	"github.com/medrelay/medrelay/internal/sandbox/sandboxtest"
	agentv1 "github.com/medrelay/medrelay/proto/gen/medrelay/agent/v1"
)

// testPlugins are built once per test binary into pluginBins.
var testPlugins = []string{"smart", "epic", "oraclehealth", "bluebutton"}

var (
	pluginOnce sync.Once
	pluginBins string
	pluginErr  error
)

// pluginDir builds the plugins (once) and returns a fresh plugin directory
// holding them with their manifests.
func pluginDir(t *testing.T) string {
	t.Helper()
	pluginOnce.Do(func() {
		dir, err := os.MkdirTemp("", "medrelay-app-plugins")
		if err != nil {
			pluginErr = err
			return
		}
		pluginBins = dir
		args := []string{"build", "-o", dir + "/"}
		for _, p := range testPlugins {
			args = append(args, "github.com/medrelay/medrelay/plugins/"+p)
		}
		if out, err := exec.Command("go", args...).CombinedOutput(); err != nil {
			pluginErr = fmt.Errorf("build plugins: %v\n%s", err, out)
			return
		}
		for _, p := range testPlugins {
			bin := filepath.Join(dir, "medrelay-plugin-"+p)
			if err := os.Rename(filepath.Join(dir, p), bin); err != nil {
				pluginErr = err
				return
			}
			if out, err := exec.Command(bin, "manifest", "--write").CombinedOutput(); err != nil {
				pluginErr = fmt.Errorf("manifest %s: %v\n%s", p, err, out)
				return
			}
		}
	})
	if pluginErr != nil {
		t.Fatal(pluginErr)
	}
	dir := filepath.Join(t.TempDir(), "plugins")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(pluginBins)
	for _, e := range entries {
		if err := os.Link(filepath.Join(pluginBins, e.Name()), filepath.Join(dir, e.Name())); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// returnServer is the app's return URL: it records what the patient came back with.
type returnServer struct {
	*httptest.Server
	mu   sync.Mutex
	got  []url.Values
	hits chan url.Values
}

func newReturnServer(t *testing.T) *returnServer {
	r := &returnServer{hits: make(chan url.Values, 16)}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		q := req.URL.Query()
		r.mu.Lock()
		r.got = append(r.got, q)
		r.mu.Unlock()
		r.hits <- q
		io.WriteString(w, "back in the app")
	}))
	t.Cleanup(r.Close)
	return r
}

// importSandbox imports the sandbox's brands bundle as an administrator
// would and returns the directory source id of each tenant.
func importSandbox(t *testing.T, admin *client.Client, sb *sandbox.Sandbox) map[string]string {
	t.Helper()
	ctx := context.Background()
	st, err := admin.Directory.Import(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&agentv1.DirectoryServiceImportRequest{Part: &agentv1.DirectoryServiceImportRequest_Start{Start: &agentv1.ImportStart{Url: sb.URL() + "/brands.json"}}}); err != nil {
		t.Fatal(err)
	}
	st.CloseSend()
	for {
		m, err := st.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("import sandbox brands: %v", err)
		}
		_ = m
	}
	ids := map[string]string{}
	res, err := admin.Directory.Search(ctx, &agentv1.DirectoryServiceSearchRequest{Query: "sandbox", PageSize: 200})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res.GetResults() {
		for _, tenant := range []string{"generic", "epic", "oraclehealth", "bluebutton", "athenahealth", "eclinicalworks"} {
			if strings.TrimRight(r.GetSource().GetFhirBaseUrl(), "/") == sb.FHIRBase(tenant) {
				ids[tenant] = r.GetSource().GetId()
			}
		}
	}
	return ids
}

type patientFixture struct {
	sb     *sandbox.Sandbox
	a      *agent
	admin  *client.Client
	app    *client.Client
	ret    *returnServer
	source map[string]string
}

func newPatientFixture(t *testing.T, sbOpts ...sandboxtest.Option) *patientFixture {
	t.Helper()
	f := &patientFixture{}
	f.sb = sandboxtest.Start(t, append([]sandboxtest.Option{sandboxtest.WithPatients(3)}, sbOpts...)...)
	plugins := pluginDir(t)
	f.a = startAgentWith(t, agentOptions{pluginDir: plugins})
	f.admin = f.a.dial(t)
	f.source = importSandbox(t, f.admin, f.sb)
	created, err := f.admin.Apps.CreateApp(context.Background(), &agentv1.CreateAppRequest{Name: "portal-app"})
	if err != nil {
		t.Fatal(err)
	}
	f.app = f.a.dial(t, client.WithAppToken(created.GetToken()))
	f.ret = newReturnServer(t)
	return f
}

// register sets the agent's credential for the tenant's source and
// registers the same client at the sandbox, the way an administrator
// registers with a vendor.
func (f *patientFixture) register(t *testing.T, tenant string) string {
	t.Helper()
	ctx := context.Background()
	src := f.source[tenant]
	if src == "" {
		t.Fatalf("no directory source for sandbox tenant %s (imported: %v)", tenant, f.source)
	}
	clientID := "medrelay-" + tenant
	redirect := f.a.info.PublicURL + "/oauth/callback"
	req := &agentv1.SetCredentialRequest{SourceId: src, ClientId: clientID}
	cc := sandbox.ClientConfig{Tenant: tenant, ClientID: clientID, RedirectURIs: []string{redirect}}
	switch tenant {
	case "epic":
		// Epic: private_key_jwt with a key generated inside the agent.
		req.GenerateKey = agentv1.KeyAlgorithm_KEY_ALGORITHM_ES384
		cc.JWKSURL = f.a.info.PublicURL + "/.well-known/jwks.json"
	case "bluebutton":
		req.ClientSecret = "SENTINEL-bb-secret-" + tenant
		cc.ClientSecret = req.ClientSecret
	default:
		req.AuthMethod = agentv1.ClientAuthMethod_CLIENT_AUTH_METHOD_NONE
	}
	if _, err := f.admin.Credentials.SetCredential(ctx, req); err != nil {
		t.Fatalf("set credential: %v", err)
	}
	if err := f.sb.RegisterClient(tenant, cc); err != nil {
		t.Fatal(err)
	}
	return src
}

// connect runs a direct-mode session to completion the way a browser that
// follows redirects would, and returns what the app's return URL received.
func (f *patientFixture) connect(t *testing.T, src, patientRef string, extra ...func(*url.URL)) url.Values {
	t.Helper()
	ctx := context.Background()
	resp, err := f.app.Sessions.CreateSession(ctx, &agentv1.CreateSessionRequest{
		PatientRef: patientRef, ReturnUrl: f.ret.URL + "/done?app_state=42", SourceId: src,
	})
	if err != nil {
		t.Fatalf("create session: %v", err)
	}
	sessionURL := resp.GetSession().GetUrl()
	hc := &http.Client{Timeout: 30 * time.Second, CheckRedirect: func(req *http.Request, via []*http.Request) error {
		for _, e := range extra {
			e(req.URL)
		}
		if len(via) > 10 {
			return errors.New("too many redirects")
		}
		return nil
	}}
	r, err := hc.Get(sessionURL)
	if err != nil {
		t.Fatalf("follow session %s: %v", sessionURL, err)
	}
	body, _ := io.ReadAll(r.Body)
	r.Body.Close()
	select {
	case q := <-f.ret.hits:
		if q.Get("app_state") != "42" {
			t.Errorf("the return URL lost its own query: %v", q)
		}
		if q.Get("session_id") != resp.GetSession().GetId() || q.Get("patient_ref") != patientRef {
			t.Errorf("return URL params %v", q)
		}
		return q
	default:
		t.Fatalf("the patient did not come back to the app (HTTP %d at %s): %s", r.StatusCode, r.Request.URL, body)
		return nil
	}
}

func (f *patientFixture) waitRecords(t *testing.T, connID string) int {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		n := countRecords(t, f.app, connID)
		if n > 0 {
			return n
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("no records pulled for %s", connID)
	return 0
}

func countRecords(t *testing.T, c *client.Client, connID string) int {
	t.Helper()
	st, err := c.Records.ListRecords(context.Background(), &agentv1.ListRecordsRequest{ConnectionId: connID})
	if err != nil {
		t.Fatalf("list records: %v", err)
	}
	n := 0
	for {
		m, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return n
		}
		if err != nil {
			t.Fatalf("list records: %v", err)
		}
		n += len(m.GetRecords())
	}
}

func (f *patientFixture) connection(t *testing.T, c *client.Client, id string) *agentv1.Connection {
	t.Helper()
	resp, err := c.Connections.GetConnection(context.Background(), &agentv1.GetConnectionRequest{ConnectionId: id, History: true})
	if err != nil {
		t.Fatalf("get connection: %v", err)
	}
	return resp.GetConnection()
}

// smart-2.2-client #2 #3 #4 #13 #29 #32: a standalone launch against each
// vendor profile, from session to records, surviving a restart.
func TestPatientAccessEndToEnd(t *testing.T) {
	for _, tenant := range []string{"generic", "epic", "oraclehealth", "bluebutton"} {
		t.Run(tenant, func(t *testing.T) {
			f := newPatientFixture(t)
			src := f.register(t, tenant)
			q := f.connect(t, src, "patient-"+tenant)
			if q.Get("success") != "true" || q.Get("connection_id") == "" {
				t.Fatalf("outcome %v", q)
			}
			id := q.Get("connection_id")
			c := f.connection(t, f.app, id)
			if c.GetState() != agentv1.ConnectionState_CONNECTION_STATE_ACTIVE || c.GetPatientId() == "" || len(c.GetScopes()) == 0 {
				t.Fatalf("connection %+v", c)
			}
			if c.GetAccessTokenExpiresAt() == nil {
				t.Errorf("no token expiry recorded")
			}
			if tenant == "bluebutton" && c.GetGrantExpiresAt() == nil {
				t.Errorf("Blue Button's access_grant_expiration not recorded")
			}
			n := f.waitRecords(t, id)
			t.Logf("%s: %d records pulled", tenant, n)
			// smart-2.2-client #202: the fhirUser resource is read and kept.
			if fu := c.GetFhirUser(); fu != "" {
				parts := strings.Split(strings.TrimRight(fu, "/"), "/")
				typ, rid := parts[len(parts)-2], parts[len(parts)-1]
				if _, err := f.app.Records.GetRecord(context.Background(), &agentv1.GetRecordRequest{ConnectionId: id, ResourceType: typ, Id: rid}); err != nil {
					t.Errorf("fhirUser %s not in the store: %v", fu, err)
				}
			} else if tenant != "bluebutton" {
				t.Errorf("no fhirUser recorded (the sandbox's id_token carries one)")
			}

			// Restart the agent on the same home: still active, and a
			// refresh (with the refresh token kept across the restart)
			// works.
			home := f.a.layout
			if err := f.a.stop(); err != nil {
				t.Fatal(err)
			}
			// Same public address: vendors hold our redirect URI and JWKS URL.
			addr := f.a.info.HTTPAddr
			f.a = startAgentWith(t, agentOptions{layout: &home, pluginDir: home.PluginDir,
				mutate: []func(*config.Config){func(c *config.Config) { c.HTTPAddr = addr }}})
			admin := f.a.dial(t)
			c = f.connection(t, admin, id)
			if c.GetState() != agentv1.ConnectionState_CONNECTION_STATE_ACTIVE {
				t.Fatalf("after restart: %s (%s)", c.GetState(), c.GetReason())
			}
			before := f.sb.Stats().Endpoints["token:refresh_token"]
			r, err := admin.Connections.RefreshConnection(context.Background(), &agentv1.RefreshConnectionRequest{ConnectionId: id})
			if err != nil {
				t.Fatalf("refresh after restart: %v", err)
			}
			if got := f.sb.Stats().Endpoints["token:refresh_token"] - before; got != 1 {
				t.Errorf("%d refresh requests at the sandbox, want 1", got)
			}
			if r.GetConnection().GetState() != agentv1.ConnectionState_CONNECTION_STATE_ACTIVE {
				t.Fatalf("after refresh: %v", r.GetConnection())
			}
		})
	}
}

// RecordService.SearchRecords runs live at the source through the plugin,
// scoped to the connection's patient, and audits the read with the patient.
func TestLiveSearchThroughThePlugin(t *testing.T) {
	f := newPatientFixture(t)
	src := f.register(t, "generic")
	q := f.connect(t, src, "p-live")
	id := q.Get("connection_id")
	c := f.connection(t, f.app, id)
	st, err := f.app.Records.SearchRecords(context.Background(), &agentv1.SearchRecordsRequest{
		ConnectionId: id, ResourceType: "Observation", Params: map[string]string{"category": "vital-signs"}, PageSize: 20,
	})
	if err != nil {
		t.Fatal(err)
	}
	n, pages := 0, 0
	for {
		m, err := st.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("search: %v", err)
		}
		pages++
		for _, r := range m.GetRecords() {
			if r.GetResourceType() != "Observation" {
				continue // included resources
			}
			n++
			if !strings.Contains(string(r.GetJson()), `"Patient/`+c.GetPatientId()+`"`) || !strings.Contains(string(r.GetJson()), "vital-signs") {
				t.Fatalf("result is not this patient's vital sign: %.200s", r.GetJson())
			}
		}
	}
	if n == 0 || pages < 2 {
		t.Fatalf("%d observations on %d pages; want several pages of vital signs", n, pages)
	}
	// The read is in the audit log, with the patient.
	found := false
	for _, e := range auditEntries(t, f.admin) {
		if strings.HasSuffix(e.GetMethod(), "/SearchRecords") && e.GetConnectionId() == id && e.GetPatientRef() == "p-live" {
			found = true
		}
	}
	if !found {
		t.Error("live search not audited with its patient")
	}
}

// After the first pull, later pulls ask only for what changed since
// (_lastUpdated), and the app reads just those with its cursor.
func TestIncrementalPull(t *testing.T) {
	f := &patientFixture{}
	f.sb = sandboxtest.Start(t, sandboxtest.WithPatients(1))
	f.a = startAgentWith(t, agentOptions{pluginDir: pluginDir(t), mutate: []func(*config.Config){func(c *config.Config) {
		c.PatientAccess.PullInterval = config.Duration{Duration: 2 * time.Second}
	}}})
	f.admin = f.a.dial(t)
	f.source = importSandbox(t, f.admin, f.sb)
	f.app = f.admin
	f.ret = newReturnServer(t)
	src := f.register(t, "generic")
	q := f.connect(t, src, "p-inc")
	id := q.Get("connection_id")
	f.waitRecords(t, id)
	cursor := listCursor(t, f.app, id, "")

	res, err := f.sb.Mutate(sandbox.MutateRequest{Tenant: "generic", Update: 15, Types: []string{"Observation", "Condition"}})
	if err != nil {
		t.Fatal(err)
	}
	updated := map[string]bool{}
	for _, r := range res.Updated {
		updated[r] = true
	}
	// The next pulls bring the changed resources, and only they move in
	// the change index.
	var changed []string
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) && len(changed) < len(updated) {
		time.Sleep(500 * time.Millisecond)
		changed = changedSince(t, f.app, id, cursor)
	}
	if len(changed) != len(updated) {
		t.Fatalf("%d resources changed after the cursor, the sandbox updated %d: %v\nupdated: %v", len(changed), len(updated), changed, res.Updated)
	}
	for _, c := range changed {
		if !updated[c] {
			t.Errorf("%s moved in the change index but was not updated at the source", c)
		}
	}
}

func listCursor(t *testing.T, c *client.Client, id, since string) string {
	t.Helper()
	st, err := c.Records.ListRecords(context.Background(), &agentv1.ListRecordsRequest{ConnectionId: id, SinceCursor: since})
	if err != nil {
		t.Fatal(err)
	}
	cur := since
	for {
		m, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return cur
		}
		if err != nil {
			t.Fatal(err)
		}
		cur = m.GetCursor()
	}
}

func changedSince(t *testing.T, c *client.Client, id, since string) []string {
	t.Helper()
	st, err := c.Records.ListRecords(context.Background(), &agentv1.ListRecordsRequest{ConnectionId: id, SinceCursor: since})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for {
		m, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range m.GetRecords() {
			out = append(out, r.GetResourceType()+"/"+r.GetId())
		}
	}
}

// Deleting a connection destroys its tokens here and revokes the grant at
// the source (RFC 7009): the sandbox then has no live grant for the patient.
func TestDeleteConnectionRevokesTheGrantAtTheSource(t *testing.T) {
	f := newPatientFixture(t)
	src := f.register(t, "generic")
	q := f.connect(t, src, "p-delete")
	id := q.Get("connection_id")
	c := f.connection(t, f.app, id)
	if c.GetState() != agentv1.ConnectionState_CONNECTION_STATE_ACTIVE || c.GetPatientId() == "" {
		t.Fatalf("connection %+v", c)
	}
	before := f.sb.Stats().Endpoints[sandbox.EndpointRevoke]
	d, err := f.app.Connections.DeleteConnection(context.Background(), &agentv1.DeleteConnectionRequest{ConnectionId: id})
	if err != nil {
		t.Fatal(err)
	}
	if d.GetConnection().GetState() != agentv1.ConnectionState_CONNECTION_STATE_REVOKED {
		t.Fatalf("after delete: %v", d.GetConnection())
	}
	if got := f.sb.Stats().Endpoints[sandbox.EndpointRevoke] - before; got != 1 {
		t.Fatalf("%d revocation requests at the sandbox, want 1", got)
	}
	// Nothing left to revoke: the grant ended at the source.
	if n, err := f.sb.RevokePatient("generic", c.GetPatientId()); err != nil || n != 0 {
		t.Fatalf("live grants of the patient after the delete: %d (%v)", n, err)
	}
	// Deleting again is a no-op here and asks the source nothing.
	if _, err := f.app.Connections.DeleteConnection(context.Background(), &agentv1.DeleteConnectionRequest{ConnectionId: id}); err != nil {
		t.Fatal(err)
	}
	if got := f.sb.Stats().Endpoints[sandbox.EndpointRevoke] - before; got != 1 {
		t.Fatalf("%d revocation requests after a second delete, want still 1", got)
	}
}
