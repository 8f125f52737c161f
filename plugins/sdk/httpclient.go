package sdk

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Client is the HTTP client plugins use to reach sources. Per source (scheme
// and host) it enforces a request rate and a concurrency limit, waits out
// Retry-After on 429 and 503 (seconds or HTTP-date) up to a cap, retries
// idempotent requests after network errors and 5xx with jittered
// exponential backoff, and bounds every attempt with timeouts. A 429 pauses
// every request to that source, not just the one that got it.
type Client struct {
	hc            *http.Client
	limit         RateLimit
	maxAttempts   int
	baseBackoff   time.Duration
	maxBackoff    time.Duration
	headerTimeout time.Duration
	userAgent     string
	sleep         func(ctx context.Context, d time.Duration) error

	mu      sync.Mutex
	sources map[string]*sourceLimiter
}

// ClientOption configures NewClient.
type ClientOption func(*Client)

// WithRateLimit sets the per-source limits.
func WithRateLimit(l RateLimit) ClientOption { return func(c *Client) { c.limit = l } }

// WithHTTPClient replaces the underlying *http.Client (its Transport is
// used; its Timeout should be zero: downloads can be long).
func WithHTTPClient(hc *http.Client) ClientOption { return func(c *Client) { c.hc = hc } }

// WithRetries sets how many attempts an idempotent request gets (default 4).
func WithRetries(attempts int) ClientOption {
	return func(c *Client) { c.maxAttempts = max(attempts, 1) }
}

// WithBackoff sets the first and the longest pause between retries
// (default 250ms and 8s; each pause is drawn at random up to the bound).
func WithBackoff(base, maxWait time.Duration) ClientOption {
	return func(c *Client) { c.baseBackoff, c.maxBackoff = base, maxWait }
}

// WithUserAgent sets the User-Agent header.
func WithUserAgent(ua string) ClientOption { return func(c *Client) { c.userAgent = ua } }

// NewClient builds a Client.
func NewClient(opts ...ClientOption) *Client {
	c := &Client{
		maxAttempts:   4,
		baseBackoff:   250 * time.Millisecond,
		maxBackoff:    8 * time.Second,
		headerTimeout: 60 * time.Second,
		userAgent:     "medrelay-plugin-sdk/" + Version,
		sources:       map[string]*sourceLimiter{},
		sleep:         sleepCtx,
	}
	for _, o := range opts {
		o(c)
	}
	if c.limit.MaxRetryAfter <= 0 {
		c.limit.MaxRetryAfter = 2 * time.Minute
	}
	if c.hc == nil {
		c.hc = &http.Client{Transport: &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			TLSHandshakeTimeout:   10 * time.Second,
			ResponseHeaderTimeout: c.headerTimeout,
			IdleConnTimeout:       90 * time.Second,
			MaxIdleConnsPerHost:   16,
			ForceAttemptHTTP2:     true,
		}}
	}
	return c
}

// RateLimit is the client's per-source limit.
func (c *Client) RateLimit() RateLimit { return c.limit }

type sourceLimiter struct {
	rate *rate.Limiter
	sem  chan struct{}

	mu          sync.Mutex
	pausedUntil time.Time
}

func (c *Client) limiter(key string) *sourceLimiter {
	c.mu.Lock()
	defer c.mu.Unlock()
	if l, ok := c.sources[key]; ok {
		return l
	}
	l := &sourceLimiter{}
	if c.limit.RequestsPerSecond > 0 {
		l.rate = rate.NewLimiter(rate.Limit(c.limit.RequestsPerSecond), max(c.limit.Burst, 1))
	}
	if c.limit.MaxConcurrency > 0 {
		l.sem = make(chan struct{}, c.limit.MaxConcurrency)
	}
	c.sources[key] = l
	return l
}

func (l *sourceLimiter) pause(until time.Time) {
	l.mu.Lock()
	if until.After(l.pausedUntil) {
		l.pausedUntil = until
	}
	l.mu.Unlock()
}

type noPauseKey struct{}

// WithoutPause marks requests made with ctx as exempt from a source's
// Retry-After pause (they still honour the rate and concurrency limits).
// For requests that end work at the source rather than ask for more, such
// as cancelling an export: a user's cancel must not wait out an hour-long
// Retry-After that a status poll received.
func WithoutPause(ctx context.Context) context.Context {
	return context.WithValue(ctx, noPauseKey{}, true)
}

// acquire waits for the source's pause, rate and a concurrency slot; the
// returned release frees the slot.
func (c *Client) acquire(ctx context.Context, l *sourceLimiter) (func(), error) {
	l.mu.Lock()
	wait := time.Until(l.pausedUntil)
	l.mu.Unlock()
	if exempt, _ := ctx.Value(noPauseKey{}).(bool); exempt {
		wait = 0
	}
	if wait > 0 {
		if err := c.sleep(ctx, wait); err != nil {
			return nil, err
		}
	}
	if l.rate != nil {
		if err := l.rate.Wait(ctx); err != nil {
			return nil, err
		}
	}
	if l.sem == nil {
		return func() {}, nil
	}
	select {
	case l.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	var once sync.Once
	return func() { once.Do(func() { <-l.sem }) }, nil
}

// Idempotent reports whether a request may be sent again after a failure
// whose effect is unknown: safe methods, PUT and DELETE.
func Idempotent(req *http.Request) bool {
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodPut, http.MethodDelete, "":
		return true
	}
	return false
}

// Do sends req. The response body holds the source's concurrency slot until
// it is closed: always close it. Non-2xx responses are returned as they are
// (after retries); Check turns them into *HTTPError.
func (c *Client) Do(ctx context.Context, req *http.Request) (*http.Response, error) {
	key := req.URL.Scheme + "://" + req.URL.Host
	l := c.limiter(key)
	idem := Idempotent(req)
	if req.Header.Get("User-Agent") == "" {
		req.Header.Set("User-Agent", c.userAgent)
	}
	for attempt := 1; ; attempt++ {
		release, err := c.acquire(ctx, l)
		if err != nil {
			return nil, err
		}
		r := req.WithContext(ctx)
		if attempt > 1 && req.GetBody != nil {
			if r.Body, err = req.GetBody(); err != nil {
				release()
				return nil, err
			}
		}
		resp, err := c.hc.Do(r)
		last := attempt >= c.maxAttempts
		if err != nil {
			release()
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			canResend := idem && (req.Body == nil || req.GetBody != nil)
			if last || !canResend {
				return nil, fmt.Errorf("%s %s: %w", req.Method, redactURL(req.URL), err)
			}
			if err := c.sleep(ctx, c.backoff(attempt)); err != nil {
				return nil, err
			}
			continue
		}
		resp.Body = &releasingBody{ReadCloser: resp.Body, release: release}

		status := resp.StatusCode
		if status != http.StatusTooManyRequests && status != http.StatusServiceUnavailable && (status < 500 || !idem) {
			return resp, nil
		}
		// 429 means the request was not processed, so any method may be
		// resent; 5xx only for idempotent requests.
		after, hasAfter := ParseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
		if hasAfter && after > c.limit.MaxRetryAfter {
			herr := readHTTPError(resp)
			herr.RetryAfter = after
			l.pause(time.Now().Add(after))
			return nil, &RetryAfterError{RetryAfter: after, Err: herr}
		}
		canResend := (status == http.StatusTooManyRequests || idem) && (req.Body == nil || req.GetBody != nil)
		if last || !canResend {
			return resp, nil
		}
		drain(resp)
		wait := c.backoff(attempt)
		if hasAfter {
			wait = after
			l.pause(time.Now().Add(after))
		}
		if err := c.sleep(ctx, wait); err != nil {
			return nil, err
		}
	}
}

// backoff is "full jitter": a random pause up to base*2^(attempt-1), capped.
func (c *Client) backoff(attempt int) time.Duration {
	bound := c.baseBackoff << min(attempt-1, 20)
	if bound > c.maxBackoff || bound <= 0 {
		bound = c.maxBackoff
	}
	if bound <= 0 {
		return 0
	}
	return time.Duration(rand.Int64N(int64(bound)) + 1)
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

type releasingBody struct {
	io.ReadCloser
	release func()
}

func (b *releasingBody) Close() error {
	err := b.ReadCloser.Close()
	b.release()
	return err
}

// ParseRetryAfter reads a Retry-After value: delay-seconds or an HTTP-date
// (RFC 9110 §10.2.3). A date in the past is zero. ok is false when the
// header is absent or unreadable.
func ParseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs < 0 {
			return 0, false
		}
		// Beyond ~290 years Duration overflows; nobody means that.
		if secs > int64(100*365*24*time.Hour/time.Second) {
			secs = int64(100 * 365 * 24 * time.Hour / time.Second)
		}
		return time.Duration(secs) * time.Second, true
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	return max(t.Sub(now), 0), true
}

// Check returns nil for a 2xx response and otherwise closes the body and
// returns an *HTTPError with the OperationOutcome's diagnostics.
func Check(resp *http.Response) error {
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return nil
	}
	return readHTTPError(resp)
}

func readHTTPError(resp *http.Response) *HTTPError {
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	e := &HTTPError{StatusCode: resp.StatusCode, Diagnostics: Diagnostics(body)}
	if resp.Request != nil {
		e.Method = resp.Request.Method
		e.URL = redactURL(resp.Request.URL)
	}
	if d, ok := ParseRetryAfter(resp.Header.Get("Retry-After"), time.Now()); ok {
		e.RetryAfter = d
	}
	return e
}

// IsRetryAfter reports whether err asks the caller to come back later, and
// when.
func IsRetryAfter(err error) (time.Duration, bool) {
	var ra *RetryAfterError
	if errors.As(err, &ra) {
		return ra.RetryAfter, true
	}
	return 0, false
}
