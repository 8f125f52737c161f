package pluginhost

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/medrelay/medrelay/internal/errdefs"
)

// Sentinel errors of the plugin host.
var (
	ErrNoPlugin     = errdefs.Define(errdefs.NotFound, "PLUGIN_NOT_FOUND", "no such plugin")
	ErrUnavailable  = errdefs.Define(errdefs.Unavailable, "PLUGIN_UNAVAILABLE", "plugin unavailable")
	ErrFailed       = errdefs.Define(errdefs.FailedPrecondition, "PLUGIN_FAILED", "plugin failed")
	ErrChecksum     = errdefs.Define(errdefs.FailedPrecondition, "PLUGIN_CHECKSUM_MISMATCH", "plugin checksum does not match its manifest")
	ErrManifest     = errdefs.Define(errdefs.FailedPrecondition, "PLUGIN_MANIFEST_INVALID", "plugin manifest invalid")
	ErrUnsafe       = errdefs.Define(errdefs.FailedPrecondition, "PLUGIN_DIR_UNSAFE", "plugin directory or binary writable by others")
	ErrHandshake    = errdefs.Define(errdefs.FailedPrecondition, "PLUGIN_HANDSHAKE_FAILED", "plugin did not complete the handshake")
	ErrUnsupported  = errdefs.Define(errdefs.Unimplemented, "PLUGIN_CAPABILITY_MISSING", "the plugin does not support this")
	ErrNotInCall    = errdefs.Define(errdefs.PermissionDenied, "PLUGIN_TOKEN_REFUSED", "the plugin asked for a token of a connection it has no call for")
	ErrNoTokens     = errdefs.Define(errdefs.Unavailable, "TOKENS_UNAVAILABLE", "no token provider")
	ErrSourceDenied = errdefs.Define(errdefs.PermissionDenied, "SOURCE_DENIED", "the source refused the request")
	ErrSourceAuth   = errdefs.Define(errdefs.Unauthenticated, "SOURCE_UNAUTHENTICATED", "the source refused the access token")
	ErrSourceGone   = errdefs.Define(errdefs.NotFound, "SOURCE_NOT_FOUND", "not found at the source")
	ErrSourceBusy   = errdefs.Define(errdefs.ResourceExhausted, "SOURCE_RATE_LIMITED", "the source asked to slow down")
	ErrSourceDown   = errdefs.Define(errdefs.Unavailable, "SOURCE_UNAVAILABLE", "the source is unavailable")
	ErrSourceBadReq = errdefs.Define(errdefs.InvalidArgument, "SOURCE_BAD_REQUEST", "the source refused the request as invalid")
	ErrSourceOther  = errdefs.Define(errdefs.Internal, "SOURCE_ERROR", "the source call failed")
)

// pluginErrorDomain is plugins/sdk.ErrorDomain: errors a plugin reports about
// its source carry it; transport failures (a dead plugin) do not.
const pluginErrorDomain = "plugin.medrelay.dev"

// SourceError is a failure the plugin reported about its source.
type SourceError struct {
	Plugin string
	Code   codes.Code
	// Reason is the plugin's ErrorInfo reason, e.g. SOURCE_HTTP_404.
	Reason     string
	Message    string
	RetryAfter time.Duration
	kind       error
}

func (e *SourceError) Error() string {
	return fmt.Sprintf("plugin %s: %s", e.Plugin, e.Message)
}

// Unwrap exposes the sentinel (errors.Is(err, ErrSourceGone)).
func (e *SourceError) Unwrap() error { return e.kind }

// fromCall turns an error of a call to a plugin into one of ours: plugin
// verdicts about the source become *SourceError; everything else means the
// plugin itself is gone or broken.
func (p *plugin) fromCall(err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("%w: plugin %s: %v", ErrUnavailable, p.name, err)
	}
	var info *errdetails.ErrorInfo
	var retry time.Duration
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			if d.GetDomain() == pluginErrorDomain {
				info = d
			}
		case *errdetails.RetryInfo:
			retry = d.GetRetryDelay().AsDuration()
		}
	}
	switch st.Code() {
	case codes.Canceled:
		return fmt.Errorf("plugin %s: %w", p.name, context.Canceled)
	case codes.DeadlineExceeded:
		if info == nil {
			return fmt.Errorf("plugin %s: %w", p.name, context.DeadlineExceeded)
		}
	}
	if info == nil {
		switch st.Code() {
		case codes.Unavailable, codes.Internal, codes.Unknown:
			return fmt.Errorf("%w: plugin %s stopped answering (%s); it is being restarted", ErrUnavailable, p.name, st.Message())
		case codes.Unimplemented:
			return fmt.Errorf("%w: plugin %s: %s", ErrUnsupported, p.name, st.Message())
		}
	}
	se := &SourceError{Plugin: p.name, Code: st.Code(), Message: st.Message(), RetryAfter: retry}
	if info != nil {
		se.Reason = info.GetReason()
	}
	switch st.Code() {
	case codes.NotFound:
		se.kind = ErrSourceGone
	case codes.PermissionDenied:
		se.kind = ErrSourceDenied
	case codes.Unauthenticated:
		se.kind = ErrSourceAuth
	case codes.ResourceExhausted:
		se.kind = ErrSourceBusy
	case codes.Unavailable, codes.DeadlineExceeded:
		se.kind = ErrSourceDown
	case codes.InvalidArgument:
		se.kind = ErrSourceBadReq
	case codes.Unimplemented:
		se.kind = ErrUnsupported
	case codes.FailedPrecondition:
		if se.Reason == "PLUGIN_START_FAILED" {
			se.kind = ErrFailed
		} else {
			se.kind = ErrSourceOther
		}
	default:
		se.kind = ErrSourceOther
	}
	return se
}
