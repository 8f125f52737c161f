//go:build bench

package credentials_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"syscall"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/medrelay/medrelay/internal/credentials"
)

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestBenchAssertions measures signing client assertions through the
// credential store (active-key lookup in the encrypted store, fresh jti,
// claims, JWS) against bare go-jose signing the same claims with a key in
// memory. Backend and private_key_jwt patient connections sign one per
// token request; the goal is at least 0.8× the bare rate, measured as CPU
// per signature.
func TestBenchAssertions(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	for _, alg := range []string{"ES384", "RS384"} {
		c := f.set(t, credentials.Input{Vendor: "bench-" + alg, ClientID: "bench", GenerateKey: alg})
		_, auth, err := f.creds.ByID(ctx, c.ID)
		if err != nil {
			t.Fatal(err)
		}
		var priv crypto.Signer
		if alg == "ES384" {
			priv, _ = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
		} else {
			priv, _ = rsa.GenerateKey(rand.Reader, 3072)
		}
		bare, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.SignatureAlgorithm(alg), Key: jose.JSONWebKey{Key: priv, KeyID: "k"}},
			(&jose.SignerOptions{}).WithType("JWT"))
		if err != nil {
			t.Fatal(err)
		}
		n := 3000
		if alg == "RS384" {
			n = 600
		}
		measure := func(fn func() error) (float64, time.Duration) {
			for range 20 {
				if err := fn(); err != nil {
					t.Fatal(err)
				}
			}
			c0, t0 := cpuTime(), time.Now()
			for range n {
				if err := fn(); err != nil {
					t.Fatal(err)
				}
			}
			return float64(n) / time.Since(t0).Seconds(), (cpuTime() - c0) / time.Duration(n)
		}
		bRate, bCPU := measure(func() error {
			b := make([]byte, 18)
			_, _ = rand.Read(b)
			now := time.Now()
			payload, _ := json.Marshal(map[string]any{"iss": "bench", "sub": "bench", "aud": "https://x/token",
				"exp": now.Add(4 * time.Minute).Unix(), "iat": now.Unix(), "jti": fmt.Sprintf("%x", b)})
			obj, err := bare.Sign(payload)
			if err != nil {
				return err
			}
			_, err = obj.CompactSerialize()
			return err
		})
		oRate, oCPU := measure(func() error {
			_, err := auth.Signer.SignAssertion(ctx, "https://x/token")
			return err
		})
		// CPU per signature, not wall-clock rate: the machine is shared.
		ratio := float64(bCPU) / float64(oCPU)
		verdict := "ok"
		if ratio < 0.8 {
			verdict = "MISSED"
		}
		fmt.Printf("BENCH credentials.assertion.%s  rate=%.0f/s cpu=%.0fµs  baseline(go-jose bare)=%.0f/s cpu=%.0fµs  cpu_ratio(bare/ours)=%.2f  goal>=0.8  %s\n",
			alg, oRate, float64(oCPU)/1e3, bRate, float64(bCPU)/1e3, ratio, verdict)
	}
}
