package telemetry

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
)

// The admin listener serves Go's profiles only when asked to
// (debug_pprof in medrelay.toml).
func TestAdminServesPprofOnlyWhenEnabled(t *testing.T) {
	health := func(context.Context) map[string]error { return nil }
	for _, on := range []bool{false, true} {
		srv, err := New("test").ListenAdmin("127.0.0.1:0", health, on, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		go srv.Serve()
		get := func(path string) (int, string) {
			resp, err := http.Get("http://" + srv.Addr() + path)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			return resp.StatusCode, string(b)
		}
		code, body := get("/debug/pprof/heap?debug=1")
		switch {
		case on && (code != http.StatusOK || !strings.Contains(body, "heap profile")):
			t.Errorf("pprof on: heap profile answered %d %.80q", code, body)
		case !on && code != http.StatusNotFound:
			t.Errorf("pprof off: heap profile answered %d", code)
		}
		if code, _ := get("/metrics"); code != http.StatusOK {
			t.Errorf("pprof %v: /metrics answered %d", on, code)
		}
		srv.Shutdown(context.Background())
	}
}
