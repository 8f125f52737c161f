// Package errdefs defines the kinds of error the agent reports to its
// callers. Domain packages declare their sentinel errors with Define, naming a
// kind and a machine-readable reason; internal/api maps kinds to gRPC codes in
// one place and sends the reason as google.rpc.ErrorInfo, so an app can
// branch on "APP_NAME_TAKEN" rather than parse English.
package errdefs

import "errors"

// Kind is a class of failure; each maps to one gRPC code.
type Kind struct{ name string }

func (k *Kind) Error() string { return k.name }

// The kinds. Compare with errors.Is(err, errdefs.NotFound).
var (
	InvalidArgument    = &Kind{"invalid argument"}
	NotFound           = &Kind{"not found"}
	AlreadyExists      = &Kind{"already exists"}
	PermissionDenied   = &Kind{"permission denied"}
	Unauthenticated    = &Kind{"unauthenticated"}
	FailedPrecondition = &Kind{"failed precondition"}
	Unavailable        = &Kind{"unavailable"}
	ResourceExhausted  = &Kind{"resource exhausted"}
	Aborted            = &Kind{"aborted"}
	OutOfRange         = &Kind{"out of range"}
	Unimplemented      = &Kind{"unimplemented"}
	Internal           = &Kind{"internal"}
)

// Error is a domain sentinel: a kind, a reason and a message.
type Error struct {
	kind   *Kind
	reason string
	msg    string
}

// Define declares a sentinel error. Reason is UPPER_SNAKE and stable: apps
// depend on it.
func Define(kind *Kind, reason, msg string) *Error {
	return &Error{kind: kind, reason: reason, msg: msg}
}

func (e *Error) Error() string { return e.msg }

// Is makes errors.Is(err, errdefs.NotFound) true for every sentinel of that kind.
func (e *Error) Is(target error) bool { return target == e.kind }

// Kind of e.
func (e *Error) Kind() *Kind { return e.kind }

// Reason of e.
func (e *Error) Reason() string { return e.reason }

// Classify finds the domain error in err's chain: its kind and reason. An
// error with no domain sentinel but a bare Kind gets an empty reason.
func Classify(err error) (kind *Kind, reason string, ok bool) {
	var de *Error
	if errors.As(err, &de) {
		return de.kind, de.reason, true
	}
	var k *Kind
	if errors.As(err, &k) {
		return k, "", true
	}
	return nil, "", false
}
