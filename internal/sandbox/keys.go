package sandbox

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/big"
	"net"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// serverKeys sign id_tokens (RS256, the OIDC default) and CDS Hooks client
// JWTs (ES384). They live only in memory: a restarted sandbox is a new EHR.
type serverKeys struct {
	rsa    *rsa.PrivateKey
	rsaKID string
	ec     *ecdsa.PrivateKey
	ecKID  string
	rsSig  jose.Signer
	esSig  jose.Signer
}

// processKeys are shared by every sandbox in a process: key generation
// (RSA-2048) dominated the start of the many sandboxes a test run makes.
var processKeys = sync.OnceValues(newServerKeys)

func newServerKeys() (*serverKeys, error) {
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, fmt.Errorf("sandbox: rsa key: %w", err)
	}
	ek, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("sandbox: ec key: %w", err)
	}
	k := &serverKeys{rsa: rk, ec: ek, rsaKID: "sandbox-rs256-" + randomToken(4), ecKID: "sandbox-es384-" + randomToken(4)}
	k.rsSig, err = jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: jose.JSONWebKey{Key: rk, KeyID: k.rsaKID}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return nil, fmt.Errorf("sandbox: signer: %w", err)
	}
	k.esSig, err = jose.NewSigner(jose.SigningKey{Algorithm: jose.ES384, Key: jose.JSONWebKey{Key: ek, KeyID: k.ecKID}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return nil, fmt.Errorf("sandbox: signer: %w", err)
	}
	return k, nil
}

// jwks is the public key set.
func (k *serverKeys) jwks() jose.JSONWebKeySet {
	return jose.JSONWebKeySet{Keys: []jose.JSONWebKey{
		{Key: &k.rsa.PublicKey, KeyID: k.rsaKID, Algorithm: string(jose.RS256), Use: "sig"},
		{Key: &k.ec.PublicKey, KeyID: k.ecKID, Algorithm: string(jose.ES384), Use: "sig"},
	}}
}

// signRS256 signs claims for id_tokens.
func (k *serverKeys) signRS256(claims any) (string, error) { return sign(k.rsSig, claims) }

// signES384 signs claims, with extra headers (jku) for CDS Hooks.
func (k *serverKeys) signES384(claims any, jku string) (string, error) {
	sig := k.esSig
	if jku != "" {
		opts := (&jose.SignerOptions{}).WithType("JWT").WithHeader("jku", jku)
		s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES384, Key: jose.JSONWebKey{Key: k.ec, KeyID: k.ecKID}}, opts)
		if err != nil {
			return "", fmt.Errorf("sandbox: signer: %w", err)
		}
		sig = s
	}
	return sign(sig, claims)
}

func sign(s jose.Signer, claims any) (string, error) {
	b, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}
	obj, err := s.Sign(b)
	if err != nil {
		return "", fmt.Errorf("sandbox: sign: %w", err)
	}
	return obj.CompactSerialize()
}

// secret makes an authorization code, access or refresh token: random,
// with the configured prefix so tests can look for leaked tokens.
func (s *Sandbox) secret(n int) string { return s.cfg.TokenPrefix + randomToken(n) }

func randomToken(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// selfSignedCert makes a certificate for the listener's address and localhost.
func selfSignedCert(addr net.Addr) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "medrelay-sandbox", Organization: []string{"medrelay sandbox"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	if ta, ok := addr.(*net.TCPAddr); ok && !ta.IP.IsUnspecified() {
		tmpl.IPAddresses = append(tmpl.IPAddresses, ta.IP)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("sandbox: certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
