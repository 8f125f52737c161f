//go:build unix

package app_test

// The hosted picker in a real browser (Debian's chromium, headless): the
// patient searches the directory, chooses their provider, approves at the
// portal, and lands on the app's return URL.

import (
	"context"
	"net/url"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/medrelay/medrelay/internal/sandbox/sandboxtest"
	agentv1 "github.com/medrelay/medrelay/proto/gen/medrelay/agent/v1"
)

func browser(t *testing.T) context.Context {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		t.Skip("chromium is not installed (apt-get install chromium; .ci/run installs it)")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.Flag("headless", true),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
	)
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancel)
	ctx, cancel2 := chromedp.NewContext(actx)
	t.Cleanup(cancel2)
	ctx, cancel3 := context.WithTimeout(ctx, 90*time.Second)
	t.Cleanup(cancel3)
	return ctx
}

func TestPickerInHeadlessChromium(t *testing.T) {
	ctx := browser(t)
	f := newPatientFixture(t, sandboxtest.WithConsentPage())
	src := f.register(t, "generic")
	recommended := f.source["epic"]
	resp, err := f.app.Sessions.CreateSession(context.Background(), &agentv1.CreateSessionRequest{
		PatientRef: "p-browser", ReturnUrl: f.ret.URL + "/done", RecommendedSourceIds: []string{recommended},
	})
	if err != nil {
		t.Fatal(err)
	}
	C := func(s string) chromedp.CSS { return chromedp.CSS(s) }
	if err := chromedp.Do(ctx, chromedp.Navigate(resp.GetSession().GetUrl())); err != nil {
		t.Fatal(err)
	}
	title, _ := chromedp.Run(ctx, chromedp.Title())
	suggested, _ := chromedp.Run(ctx, chromedp.Text(C(`form[method=post] ul`)))
	// Type into the search box: the page's script asks the agent and lists
	// matches without a reload.
	resultButton := C(`#results button.src[value="` + src + `"]`)
	if err := chromedp.Do(ctx,
		chromedp.SendKeys(chromedp.ID("q"), "generic smart"),
		chromedp.WaitVisible(resultButton),
	); err != nil {
		t.Fatalf("search in the picker: %v", err)
	}
	results, _ := chromedp.Run(ctx, chromedp.Text(chromedp.ID("results")))
	if err := chromedp.Do(ctx,
		chromedp.Click(resultButton),
		// The sandbox's portal: allow.
		chromedp.WaitVisible(C(`button[value=approve]`)),
		chromedp.Click(C(`button[value=approve]`)),
	); err != nil {
		t.Fatalf("choose and approve: %v", err)
	}
	var final string
	for range 100 {
		final, _ = chromedp.Run(ctx, chromedp.Location())
		if strings.HasPrefix(final, f.ret.URL) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !strings.Contains(title, "Connect your health records") {
		t.Errorf("title %q", title)
	}
	if !strings.Contains(suggested, "Epic") {
		t.Errorf("recommended source not shown first: %q", suggested)
	}
	if !strings.Contains(strings.ToLower(results), "generic") {
		t.Errorf("search results %q", results)
	}
	u, err := url.Parse(final)
	if err != nil || !strings.HasPrefix(final, f.ret.URL+"/done") {
		t.Fatalf("landed on %s, not the return URL", final)
	}
	if u.Query().Get("success") != "true" || u.Query().Get("connection_id") == "" || u.Query().Get("patient_ref") != "p-browser" {
		t.Fatalf("return URL %s", final)
	}
	c := f.connection(t, f.app, u.Query().Get("connection_id"))
	if c.GetState() != agentv1.ConnectionState_CONNECTION_STATE_ACTIVE || c.GetSourceId() != src {
		t.Fatalf("connection %s at %s", c.GetState(), c.GetSourceId())
	}
}
