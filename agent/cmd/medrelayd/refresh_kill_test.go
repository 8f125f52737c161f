package main_test

// The agent is SIGKILLed at random points while it refreshes a connection
// whose source rotates refresh tokens and detects reuse. No kill may lose
// the connection: after every restart it is still active and refreshes.

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/medrelay/medrelay/agent/client"
	"github.com/medrelay/medrelay/internal/sandbox"
	"github.com/medrelay/medrelay/internal/sandbox/sandboxtest"
	agentv1 "github.com/medrelay/medrelay/proto/gen/medrelay/agent/v1"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func dialHome(t *testing.T, home string, opts ...client.Option) *client.Client {
	t.Helper()
	c, err := client.Dial(context.Background(), append([]client.Option{client.WithSocket(client.HomeSocket(home)), client.WithAppToken("")}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestKillDuringRefreshesLosesNoConnection(t *testing.T) {
	if testing.Short() {
		t.Skip("kills and restarts the agent 20 times")
	}
	ctx := context.Background()
	rotate := true
	// Rotation with reuse detection; the grace lets a client that died
	// between the server's rotation and its own fsync present the old token
	// once more (a token whose successor was never used), as Okta and
	// Auth0 allow. Without some such grace no client can survive SIGKILL in
	// that window: the new token exists only in the dead process's memory.
	sb := sandboxtest.Start(t, sandboxtest.WithPatients(1), sandboxtest.WithTenants(sandbox.TenantConfig{
		Name: "oraclehealth", Profile: "oraclehealth", RotateRefreshTokens: &rotate,
		RefreshReuseGrace: sandbox.Duration(time.Minute),
	}))
	home := filepath.Join(t.TempDir(), "h")
	httpAddr := freeAddr(t)
	public := "http://" + httpAddr
	d := startDaemon(t, home, "--http-addr", httpAddr)

	admin := dialHome(t, home)
	st, err := admin.Directory.Import(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st.Send(&agentv1.DirectoryServiceImportRequest{Part: &agentv1.DirectoryServiceImportRequest_Start{Start: &agentv1.ImportStart{Url: sb.URL() + "/brands.json"}}})
	st.CloseSend()
	for {
		if _, err := st.Recv(); err != nil {
			if !errors.Is(err, io.EOF) {
				t.Fatal(err)
			}
			break
		}
	}
	res, err := admin.Directory.Search(ctx, &agentv1.DirectoryServiceSearchRequest{Query: "sandbox", PageSize: 50})
	if err != nil || len(res.GetResults()) == 0 {
		t.Fatalf("search: %v", err)
	}
	src := ""
	for _, r := range res.GetResults() {
		if strings.TrimRight(r.GetSource().GetFhirBaseUrl(), "/") == sb.FHIRBase("oraclehealth") {
			src = r.GetSource().GetId()
		}
	}
	if src == "" {
		t.Fatal("the sandbox's tenant is not in the directory")
	}
	redirect := public + "/oauth/callback"
	if _, err := admin.Credentials.SetCredential(ctx, &agentv1.SetCredentialRequest{SourceId: src, ClientId: "kill-test", AuthMethod: agentv1.ClientAuthMethod_CLIENT_AUTH_METHOD_NONE}); err != nil {
		t.Fatal(err)
	}
	sb.RegisterClient("oraclehealth", sandbox.ClientConfig{ClientID: "kill-test", RedirectURIs: []string{redirect}})
	ret := "http://127.0.0.1:1/done"
	sess, err := admin.Sessions.CreateSession(ctx, &agentv1.CreateSessionRequest{PatientRef: "p", ReturnUrl: ret, SourceId: src})
	if err != nil {
		t.Fatal(err)
	}
	var back *url.URL
	hc := &http.Client{CheckRedirect: func(req *http.Request, _ []*http.Request) error {
		if strings.HasPrefix(req.URL.String(), ret) {
			back = req.URL
			return http.ErrUseLastResponse
		}
		return nil
	}}
	if r, err := hc.Get(sess.GetSession().GetUrl()); err == nil {
		r.Body.Close()
	}
	if back == nil || back.Query().Get("success") != "true" {
		t.Fatalf("authorization did not complete: %v\n%s", back, d.log)
	}
	id := back.Query().Get("connection_id")
	admin.Close()

	rng := rand.New(rand.NewPCG(7, 11))
	var refreshes atomic.Int64
	for round := range 20 {
		c := dialHome(t, home)
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := c.Connections.RefreshConnection(ctx, &agentv1.RefreshConnectionRequest{ConnectionId: id}); err == nil {
					refreshes.Add(1)
				}
			}
		}()
		time.Sleep(time.Duration(rng.IntN(250)) * time.Millisecond)
		d.cmd.Process.Signal(syscall.SIGKILL)
		<-d.done
		close(stop)
		<-done
		c.Close()

		d = startDaemon(t, home, "--http-addr", httpAddr)
		c = dialHome(t, home)
		r, err := c.Connections.RefreshConnection(ctx, &agentv1.RefreshConnectionRequest{ConnectionId: id})
		if err != nil {
			t.Fatalf("round %d: refresh after restart: %v\n%s", round, err, d.log)
		}
		if r.GetConnection().GetState() != agentv1.ConnectionState_CONNECTION_STATE_ACTIVE {
			t.Fatalf("round %d: connection %s (%s)", round, r.GetConnection().GetState(), r.GetConnection().GetReason())
		}
		c.Close()
	}
	if refreshes.Load() < 20 {
		t.Errorf("only %d refreshes completed while the agent was being killed; the test did not exercise much", refreshes.Load())
	}
	t.Logf("%d refreshes completed across 20 kills; rotations at the sandbox: %d", refreshes.Load(), sb.Stats().Endpoints["token:refresh_token"])
}
