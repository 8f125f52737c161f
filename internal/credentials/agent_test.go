package credentials_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/medrelay/medrelay/agent/client"
	"github.com/medrelay/medrelay/internal/app"
	"github.com/medrelay/medrelay/internal/config"
	"github.com/medrelay/medrelay/internal/home"
	"github.com/medrelay/medrelay/internal/secrets"
	"github.com/medrelay/medrelay/internal/store"
	agentv1 "github.com/medrelay/medrelay/proto/gen/medrelay/agent/v1"
)

// runningAgent is a whole agent (app.Run) in this process.
type runningAgent struct {
	layout home.Layout
	info   app.Info
	logs   *syncBuffer
	stop   func()
}

func startAgent(t *testing.T) *runningAgent {
	t.Helper()
	layout, err := home.ForHome(filepath.Join(t.TempDir(), "home"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	cfg.HTTPAddr, cfg.AdminAddr = "127.0.0.1:0", "127.0.0.1:0"
	cfg.Log.Level = "debug"
	logs := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan app.Info, 1)
	done := make(chan error, 1)
	go func() {
		done <- app.Run(ctx, app.Options{Layout: layout, Config: cfg,
			Logger: slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
			Ready:  func(i app.Info) { ready <- i }})
	}()
	a := &runningAgent{layout: layout, logs: logs}
	select {
	case a.info = <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("agent did not start: %v", err)
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatal("agent did not start in 30s")
	}
	stopped := false
	a.stop = func() {
		if !stopped {
			stopped = true
			cancel()
			if err := <-done; err != nil {
				t.Errorf("agent stop: %v", err)
			}
		}
	}
	t.Cleanup(a.stop)
	return a
}

// buildCLI builds the medrelay command once per test binary.
func buildCLI(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "medrelay")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/medrelay/medrelay/agent/cmd/medrelay")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build medrelay: %v\n%s", err, out)
	}
	return bin
}

// TestAgent_CredentialsCLI drives the credentials commands of the real CLI
// against a real agent, reads the JWKS from the public listener, checks
// who may call what, and then looks for the secret and the private keys
// everywhere they must not be: CLI output, API responses, the agent's log,
// the audit log, and the store's files on disk. smart-2.2-client #8, #9,
// #21, #295, #298-#303.
func TestAgent_CredentialsCLI(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the CLI")
	}
	bin := buildCLI(t)
	a := startAgent(t)
	const sentinel = "SENTINEL-secret-e2e-7c1a"
	secretFile := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secretFile, []byte(sentinel+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var transcript bytes.Buffer
	run := func(wantOK bool, args ...string) string {
		t.Helper()
		cmd := exec.Command(bin, append([]string{"--socket", a.layout.Socket}, args...)...)
		cmd.Env = append(os.Environ(), "MEDRELAY_APP_TOKEN=")
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		transcript.Write(out.Bytes())
		transcript.Write(errb.Bytes())
		if (err == nil) != wantOK {
			t.Fatalf("medrelay %s: %v\n%s%s", strings.Join(args, " "), err, out.String(), errb.String())
		}
		return out.String() + errb.String()
	}
	public := "http://" + a.info.HTTPAddr
	redirect := public + "/oauth/callback"

	out := run(true, "credentials", "set", "mercy", "--client-id", "app-mercy", "--client-secret-file", secretFile, "--scopes", "openid,patient/*.rs")
	if !strings.Contains(out, "client secret (HTTP Basic)") || !strings.Contains(out, redirect) {
		t.Fatalf("set with a secret:\n%s", out)
	}
	out = run(true, "credentials", "set", "--vendor", "epic", "--client-id", "epic-app", "--generate-key", "ES384")
	if !strings.Contains(out, "private key ES384") || !strings.Contains(out, public+"/.well-known/jwks.json") {
		t.Fatalf("set with a key:\n%s", out)
	}
	out = run(true, "credentials", "list")
	for _, want := range []string{"source mercy", "vendor epic", "app-mercy", "epic-app", "key ES384", "Redirect URI to register with each vendor:  " + redirect} {
		if !strings.Contains(out, want) {
			t.Errorf("list lacks %q:\n%s", want, out)
		}
	}
	var listed struct {
		Credentials []struct {
			SourceID  string   `json:"source_id"`
			HasSecret bool     `json:"has_secret"`
			KeyIDs    []string `json:"key_ids"`
		} `json:"credentials"`
		Registration struct {
			RedirectURI string `json:"redirect_uri"`
		} `json:"registration"`
	}
	if err := json.Unmarshal([]byte(run(true, "--json", "credentials", "list")), &listed); err != nil {
		t.Fatal(err)
	}
	if len(listed.Credentials) != 2 || !listed.Credentials[0].HasSecret || listed.Registration.RedirectURI != redirect {
		t.Fatalf("json list %+v", listed)
	}
	epicKID := listed.Credentials[1].KeyIDs[0]

	// The JWKS the CLI prints is what the public listener serves, without
	// authentication.
	printed := run(true, "credentials", "jwks")
	resp, err := http.Get(public + "/.well-known/jwks.json")
	if err != nil {
		t.Fatal(err)
	}
	served, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Cache-Control") == "" || !strings.Contains(string(served), epicKID) || !strings.Contains(printed, epicKID) {
		t.Fatalf("JWKS: HTTP %d\nserved %s\nprinted %s", resp.StatusCode, served, printed)
	}

	out = run(true, "credentials", "rotate", "--vendor", "epic")
	if !strings.Contains(out, "Rotated") || strings.Contains(out, "now signing with "+epicKID) {
		t.Fatalf("rotate:\n%s", out)
	}
	run(false, "credentials", "set", "x", "--client-id", "c", "--client-secret-file", secretFile, "--generate-key", "RS384")
	out = run(false, "credentials", "set", "bad id!", "--client-id", "c")
	if !strings.Contains(out, "CREDENTIAL_INVALID") {
		t.Errorf("invalid source id:\n%s", out)
	}
	out = run(false, "credentials", "rotate", "mercy")
	if !strings.Contains(out, "CREDENTIAL_HAS_NO_KEY") {
		t.Errorf("rotate a secret:\n%s", out)
	}

	// Apps may read the JWKS but not manage credentials.
	ctx := context.Background()
	adm, err := client.Dial(ctx, client.WithSocket(a.layout.Socket), client.WithAppToken(""))
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close()
	created, err := adm.Apps.CreateApp(ctx, &agentv1.CreateAppRequest{Name: "ehr-app"})
	if err != nil {
		t.Fatal(err)
	}
	appc, err := client.Dial(ctx, client.WithSocket(a.layout.Socket), client.WithAppToken(created.GetToken()))
	if err != nil {
		t.Fatal(err)
	}
	defer appc.Close()
	if _, err := appc.Credentials.ListCredentials(ctx, &agentv1.ListCredentialsRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("app lists credentials: %v", err)
	}
	if _, err := appc.Credentials.SetCredential(ctx, &agentv1.SetCredentialRequest{SourceId: "s", ClientId: "c"}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("app sets a credential: %v", err)
	}
	if j, err := appc.Credentials.GetJWKS(ctx, &agentv1.GetJWKSRequest{}); err != nil || !strings.Contains(j.GetJwks(), `"keys"`) {
		t.Errorf("app reads the JWKS: %v", err)
	}
	audit, err := adm.Admin.ListAudit(ctx, &agentv1.ListAuditRequest{PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	auditJSON, _ := json.Marshal(audit)
	if !strings.Contains(string(auditJSON), "SetCredential") {
		t.Error("SetCredential is not audited")
	}
	out = run(true, "credentials", "delete", "mercy")
	if !strings.Contains(out, "Deleted credential") {
		t.Errorf("delete:\n%s", out)
	}
	a.stop()
	t.Logf("CLI transcript:\n%s", transcript.String())

	// Now look for the secret and the private keys.
	privs := storedPrivateKeys(t, a.layout)
	haystacks := map[string][]byte{"CLI output": transcript.Bytes(), "agent log": []byte(a.logs.String()), "audit": auditJSON}
	err = filepath.WalkDir(a.layout.Home, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Type()&fs.ModeSocket != 0 {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		haystacks[p] = b
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range haystacks {
		if bytes.Contains(b, []byte(sentinel)) {
			t.Errorf("the client secret is in %s", name)
		}
		for _, p := range privs {
			if bytes.Contains(b, []byte(p[:32])) {
				t.Errorf("private key material is in %s", name)
			}
		}
	}
	if !strings.Contains(a.logs.String(), "credential set") {
		t.Error("the agent's log saw nothing: the search above proves nothing")
	}
}

// storedPrivateKeys opens the stopped agent's store and returns the
// private keys it holds (base64 PKCS #8).
func storedPrivateKeys(t *testing.T, l home.Layout) []string {
	t.Helper()
	kr, _, err := secrets.Load(l.KeyFile, false)
	if err != nil {
		t.Fatal(err)
	}
	db, err := store.Open(context.Background(), store.Options{Dir: l.StoreDir, Key: kr.StoreKey(), GCInterval: -1,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var out []string
	err = store.NewTable[map[string]any](db, store.CredentialKeys).Scan(context.Background(), store.ScanOptions{}, func(_ string, v map[string]any) error {
		p, _ := v["private"].(string)
		if len(p) < 64 {
			return errors.New("a key without private material")
		}
		out = append(out, p)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != 2 {
		t.Fatalf("%d keys in the store, want 2 (the rotated one is kept a while)", len(out))
	}
	return out
}
