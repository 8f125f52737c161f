package webhooks

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"testing"
	"time"

	"github.com/medrelay/medrelay/internal/events"
	"github.com/medrelay/medrelay/internal/store"
)

// timeoutsOf returns every timeout a delivery runs under, per client.
func timeoutsOf(m *Manager) map[string]time.Duration {
	out := map[string]time.Duration{"manager": m.timeout}
	for name, c := range map[string]*http.Client{"https": m.httpsClient, "http": m.httpClient} {
		out[name+" client"] = c.Timeout
		tr := c.Transport.(*http.Transport)
		out[name+" response header"] = tr.ResponseHeaderTimeout
		out[name+" TLS handshake"] = tr.TLSHandshakeTimeout
	}
	return out
}

// docs/webhooks.md: "Answer with any 2xx within 5 seconds". The default is
// read, not waited for; WithTimeout reaches every client a delivery uses.
func TestDeliveryTimeoutDefaultsTo5Seconds(t *testing.T) {
	db, err := store.Open(context.Background(), store.Options{Dir: t.TempDir(), Key: bytes.Repeat([]byte{7}, 32), GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	log := events.New(db, quiet)
	for name, d := range timeoutsOf(New(db, log, quiet)) {
		if d != 5*time.Second {
			t.Errorf("default %s timeout %v, want 5s", name, d)
		}
	}
	for name, d := range timeoutsOf(New(db, log, quiet, WithTimeout(1500*time.Millisecond))) {
		if d != 1500*time.Millisecond {
			t.Errorf("WithTimeout(1.5s): %s timeout %v", name, d)
		}
	}
}
