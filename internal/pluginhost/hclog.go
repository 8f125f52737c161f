package pluginhost

import (
	"context"
	"io"
	"log"
	"log/slog"

	"github.com/hashicorp/go-hclog"
)

// hclogAdapter is the one bridge from go-plugin's hclog to the agent's slog.
// go-plugin also reads each plugin's stderr through it: JSON lines (what the
// SDK writes) arrive with their level and fields; other lines (a vendor's
// stray print, a panic) arrive at debug with no fields, and are raised to
// warn here so that people see them.
type hclogAdapter struct {
	log    *slog.Logger
	name   string
	stderr string // the sub-logger name go-plugin uses for the plugin's stderr
	args   []any
	level  hclog.Level
}

var _ hclog.Logger = (*hclogAdapter)(nil)

func newHCLog(l *slog.Logger, stderrName string) *hclogAdapter {
	return &hclogAdapter{log: l, stderr: stderrName, level: hclog.Debug}
}

func (h *hclogAdapter) Log(level hclog.Level, msg string, args ...any) {
	var sl slog.Level
	switch level {
	case hclog.Trace, hclog.Debug:
		sl = slog.LevelDebug
		if h.name == h.stderr && len(args) == 0 {
			sl = slog.LevelWarn
			args = []any{"stream", "stderr"}
		}
	case hclog.Info, hclog.NoLevel, hclog.DefaultLevel:
		sl = slog.LevelInfo
	case hclog.Warn:
		sl = slog.LevelWarn
	default:
		sl = slog.LevelError
	}
	if !h.log.Enabled(context.Background(), sl) {
		return
	}
	all := append(append([]any{}, h.args...), args...)
	// hclog passes odd trailing values and hclog.Format; slog copes with
	// both (a lone value becomes !BADKEY).
	h.log.Log(context.Background(), sl, msg, all...)
}

func (h *hclogAdapter) Trace(msg string, args ...any) { h.Log(hclog.Trace, msg, args...) }
func (h *hclogAdapter) Debug(msg string, args ...any) { h.Log(hclog.Debug, msg, args...) }
func (h *hclogAdapter) Info(msg string, args ...any)  { h.Log(hclog.Info, msg, args...) }
func (h *hclogAdapter) Warn(msg string, args ...any)  { h.Log(hclog.Warn, msg, args...) }
func (h *hclogAdapter) Error(msg string, args ...any) { h.Log(hclog.Error, msg, args...) }
func (h *hclogAdapter) IsTrace() bool                 { return false }
func (h *hclogAdapter) IsDebug() bool                 { return h.log.Enabled(context.Background(), slog.LevelDebug) }
func (h *hclogAdapter) IsInfo() bool                  { return h.log.Enabled(context.Background(), slog.LevelInfo) }
func (h *hclogAdapter) IsWarn() bool                  { return true }
func (h *hclogAdapter) IsError() bool                 { return true }
func (h *hclogAdapter) ImpliedArgs() []any            { return h.args }
func (h *hclogAdapter) Name() string                  { return h.name }
func (h *hclogAdapter) SetLevel(l hclog.Level)        { h.level = l }
func (h *hclogAdapter) GetLevel() hclog.Level         { return h.level }

func (h *hclogAdapter) With(args ...any) hclog.Logger {
	c := *h
	c.args = append(append([]any{}, h.args...), args...)
	return &c
}

func (h *hclogAdapter) Named(name string) hclog.Logger {
	c := *h
	if c.name != "" {
		c.name += "." + name
	} else {
		c.name = name
	}
	return &c
}

func (h *hclogAdapter) ResetNamed(name string) hclog.Logger {
	c := *h
	c.name = name
	return &c
}

func (h *hclogAdapter) StandardLogger(*hclog.StandardLoggerOptions) *log.Logger {
	return slog.NewLogLogger(h.log.Handler(), slog.LevelInfo)
}

func (h *hclogAdapter) StandardWriter(*hclog.StandardLoggerOptions) io.Writer {
	return slog.NewLogLogger(h.log.Handler(), slog.LevelInfo).Writer()
}
