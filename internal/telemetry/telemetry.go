// Package telemetry owns the agent's metrics (Prometheus) and the admin HTTP
// listener that serves /metrics and /healthz on loopback. Other packages
// report through the small methods here and never import Prometheus.
package telemetry

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	httppprof "net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics is the agent's metric registry.
type Metrics struct {
	reg   *prometheus.Registry
	calls *prometheus.HistogramVec
}

// New creates the registry with Go runtime and process collectors.
func New(version string) *Metrics {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	build := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "medrelay_build_info", Help: "Build information; the value is always 1.",
		ConstLabels: prometheus.Labels{"version": version},
	})
	build.Set(1)
	calls := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "medrelay_api_call_duration_seconds",
		Help:    "Duration of host API calls on the local socket, by method and gRPC code.",
		Buckets: []float64{.0001, .0005, .001, .005, .01, .05, .1, .5, 1, 5, 30},
	}, []string{"method", "code"})
	reg.MustRegister(build, calls)
	return &Metrics{reg: reg, calls: calls}
}

// ObserveCall records one host API call.
func (m *Metrics) ObserveCall(method, code string, d time.Duration) {
	m.calls.WithLabelValues(method, code).Observe(d.Seconds())
}

// GaugeFunc registers a gauge whose value is read at scrape time.
func (m *Metrics) GaugeFunc(name, help string, f func() float64) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f))
}

// Health answers /healthz: nil when the agent is healthy, else why not.
type Health func(ctx context.Context) map[string]error

// AdminServer is the loopback listener for /metrics, /healthz and, with
// debug_pprof, Go's profiles under /debug/pprof/.
type AdminServer struct {
	srv *http.Server
	l   net.Listener
	log *slog.Logger
}

// ListenAdmin binds addr (port 0 picks a free port) and returns the server,
// not yet serving. With pprof it also serves Go's profiles; a CPU profile
// or trace in progress holds up Shutdown until it ends or ctx does.
func (m *Metrics) ListenAdmin(addr string, health Health, pprof bool, log *slog.Logger) (*AdminServer, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	if pprof {
		mux.HandleFunc("GET /debug/pprof/", httppprof.Index)
		mux.HandleFunc("GET /debug/pprof/profile", httppprof.Profile)
		mux.HandleFunc("GET /debug/pprof/trace", httppprof.Trace)
	}
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		checks := health(r.Context())
		out := map[string]string{}
		code := http.StatusOK
		for name, err := range checks {
			if err != nil {
				out[name] = err.Error()
				code = http.StatusServiceUnavailable
			} else {
				out[name] = "ok"
			}
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(map[string]any{"status": http.StatusText(code), "checks": out})
	})
	return &AdminServer{
		srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second},
		l:   l,
		log: log,
	}, nil
}

// Addr is the bound address.
func (a *AdminServer) Addr() string { return a.l.Addr().String() }

// Serve serves until Shutdown.
func (a *AdminServer) Serve() error {
	if err := a.srv.Serve(a.l); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Shutdown stops the server, waiting for requests until ctx ends.
func (a *AdminServer) Shutdown(ctx context.Context) error { return a.srv.Shutdown(ctx) }
