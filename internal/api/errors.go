package api

import (
	"context"
	"errors"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/medrelay/medrelay/internal/errdefs"
)

// ErrorDomain is the google.rpc.ErrorInfo domain of every error the agent
// returns; the reason is the domain sentinel's reason.
const ErrorDomain = "medrelay.dev"

var kindCodes = map[*errdefs.Kind]codes.Code{
	errdefs.InvalidArgument:    codes.InvalidArgument,
	errdefs.NotFound:           codes.NotFound,
	errdefs.AlreadyExists:      codes.AlreadyExists,
	errdefs.PermissionDenied:   codes.PermissionDenied,
	errdefs.Unauthenticated:    codes.Unauthenticated,
	errdefs.FailedPrecondition: codes.FailedPrecondition,
	errdefs.Unavailable:        codes.Unavailable,
	errdefs.ResourceExhausted:  codes.ResourceExhausted,
	errdefs.Aborted:            codes.Aborted,
	errdefs.OutOfRange:         codes.OutOfRange,
	errdefs.Unimplemented:      codes.Unimplemented,
	errdefs.Internal:           codes.Internal,
}

// toStatus is the one place where domain errors become gRPC statuses. An
// error that is already a status passes through; an unclassified error is
// Internal with a generic message, so nothing unexpected (a path, a token in
// a wrapped error) leaks to the caller. The full error goes to the log.
func (g *guard) toStatus(method string, err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	switch {
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, "canceled")
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, "deadline exceeded")
	}
	kind, reason, ok := errdefs.Classify(err)
	if !ok {
		g.log.Error("call failed", "method", method, "err", err)
		return status.Error(codes.Internal, "internal error (see the agent's log)")
	}
	code, ok := kindCodes[kind]
	if !ok {
		code = codes.Unknown
	}
	st := status.New(code, err.Error())
	if reason != "" {
		if d, derr := st.WithDetails(&errdetails.ErrorInfo{Reason: reason, Domain: ErrorDomain}); derr == nil {
			st = d
		}
	}
	return st.Err()
}
