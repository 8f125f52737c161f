//go:build bench

package oauth_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/medrelay/medrelay/internal/oauth"
)

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// runConcurrent calls fn n times from w workers and returns the rate and
// the process CPU per call (client and the in-process server together).
func runConcurrent(n, w int, fn func() error) (rate float64, cpuPer time.Duration, err error) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	next := 0
	c0, t0 := cpuTime(), time.Now()
	for range w {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				if next >= n || err != nil {
					mu.Unlock()
					return
				}
				next++
				mu.Unlock()
				if e := fn(); e != nil {
					mu.Lock()
					err = e
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	el := time.Since(t0)
	return float64(n) / el.Seconds(), (cpuTime() - c0) / time.Duration(n), err
}

// TestBenchRefresh measures a refresh through oauth.Client (request,
// bounded read, SMART parsing, error classification) against the same
// refresh through bare x/oauth2, both on one loopback token endpoint. The
// refresher of 100,000 connections does this about 100,000 times a day;
// the goal is that our client costs no more than 1.25× what x/oauth2 does.
func TestBenchRefresh(t *testing.T) {
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"access_token":"at-0123456789abcdef0123456789abcdef","token_type":"Bearer","expires_in":3600,`+
			`"refresh_token":"rt-0123456789abcdef0123456789abcdef","scope":"launch/patient openid fhirUser offline_access patient/*.rs","patient":"123"}`)
	}))
	defer ts.Close()
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}, Timeout: 10 * time.Second}
	c, err := oauth.New(oauth.ClientConfig{
		Endpoints: oauth.Endpoints{TokenURL: ts.URL + "/token", AuthorizeURL: ts.URL + "/authorize"},
		FHIRBase:  ts.URL + "/fhir", ClientID: "bench", RedirectURI: redirectURI, HTTPClient: hc,
	})
	if err != nil {
		t.Fatal(err)
	}
	conf := &oauth2.Config{ClientID: "bench", Endpoint: oauth2.Endpoint{TokenURL: ts.URL + "/token", AuthStyle: oauth2.AuthStyleInParams}}
	ctx := context.WithValue(context.Background(), oauth2.HTTPClient, hc)
	const n, workers = 20000, 8
	ours := func() error {
		_, err := c.Refresh(context.Background(), "rt-old", nil)
		return err
	}
	base := func() error {
		_, err := conf.TokenSource(ctx, &oauth2.Token{RefreshToken: "rt-old", Expiry: time.Now().Add(-time.Minute)}).Token()
		return err
	}
	// Warm up connections and code paths.
	_, _, _ = runConcurrent(500, workers, ours)
	_, _, _ = runConcurrent(500, workers, base)
	bRate, bCPU, err := runConcurrent(n, workers, base)
	if err != nil {
		t.Fatal(err)
	}
	oRate, oCPU, err := runConcurrent(n, workers, ours)
	if err != nil {
		t.Fatal(err)
	}
	ratio := float64(oCPU) / float64(bCPU)
	verdict := "ok"
	if ratio > 1.25 {
		verdict = "MISSED"
	}
	fmt.Printf("BENCH oauth.refresh  rate=%.0f/s cpu=%.1fµs/refresh  baseline(x/oauth2)=%.0f/s cpu=%.1fµs/refresh  cpu_ratio=%.2f  goal<=1.25  %s\n",
		oRate, float64(oCPU)/1e3, bRate, float64(bCPU)/1e3, ratio, verdict)
	fmt.Printf("BENCH oauth.refresh.day  100000 refreshes ≈ %.1f CPU-seconds (client and loopback server together)\n",
		(oCPU * 100000).Seconds())
}
