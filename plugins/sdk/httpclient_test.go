package sdk

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func fastClient(opts ...ClientOption) *Client {
	return NewClient(append([]ClientOption{WithBackoff(time.Millisecond, 5*time.Millisecond)}, opts...)...)
}

func get(t *testing.T, c *Client, url string) (*http.Response, error) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	return c.Do(context.Background(), req)
}

func TestRetryAfterBothForms(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status int
		header func() string
	}{
		{"429 seconds", http.StatusTooManyRequests, func() string { return "1" }},
		// HTTP-dates have whole seconds: two ahead is at least one.
		{"503 http-date", http.StatusServiceUnavailable, func() string { return time.Now().Add(2 * time.Second).UTC().Format(http.TimeFormat) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var n atomic.Int32
			var firstRetry time.Time
			var refused time.Time
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if n.Add(1) == 1 {
					refused = time.Now()
					w.Header().Set("Retry-After", tc.header())
					w.WriteHeader(tc.status)
					return
				}
				firstRetry = time.Now()
				io.WriteString(w, "ok")
			}))
			defer srv.Close()
			resp, err := get(t, fastClient(), srv.URL)
			if err != nil || resp.StatusCode != 200 {
				t.Fatalf("resp %v err %v", resp, err)
			}
			resp.Body.Close()
			if n.Load() != 2 {
				t.Fatalf("attempts %d", n.Load())
			}
			// The retry waited for the server, not for our (millisecond)
			// backoff: an ordering check, not a timing assertion.
			if !firstRetry.After(refused.Add(100 * time.Millisecond)) {
				t.Fatalf("retried %v after the refusal; Retry-After ignored", firstRetry.Sub(refused))
			}
		})
	}
}

func TestRetryAfterBeyondCapFailsWithRetryAfterError(t *testing.T) {
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		w.Header().Set("Retry-After", "7200")
		w.WriteHeader(http.StatusTooManyRequests)
		io.WriteString(w, `{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"throttled","diagnostics":"export quota"}]}`)
	}))
	defer srv.Close()
	_, err := get(t, fastClient(WithRateLimit(RateLimit{MaxRetryAfter: time.Minute})), srv.URL+"/x?patient=secret")
	d, ok := IsRetryAfter(err)
	if !ok || d != 2*time.Hour || n.Load() != 1 {
		t.Fatalf("err %v, after %v, attempts %d", err, d, n.Load())
	}
	if !strings.Contains(err.Error(), "export quota") || strings.Contains(err.Error(), "secret") {
		t.Fatalf("error text %q (wants the diagnostics, never the query)", err)
	}
}

// A Retry-After beyond the cap pauses the source for everyone, except
// requests marked WithoutPause (a cancel).
func TestRetryAfterPauseSparesCancels(t *testing.T) {
	var deletes atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodDelete {
			deletes.Add(1)
			w.WriteHeader(http.StatusAccepted)
			return
		}
		w.Header().Set("Retry-After", "7200")
		w.WriteHeader(http.StatusTooManyRequests)
	}))
	defer srv.Close()
	c := fastClient(WithRateLimit(RateLimit{MaxRetryAfter: time.Minute}))
	if _, err := get(t, c, srv.URL+"/status"); err == nil {
		t.Fatal("want the Retry-After error")
	}
	// Held: an ordinary request waits out the pause (here: its deadline).
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/status", nil)
	if _, err := c.Do(ctx, req); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a request during the pause: %v", err)
	}
	// Exempt: the cancel goes out at once.
	del, _ := http.NewRequest(http.MethodDelete, srv.URL+"/status", nil)
	resp, err := c.Do(WithoutPause(context.Background()), del)
	if err != nil || resp.StatusCode != http.StatusAccepted || deletes.Load() != 1 {
		t.Fatalf("cancel during the pause: %v %v (%d deletes)", resp, err, deletes.Load())
	}
	resp.Body.Close()
}

func TestOnlyIdempotentRequestsAreRetriedAfter5xx(t *testing.T) {
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		w.WriteHeader(http.StatusBadGateway)
	}))
	defer srv.Close()
	c := fastClient(WithRetries(3))
	resp, err := get(t, c, srv.URL)
	if err != nil || resp.StatusCode != http.StatusBadGateway || n.Load() != 3 {
		t.Fatalf("GET: %v %v attempts %d", resp, err, n.Load())
	}
	n.Store(0)
	req, _ := http.NewRequest(http.MethodPost, srv.URL, strings.NewReader("x"))
	resp, err = c.Do(context.Background(), req)
	if err != nil || resp.StatusCode != http.StatusBadGateway || n.Load() != 1 {
		t.Fatalf("POST: %v %v attempts %d", resp, err, n.Load())
	}
}

func TestPostIsRetriedAfter429(t *testing.T) {
	var n atomic.Int32
	var bodies []string
	var mu sync.Mutex
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		bodies = append(bodies, string(b))
		mu.Unlock()
		if n.Add(1) == 1 {
			w.Header().Set("Retry-After", "0")
			w.WriteHeader(http.StatusTooManyRequests)
		}
	}))
	defer srv.Close()
	req, _ := http.NewRequest(http.MethodPost, srv.URL, strings.NewReader("payload"))
	resp, err := fastClient().Do(context.Background(), req)
	if err != nil || resp.StatusCode != 200 || n.Load() != 2 || bodies[1] != "payload" {
		t.Fatalf("%v %v %d %q", resp, err, n.Load(), bodies)
	}
}

func TestConcurrencyLimitPerSource(t *testing.T) {
	var inFlight, peak atomic.Int32
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cur := inFlight.Add(1)
		for {
			p := peak.Load()
			if cur <= p || peak.CompareAndSwap(p, cur) {
				break
			}
		}
		<-release
		inFlight.Add(-1)
	}))
	defer srv.Close()
	c := fastClient(WithRateLimit(RateLimit{MaxConcurrency: 2}))
	var wg sync.WaitGroup
	for range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := get(t, c, srv.URL)
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}()
	}
	// Let the first two in, then release everyone one by one.
	for inFlight.Load() < 2 {
		time.Sleep(time.Millisecond)
	}
	close(release)
	wg.Wait()
	if peak.Load() != 2 {
		t.Fatalf("peak concurrency %d, limit 2", peak.Load())
	}
}

type countingTokens struct {
	mu       sync.Mutex
	rejected int
	tok      string
}

func (c *countingTokens) AccessToken(_ context.Context, _ string, rejected bool) (Token, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if rejected {
		c.rejected++
		c.tok = "fresh"
	}
	return Token{AccessToken: c.tok}, nil
}

func TestCallRetriesOnceWithAFreshTokenAfter401(t *testing.T) {
	var seen []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen = append(seen, r.Header.Get("Authorization"))
		if r.Header.Get("Authorization") != "Bearer fresh" {
			w.WriteHeader(http.StatusUnauthorized)
		}
	}))
	defer srv.Close()
	toks := &countingTokens{tok: "stale"}
	call := NewCall(Connection{ID: "c"}, toks, fastClient(), nil)
	req, _ := http.NewRequest(http.MethodGet, srv.URL, nil)
	resp, err := call.Do(context.Background(), req)
	if err != nil || resp.StatusCode != 200 || toks.rejected != 1 || len(seen) != 2 || seen[0] != "Bearer stale" {
		t.Fatalf("%v %v rejected=%d seen=%v", resp, err, toks.rejected, seen)
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for in, want := range map[string]time.Duration{
		"120": 2 * time.Minute, " 0 ": 0, now.Add(90 * time.Second).Format(http.TimeFormat): 90 * time.Second,
		now.Add(-time.Hour).Format(http.TimeFormat): 0,
	} {
		if got, ok := ParseRetryAfter(in, now); !ok || got != want {
			t.Errorf("ParseRetryAfter(%q) = %v %v, want %v", in, got, ok, want)
		}
	}
	for _, in := range []string{"", "-1", "soon", "1.5"} {
		if _, ok := ParseRetryAfter(in, now); ok {
			t.Errorf("ParseRetryAfter(%q) accepted", in)
		}
	}
}

func TestContextCancelStopsWaiting(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "60")
		w.WriteHeader(http.StatusTooManyRequests)
	}))
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequest(http.MethodGet, srv.URL, nil)
	go func() { time.Sleep(50 * time.Millisecond); cancel() }()
	_, err := fastClient().Do(ctx, req)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v", err)
	}
}
