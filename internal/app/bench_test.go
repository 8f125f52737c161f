//go:build bench

package app_test

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	agentv1 "github.com/medrelay/medrelay/proto/gen/medrelay/agent/v1"
)

// bareAdmin is the baseline: grpc-go with no interceptors, no identity, no
// store, answering GetStatus from memory.
type bareAdmin struct {
	agentv1.UnimplementedAdminServiceServer
	resp *agentv1.GetStatusResponse
}

func (b *bareAdmin) GetStatus(context.Context, *agentv1.GetStatusRequest) (*agentv1.GetStatusResponse, error) {
	return b.resp, nil
}

func measure(n int, call func() error) ([]time.Duration, error) {
	d := make([]time.Duration, n)
	for i := range n {
		start := time.Now()
		if err := call(); err != nil {
			return nil, err
		}
		d[i] = time.Since(start)
	}
	slices.Sort(d)
	return d, nil
}

func pct(d []time.Duration, p float64) time.Duration { return d[int(float64(len(d)-1)*p)] }

// TestBenchGetStatus: the GetStatus round trip over the agent's socket
// (peer credentials, identity, policy, store size, metrics) beside a bare
// grpc-go server on a unix socket, in the same run. Goal: p50 ratio ≤ 1.5.
func TestBenchGetStatus(t *testing.T) {
	ctx := context.Background()
	a := startAgent(t)
	c := a.dial(t)
	real, err := c.Admin.GetStatus(ctx, &agentv1.GetStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}

	sock := filepath.Join(t.TempDir(), "bare.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	agentv1.RegisterAdminServiceServer(gs, &bareAdmin{resp: real})
	go gs.Serve(l)
	defer gs.Stop()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	bare := agentv1.NewAdminServiceClient(conn)

	const warm, n = 2000, 20000
	ours := func() error { _, err := c.Admin.GetStatus(ctx, &agentv1.GetStatusRequest{}); return err }
	base := func() error { _, err := bare.GetStatus(ctx, &agentv1.GetStatusRequest{}); return err }
	// Interleave rounds so both see the same machine load.
	var oursD, baseD []time.Duration
	for round := 0; round < 4; round++ {
		if round == 0 {
			measure(warm, ours)
			measure(warm, base)
		}
		o, err := measure(n/4, ours)
		if err != nil {
			t.Fatal(err)
		}
		b, err := measure(n/4, base)
		if err != nil {
			t.Fatal(err)
		}
		oursD, baseD = append(oursD, o...), append(baseD, b...)
	}
	slices.Sort(oursD)
	slices.Sort(baseD)
	r50 := float64(pct(oursD, .5)) / float64(pct(baseD, .5))
	r99 := float64(pct(oursD, .99)) / float64(pct(baseD, .99))
	verdict := "ok"
	if r50 > 1.5 {
		verdict = "MISSED"
	}
	fmt.Printf("BENCH agent.getstatus  calls=%d  p50=%v p99=%v  baseline(bare grpc-go, unix socket) p50=%v p99=%v  ratio p50=%.2f p99=%.2f  goal p50<=1.5  %s\n",
		n, pct(oursD, .5), pct(oursD, .99), pct(baseD, .5), pct(baseD, .99), r50, r99, verdict)
}
