package pluginhost

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	pluginv1 "github.com/medrelay/medrelay/proto/gen/medrelay/plugin/v1"
)

// inCall reports whether connection id has a call in flight to p.
func (p *plugin) inCall(id string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return id != "" && p.active[id] > 0
}

// begin returns the plugin's client for one call about conn, waiting while
// the plugin is starting for the first time; a plugin that is restarting
// or failed is reported at once. done must be called when the call ends.
func (p *plugin) begin(ctx context.Context, conn string) (pluginv1.SourceServiceClient, func(), error) {
	for {
		p.mu.Lock()
		state, rpc, changed := p.state, p.rpc, p.changed
		switch {
		case state == StateRunning && rpc != nil:
			p.active[conn]++
			p.mu.Unlock()
			return rpc, func() {
				p.mu.Lock()
				if p.active[conn]--; p.active[conn] <= 0 {
					delete(p.active, conn)
				}
				p.mu.Unlock()
			}, nil
		case state == StateStarting:
			p.mu.Unlock()
			select {
			case <-changed:
				continue
			case <-ctx.Done():
				return nil, nil, fmt.Errorf("%w: plugin %s is still starting: %w", ErrUnavailable, p.name, ctx.Err())
			}
		case state == StateRestarting:
			in := time.Until(p.retryAt).Round(time.Millisecond)
			last := p.lastErr
			p.mu.Unlock()
			return nil, nil, fmt.Errorf("%w: plugin %s is restarting after a crash (next start in %s; last error: %s)", ErrUnavailable, p.name, max(in, 0), firstLine(last))
		case state == StateFailed:
			last := p.lastErr
			p.mu.Unlock()
			return nil, nil, fmt.Errorf("%w: plugin %s: %s", ErrFailed, p.name, firstLine(last))
		default:
			p.mu.Unlock()
			return nil, nil, fmt.Errorf("%w: plugin %s is %s", ErrUnavailable, p.name, state)
		}
	}
}

func (h *Host) begin(ctx context.Context, name string, conn *pluginv1.Connection) (*plugin, pluginv1.SourceServiceClient, func(), error) {
	p, err := h.plugin(name)
	if err != nil {
		return nil, nil, nil, err
	}
	rpc, done, err := p.begin(ctx, conn.GetId())
	if err != nil {
		return nil, nil, nil, err
	}
	return p, rpc, done, nil
}

// WaitRunning blocks until the plugin is running (or failed, or ctx ends).
func (h *Host) WaitRunning(ctx context.Context, name string) error {
	p, err := h.plugin(name)
	if err != nil {
		return err
	}
	for {
		p.mu.Lock()
		state, changed, last := p.state, p.changed, p.lastErr
		p.mu.Unlock()
		switch state {
		case StateRunning:
			return nil
		case StateFailed:
			return fmt.Errorf("%w: plugin %s: %s", ErrFailed, name, last)
		case StateStopped:
			return fmt.Errorf("%w: plugin %s stopped", ErrUnavailable, name)
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Describe asks the running plugin to describe itself again.
func (h *Host) Describe(ctx context.Context, name string) (*pluginv1.DescribeResponse, error) {
	p, err := h.plugin(name)
	if err != nil {
		return nil, err
	}
	return p.describe(ctx)
}

func (p *plugin) describe(ctx context.Context) (*pluginv1.DescribeResponse, error) {
	rpc, done, err := p.begin(ctx, "")
	if err != nil {
		return nil, err
	}
	defer done()
	d, err := rpc.Describe(ctx, &pluginv1.DescribeRequest{HostProtocolVersions: u32s(ProtocolVersions)})
	if err != nil {
		return nil, p.fromCall(err)
	}
	return d, nil
}

// Read reads one resource through the plugin.
func (h *Host) Read(ctx context.Context, name string, req *pluginv1.ReadRequest) (*pluginv1.Resource, error) {
	p, rpc, done, err := h.begin(ctx, name, req.GetConnection())
	if err != nil {
		return nil, err
	}
	defer done()
	resp, err := rpc.Read(ctx, req)
	if err != nil {
		return nil, p.fromCall(err)
	}
	return resp.GetResource(), nil
}

// Search streams a search's result batches to fn.
func (h *Host) Search(ctx context.Context, name string, req *pluginv1.SearchRequest, fn func(*pluginv1.SearchResponse) error) error {
	p, rpc, done, err := h.begin(ctx, name, req.GetConnection())
	if err != nil {
		return err
	}
	defer done()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := rpc.Search(ctx, req)
	if err != nil {
		return p.fromCall(err)
	}
	return recvAll(p, st, fn)
}

// Everything streams everything about a patient to fn.
func (h *Host) Everything(ctx context.Context, name string, req *pluginv1.EverythingRequest, fn func(*pluginv1.EverythingResponse) error) error {
	p, rpc, done, err := h.begin(ctx, name, req.GetConnection())
	if err != nil {
		return err
	}
	defer done()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := rpc.Everything(ctx, req)
	if err != nil {
		return p.fromCall(err)
	}
	return recvAll(p, st, fn)
}

func recvAll[T any](p *plugin, st grpc.ServerStreamingClient[T], fn func(*T) error) error {
	for {
		m, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return p.fromCall(err)
		}
		if err := fn(m); err != nil {
			return err
		}
	}
}

// BulkKickoff starts an export.
func (h *Host) BulkKickoff(ctx context.Context, name string, req *pluginv1.BulkKickoffRequest) (*pluginv1.BulkKickoffResponse, error) {
	p, rpc, done, err := h.begin(ctx, name, req.GetConnection())
	if err != nil {
		return nil, err
	}
	defer done()
	resp, err := rpc.BulkKickoff(ctx, req)
	return resp, p.fromCall(err)
}

// BulkStatus polls an export.
func (h *Host) BulkStatus(ctx context.Context, name string, req *pluginv1.BulkStatusRequest) (*pluginv1.BulkStatusResponse, error) {
	p, rpc, done, err := h.begin(ctx, name, req.GetConnection())
	if err != nil {
		return nil, err
	}
	defer done()
	resp, err := rpc.BulkStatus(ctx, req)
	return resp, p.fromCall(err)
}

// BulkCancel cancels an export.
func (h *Host) BulkCancel(ctx context.Context, name string, req *pluginv1.BulkCancelRequest) error {
	p, rpc, done, err := h.begin(ctx, name, req.GetConnection())
	if err != nil {
		return err
	}
	defer done()
	_, err = rpc.BulkCancel(ctx, req)
	return p.fromCall(err)
}

// BulkDownload writes one export file, from req.Offset, to w. It returns the
// offset reached: after an error, call again with that offset to resume.
//
// The bytes take the fastest path both sides support: a shared-memory ring
// (w is handed slices of the ring; as io.Writer requires, none is used
// after its Write returns), a raw local socket, or gRPC chunks.
func (h *Host) BulkDownload(ctx context.Context, name string, req *pluginv1.BulkDownloadRequest, w io.Writer) (int64, error) {
	start := req.GetOffset()
	next := start
	p, rpc, done, err := h.begin(ctx, name, req.GetConnection())
	if err != nil {
		return next, err
	}
	defer done()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	var sk *sink
	if sinkSupported && p.has(pluginv1.Capability_CAPABILITY_DOWNLOAD_SINK) {
		var pool *ringPool
		if ringSupported && p.has(pluginv1.Capability_CAPABILITY_DOWNLOAD_RING) {
			pool = &p.rings
		}
		if sk, err = h.openSink(w, pool); err != nil {
			p.log.Warn("no download sink; streaming over gRPC", "err", err)
			sk = nil
		} else {
			req = proto.CloneOf(req)
			req.SinkNetwork, req.SinkAddress, req.SinkToken = "unix", sk.address(), sk.token
			req.SinkRing = sk.ring != nil
			// Waits for the sink end when we give up.
			defer context.AfterFunc(ctx, sk.abort)()
		}
	}
	finish := func(abort bool) sinkResult {
		if sk == nil {
			return sinkResult{}
		}
		r := sk.finish(abort)
		if r.used {
			next = start + r.n
		}
		sk = nil
		return r
	}
	defer finish(true)

	st, err := rpc.BulkDownload(ctx, req)
	if err != nil {
		return next, p.fromCall(err)
	}
	viaSink := ""
	for {
		m, err := st.Recv()
		if errors.Is(err, io.EOF) {
			if viaSink != "" {
				p.log.Debug("bulk download", "path", viaSink, "from", start, "to", next)
				return next, nil
			}
			r := finish(false)
			if r.err != nil {
				return next, p.sinkError(r.err)
			}
			if r.used {
				return next, fmt.Errorf("%w: plugin %s wrote %d bytes to the download sink and never said where the file ends", ErrUnavailable, p.name, r.n)
			}
			p.log.Debug("bulk download", "path", "chunks", "from", start, "to", next)
			return next, nil
		}
		if err != nil {
			// The plugin ends its side of the sink before reporting an
			// error: let the bytes that arrived reach w (the caller
			// resumes after them) unless we are the ones giving up.
			r := finish(ctx.Err() != nil)
			if r.err != nil {
				var we *writeError
				if errors.Is(r.err, errRing) || errors.As(r.err, &we) {
					// The plugin only saw its connection close: our
					// reason is the real one.
					return next, p.sinkError(r.err)
				}
				if !errors.Is(r.err, net.ErrClosed) {
					p.log.Debug("download sink", "err", r.err)
				}
			}
			return next, p.fromCall(err)
		}
		if m.GetViaSink() {
			if sk == nil {
				return next, fmt.Errorf("%w: plugin %s says it used a download sink it was not offered (or used it twice)", ErrUnavailable, p.name)
			}
			sk.awaitAccept(10 * time.Second)
			// The plugin sent END before this: a ring still open after a
			// while never will end.
			sk.expectEnd(10 * time.Second)
			r := finish(false)
			if r.err != nil {
				return next, p.sinkError(r.err)
			}
			if r.unended {
				return next, fmt.Errorf("%w: plugin %s says the file ends at %d, but its download ring ended at %d without an end message (%v)", ErrUnavailable, p.name, m.GetOffset(), next, r.cause)
			}
			if next != m.GetOffset() {
				return next, fmt.Errorf("%w: plugin %s says the file ends at %d, the sink received up to %d", ErrUnavailable, p.name, m.GetOffset(), next)
			}
			viaSink = r.path
			continue
		}
		if sk != nil && !sk.chunks() {
			return next, fmt.Errorf("%w: plugin %s sent chunks and used the sink", ErrUnavailable, p.name)
		}
		if m.GetOffset() != next {
			return next, fmt.Errorf("%w: plugin %s sent bytes at offset %d, expected %d", ErrUnavailable, p.name, m.GetOffset(), next)
		}
		n, err := w.Write(m.GetData())
		next += int64(n)
		if err != nil {
			return next, err
		}
	}
}

// sinkError words a failure of the sink: the plugin breaking the ring
// protocol, our writer's own error as it gave it, or a broken connection.
func (p *plugin) sinkError(err error) error {
	var we *writeError
	switch {
	case errors.Is(err, errRing):
		return fmt.Errorf("%w: plugin %s broke the %w", ErrUnavailable, p.name, err)
	case errors.As(err, &we):
		return we.err
	}
	return fmt.Errorf("%w: plugin %s: download sink: %w", ErrUnavailable, p.name, err)
}

// has reports whether the running plugin described a capability.
func (p *plugin) has(c pluginv1.Capability) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.desc != nil && slices.Contains(p.desc.GetCapabilities(), c)
}
