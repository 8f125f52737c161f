package client_test

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/medrelay/medrelay/agent/client"
)

// sign is an independent implementation of the documented scheme.
func sign(secret string, t int64, body []byte) string {
	h := hmac.New(sha256.New, []byte(secret))
	fmt.Fprintf(h, "%d.%s", t, body)
	return hex.EncodeToString(h.Sum(nil))
}

const (
	secret    = "whsec_current-secret-for-tests"
	oldSecret = "whsec_previous-secret-for-tests"
)

func TestVerifyWebhookSignature(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	clock := client.WithWebhookClock(func() time.Time { return now })
	body := []byte(`{"specversion":"1.0","id":"42","type":"connection.state_changed"}`)
	ts := now.Add(-30 * time.Second).Unix()
	good := fmt.Sprintf("t=%d,v1=%s", ts, sign(secret, ts, body))

	if err := client.VerifyWebhookSignature(good, body, secret, clock); err != nil {
		t.Fatalf("good signature refused: %v", err)
	}
	tampered := bytes.Replace(body, []byte("42"), []byte("43"), 1)
	if err := client.VerifyWebhookSignature(good, tampered, secret, clock); !errors.Is(err, client.ErrWebhookSignature) {
		t.Fatalf("tampered body: %v", err)
	}
	if err := client.VerifyWebhookSignature(good, body, "whsec_someone-else", clock); !errors.Is(err, client.ErrWebhookSignature) {
		t.Fatalf("wrong secret: %v", err)
	}
	// The timestamp is part of what is signed: changing it breaks the MAC.
	shifted := strings.Replace(good, fmt.Sprint(ts), fmt.Sprint(ts+1), 1)
	if err := client.VerifyWebhookSignature(shifted, body, secret, clock); !errors.Is(err, client.ErrWebhookSignature) {
		t.Fatalf("changed timestamp: %v", err)
	}

	// Older than five minutes: refused even though correctly signed.
	old := now.Add(-6 * time.Minute).Unix()
	if err := client.VerifyWebhookSignature(fmt.Sprintf("t=%d,v1=%s", old, sign(secret, old, body)), body, secret, clock); !errors.Is(err, client.ErrWebhookTimestamp) {
		t.Fatalf("old timestamp: %v", err)
	}
	future := now.Add(6 * time.Minute).Unix()
	if err := client.VerifyWebhookSignature(fmt.Sprintf("t=%d,v1=%s", future, sign(secret, future, body)), body, secret, clock); !errors.Is(err, client.ErrWebhookTimestamp) {
		t.Fatalf("future timestamp: %v", err)
	}
	if err := client.VerifyWebhookSignature(fmt.Sprintf("t=%d,v1=%s", old, sign(secret, old, body)), body, secret, clock, client.WithWebhookTolerance(10*time.Minute)); err != nil {
		t.Fatalf("old timestamp within a wider tolerance: %v", err)
	}

	// During a rotation both secrets sign; a receiver holding either passes.
	rotated := fmt.Sprintf("t=%d,v1=%s,v1=%s", ts, sign(secret, ts, body), sign(oldSecret, ts, body))
	for _, s := range []string{secret, oldSecret} {
		if err := client.VerifyWebhookSignature(rotated, body, s, clock); err != nil {
			t.Fatalf("rotated header with %s: %v", s, err)
		}
	}

	for _, h := range []string{"", "t=abc,v1=00", fmt.Sprintf("v1=%s", sign(secret, ts, body)), fmt.Sprintf("t=%d", ts), fmt.Sprintf("t=%d,v1=zz", ts), "garbage"} {
		if err := client.VerifyWebhookSignature(h, body, secret, clock); !errors.Is(err, client.ErrWebhookHeader) {
			t.Errorf("header %q: %v, want ErrWebhookHeader", h, err)
		}
	}
	// Unknown schemes are ignored, so a future v2 does not break receivers.
	withV2 := fmt.Sprintf("t=%d,v2=abc,v1=%s", ts, sign(secret, ts, body))
	if err := client.VerifyWebhookSignature(withV2, body, secret, clock); err != nil {
		t.Fatalf("header with an unknown scheme: %v", err)
	}
}

func TestReadWebhook(t *testing.T) {
	now := time.Now()
	body := []byte(`{"specversion":"1.0","id":"7","source":"medrelay","type":"session.completed","time":"2026-11-23T10:00:00Z","appid":"app1","sessionid":"s1","datacontenttype":"application/json","data":{"ok":true}}`)
	r := httptest.NewRequest("POST", "/hook", bytes.NewReader(body))
	r.Header.Set(client.WebhookSignatureHeader, fmt.Sprintf("t=%d,v1=%s", now.Unix(), sign(secret, now.Unix(), body)))
	ev, err := client.ReadWebhook(r, secret)
	if err != nil {
		t.Fatal(err)
	}
	if ev.ID != "7" || ev.Type != "session.completed" || ev.SessionID != "s1" || ev.AppID != "app1" || string(ev.Data) != `{"ok":true}` {
		t.Fatalf("decoded %+v", ev)
	}
	r = httptest.NewRequest("POST", "/hook", bytes.NewReader(body))
	if _, err := client.ReadWebhook(r, secret); !errors.Is(err, client.ErrWebhookHeader) {
		t.Fatalf("unsigned request: %v", err)
	}
}

func FuzzParseWebhookSignature(f *testing.F) {
	f.Add("t=1800000000,v1=" + strings.Repeat("ab", 32))
	f.Add("t=1800000000,v1=" + strings.Repeat("ab", 32) + ",v1=" + strings.Repeat("cd", 32))
	f.Add("t=,v1=")
	f.Add("t=1,t=2,v1=00")
	f.Add(",,,")
	f.Add("v2=xyz,t=99")
	f.Fuzz(func(t *testing.T, h string) {
		ts, sigs, err := client.ParseWebhookSignature(h)
		if err != nil {
			if !errors.Is(err, client.ErrWebhookHeader) {
				t.Fatalf("error not ErrWebhookHeader: %v", err)
			}
			return
		}
		if ts <= 0 || len(sigs) == 0 {
			t.Fatalf("accepted %q with t=%d and %d signatures", h, ts, len(sigs))
		}
		for _, s := range sigs {
			if len(s) != sha256.Size {
				t.Fatalf("signature of %d bytes", len(s))
			}
		}
		// Verification of anything parseable must not panic.
		_ = client.VerifyWebhookSignature(h, []byte("{}"), secret)
	})
}
