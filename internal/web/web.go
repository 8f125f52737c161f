// Package web owns the agent's public HTTP listener: the address browsers
// and EHRs reach (OAuth callback, patient pages, SMART launch, CDS Hooks,
// JWKS). Components add their routes with Handle before Serve.
package web

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"
)

// Server is the public HTTP listener.
type Server struct {
	mux       *http.ServeMux
	srv       *http.Server
	l         net.Listener
	publicURL string
	tls       bool
	log       *slog.Logger
}

// Options of the public listener.
type Options struct {
	Addr string
	// PublicURL as configured; empty means derived from the bound address.
	PublicURL string
	CertFile  string
	KeyFile   string
	Logger    *slog.Logger
}

// Listen binds the public listener.
func Listen(o Options) (*Server, error) {
	l, err := net.Listen("tcp", o.Addr)
	if err != nil {
		return nil, fmt.Errorf("public http listener %s: %w", o.Addr, err)
	}
	s := &Server{mux: http.NewServeMux(), l: l, log: o.Logger}
	if o.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
		if err != nil {
			l.Close()
			return nil, fmt.Errorf("public http tls: %w", err)
		}
		s.l = tls.NewListener(l, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
		s.tls = true
	}
	s.publicURL = strings.TrimRight(o.PublicURL, "/")
	if s.publicURL == "" {
		scheme := "http"
		if s.tls {
			scheme = "https"
		}
		s.publicURL = scheme + "://" + l.Addr().String()
	}
	s.mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "medrelay agent")
	})
	s.srv = &http.Server{
		Handler:           securityHeaders(s.mux),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(o.Logger.Handler(), slog.LevelWarn),
	}
	return s, nil
}

// securityHeaders applies to every public page: nothing here is meant to be
// framed, sniffed or sent elsewhere as a referrer (OAuth codes travel in URLs).
func securityHeaders(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("Referrer-Policy", "no-referrer")
		hd.Set("X-Frame-Options", "DENY")
		h.ServeHTTP(w, r)
	})
}

// Handle registers a route (Go 1.22 pattern syntax).
func (s *Server) Handle(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

// Addr is the bound address.
func (s *Server) Addr() string { return s.l.Addr().String() }

// PublicURL is the base URL browsers and EHRs use, without a trailing slash.
func (s *Server) PublicURL() string { return s.publicURL }

// Serve serves until Shutdown.
func (s *Server) Serve() error {
	if err := s.srv.Serve(s.l); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Shutdown stops accepting and waits for requests until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error { return s.srv.Shutdown(ctx) }
