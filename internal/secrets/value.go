package secrets

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
)

// Value is a secret string (client secret, token, private key). It prints as
// "[redacted]" through fmt, slog and %#v, so a careless log line cannot leak
// it. It still marshals to JSON as itself, because the store (encrypted)
// must keep it; never put a Value in an API response.
type Value string

const redacted = "[redacted]"

func (Value) String() string             { return redacted }
func (Value) GoString() string           { return redacted }
func (Value) LogValue() slog.Value       { return slog.StringValue(redacted) }
func (v Value) Reveal() string           { return string(v) }
func (v Value) IsZero() bool             { return v == "" }
func (Value) Format(f fmt.State, _ rune) { f.Write([]byte(redacted)) }

// ErrOpen means sealed data could not be opened: wrong key or tampering.
var ErrOpen = errors.New("cannot open sealed data: wrong key or corrupted")

// Sealer encrypts data that leaves the store (backups, exports) under a key
// derived for that purpose, with AES-256-GCM.
type Sealer struct{ aead cipher.AEAD }

// Sealer returns a sealer for purpose.
func (k *Keyring) Sealer(purpose string) *Sealer {
	block, err := aes.NewCipher(k.Derive("seal/" + purpose))
	if err != nil {
		panic(err) // 32-byte key always valid
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		panic(err)
	}
	return &Sealer{aead: aead}
}

// Seal encrypts plaintext; ad is authenticated but not encrypted.
func (s *Sealer) Seal(plaintext, ad []byte) []byte {
	nonce := make([]byte, s.aead.NonceSize(), s.aead.NonceSize()+len(plaintext)+s.aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		panic(err)
	}
	return s.aead.Seal(nonce, nonce, plaintext, ad)
}

// Open decrypts what Seal produced.
func (s *Sealer) Open(sealed, ad []byte) ([]byte, error) {
	n := s.aead.NonceSize()
	if len(sealed) < n+s.aead.Overhead() {
		return nil, ErrOpen
	}
	out, err := s.aead.Open(nil, sealed[:n], sealed[n:], ad)
	if err != nil {
		return nil, ErrOpen
	}
	return out, nil
}
