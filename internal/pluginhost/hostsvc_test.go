package pluginhost

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/medrelay/medrelay/internal/errdefs"
)

// The token provider's errors reach the plugin as gRPC codes by their
// errdefs kind; the first domain error in the chain decides, every time.
func TestHostStatusCodes(t *testing.T) {
	revoked := errdefs.Define(errdefs.FailedPrecondition, "TEST_REVOKED", "connection revoked")
	denied := errdefs.Define(errdefs.PermissionDenied, "TEST_DENIED", "denied")
	for _, c := range []struct {
		err  error
		want codes.Code
	}{
		{fmt.Errorf("token for c1: %w", revoked), codes.FailedPrecondition},
		{fmt.Errorf("%w (while %w)", revoked, denied), codes.FailedPrecondition},
		{fmt.Errorf("%w", ErrNotInCall), codes.PermissionDenied},
		{errdefs.Define(errdefs.AlreadyExists, "TEST_EXISTS", "exists"), codes.Unavailable},
		{errors.New("store closed"), codes.Unavailable},
		{fmt.Errorf("refresh: %w", context.DeadlineExceeded), codes.DeadlineExceeded},
	} {
		for range 20 { // map order once made a chain with two kinds answer either
			if got := status.Code(hostStatus(c.err)); got != c.want {
				t.Fatalf("hostStatus(%v) = %v, want %v", c.err, got, c.want)
			}
		}
	}
}
