// Package service installs and runs medrelayd as an operating-system service
// (systemd, launchd, Windows SCM) through kardianos/service, with our own unit
// settings: restart on failure, plugins killed with the agent, a stop timeout
// longer than the agent's own shutdown deadline, and systemd hardening.
package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/user"
	"runtime"
	"sync"
	"time"

	"github.com/kardianos/service"
)

// Name of the service in every service manager.
const Name = "medrelayd"

// Actions accepted by Control.
var Actions = []string{"install", "uninstall", "start", "stop", "restart", "status"}

// RunFunc runs the agent until ctx ends.
type RunFunc func(ctx context.Context) error

// Options of the installed service.
type Options struct {
	// Arguments medrelayd is started with (after the executable).
	Arguments []string
	// UserName to run as; empty picks "medrelay" when that user exists
	// (the packages create it), else the service manager's default.
	UserName string
	// StopTimeout is how long the service manager waits before killing.
	StopTimeout time.Duration
}

func config(o Options) *service.Config {
	if o.StopTimeout <= 0 {
		o.StopTimeout = 15 * time.Second
	}
	userName := o.UserName
	if userName == "" && runtime.GOOS == "linux" {
		if _, err := user.Lookup("medrelay"); err == nil {
			userName = "medrelay"
		}
	}
	return &service.Config{
		Name:        Name,
		DisplayName: "medrelay agent",
		Description: "Connects on-premise healthcare apps to EHRs, payers and networks.",
		Arguments:   o.Arguments,
		UserName:    userName,
		Dependencies: []string{
			"After=network-online.target",
			"Wants=network-online.target",
		},
		Option: service.KeyValue{
			"SystemdScript":          SystemdUnit(int(o.StopTimeout.Seconds())),
			"Restart":                "on-failure",
			"LimitNOFILE":            65536,
			"OnFailure":              "restart",
			"OnFailureDelayDuration": "5s",
			"OnFailureResetPeriod":   600,
			"KeepAlive":              true,
			"RunAtLoad":              true,
		},
	}
}

// Control performs an administrative action on the installed service.
func Control(action string, o Options) (string, error) {
	s, err := service.New(program{}, config(o))
	if err != nil {
		return "", err
	}
	if action == "status" {
		st, err := s.Status()
		if errors.Is(err, service.ErrNotInstalled) {
			return "not installed", nil
		}
		if err != nil {
			return "", err
		}
		return map[service.Status]string{
			service.StatusRunning: "running",
			service.StatusStopped: "stopped",
			service.StatusUnknown: "unknown",
		}[st], nil
	}
	if err := service.Control(s, action); err != nil {
		return "", fmt.Errorf("%s %s (platform %s): %w", action, Name, s.Platform(), err)
	}
	return "done", nil
}

// Interactive reports whether we run from a terminal rather than under a
// service manager.
func Interactive() bool { return service.Interactive() }

// Run runs the agent under the service manager (or in the foreground when
// interactive), stopping it when the manager asks.
func Run(run RunFunc, log *slog.Logger, o Options) error {
	p := &runner{run: run, log: log, grace: o.StopTimeout}
	s, err := service.New(p, config(o))
	if err != nil {
		return err
	}
	if err := s.Run(); err != nil {
		return err
	}
	return p.err
}

// runner adapts the agent to kardianos's Start/Stop: Start must return at
// once, so the agent runs in a goroutine; Stop must finish within the
// manager's timeout, so it waits for the agent at most grace.
type runner struct {
	run   RunFunc
	log   *slog.Logger
	grace time.Duration

	mu     sync.Mutex
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

func (r *runner) Start(s service.Service) error {
	ctx, cancel := context.WithCancel(context.Background())
	r.mu.Lock()
	r.cancel, r.done = cancel, make(chan struct{})
	r.mu.Unlock()
	go func() {
		defer close(r.done)
		err := r.run(ctx)
		r.mu.Lock()
		r.err = err
		r.mu.Unlock()
		if err != nil && ctx.Err() == nil {
			// The agent died on its own: tell the manager so it restarts us.
			r.log.Error("agent stopped", "err", err)
			if !service.Interactive() {
				_ = s.Stop()
			}
		}
	}()
	return nil
}

func (r *runner) Stop(service.Service) error {
	r.mu.Lock()
	cancel, done := r.cancel, r.done
	r.mu.Unlock()
	if cancel == nil {
		return nil
	}
	cancel()
	grace := r.grace
	if grace <= 0 {
		grace = 15 * time.Second
	}
	select {
	case <-done:
	case <-time.After(grace):
		r.log.Error("agent did not stop in time", "grace", grace)
	}
	return nil
}

// program is a no-op used for control actions.
type program struct{}

func (program) Start(service.Service) error { return nil }
func (program) Stop(service.Service) error  { return nil }
