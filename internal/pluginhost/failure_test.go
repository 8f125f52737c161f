//go:build unix

package pluginhost

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pluginv1 "github.com/medrelay/medrelay/proto/gen/medrelay/plugin/v1"
)

// A plugin killed with SIGKILL during a streaming call leaves the agent up;
// the call fails with a clear Unavailable; the plugin is back within its
// backoff and the next call succeeds.
func TestPluginKilledMidStreamIsRestarted(t *testing.T) {
	release := make(chan struct{})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	chunk := strings.Repeat(`{"resourceType":"Observation","id":"x"}`+"\n", 30000) // ~1.1 MiB
	src := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/fhir+ndjson")
		io.WriteString(w, chunk)
		w.(http.Flusher).Flush()
		if r.URL.Query().Get("hang") != "" {
			<-release
		}
	}))
	defer src.Close()
	defer unblock()

	o, _ := testOptions(t, installDir(t, "smart"), nil)
	h := startHost(t, o)
	before, _ := h.Info("smart")
	conn := &pluginv1.Connection{Id: "c1", FhirBaseUrl: src.URL + "/fhir"}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	pr, pw := io.Pipe()
	errc := make(chan error, 1)
	go func() {
		_, err := h.BulkDownload(ctx, "smart", &pluginv1.BulkDownloadRequest{Connection: conn, Url: src.URL + "/file.ndjson?hang=1"}, pw)
		pw.Close()
		errc <- err
	}()
	// Wait for the first bytes: the stream is under way.
	if _, err := io.ReadFull(pr, make([]byte, 1024)); err != nil {
		t.Fatal(err)
	}
	go io.Copy(io.Discard, pr)
	if err := syscall.Kill(before.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	err := <-errc
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("call after SIGKILL: %v, want ErrUnavailable", err)
	}
	t.Logf("the call failed with: %v", err)

	// The supervisor notices the death (it may do so after the call did),
	// restarts the plugin after its backoff.
	var after Info
	for {
		if after, _ = h.Info("smart"); after.Restarts >= 1 && after.State == StateRunning {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("plugin did not come back: %+v", after)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if after.PID == before.PID || after.Restarts != 1 {
		t.Fatalf("after restart: pid %d (was %d), restarts %d", after.PID, before.PID, after.Restarts)
	}
	var sb strings.Builder
	n, err := h.BulkDownload(ctx, "smart", &pluginv1.BulkDownloadRequest{Connection: conn, Url: src.URL + "/file.ndjson"}, &sb)
	if err != nil || n != int64(len(chunk)) || sb.String() != chunk {
		t.Fatalf("next call: n=%d err=%v", n, err)
	}
}

// A call while the plugin is restarting fails at once with Unavailable
// rather than hanging.
func TestCallDuringRestartIsUnavailable(t *testing.T) {
	o, _ := testOptions(t, installDir(t, "smart"), nil)
	o.BackoffInitial = 5 * time.Second
	h := startHost(t, o)
	i, _ := h.Info("smart")
	if err := syscall.Kill(i.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		if i, _ := h.Info("smart"); i.State == StateRestarting {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("never saw the restarting state")
		}
		time.Sleep(10 * time.Millisecond)
	}
	_, err := h.Read(ctx, "smart", &pluginv1.ReadRequest{Connection: &pluginv1.Connection{Id: "c"}, ResourceType: "Patient", Id: "x"})
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "restarting") {
		t.Fatalf("err = %v", err)
	}
}

func TestChecksumMismatchIsRefused(t *testing.T) {
	dir := installDir(t, "smart")
	m := dir + "/" + BinaryPrefix + "smart.json"
	b, _ := os.ReadFile(m)
	var man Manifest
	man, _ = ParseManifest(b)
	bad := strings.Replace(string(b), man.SHA256, strings.Repeat("0", 64), 1)
	if err := os.WriteFile(m+".tmp", []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Rename(m+".tmp", m)
	o, _ := testOptions(t, dir, nil)
	h := startHost(t, o)
	i, _ := h.Info("smart")
	if i.State != StateFailed || i.PID != 0 || i.Restarts != 0 {
		t.Fatalf("info: %+v", i)
	}
	mustContain(t, i.LastError, "checksum", "manifest --write", man.SHA256, strings.Repeat("0", 64))
	_, err := h.Read(context.Background(), "smart", &pluginv1.ReadRequest{Connection: &pluginv1.Connection{Id: "c"}})
	if !errors.Is(err, ErrFailed) {
		t.Fatalf("call to a refused plugin: %v", err)
	}
	v := h.Verify(context.Background(), "smart")
	if v[0].OK || !errors.Is(v[0].Err, ErrChecksum) {
		t.Fatalf("verify: %+v", v[0])
	}
}

func TestStdoutBeforeHandshakeIsReported(t *testing.T) {
	o, _ := testOptions(t, installDir(t, "stdoutplugin"), nil)
	h := startHost(t, o)
	i, _ := h.Info("stdoutplugin")
	if i.State != StateFailed {
		t.Fatalf("state %s", i.State)
	}
	mustContain(t, i.LastError, "wrote", "hello from a plugin", "stdout before the handshake", "stderr")
}

func TestPanicInDescribeIsReported(t *testing.T) {
	o, _ := testOptions(t, installDir(t, "panicplugin"), nil)
	h := startHost(t, o)
	i, _ := h.Info("panicplugin")
	if i.State != StateFailed || i.Restarts != 0 {
		t.Fatalf("state %s restarts %d", i.State, i.Restarts)
	}
	mustContain(t, i.LastError, "failed at start", "panic in Describe", "vendor config missing: FOO_URL")
}

func TestPanicAtStartEndsInFailedWithStderr(t *testing.T) {
	o, _ := testOptions(t, installDir(t, "initpanic"), nil)
	h := startHost(t, o)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := h.WaitRunning(ctx, "initpanic")
	if !errors.Is(err, ErrFailed) {
		t.Fatalf("WaitRunning: %v", err)
	}
	i, _ := h.Info("initpanic")
	if i.State != StateFailed || i.Restarts != o.CrashLimit {
		t.Fatalf("state %s restarts %d", i.State, i.Restarts)
	}
	mustContain(t, i.LastError, "crashed 3 times", "exited before completing the handshake", "panic: cannot parse embedded vendor table")
}

func TestWorldWritablePluginDirIsRefused(t *testing.T) {
	dir := installDir(t, "smart")
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	o, _ := testOptions(t, dir, nil)
	h := New(o)
	err := h.Start(context.Background())
	if !errors.Is(err, ErrUnsafe) {
		t.Fatalf("start: %v", err)
	}
	mustContain(t, err.Error(), "writable by every user", "chmod o-w")
	_ = h.Stop(context.Background())
}

func TestMissingManifestIsReported(t *testing.T) {
	dir := installDir(t, "smart")
	os.Remove(dir + "/" + BinaryPrefix + "smart.json")
	o, _ := testOptions(t, dir, nil)
	h := startHost(t, o)
	i, _ := h.Info("smart")
	if i.State != StateFailed {
		t.Fatalf("state %s", i.State)
	}
	mustContain(t, i.LastError, "no manifest", "manifest --write")
}

// A plugin gets tokens only for connections it has a call for: the host
// service refuses anything else. The broker address is private to the
// plugin, so this drives the host service directly.
func TestTokensOnlyForConnectionsInCall(t *testing.T) {
	o, _ := testOptions(t, "", staticTokens("secret-token"))
	h := New(o)
	p := newPlugin(h, candidate{name: "x"})
	svc := &hostService{p: p}
	ctx := context.Background()
	if _, err := svc.AccessToken(ctx, &pluginv1.AccessTokenRequest{ConnectionId: "c1"}); err == nil || !strings.Contains(err.Error(), "no call") {
		t.Fatalf("token outside a call: %v", err)
	}
	p.mu.Lock()
	p.state, p.rpc = StateRunning, pluginv1.NewSourceServiceClient(dummyConn(t))
	p.mu.Unlock()
	_, done, err := p.begin(ctx, "c1")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := svc.AccessToken(ctx, &pluginv1.AccessTokenRequest{ConnectionId: "c1"})
	if err != nil || resp.GetAccessToken() != "secret-token" {
		t.Fatalf("token in a call: %v %v", resp, err)
	}
	if _, err := svc.AccessToken(ctx, &pluginv1.AccessTokenRequest{ConnectionId: "c2"}); err == nil {
		t.Fatal("token for another connection")
	}
	done()
	if _, err := svc.AccessToken(ctx, &pluginv1.AccessTokenRequest{ConnectionId: "c1"}); err == nil {
		t.Fatal("token after the call ended")
	}
}

type staticTokens string

func (s staticTokens) AccessToken(context.Context, string, bool) (Token, error) {
	return Token{AccessToken: string(s), TokenType: "Bearer"}, nil
}

func dummyConn(t *testing.T) *grpc.ClientConn {
	c, err := grpc.NewClient("passthrough:///unused", grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// All three download paths deliver the same bytes, from an offset: the
// shared-memory ring (a plugin and an agent that both speak it), the raw
// sink (either side without the ring: an older plugin or agent, or another
// system) and gRPC chunks (no sink at all).
func TestBulkDownloadPaths(t *testing.T) {
	file := strings.Repeat("0123456789\n", 300000) // 3.3 MB: several chunks and slots
	src := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "f.ndjson", time.Time{}, strings.NewReader(file))
	}))
	defer src.Close()
	o, logs := testOptions(t, installDir(t, "smart"), staticTokens("t"))
	h := startHost(t, o)
	defer func() { sinkSupported, ringSupported = true, ringDefault }()
	paths := []struct {
		path       string
		sink, ring bool
	}{{"ring", true, true}, {"sink", true, false}, {"chunks", false, false}}
	for _, c := range paths {
		if c.ring && !ringDefault {
			continue // no ring on this system
		}
		sinkSupported, ringSupported = c.sink, c.ring
		var sb strings.Builder
		n, err := h.BulkDownload(context.Background(), "smart", &pluginv1.BulkDownloadRequest{
			Connection: &pluginv1.Connection{Id: "c", FhirBaseUrl: src.URL + "/fhir"}, Url: src.URL + "/f.ndjson", Offset: 5, RequiresAccessToken: true,
		}, &sb)
		if err != nil || n != int64(len(file)) || sb.String() != file[5:] {
			t.Errorf("%s: n=%d err=%v len=%d", c.path, n, err, sb.Len())
		}
		want := fmt.Sprintf(`msg="bulk download" component=plugins plugin=smart path=%s from=5 to=%d`, c.path, len(file))
		if !strings.Contains(logs.String(), want) {
			t.Errorf("%s: the log does not say %q", c.path, want)
		}
	}
}

// A body cut short (Content-Length promised more) is a broken download on
// every path, never a complete one: the call fails with the bytes that did
// arrive, and the caller resumes after them.
func TestCutBodyIsResumableOnEveryPath(t *testing.T) {
	const sent, promised = 2<<20 + 12345, 5 << 20
	body := strings.Repeat("x", sent)
	src := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", fmt.Sprint(promised))
		io.WriteString(w, body) // the server closes the connection after this
	}))
	defer src.Close()
	o, _ := testOptions(t, installDir(t, "smart"), staticTokens("t"))
	h := startHost(t, o)
	defer func() { sinkSupported, ringSupported = true, ringDefault }()
	for _, c := range []struct{ sink, ring bool }{{true, true}, {true, false}, {false, false}} {
		sinkSupported, ringSupported = c.sink, c.ring && ringDefault
		var sb strings.Builder
		n, err := h.BulkDownload(context.Background(), "smart", &pluginv1.BulkDownloadRequest{
			Connection: &pluginv1.Connection{Id: "c", FhirBaseUrl: src.URL + "/fhir"}, Url: src.URL + "/f.ndjson",
		}, &sb)
		var se *SourceError
		if !errors.As(err, &se) || se.Reason != "SOURCE_DOWNLOAD_BROKEN" || !errors.Is(err, ErrSourceDown) {
			t.Errorf("sink=%v ring=%v: err = %v, want SOURCE_DOWNLOAD_BROKEN", c.sink, c.ring, err)
		}
		if n != sent || sb.Len() != sent {
			t.Errorf("sink=%v ring=%v: offset %d, %d bytes written; want %d", c.sink, c.ring, n, sb.Len(), sent)
		}
	}
}

// A plugin that stops answering (here: stopped with SIGSTOP) fails its
// health checks and is replaced.
func TestHungPluginIsReplaced(t *testing.T) {
	o, _ := testOptions(t, installDir(t, "smart"), nil)
	h := startHost(t, o)
	before, _ := h.Info("smart")
	if err := syscall.Kill(before.PID, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(before.PID, syscall.SIGKILL) })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		i, _ := h.Info("smart")
		if i.State == StateRunning && i.PID != before.PID {
			if i.Restarts != 1 {
				t.Fatalf("after replacement: %+v", i)
			}
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("hung plugin not replaced: %+v", i)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if alive(before.PID) {
		t.Fatal("the hung process is still alive")
	}
}
