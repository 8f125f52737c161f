package sdk

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"slices"
	"strconv"
	"sync"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/medrelay/medrelay/plugins/sdk/internal/bridge"
	"github.com/medrelay/medrelay/plugins/sdk/internal/goplugin"
	pluginv1 "github.com/medrelay/medrelay/proto/gen/medrelay/plugin/v1"
)

// ErrorDomain is the google.rpc.ErrorInfo domain of errors a plugin reports
// about its source; the agent tells them from transport failures by it.
const ErrorDomain = "plugin.medrelay.dev"

// chunkSize bounds one streamed message's payload (go-plugin's gRPC limit is
// 4 MiB by default; we stay well under it).
const chunkSize = 1 << 20

func init() {
	bridge.NewSourceServer = func(src, tokens any, log *slog.Logger) (pluginv1.SourceServiceServer, error) {
		s, ok := src.(Source)
		if !ok {
			return nil, fmt.Errorf("%T is not an sdk.Source", src)
		}
		ts, _ := tokens.(TokenSource)
		srv := newServer(s, log)
		srv.tokens = ts
		if err := srv.start(context.Background()); err != nil {
			return nil, err
		}
		return srv, nil
	}
}

// server adapts a Source to pluginv1.SourceService.
type server struct {
	pluginv1.UnimplementedSourceServiceServer
	src    Source
	log    *slog.Logger
	client *Client

	desc     Description
	startErr error

	broker *goplugin.Broker
	tokens TokenSource

	hostMu   sync.Mutex
	hostID   uint32
	host     pluginv1.HostServiceClient
	hostConn *grpc.ClientConn
	onHost   func(pluginv1.HostServiceClient)
}

var _ pluginv1.SourceServiceServer = (*server)(nil)

func newServer(src Source, log *slog.Logger) *server {
	return &server{src: src, log: log}
}

// start describes the Source once, catching a panic: a plugin that cannot
// start still answers, so the agent gets a readable reason instead of a
// dead process.
func (s *server) start(ctx context.Context) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic in Describe: %v\n%s", r, trimStack(debug.Stack()))
		}
		if err != nil {
			s.startErr = err
		}
	}()
	d, err := s.src.Describe(ctx)
	if err != nil {
		return fmt.Errorf("Describe: %w", err)
	}
	if d.Name == "" {
		return errors.New("Describe returned no plugin name")
	}
	s.desc = d
	s.client = NewClient(WithRateLimit(d.Profile.RateLimit), WithUserAgent("medrelay-plugin-"+d.Name+"/"+d.Version+" sdk/"+Version))
	return nil
}

func trimStack(b []byte) string {
	const max = 4 << 10
	if len(b) > max {
		b = b[:max]
	}
	return string(b)
}

func (s *server) capabilities() []Capability {
	return withTransports(s.sourceCapabilities())
}

// withTransports makes CapDownloadRing follow CapDownloadSink: the ring is
// how the SDK itself moves a download's bytes where the system allows, not
// something a Source implements.
func withTransports(caps []Capability) []Capability {
	caps = slices.DeleteFunc(slices.Clone(caps), func(c Capability) bool { return c == CapDownloadRing })
	if ringSupported && slices.Contains(caps, CapDownloadSink) {
		caps = append(caps, CapDownloadRing)
	}
	return caps
}

func (s *server) sourceCapabilities() []Capability {
	if s.desc.Capabilities != nil {
		return s.desc.Capabilities
	}
	caps := []Capability{CapSearch, CapRead}
	if _, ok := s.src.(EverythingSource); ok {
		caps = append(caps, CapEverything)
		if s.desc.Profile.Everything {
			caps = append(caps, CapEverythingOperation)
		}
	}
	if _, ok := s.src.(BulkSource); ok && s.desc.Profile.Bulk {
		caps = append(caps, CapBulkExport)
		if _, ok := s.src.(BulkCanceler); ok {
			caps = append(caps, CapBulkCancel)
		}
		caps = append(caps, CapDownloadSink)
	}
	return caps
}

// Describe answers with the description, and connects to the agent's host
// service the first time it learns its broker id.
func (s *server) Describe(ctx context.Context, req *pluginv1.DescribeRequest) (*pluginv1.DescribeResponse, error) {
	if id := req.GetHostServiceId(); id != 0 && s.broker != nil {
		if err := s.connectHost(ctx, id); err != nil {
			return nil, status.Errorf(codes.Unavailable, "connecting to the agent's host service: %v", err)
		}
	}
	if s.startErr != nil {
		return nil, withInfo(codes.FailedPrecondition, "PLUGIN_START_FAILED", "plugin failed at start: "+s.startErr.Error(), 0)
	}
	return describeProto(s.desc, s.capabilities()), nil
}

func (s *server) connectHost(ctx context.Context, id uint32) error {
	s.hostMu.Lock()
	defer s.hostMu.Unlock()
	if s.hostID == id && s.host != nil {
		return nil
	}
	conn, err := s.broker.Dial(ctx, id)
	if err != nil {
		return err
	}
	if s.hostConn != nil {
		s.hostConn.Close()
	}
	s.hostID, s.hostConn, s.host = id, conn, pluginv1.NewHostServiceClient(conn)
	if s.onHost != nil {
		s.onHost(s.host)
	}
	return nil
}

func (s *server) hostClient() pluginv1.HostServiceClient {
	s.hostMu.Lock()
	defer s.hostMu.Unlock()
	return s.host
}

// AccessToken implements TokenSource over the agent's host service.
func (s *server) AccessToken(ctx context.Context, connectionID string, rejected bool) (Token, error) {
	if s.tokens != nil {
		return s.tokens.AccessToken(ctx, connectionID, rejected)
	}
	h := s.hostClient()
	if h == nil {
		return Token{}, fmt.Errorf("%w: not connected to the agent", ErrNoToken)
	}
	resp, err := h.AccessToken(ctx, &pluginv1.AccessTokenRequest{ConnectionId: connectionID, Rejected: rejected})
	if err != nil {
		return Token{}, fmt.Errorf("%w: %w", ErrNoToken, err)
	}
	t := Token{AccessToken: resp.GetAccessToken(), TokenType: resp.GetTokenType()}
	if resp.GetExpiresAt() != nil {
		t.Expiry = resp.GetExpiresAt().AsTime()
	}
	return t, nil
}

func (s *server) call(c *pluginv1.Connection) (*Call, error) {
	if s.startErr != nil {
		return nil, withInfo(codes.FailedPrecondition, "PLUGIN_START_FAILED", "plugin failed at start: "+s.startErr.Error(), 0)
	}
	if c == nil {
		return nil, status.Error(codes.InvalidArgument, "request has no connection")
	}
	conn := Connection{ID: c.GetId(), FHIRBase: c.GetFhirBaseUrl(), PatientID: c.GetPatientId(), Settings: c.GetSettings()}
	return NewCall(conn, s, s.client, s.log.With("connection", conn.ID)), nil
}

func (s *server) Read(ctx context.Context, req *pluginv1.ReadRequest) (*pluginv1.ReadResponse, error) {
	call, err := s.call(req.GetConnection())
	if err != nil {
		return nil, err
	}
	r, err := s.src.Read(ctx, call, ReadRequest{ResourceType: req.GetResourceType(), ID: req.GetId()})
	if err != nil {
		return nil, toStatus(err)
	}
	return &pluginv1.ReadResponse{Resource: resourceProto(r)}, nil
}

func (s *server) Search(req *pluginv1.SearchRequest, stream grpc.ServerStreamingServer[pluginv1.SearchResponse]) error {
	call, err := s.call(req.GetConnection())
	if err != nil {
		return err
	}
	sr := SearchRequest{
		ResourceType: req.GetResourceType(), PageSize: int(req.GetPageSize()), MaxPages: int(req.GetMaxPages()),
		IncludeReferences: req.GetIncludeReferences(),
	}
	for _, p := range req.GetParams() {
		sr.Params = append(sr.Params, Param{Name: p.GetName(), Value: p.GetValue()})
	}
	err = s.src.Search(stream.Context(), call, sr, func(p Page) error {
		return sendBatches(p.Resources, true, func(rs []*pluginv1.Resource) error {
			return stream.Send(&pluginv1.SearchResponse{Resources: rs, Page: int32(p.Number), Total: p.Total})
		})
	})
	return toStatus(err)
}

// sendBatches sends resources in messages of at most about chunkSize bytes
// (a larger resource goes alone). always sends one message even when empty,
// so an empty page is visible.
func sendBatches(rs []Resource, always bool, send func([]*pluginv1.Resource) error) error {
	var batch []*pluginv1.Resource
	size := 0
	for _, r := range rs {
		if len(batch) > 0 && size+len(r.JSON) > chunkSize {
			if err := send(batch); err != nil {
				return err
			}
			batch, size = nil, 0
		}
		batch = append(batch, resourceProto(r))
		size += len(r.JSON) + len(r.Type) + len(r.ID) + 16
	}
	if len(batch) > 0 || always {
		return send(batch)
	}
	return nil
}

func (s *server) Everything(req *pluginv1.EverythingRequest, stream grpc.ServerStreamingServer[pluginv1.EverythingResponse]) error {
	call, err := s.call(req.GetConnection())
	if err != nil {
		return err
	}
	ev, ok := s.src.(EverythingSource)
	if !ok {
		return toStatus(fmt.Errorf("%w: Everything", ErrUnsupported))
	}
	er := EverythingRequest{PatientID: req.GetPatientId(), Types: req.GetTypes(), IncludeReferences: req.GetIncludeReferences()}
	if req.GetSince() != nil {
		er.Since = req.GetSince().AsTime()
	}
	err = ev.Everything(stream.Context(), call, er, func(rs []Resource) error {
		return sendBatches(rs, false, func(b []*pluginv1.Resource) error {
			return stream.Send(&pluginv1.EverythingResponse{Resources: b})
		})
	})
	return toStatus(err)
}

func (s *server) bulk() (BulkSource, error) {
	b, ok := s.src.(BulkSource)
	if !ok || !s.desc.Profile.Bulk {
		return nil, toStatus(fmt.Errorf("%w: Bulk Data export", ErrUnsupported))
	}
	return b, nil
}

func (s *server) BulkKickoff(ctx context.Context, req *pluginv1.BulkKickoffRequest) (*pluginv1.BulkKickoffResponse, error) {
	call, err := s.call(req.GetConnection())
	if err != nil {
		return nil, err
	}
	b, err := s.bulk()
	if err != nil {
		return nil, err
	}
	kr := BulkKickoffRequest{Level: BulkLevel(req.GetLevel()), GroupID: req.GetGroupId(), Types: req.GetTypes(),
		TypeFilters: req.GetTypeFilters(), OutputFormat: req.GetOutputFormat()}
	if req.GetSince() != nil {
		kr.Since = req.GetSince().AsTime()
	}
	u, err := b.BulkKickoff(ctx, call, kr)
	if err != nil {
		return nil, toStatus(err)
	}
	return &pluginv1.BulkKickoffResponse{StatusUrl: u}, nil
}

func (s *server) BulkStatus(ctx context.Context, req *pluginv1.BulkStatusRequest) (*pluginv1.BulkStatusResponse, error) {
	call, err := s.call(req.GetConnection())
	if err != nil {
		return nil, err
	}
	b, err := s.bulk()
	if err != nil {
		return nil, err
	}
	st, err := b.BulkStatus(ctx, call, req.GetStatusUrl())
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &pluginv1.BulkStatusResponse{State: pluginv1.BulkState(st.State), Progress: st.Progress, Error: st.Error}
	if st.RetryAfter > 0 {
		resp.RetryAfter = durationpb.New(st.RetryAfter)
	}
	if m := st.Manifest; m != nil {
		pm := &pluginv1.BulkManifest{Request: m.Request, RequiresAccessToken: m.RequiresAccessToken, Json: m.JSON}
		if !m.TransactionTime.IsZero() {
			pm.TransactionTime = timestamppb.New(m.TransactionTime)
		}
		conv := func(fs []BulkFile) []*pluginv1.BulkFile {
			var out []*pluginv1.BulkFile
			for _, f := range fs {
				out = append(out, &pluginv1.BulkFile{Type: f.Type, Url: f.URL, Count: f.Count})
			}
			return out
		}
		pm.Output, pm.Deleted, pm.Error = conv(m.Output), conv(m.Deleted), conv(m.Error)
		resp.Manifest = pm
	}
	return resp, nil
}

func (s *server) BulkCancel(ctx context.Context, req *pluginv1.BulkCancelRequest) (*pluginv1.BulkCancelResponse, error) {
	call, err := s.call(req.GetConnection())
	if err != nil {
		return nil, err
	}
	if _, err := s.bulk(); err != nil {
		return nil, err
	}
	c, ok := s.src.(BulkCanceler)
	if !ok {
		return nil, toStatus(fmt.Errorf("%w: cancelling exports", ErrUnsupported))
	}
	if err := c.BulkCancel(ctx, call, req.GetStatusUrl()); err != nil {
		return nil, toStatus(err)
	}
	return &pluginv1.BulkCancelResponse{}, nil
}

func (s *server) BulkDownload(req *pluginv1.BulkDownloadRequest, stream grpc.ServerStreamingServer[pluginv1.BulkDownloadResponse]) error {
	call, err := s.call(req.GetConnection())
	if err != nil {
		return err
	}
	b, err := s.bulk()
	if err != nil {
		return err
	}
	if req.GetOffset() < 0 {
		return status.Error(codes.InvalidArgument, "negative offset")
	}
	body, off, err := b.BulkDownload(stream.Context(), call, BulkDownloadRequest{URL: req.GetUrl(), Offset: req.GetOffset(), RequiresAccessToken: req.GetRequiresAccessToken()})
	if err != nil {
		return toStatus(err)
	}
	defer body.Close()
	if req.GetSinkAddress() != "" {
		if sink, err := dialSink(stream.Context(), req); err == nil {
			return s.sendToSink(stream, sink, body, off, req.GetSinkRing())
		} else {
			s.log.Warn("download sink unreachable; streaming over gRPC", "err", err.Error())
		}
	}
	buf := make([]byte, chunkSize)
	msg := &pluginv1.BulkDownloadResponse{}
	for {
		n, rerr := fill(body, buf)
		if n > 0 {
			msg.Data, msg.Offset = buf[:n], off
			if err := stream.Send(msg); err != nil {
				return err
			}
			off += int64(n)
		}
		// Only a clean EOF ends the file: a body cut short reads as
		// io.ErrUnexpectedEOF and must be resumed, not taken as complete.
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			if stream.Context().Err() != nil {
				return toStatus(stream.Context().Err())
			}
			return withInfo(codes.Unavailable, "SOURCE_DOWNLOAD_BROKEN", fmt.Sprintf("download broke at offset %d: %v (resume from there)", off, rerr), 0)
		}
	}
}

// fill reads into buf until it is full or the reader fails; unlike
// io.ReadFull it passes the reader's error through as it is (io.EOF for a
// clean end, io.ErrUnexpectedEOF for a body cut short).
func fill(r io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

func resourceProto(r Resource) *pluginv1.Resource {
	return &pluginv1.Resource{Type: r.Type, Id: r.ID, Json: r.JSON, SearchMode: r.SearchMode}
}

// toStatus maps a Source's error to a status the agent can act on, with an
// ErrorInfo in ErrorDomain so that it is told apart from a broken plugin.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok && !errors.Is(err, ErrNoToken) {
		return err
	}
	var ra *RetryAfterError
	var he *HTTPError
	switch {
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	case errors.As(err, &ra):
		return withInfo(codes.ResourceExhausted, "SOURCE_RETRY_AFTER", err.Error(), ra.RetryAfter)
	case errors.As(err, &he):
		return withInfo(httpCode(he.StatusCode), "SOURCE_HTTP_"+strconv.Itoa(he.StatusCode), err.Error(), he.RetryAfter)
	case errors.Is(err, ErrNoToken):
		code := codes.FailedPrecondition
		if st, ok := status.FromError(err); ok && st.Code() != codes.Unknown {
			code = st.Code()
		}
		return withInfo(code, "NO_ACCESS_TOKEN", err.Error(), 0)
	case errors.Is(err, ErrUnsupported):
		return withInfo(codes.Unimplemented, "UNSUPPORTED", err.Error(), 0)
	case errors.Is(err, ErrNotFound):
		return withInfo(codes.NotFound, "NOT_FOUND", err.Error(), 0)
	case errors.Is(err, ErrInvalid):
		return withInfo(codes.InvalidArgument, "INVALID_REQUEST", err.Error(), 0)
	case errors.Is(err, ErrBadResponse):
		return withInfo(codes.Unavailable, "SOURCE_BAD_RESPONSE", err.Error(), 0)
	}
	return withInfo(codes.Unavailable, "SOURCE_UNREACHABLE", err.Error(), 0)
}

func httpCode(s int) codes.Code {
	switch {
	case s == http.StatusBadRequest || s == http.StatusUnprocessableEntity:
		return codes.InvalidArgument
	case s == http.StatusUnauthorized:
		return codes.Unauthenticated
	case s == http.StatusForbidden:
		return codes.PermissionDenied
	case s == http.StatusNotFound || s == http.StatusGone:
		return codes.NotFound
	case s == http.StatusRequestTimeout || s == http.StatusGatewayTimeout:
		return codes.DeadlineExceeded
	case s == http.StatusConflict:
		return codes.Aborted
	case s == http.StatusPreconditionFailed:
		return codes.FailedPrecondition
	case s == http.StatusTooManyRequests:
		return codes.ResourceExhausted
	case s == http.StatusNotImplemented || s == http.StatusMethodNotAllowed:
		return codes.Unimplemented
	case s >= 500:
		return codes.Unavailable
	}
	return codes.Unknown
}

func withInfo(code codes.Code, reason, msg string, retry time.Duration) error {
	st := status.New(code, msg)
	details := []protoadapt.MessageV1{&errdetails.ErrorInfo{Reason: reason, Domain: ErrorDomain}}
	if retry > 0 {
		details = append(details, &errdetails.RetryInfo{RetryDelay: durationpb.New(retry)})
	}
	if s2, err := st.WithDetails(details...); err == nil {
		st = s2
	}
	return st.Err()
}

// dialSink connects to the agent's download socket and authenticates.
func dialSink(ctx context.Context, req *pluginv1.BulkDownloadRequest) (net.Conn, error) {
	network := req.GetSinkNetwork()
	if network != "unix" && network != "tcp" {
		return nil, fmt.Errorf("sink network %q", network)
	}
	if network == "tcp" {
		host, _, err := net.SplitHostPort(req.GetSinkAddress())
		if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
			return nil, fmt.Errorf("sink %q is not on loopback", req.GetSinkAddress())
		}
	}
	d := net.Dialer{Timeout: 5 * time.Second}
	c, err := d.DialContext(ctx, network, req.GetSinkAddress())
	if err != nil {
		return nil, err
	}
	if _, err := c.Write(req.GetSinkToken()); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// sendToSink copies the file to the sink (through the shared-memory ring
// when the agent offered one), then reports the end offset on the stream.
// If the copy breaks, the agent knows how far it got from what it
// received; the error says so.
func (s *server) sendToSink(stream grpc.ServerStreamingServer[pluginv1.BulkDownloadResponse], sink net.Conn, body io.Reader, off int64, ring bool) error {
	stop := context.AfterFunc(stream.Context(), func() { sink.Close() })
	defer stop()
	var n int64
	var err error
	if ring {
		n, err = sendToRing(sink, body, s.log)
	} else {
		if uc, ok := sink.(*net.UnixConn); ok {
			_ = uc.SetWriteBuffer(4 << 20)
		}
		n, err = copyLarge(sink, body)
	}
	if cw, ok := sink.(interface{ CloseWrite() error }); ok && err == nil {
		err = cw.CloseWrite()
	}
	sink.Close()
	if err != nil {
		if stream.Context().Err() != nil {
			return toStatus(stream.Context().Err())
		}
		return withInfo(codes.Unavailable, "SOURCE_DOWNLOAD_BROKEN", fmt.Sprintf("download broke after %d bytes: %v (resume from what arrived)", n, err), 0)
	}
	return stream.Send(&pluginv1.BulkDownloadResponse{Offset: off + n, ViaSink: true})
}

// copyLarge copies in 1 MiB reads and writes. io.Copy would hand the copy
// to the socket's ReadFrom, which moves 32 KiB at a time.
func copyLarge(dst io.Writer, src io.Reader) (int64, error) {
	buf := make([]byte, chunkSize)
	var n int64
	for {
		r, rerr := src.Read(buf)
		if r > 0 {
			w, werr := dst.Write(buf[:r])
			n += int64(w)
			if werr != nil {
				return n, werr
			}
		}
		if rerr == io.EOF {
			return n, nil
		}
		if rerr != nil {
			return n, rerr
		}
	}
}
