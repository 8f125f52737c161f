package webhooks

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"strconv"
	"strings"
	"time"

	"github.com/medrelay/medrelay/internal/secrets"
)

// SignatureHeader carries the timestamp and the HMAC of every delivery:
//
//	Medrelay-Signature: t=1700000000,v1=5257a8…,v1=9f0c11…
//
// v1 is the hex HMAC-SHA256, keyed with the endpoint's secret (its bytes as
// shown, "whsec_…" included), of the timestamp, a dot, and the raw body.
// During the 24 hours after a rotation a second v1, made with the previous
// secret, follows the first.
const SignatureHeader = "Medrelay-Signature"

// SecretPrefix starts every signing secret, so secret scanners recognise one.
const SecretPrefix = "whsec_"

// newSecret returns a fresh 256-bit signing secret.
func newSecret() secrets.Value {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	return secrets.Value(SecretPrefix + base64.RawURLEncoding.EncodeToString(b))
}

// mac is the v1 signature of body at t under secret.
func mac(secret secrets.Value, t int64, body []byte) string {
	h := hmac.New(sha256.New, []byte(secret.Reveal()))
	h.Write([]byte(strconv.FormatInt(t, 10)))
	h.Write([]byte{'.'})
	h.Write(body)
	return hex.EncodeToString(h.Sum(nil))
}

// Sign returns the value of the Medrelay-Signature header for body sent at
// now, signed with every secret given (current first).
func Sign(now time.Time, body []byte, keys ...secrets.Value) string {
	t := now.Unix()
	var b strings.Builder
	b.WriteString("t=")
	b.WriteString(strconv.FormatInt(t, 10))
	for _, k := range keys {
		if k.IsZero() {
			continue
		}
		b.WriteString(",v1=")
		b.WriteString(mac(k, t, body))
	}
	return b.String()
}
