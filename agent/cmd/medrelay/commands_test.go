package main

// Every command that talks to the agent, run against a whole agent
// (app.Run in this process, the smart plugin, the sandbox as the source),
// and compared with testdata/commands.golden: stdout, stderr, the error
// line main prints and the exit code. The transcript is what a person or a
// script sees; it pins the output while the commands' plumbing changes.
//
// After an intended change of output: go test -run TestCommandsGolden -update

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/medrelay/medrelay/agent/client"
	"github.com/medrelay/medrelay/internal/app"
	"github.com/medrelay/medrelay/internal/config"
	"github.com/medrelay/medrelay/internal/home"
	"github.com/medrelay/medrelay/internal/sandbox"
	"github.com/medrelay/medrelay/internal/sandbox/sandboxtest"
	agentv1 "github.com/medrelay/medrelay/proto/gen/medrelay/agent/v1"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from this run")

// agentUnderTest is a whole agent in this process with the smart plugin.
type agentUnderTest struct {
	layout home.Layout
	info   app.Info
	admin  *client.Client
}

func startWholeAgent(t *testing.T) *agentUnderTest {
	t.Helper()
	pluginDir := t.TempDir()
	bin := filepath.Join(pluginDir, "medrelay-plugin-smart")
	if out, err := exec.Command("go", "build", "-o", bin, "../../../plugins/smart").CombinedOutput(); err != nil {
		t.Fatalf("build smart plugin: %v\n%s", err, out)
	}
	if out, err := exec.Command(bin, "manifest", "--write").CombinedOutput(); err != nil {
		t.Fatalf("manifest: %v\n%s", err, out)
	}
	layout, err := home.ForHome(filepath.Join(t.TempDir(), "home"))
	if err != nil {
		t.Fatal(err)
	}
	layout.PluginDir = pluginDir
	cfg := config.Default()
	cfg.HTTPAddr, cfg.AdminAddr = "127.0.0.1:0", "127.0.0.1:0"
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan app.Info, 1)
	done := make(chan error, 1)
	go func() {
		done <- app.Run(ctx, app.Options{Layout: layout, Config: cfg, Logger: slog.New(slog.DiscardHandler),
			Ready: func(i app.Info) { ready <- i }})
	}()
	a := &agentUnderTest{layout: layout}
	select {
	case a.info = <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("agent did not start: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent stop: %v", err)
		}
	})
	a.admin, err = client.Dial(context.Background(), client.WithSocket(layout.Socket), client.WithAppToken(""))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.admin.Close() })
	return a
}

// lockedBuffer is written by a command that runs until cancelled while the
// test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// transcript runs commands and writes down what each printed.
type transcript struct {
	t       *testing.T
	sock    string
	records []record
}

type record struct {
	args           []string
	app            bool
	stdout, stderr string
	err            error
}

// String is the transcript, normalized once every value to replace is known.
func (tr *transcript) String(n *normalizer) string {
	var b strings.Builder
	for _, r := range tr.records {
		who := ""
		if r.app {
			who = "(as app) "
		}
		fmt.Fprintf(&b, "$ %smedrelay %s\n", who, n.text(strings.Join(r.args, " ")))
		if slices.Contains(r.args, "--json") || slices.Contains(r.args, "jwks") {
			b.WriteString(n.json(tr.t, r.stdout))
		} else {
			b.WriteString(n.text(r.stdout))
		}
		if r.stderr != "" {
			b.WriteString("[stderr]\n" + n.text(r.stderr))
		}
		if r.err != nil {
			fmt.Fprintf(&b, "[exit %d] medrelay: %s\n", exitCode(r.err), n.text(explain(r.err)))
		}
		b.WriteString("\n")
	}
	return b.String()
}

// invocation is one run of the CLI.
type invocation struct {
	token string // --app-token ("" is an administrator)
	stdin string
	// lines, when set, runs a command that never ends by itself (watch,
	// tail) until it printed this many lines, then interrupts it.
	lines int
}

func (tr *transcript) run(args ...string) string { return tr.with(invocation{}, args...) }

func (tr *transcript) as(token string, args ...string) string {
	return tr.with(invocation{token: token}, args...)
}

// with runs the command as main would and records it; it returns the raw
// stdout.
func (tr *transcript) with(inv invocation, args ...string) string {
	tr.t.Helper()
	ctx := context.Background()
	var out, errOut lockedBuffer
	root := newRoot()
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetIn(strings.NewReader(inv.stdin))
	root.SetArgs(append(slices.Clone(args), "--socket", tr.sock, "--app-token", inv.token))
	var err error
	if inv.lines == 0 {
		err = root.ExecuteContext(ctx)
	} else {
		cctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- root.ExecuteContext(cctx) }()
		deadline := time.After(20 * time.Second)
	wait:
		for strings.Count(out.String(), "\n") < inv.lines {
			select {
			case err = <-done:
				break wait
			case <-deadline:
				cancel()
				tr.t.Fatalf("medrelay %s: not %d lines in 20s; printed:\n%s\n%s", strings.Join(args, " "), inv.lines, out.String(), errOut.String())
			case <-time.After(20 * time.Millisecond):
			}
		}
		cancel()
		if e := <-done; err == nil {
			err = e
		}
	}
	tr.records = append(tr.records, record{args: args, app: inv.token != "", stdout: out.String(), stderr: errOut.String(), err: err})
	return out.String()
}

// normalizer replaces what differs from run to run (paths, ports, ids,
// times, sizes, timings) with stable placeholders.
type normalizer struct {
	fixed [][2]string // known values, replaced first, in order
	ids   map[string]string
	kinds map[string]int
}

func (n *normalizer) add(value, placeholder string) {
	if value != "" {
		n.fixed = append(n.fixed, [2]string{value, placeholder})
	}
}

var (
	idRe = regexp.MustCompile(`\b(app|cred|conn|ses|sync|sched|wh|whsec|mrapp)_[A-Za-z0-9_-]{6,}`)
	epRe = regexp.MustCompile(`\bep-[0-9a-f]{16}\b`)
	// Page tokens hold a score and an id with a hash.
	pageRe    = regexp.MustCompile(`(--page |"next_page_token": ")[A-Za-z0-9_-]+`)
	auditIDRe = regexp.MustCompile(`\b\d{16,}-\d{12}\b`)
	// Figures of the export that follow timing or the sandbox's port.
	jsonFigRe = regexp.MustCompile(`"(rate|bytes|polls|pid|uid)": "?[0-9.e+-]+"?`)
	// The plugin SDK's version moves with the SDK, not with the CLI.
	sdkRe = regexp.MustCompile(`"sdk_version": "[^"]*"`)
	// Imported sources' ids end in a hash of their URL (the sandbox's port).
	sourceHashRe = regexp.MustCompile(`(-[a-z0-9]+)-[0-9a-f]{10}\b`)
	timeRe       = regexp.MustCompile(`\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})?`)
	clockRe      = regexp.MustCompile(`\b\d{2}:\d{2}:\d{2}\b`)
	agoRe        = regexp.MustCompile(`\b(\d+|an?) (second|minute|hour|day|week|month|year)s? (ago|from now)\b`)
	nowRe        = regexp.MustCompile(`(^|  |, |\t|expires |ends )now\b`)
	durRe        = regexp.MustCompile(`\b\d+(\.\d+)?(ns|µs|ms|s)\b`)
	sizeRe       = regexp.MustCompile(`\b\d+(\.\d+)? (B|KiB|MiB|GiB)\b`)
	rateRe       = regexp.MustCompile(`\d+ resources/s|\d+/s\b`)
	pidRe        = regexp.MustCompile(`(\b(pid|uid)( |=)|\brunning +)\d+`)
	shaRe        = regexp.MustCompile(`\b[0-9a-f]{64}\b`)
	coordRe      = regexp.MustCompile(`"(x|y)": "[A-Za-z0-9_-]+"`)
	// Off a terminal, sync watch prints a progress line per phase and
	// every few seconds: how many depends on timing.
	progressRe = regexp.MustCompile(`(?m)^(kickoff|exporting|downloading): .*\n`)
	spacesRe   = regexp.MustCompile(`  +`)
)

func (n *normalizer) text(s string) string {
	for _, f := range n.fixed {
		s = strings.ReplaceAll(s, f[0], f[1])
	}
	s = idRe.ReplaceAllStringFunc(s, func(id string) string {
		if p, ok := n.ids[id]; ok {
			return p
		}
		kind, _, _ := strings.Cut(id, "_")
		n.kinds[kind]++
		p := fmt.Sprintf("<%s%d>", kind, n.kinds[kind])
		n.ids[id] = p
		return p
	})
	s = sourceHashRe.ReplaceAllString(s, "$1-<hash>")
	s = epRe.ReplaceAllString(s, "ep-<hash>")
	s = pageRe.ReplaceAllString(s, "$1<page>")
	s = auditIDRe.ReplaceAllString(s, "<audit-id>")
	s = jsonFigRe.ReplaceAllString(s, `"$1": <n>`)
	s = sdkRe.ReplaceAllString(s, `"sdk_version": "<version>"`)
	s = timeRe.ReplaceAllString(s, "<time>")
	s = clockRe.ReplaceAllString(s, "<clock>")
	s = agoRe.ReplaceAllString(s, "<$3>")
	s = nowRe.ReplaceAllString(s, "$1<ago>")
	s = progressRe.ReplaceAllString(s, "")
	s = rateRe.ReplaceAllString(s, "<rate>")
	s = durRe.ReplaceAllString(s, "<dur>")
	s = sizeRe.ReplaceAllString(s, "<size>")
	s = pidRe.ReplaceAllString(s, "$1<n>")
	s = shaRe.ReplaceAllString(s, "<sha256>")
	s = coordRe.ReplaceAllString(s, `"$1": "<coord>"`)
	// Column widths follow the values replaced above.
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = strings.TrimRight(spacesRe.ReplaceAllString(l, "  "), " ")
	}
	return strings.Join(lines, "\n")
}

// json re-encodes each JSON value of s the same way (protojson varies its
// spacing on purpose) and says how many lines it came in, so that one
// indented document and one line per message stay different.
func (n *normalizer) json(t *testing.T, s string) string {
	t.Helper()
	if s == "" {
		return ""
	}
	var b strings.Builder
	dec := json.NewDecoder(strings.NewReader(s))
	dec.UseNumber()
	for {
		var v any
		if err := dec.Decode(&v); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("not JSON: %v\n%s", err, s)
		}
		enc := json.NewEncoder(&b)
		enc.SetEscapeHTML(false)
		enc.SetIndent("", "  ")
		if err := enc.Encode(v); err != nil {
			t.Fatal(err)
		}
	}
	fmt.Fprintf(&b, "(%d lines)\n", strings.Count(s, "\n"))
	// Text normalization, but with the indentation kept.
	lines := strings.Split(b.String(), "\n")
	for i, l := range lines {
		indent := len(l) - len(strings.TrimLeft(l, " "))
		lines[i] = l[:indent] + n.text(l[indent:])
	}
	return strings.Join(lines, "\n")
}

func TestCommandsGolden(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a plugin and runs a whole agent")
	}
	t.Setenv(client.EnvAppToken, "")
	sb := sandboxtest.Start(t, sandboxtest.WithPatients(2))
	a := startWholeAgent(t)
	ctx := context.Background()

	// The app's server: webhooks arrive at /hooks, patients come back to /back.
	hooks, back := make(chan struct{}, 16), make(chan struct{}, 16)
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		io.WriteString(w, "ok")
		if r.URL.Path == "/hooks" {
			hooks <- struct{}{}
		} else {
			back <- struct{}{}
		}
	}))
	t.Cleanup(receiver.Close)

	n := &normalizer{ids: map[string]string{}, kinds: map[string]int{}}
	n.add(a.layout.Home, "<home>")
	n.add(a.layout.PluginDir, "<plugins>")
	n.add(sb.URL(), "<sandbox>")
	n.add(a.info.PublicURL, "<public>")
	n.add(a.info.HTTPAddr, "<http>")
	n.add(a.info.AdminAddr, "<admin>")
	n.add(receiver.URL, "<receiver>")
	tr := &transcript{t: t, sock: a.layout.Socket}

	tr.run("status")
	tr.run("status", "--json")
	tr.run("plugins", "list")
	tr.run("plugins", "list", "--json")
	tr.run("plugins", "verify")
	tr.run("plugins", "verify", "--json")
	tr.run("plugins", "verify", "nope")

	// The directory: import the sandbox's brands over https... and from a file.
	resp, err := http.Get(sb.URL() + "/brands.json")
	if err != nil {
		t.Fatal(err)
	}
	brands, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	brandsFile := filepath.Join(t.TempDir(), "brands.json")
	if err := os.WriteFile(brandsFile, brands, 0o600); err != nil {
		t.Fatal(err)
	}
	n.add(brandsFile, "<brands-file>")
	n.add(filepath.Dir(brandsFile), "<brands-dir>")
	tr.run("sources", "import", sb.URL()+"/brands.json")
	tr.run("sources", "import", brandsFile, "--dry-run", "--json")
	tr.run("sources", "import", filepath.Dir(brandsFile))
	tr.run("sources", "search", "sandbox", "--limit", "4")
	tr.run("sources", "search", "Generic SMART", "--limit", "1", "--json")
	tr.run("sources", "search", "zzzzqqqq")
	found, err := a.admin.Directory.Search(ctx, &agentv1.DirectoryServiceSearchRequest{Query: "Generic SMART 2.2 Sandbox Health", PageSize: 1})
	if err != nil || len(found.GetResults()) != 1 {
		t.Fatalf("search: %v", err)
	}
	src := found.GetResults()[0].GetSource().GetId()
	n.add(src, "<src>")
	tr.run("sources", "show", src)
	tr.run("sources", "discover", src)
	tr.run("sources", "show", src, "--json")
	tr.run("sources", "discover", src, "--json")
	tr.run("sources", "show", "nope")

	// Credentials.
	tr.run("credentials", "list")
	tr.run("credentials", "set", src, "--client-id", "cli-test", "--generate-key", "ES384")
	tr.with(invocation{stdin: "s3cret\n"}, "credentials", "set", "--vendor", "epic", "--client-id", "epic-client", "--client-secret-file", "-", "--scopes", "openid fhirUser", "--json")
	tr.run("credentials", "set", src, "--vendor", "epic", "--client-id", "x")
	tr.run("credentials", "rotate", src)
	creds, err := a.admin.Credentials.ListCredentials(ctx, &agentv1.ListCredentialsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range creds.GetCredentials() {
		for i, kid := range c.GetKeyIds() {
			n.add(kid, fmt.Sprintf("<kid-%s-%d>", c.GetClientId(), i))
			n.add(kid[:12], fmt.Sprintf("<kid-%s-%d-prefix>", c.GetClientId(), i))
		}
	}
	tr.run("credentials", "list")
	tr.run("credentials", "list", "--json")
	tr.run("credentials", "jwks")
	tr.run("credentials", "rotate", "--vendor", "epic", "--json")
	tr.run("credentials", "delete", "--vendor", "epic")
	tr.run("credentials", "delete", "--vendor", "epic", "--json")
	jwks, err := a.admin.Credentials.GetJWKS(ctx, &agentv1.GetJWKSRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if err := sb.RegisterClient("generic", sandbox.ClientConfig{ClientID: "cli-test", JWKS: []byte(jwks.GetJwks())}); err != nil {
		t.Fatal(err)
	}

	// Connections: a backend one to sync, sessions for patients.
	tr.run("connect", src, "--backend")
	tr.run("connect", "--backend")
	tr.run("connect")
	tr.run("connect", src, "--patient-ref", "p1", "--return-url", "http://127.0.0.1:1/back")
	tr.run("connect", "--patient-ref", "p2", "--return-url", "http://127.0.0.1:1/back", "--recommend", src, "--json")
	conns, err := a.admin.Connections.ListConnections(ctx, &agentv1.ListConnectionsRequest{})
	if err != nil || len(conns.GetConnections()) != 1 {
		t.Fatalf("connections: %v %v", conns, err)
	}
	conn := conns.GetConnections()[0].GetId()
	tr.run("connections", "list")
	tr.run("connections", "list", "--state", "active,revoked", "--json")
	tr.run("connections", "list", "--state", "sleepy")
	tr.run("connections", "show", conn)
	tr.run("connections", "show", conn, "--json")
	tr.run("connections", "show", "conn_nope")
	tr.run("connections", "refresh", conn)
	tr.run("connections", "refresh", conn, "--json")
	tr.with(invocation{lines: 1}, "connections", "watch", conn)

	// Bulk Data.
	tr.run("sync", "start", conn, "--wait")
	syncs, err := a.admin.Sync.ListSyncs(ctx, &agentv1.ListSyncsRequest{})
	if err != nil || len(syncs.GetSyncs()) != 1 {
		t.Fatalf("syncs: %v %v", syncs, err)
	}
	syncID := syncs.GetSyncs()[0].GetId()
	tr.run("sync", "status", syncID)
	tr.run("sync", "status", syncID, "--json")
	tr.run("sync", "watch", syncID)
	tr.run("sync", "watch", syncID, "--json")
	tr.run("sync", "start", conn, "--every", "6h", "--type", "Patient", "--json")
	syncs, err = a.admin.Sync.ListSyncs(ctx, &agentv1.ListSyncsRequest{})
	if err != nil || len(syncs.GetSchedules()) != 1 {
		t.Fatalf("schedules: %v %v", syncs, err)
	}
	sched := syncs.GetSchedules()[0].GetId()
	tr.run("sync", "watch", syncs.GetSyncs()[0].GetId())
	// The schedule takes its next time just after the sync ends.
	for range 1000 {
		if syncs, err = a.admin.Sync.ListSyncs(ctx, &agentv1.ListSyncsRequest{}); err != nil {
			t.Fatal(err)
		}
		if syncs.GetSchedules()[0].GetNextAt() != nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	tr.run("sync", "list")
	tr.run("sync", "list", "--state", "completed", "--json")
	tr.run("sync", "list", "--state", "sleepy")
	tr.run("sync", "cancel", "--schedule", sched)
	tr.run("sync", "cancel", "--schedule", sched, "--json")
	tr.run("sync", "cancel")
	tr.run("sync", "status", "sync_nope")
	out := t.TempDir()
	n.add(out, "<out>")
	tr.run("sync", "export", conn, "--out", out, "--type", "Patient,Condition")
	tr.run("sync", "export", conn)
	out2 := t.TempDir()
	n.add(out2, "<out2>")
	tr.run("sync", "export", conn, "--out", out2, "--json")

	// Records: stored, and live at the source.
	tr.run("records", "list", conn, "--type", "Patient")
	tr.run("records", "get", conn, "Patient/pat-0", "--ndjson")
	tr.run("records", "search", conn, "Patient")
	tr.run("records", "search", conn, "Patient", "--json")
	tr.run("records", "search", conn, "Patient", "--ndjson", "--json")
	tr.run("records", "search", "conn_nope", "Patient")

	// Apps, and an app's webhooks.
	tr.run("apps", "create", "other")
	tr.run("apps", "revoke", "other", "--json")
	tr.run("apps", "list", "--all")
	created := tr.run("apps", "create", "demo", "--json")
	var app struct {
		App   struct{ ID string } `json:"app"`
		Token string              `json:"token"`
	}
	if err := json.Unmarshal([]byte(created), &app); err != nil {
		t.Fatal(err)
	}
	tr.run("apps", "create", "demo")
	tr.run("apps", "list")
	tr.run("apps", "list", "--json")
	tr.as(app.Token, "status")
	tr.as(app.Token, "apps", "list")

	tr.as(app.Token, "webhooks", "add", receiver.URL+"/hooks")
	tr.as(app.Token, "webhooks", "add", receiver.URL+"/hooks", "--events", "session.completed", "--description", "the test receiver")
	// Every event would include what the patient connection's background
	// pulls emit, as they come: this endpoint goes at once.
	other := tr.as(app.Token, "webhooks", "add", receiver.URL+"/other", "--all", "--json")
	var otherHook struct {
		Webhook struct{ ID string } `json:"webhook"`
	}
	if err := json.Unmarshal([]byte(other), &otherHook); err != nil {
		t.Fatal(err)
	}
	tr.as(app.Token, "webhooks", "remove", otherHook.Webhook.ID)
	// A patient connects through a session of the app (a public client at
	// the sandbox's oraclehealth tenant): session.completed is delivered.
	portal := patientSource(t, a, sb, "oraclehealth")
	n.add(portal, "<portal-src>")
	var session struct {
		Session struct{ URL string } `json:"session"`
	}
	created = tr.as(app.Token, "connect", portal, "--patient-ref", "p3", "--return-url", receiver.URL+"/back", "--json")
	if err := json.Unmarshal([]byte(created), &session); err != nil {
		t.Fatal(err)
	}
	if r, err := http.Get(session.Session.URL); err != nil {
		t.Fatal(err)
	} else {
		r.Body.Close()
	}
	for _, ch := range []chan struct{}{back, hooks} {
		select {
		case <-ch:
		case <-time.After(20 * time.Second):
			t.Fatalf("the patient did not come back or no webhook arrived in 20s; transcript:\n%s", tr.String(n))
		}
	}
	// The agent then pulls the new connection's records and says so in an
	// event of the app: wait for it, so that the event ids and the
	// endpoint's cursor below are the same on every run.
	pulled, cancelPulled := context.WithTimeout(ctx, 30*time.Second)
	defer cancelPulled()
	stream, err := a.admin.Events.Subscribe(pulled, &agentv1.SubscribeRequest{AllApps: true, FromCursor: "0",
		Types: []string{"records.pull.completed", "records.pull.failed"}})
	if err != nil {
		t.Fatal(err)
	}
	last, err := stream.Recv()
	if err != nil {
		t.Fatalf("no records.pull event: %v", err)
	}
	cancelPulled()
	// The endpoint steps over the events it does not take as its worker
	// gets to them.
	var wh *agentv1.Webhook
	for range 1000 {
		list, err := a.admin.Webhooks.ListWebhooks(ctx, &agentv1.ListWebhooksRequest{})
		if err != nil || len(list.GetWebhooks()) != 1 {
			t.Fatalf("webhooks: %v %v", list, err)
		}
		if wh = list.GetWebhooks()[0]; wh.GetDelivery().GetDelivered() == 1 && wh.GetDelivery().GetCursor() == last.GetEvent().GetId() {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	attempts, err := a.admin.Webhooks.ListWebhookAttempts(ctx, &agentv1.ListWebhookAttemptsRequest{Id: wh.GetId()})
	if err != nil || len(attempts.GetAttempts()) != 1 {
		t.Fatalf("attempts: %v %v", attempts, err)
	}
	event := attempts.GetAttempts()[0].GetEventId()
	tr.as(app.Token, "webhooks", "list")
	tr.run("webhooks", "list", "--json")
	tr.as(app.Token, "webhooks", "show", wh.GetId())
	tr.as(app.Token, "webhooks", "show", wh.GetId(), "--json")
	tr.as(app.Token, "webhooks", "events", wh.GetId())
	tr.as(app.Token, "webhooks", "events", wh.GetId(), "--event", event, "--limit", "1", "--json")
	tr.as(app.Token, "webhooks", "redeliver", event, "--endpoint", wh.GetId())
	<-hooks
	tr.as(app.Token, "webhooks", "redeliver", event, "--json")
	<-hooks
	tr.as(app.Token, "webhooks", "redeliver", "999999")
	tr.as(app.Token, "webhooks", "rotate-secret", wh.GetId())
	tr.as(app.Token, "webhooks", "rotate-secret", wh.GetId(), "--json")
	tr.as(app.Token, "webhooks", "disable", wh.GetId())
	tr.as(app.Token, "webhooks", "disable", wh.GetId(), "--json")
	tr.as(app.Token, "webhooks", "enable", wh.GetId(), "--from-now", "--from-oldest-retained")
	tr.as(app.Token, "webhooks", "enable", wh.GetId())
	tr.as(app.Token, "webhooks", "enable", wh.GetId(), "--from-now", "--json")
	tr.as(app.Token, "webhooks", "remove", wh.GetId())
	tr.as(app.Token, "webhooks", "remove", wh.GetId(), "--json")
	tr.as(app.Token, "webhooks", "show", wh.GetId())

	// Events, replayed from the start, then followed until interrupted.
	tr.with(invocation{lines: 1}, "events", "tail", "--from", "start", "--all", "--type", "session.completed")
	tr.with(invocation{lines: 1}, "events", "tail", "--from", "start", "--type", "connection.state_changed", "--json")

	// The end of the connection, the audit log, the end of the app.
	tr.run("connections", "delete", conn)
	tr.run("connections", "delete", conn, "--json")
	tr.run("connections", "refresh", conn)
	tr.run("audit", "list", "--limit", "3")
	tr.run("audit", "list", "--app", app.App.ID, "--limit", "2", "--json")
	tr.run("audit", "list", "--since", "yesterday")
	tr.run("apps", "revoke", "demo")
	tr.run("apps", "revoke", "other")
	tr.as(app.Token, "status")

	// No agent: exit status 2, after the client's startup wait (3 s). (A
	// deadline that ends a dial in the middle says so, with the same exit
	// status: TestCLIDialTimeoutSaysAgentNotReachable.)
	tr.sock = filepath.Join(t.TempDir(), "none.sock")
	n.add(tr.sock, "<no-socket>")
	tr.run("status")

	golden := filepath.Join("testdata", "commands.golden")
	got := tr.String(n)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run with -update to write it)", err)
	}
	if got != string(want) {
		gotFile := "(not written)"
		if f, err := os.CreateTemp("", "commands-*.got"); err == nil {
			_, _ = f.WriteString(got)
			f.Close()
			gotFile = f.Name()
		}
		t.Errorf("the transcript differs from %s; this run's is in %s (if the change is intended, rewrite it: "+
			"go test ./agent/cmd/medrelay -run TestCommandsGolden -update, and review the diff):\n%s", golden, gotFile, firstDiff(string(want), got))
	}
}

// patientSource gives the directory source of a sandbox tenant a public
// client registered with the agent's redirect URI, the way an
// administrator registers with a vendor.
func patientSource(t *testing.T, a *agentUnderTest, sb *sandbox.Sandbox, tenant string) string {
	t.Helper()
	ctx := context.Background()
	res, err := a.admin.Directory.Search(ctx, &agentv1.DirectoryServiceSearchRequest{Query: "sandbox health", PageSize: 200})
	if err != nil {
		t.Fatal(err)
	}
	src := ""
	for _, r := range res.GetResults() {
		if strings.TrimRight(r.GetSource().GetFhirBaseUrl(), "/") == sb.FHIRBase(tenant) {
			src = r.GetSource().GetId()
		}
	}
	if src == "" {
		t.Fatalf("no directory source for sandbox tenant %s", tenant)
	}
	clientID := "cli-test-" + tenant
	if _, err := a.admin.Credentials.SetCredential(ctx, &agentv1.SetCredentialRequest{SourceId: src, ClientId: clientID,
		AuthMethod: agentv1.ClientAuthMethod_CLIENT_AUTH_METHOD_NONE}); err != nil {
		t.Fatal(err)
	}
	if err := sb.RegisterClient(tenant, sandbox.ClientConfig{ClientID: clientID, RedirectURIs: []string{a.info.PublicURL + "/oauth/callback"}}); err != nil {
		t.Fatal(err)
	}
	return src
}

// firstDiff shows where two transcripts part, with some context.
func firstDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	for i := 0; i < len(w) || i < len(g); i++ {
		if i < len(w) && i < len(g) && w[i] == g[i] {
			continue
		}
		from := max(i-5, 0)
		var b strings.Builder
		fmt.Fprintf(&b, "line %d:\n", i+1)
		for j := from; j < i+5; j++ {
			if j < len(w) {
				fmt.Fprintf(&b, "  want %s\n", w[j])
			}
		}
		for j := from; j < i+5; j++ {
			if j < len(g) {
				fmt.Fprintf(&b, "  got  %s\n", g[j])
			}
		}
		return b.String()
	}
	return ""
}
