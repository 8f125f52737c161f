package client

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Webhook deliveries. Every delivery is a POST whose body is one event in
// CloudEvents 1.0 structured JSON, signed in the header
//
//	Medrelay-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>[,v1=<hex>]
//
// where each v1 is HMAC-SHA256(secret, "<t>.<raw body>") with the
// endpoint's secret (the whole "whsec_…" string as key). After a rotation
// the previous secret signs too for 24 hours, so a second v1 appears and
// either secret verifies. Deliveries are at least once: deduplicate on the
// event id.
const (
	WebhookSignatureHeader = "Medrelay-Signature"
	WebhookEventIDHeader   = "Medrelay-Event-Id"
	WebhookEventTypeHeader = "Medrelay-Event-Type"
	// DefaultWebhookTolerance: refuse signatures older (or further in the
	// future) than this, so a captured delivery cannot be replayed later.
	DefaultWebhookTolerance = 5 * time.Minute
	// MaxWebhookBody is the most ReadWebhook reads of a body.
	MaxWebhookBody = 1 << 20
)

// Errors of webhook verification; test with errors.Is.
var (
	ErrWebhookSignature = errors.New("webhook signature does not match")
	ErrWebhookTimestamp = errors.New("webhook timestamp is outside the tolerance")
	ErrWebhookHeader    = errors.New("webhook signature header is missing or malformed")
)

// WebhookEvent is a delivered event: the CloudEvents attributes and the
// extension attributes medrelay sets.
type WebhookEvent struct {
	SpecVersion string    `json:"specversion"`
	ID          string    `json:"id"`
	Source      string    `json:"source"`
	Type        string    `json:"type"`
	Time        time.Time `json:"time"`
	// DataContentType is "application/json" when Data is set.
	DataContentType string `json:"datacontenttype,omitempty"`
	AppID           string `json:"appid,omitempty"`
	ConnectionID    string `json:"connectionid,omitempty"`
	SessionID       string `json:"sessionid,omitempty"`
	PatientRef      string `json:"patientref,omitempty"`
	// Data is the type-specific payload, as in the event stream.
	Data json.RawMessage `json:"data,omitempty"`
}

// WebhookOption changes how a delivery is verified.
type WebhookOption func(*webhookOpts)

type webhookOpts struct {
	tolerance time.Duration
	now       func() time.Time
}

// WithWebhookTolerance replaces DefaultWebhookTolerance.
func WithWebhookTolerance(d time.Duration) WebhookOption {
	return func(o *webhookOpts) { o.tolerance = d }
}

// WithWebhookClock replaces time.Now (tests).
func WithWebhookClock(now func() time.Time) WebhookOption {
	return func(o *webhookOpts) { o.now = now }
}

// VerifyWebhookSignature checks the Medrelay-Signature header of a delivery
// against its raw body (exactly the bytes received, before any JSON
// decoding) and the endpoint's secret.
func VerifyWebhookSignature(header string, body []byte, secret string, opts ...WebhookOption) error {
	o := webhookOpts{tolerance: DefaultWebhookTolerance, now: time.Now}
	for _, f := range opts {
		f(&o)
	}
	t, sigs, err := ParseWebhookSignature(header)
	if err != nil {
		return err
	}
	if d := o.now().Sub(time.Unix(t, 0)); d > o.tolerance || d < -o.tolerance {
		return fmt.Errorf("%w: signed %s ago, tolerance %s", ErrWebhookTimestamp, d.Round(time.Second), o.tolerance)
	}
	want := webhookMAC(secret, t, body)
	ok := false
	for _, s := range sigs {
		// Compare every candidate in constant time; don't stop early.
		if hmac.Equal(s, want) {
			ok = true
		}
	}
	if !ok {
		return ErrWebhookSignature
	}
	return nil
}

// ParseWebhookSignature splits a Medrelay-Signature header into its
// timestamp and v1 signatures. Unknown keys are ignored (future schemes).
func ParseWebhookSignature(header string) (t int64, v1 [][]byte, err error) {
	if header == "" || len(header) > 4096 {
		return 0, nil, ErrWebhookHeader
	}
	haveT := false
	for part := range strings.SplitSeq(header, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return 0, nil, fmt.Errorf("%w: %q", ErrWebhookHeader, part)
		}
		switch k {
		case "t":
			n, perr := strconv.ParseInt(v, 10, 64)
			if perr != nil || haveT || n <= 0 {
				return 0, nil, fmt.Errorf("%w: bad timestamp", ErrWebhookHeader)
			}
			t, haveT = n, true
		case "v1":
			b, derr := hex.DecodeString(v)
			if derr != nil || len(b) != sha256.Size {
				return 0, nil, fmt.Errorf("%w: bad v1 signature", ErrWebhookHeader)
			}
			v1 = append(v1, b)
		}
	}
	if !haveT || len(v1) == 0 {
		return 0, nil, fmt.Errorf("%w: needs t= and at least one v1=", ErrWebhookHeader)
	}
	return t, v1, nil
}

func webhookMAC(secret string, t int64, body []byte) []byte {
	h := hmac.New(sha256.New, []byte(secret))
	h.Write([]byte(strconv.FormatInt(t, 10)))
	h.Write([]byte{'.'})
	h.Write(body)
	return h.Sum(nil)
}

// ReadWebhook reads a delivery from an HTTP request (at most
// MaxWebhookBody bytes), verifies its signature and decodes the event. On
// error, answer 400 (a 2xx tells the agent the event was received).
//
//	func handle(w http.ResponseWriter, r *http.Request) {
//		ev, err := client.ReadWebhook(r, os.Getenv("MEDRELAY_WEBHOOK_SECRET"))
//		if err != nil {
//			http.Error(w, "bad delivery", http.StatusBadRequest)
//			return
//		}
//		// ev.ID is unique: skip it if already processed.
//		w.WriteHeader(http.StatusNoContent)
//	}
func ReadWebhook(r *http.Request, secret string, opts ...WebhookOption) (*WebhookEvent, error) {
	body, err := io.ReadAll(io.LimitReader(r.Body, MaxWebhookBody+1))
	if err != nil {
		return nil, fmt.Errorf("read webhook body: %w", err)
	}
	if len(body) > MaxWebhookBody {
		return nil, fmt.Errorf("webhook body larger than %d bytes", MaxWebhookBody)
	}
	if err := VerifyWebhookSignature(r.Header.Get(WebhookSignatureHeader), body, secret, opts...); err != nil {
		return nil, err
	}
	var ev WebhookEvent
	if err := json.Unmarshal(body, &ev); err != nil {
		return nil, fmt.Errorf("decode webhook event: %w", err)
	}
	return &ev, nil
}
