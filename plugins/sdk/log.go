package sdk

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	pluginv1 "github.com/medrelay/medrelay/proto/gen/medrelay/plugin/v1"
)

// logHandler sends records to the agent's Log host service once connected,
// and before that (or when the agent does not answer) writes them to stderr
// as JSON lines in go-plugin's format, which the agent also reads. Never
// stdout: that is the handshake channel.
type logHandler struct {
	level  slog.Leveler
	attrs  []slog.Attr
	groups []string
	shared *logShared
}

type logShared struct {
	mu     sync.Mutex
	stderr io.Writer
	host   atomic.Pointer[pluginv1.HostServiceClient]
	queue  chan *pluginv1.LogRequest
	once   sync.Once
}

func newLogHandler(stderr io.Writer, level slog.Leveler) *logHandler {
	return &logHandler{level: level, shared: &logShared{stderr: stderr, queue: make(chan *pluginv1.LogRequest, 256)}}
}

func (h *logHandler) setHost(c pluginv1.HostServiceClient) {
	h.shared.host.Store(&c)
	h.shared.once.Do(func() { go h.shared.forward() })
}

func (s *logShared) forward() {
	for req := range s.queue {
		c := s.host.Load()
		if c == nil {
			s.writeStderr(req)
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := (*c).Log(ctx, req)
		cancel()
		if err != nil {
			s.writeStderr(req)
		}
	}
}

func (h *logHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= h.level.Level() }

func (h *logHandler) Handle(_ context.Context, r slog.Record) error {
	req := &pluginv1.LogRequest{Level: levelProto(r.Level), Message: r.Message, Time: timestamppb.New(r.Time)}
	prefix := ""
	for _, g := range h.groups {
		prefix += g + "."
	}
	add := func(a slog.Attr) bool {
		flattenAttr(prefix, a, func(k, v string) {
			req.Attrs = append(req.Attrs, &pluginv1.LogAttr{Key: k, Value: v})
		})
		return true
	}
	for _, a := range h.attrs {
		add(a)
	}
	r.Attrs(add)
	if h.shared.host.Load() != nil {
		select {
		case h.shared.queue <- req:
			return nil
		default: // the agent is slow: do not block the plugin's work
		}
	}
	h.shared.writeStderr(req)
	return nil
}

func flattenAttr(prefix string, a slog.Attr, emit func(k, v string)) {
	v := a.Value.Resolve()
	if v.Kind() == slog.KindGroup {
		p := prefix
		if a.Key != "" {
			p += a.Key + "."
		}
		for _, ga := range v.Group() {
			flattenAttr(p, ga, emit)
		}
		return
	}
	if a.Key == "" {
		return
	}
	emit(prefix+a.Key, v.String())
}

func (h *logHandler) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	prefix := ""
	for _, g := range h.groups {
		prefix += g + "."
	}
	c.attrs = append(append([]slog.Attr(nil), h.attrs...), prefixAttrs(prefix, as)...)
	return &c
}

func prefixAttrs(prefix string, as []slog.Attr) []slog.Attr {
	if prefix == "" {
		return as
	}
	out := make([]slog.Attr, len(as))
	for i, a := range as {
		out[i] = slog.Attr{Key: prefix + a.Key, Value: a.Value}
	}
	return out
}

func (h *logHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	c := *h
	c.groups = append(append([]string(nil), h.groups...), name)
	return &c
}

func levelProto(l slog.Level) pluginv1.LogLevel {
	switch {
	case l >= slog.LevelError:
		return pluginv1.LogLevel_LOG_LEVEL_ERROR
	case l >= slog.LevelWarn:
		return pluginv1.LogLevel_LOG_LEVEL_WARN
	case l >= slog.LevelInfo:
		return pluginv1.LogLevel_LOG_LEVEL_INFO
	}
	return pluginv1.LogLevel_LOG_LEVEL_DEBUG
}

// writeStderr writes one line in go-plugin's JSON log format.
func (s *logShared) writeStderr(req *pluginv1.LogRequest) {
	m := map[string]any{
		"@level":     levelName(req.GetLevel()),
		"@message":   req.GetMessage(),
		"@timestamp": req.GetTime().AsTime().Format("2006-01-02T15:04:05.000000Z07:00"),
	}
	for _, a := range req.GetAttrs() {
		if a.GetKey() != "" && a.GetKey()[0] != '@' {
			m[a.GetKey()] = a.GetValue()
		}
	}
	b, err := json.Marshal(m)
	if err != nil {
		b = []byte(fmt.Sprintf(`{"@level":"error","@message":%q}`, req.GetMessage()))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	_, _ = s.stderr.Write(append(b, '\n'))
}

func levelName(l pluginv1.LogLevel) string {
	switch l {
	case pluginv1.LogLevel_LOG_LEVEL_ERROR:
		return "error"
	case pluginv1.LogLevel_LOG_LEVEL_WARN:
		return "warn"
	case pluginv1.LogLevel_LOG_LEVEL_DEBUG:
		return "debug"
	}
	return "info"
}
