package credentials

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/medrelay/medrelay/internal/oauth"
	"github.com/medrelay/medrelay/internal/secrets"
	"github.com/medrelay/medrelay/internal/store"
)

// keyRecord is one generated key pair as stored.
type keyRecord struct {
	KID          string `json:"kid"`
	Alg          string `json:"alg"`
	CredentialID string `json:"credential_id"`
	// Private is the PKCS #8 DER of the private key, base64. Only the
	// (encrypted) store holds it.
	Private secrets.Value `json:"private"`
	// Public is the public JWK as published.
	Public    json.RawMessage `json:"public"`
	CreatedAt time.Time       `json:"created_at"`
	// RetiredAt: the key stopped signing (rotation, deletion).
	RetiredAt time.Time `json:"retired_at,omitempty"`
	// RemoveAfter: the last assertion it signed has expired; it leaves the
	// JWKS.
	RemoveAfter time.Time `json:"remove_after,omitempty"`
}

// rsaBits: 3072-bit RSA keys (NIST's recommendation beyond 2030; vendors
// accept 2048 and up).
const rsaBits = 3072

// generateKey makes a key pair for alg. The kid is the key's RFC 7638
// thumbprint, unique within any JWKS (smart-2.2-client #322).
func generateKey(alg string, now time.Time) (*keyRecord, error) {
	var priv crypto.Signer
	var err error
	switch alg {
	case ES384:
		priv, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case RS384:
		priv, err = rsa.GenerateKey(rand.Reader, rsaBits)
	default:
		return nil, fmt.Errorf("%w: key algorithm %q", ErrInvalid, alg)
	}
	if err != nil {
		return nil, fmt.Errorf("credentials: generate %s key: %w", alg, err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("credentials: encode key: %w", err)
	}
	pub := jose.JSONWebKey{Key: priv.Public(), Algorithm: alg, Use: "sig"}
	tp, err := pub.Thumbprint(crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("credentials: key thumbprint: %w", err)
	}
	pub.KeyID = base64.RawURLEncoding.EncodeToString(tp)
	pj, err := pub.MarshalJSON()
	if err != nil {
		return nil, fmt.Errorf("credentials: public JWK: %w", err)
	}
	return &keyRecord{KID: pub.KeyID, Alg: alg, Private: secrets.Value(base64.StdEncoding.EncodeToString(der)),
		Public: pj, CreatedAt: now}, nil
}

// keySigner is a parsed key, kept in memory between assertions.
type keySigner struct {
	kid, alg string
	signer   jose.Signer
}

func (k *keyRecord) signer() (*keySigner, error) {
	der, err := base64.StdEncoding.DecodeString(k.Private.Reveal())
	if err != nil {
		return nil, fmt.Errorf("credentials: key %s is corrupt", k.KID)
	}
	priv, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("credentials: key %s is corrupt", k.KID)
	}
	// typ JWT, kid and alg in the header (smart-2.2-client #321-#323).
	opts := (&jose.SignerOptions{}).WithType("JWT")
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.SignatureAlgorithm(k.Alg),
		Key: jose.JSONWebKey{Key: priv, KeyID: k.KID}}, opts)
	if err != nil {
		return nil, fmt.Errorf("credentials: key %s: %w", k.KID, err)
	}
	return &keySigner{kid: k.KID, alg: k.Alg, signer: sig}, nil
}

// ErrKeyRetired is returned when a credential's key was retired between
// Resolve and signing and no key replaced it.
var ErrKeyRetired = errors.New("credentials: the credential has no active key")

// Signer signs client assertions for one credential with its active key
// (oauth.AssertionSigner). It follows rotation: after Rotate, the next
// assertion is signed with the new key.
type Signer struct {
	store        *Store
	credentialID string
	clientID     string
}

var (
	_ oauth.AssertionSigner = (*Signer)(nil)
	_ oauth.Algorithmer     = (*Signer)(nil)
)

// assertionClaims: iss and sub the client id, aud the token URL, exp no
// more than five minutes ahead, a unique jti (smart-2.2-client #327-#332).
type assertionClaims struct {
	Iss string `json:"iss"`
	Sub string `json:"sub"`
	Aud string `json:"aud"`
	Exp int64  `json:"exp"`
	Iat int64  `json:"iat"`
	Jti string `json:"jti"`
}

// SignAssertion returns a one-time client authentication JWT for audience
// (the token URL the assertion will be posted to).
func (s *Signer) SignAssertion(ctx context.Context, audience string) (string, error) {
	st := s.store
	st.mu.RLock()
	defer st.mu.RUnlock()
	ks, err := st.activeSigner(ctx, s.credentialID)
	if err != nil {
		return "", err
	}
	jti := make([]byte, 18)
	if _, err := rand.Read(jti); err != nil {
		return "", fmt.Errorf("credentials: jti: %w", err)
	}
	now := st.now()
	payload, err := json.Marshal(assertionClaims{Iss: s.clientID, Sub: s.clientID, Aud: audience,
		Exp: now.Add(st.life).Unix(), Iat: now.Unix(), Jti: base64.RawURLEncoding.EncodeToString(jti)})
	if err != nil {
		return "", err
	}
	obj, err := ks.signer.Sign(payload)
	if err != nil {
		return "", fmt.Errorf("credentials: sign with key %s: %w", ks.kid, err)
	}
	return obj.CompactSerialize()
}

// Algorithm is the JWS algorithm of the credential's active key ("" if none).
func (s *Signer) Algorithm() string { return s.active().alg }

// KeyID is the kid of the credential's active key ("" if none).
func (s *Signer) KeyID() string { return s.active().kid }

// active is the credential's active key, or a zero keySigner if it has none.
func (s *Signer) active() keySigner {
	s.store.mu.RLock()
	defer s.store.mu.RUnlock()
	ks, err := s.store.activeSigner(context.Background(), s.credentialID)
	if err != nil {
		return keySigner{}
	}
	return *ks
}

// activeSigner returns the parsed active key of a credential. Callers hold
// s.mu (read or write).
func (s *Store) activeSigner(ctx context.Context, credentialID string) (*keySigner, error) {
	rec, err := s.creds.Get(ctx, credentialID)
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, credentialID)
	}
	if err != nil {
		return nil, err
	}
	if rec.ActiveKID == "" {
		return nil, ErrKeyRetired
	}
	s.sigMu.Lock()
	ks, ok := s.signers[rec.ActiveKID]
	s.sigMu.Unlock()
	if ok {
		return ks, nil
	}
	k, err := s.keys.Get(ctx, rec.ActiveKID)
	if err != nil {
		return nil, fmt.Errorf("credentials: key %s of %s: %w", rec.ActiveKID, credentialID, err)
	}
	ks, err = k.signer()
	if err != nil {
		return nil, err
	}
	s.sigMu.Lock()
	s.signers[rec.ActiveKID] = ks
	s.sigMu.Unlock()
	return ks, nil
}

// JWKS returns the public keys to publish: every active key, and retired
// keys until their last assertion has expired (smart-2.2-client #294,
// #313-#315). Keys past that are deleted from the store on the way.
func (s *Store) JWKS(ctx context.Context) ([]byte, error) {
	now := s.now()
	type pub struct {
		created time.Time
		active  bool
		jwk     json.RawMessage
	}
	var keys []pub
	var expired []string
	err := s.keys.Scan(ctx, store.ScanOptions{}, func(kid string, k keyRecord) error {
		if !k.RemoveAfter.IsZero() && now.After(k.RemoveAfter) {
			expired = append(expired, kid)
			return nil
		}
		keys = append(keys, pub{created: k.CreatedAt, active: k.RetiredAt.IsZero(), jwk: k.Public})
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(expired) > 0 {
		s.removeKeys(ctx, expired, now)
	}
	// Active keys first, newest first: servers that try keys in order find
	// the signing key sooner.
	slices.SortStableFunc(keys, func(a, b pub) int {
		if a.active != b.active {
			if a.active {
				return -1
			}
			return 1
		}
		return b.created.Compare(a.created)
	})
	set := struct {
		Keys []json.RawMessage `json:"keys"`
	}{Keys: make([]json.RawMessage, 0, len(keys))}
	for _, k := range keys {
		set.Keys = append(set.Keys, k.jwk)
	}
	return json.Marshal(set)
}

// removeKeys deletes keys whose last assertion has expired, and forgets
// their kids in their credentials.
func (s *Store) removeKeys(ctx context.Context, kids []string, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	err := s.db.Update(ctx, func(tx *store.Txn) error {
		for _, kid := range kids {
			k, err := s.keys.GetTx(tx, kid)
			if errors.Is(err, store.ErrNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			if k.RemoveAfter.IsZero() || !now.After(k.RemoveAfter) {
				continue
			}
			if err := s.keys.DeleteTx(tx, kid); err != nil {
				return err
			}
			rec, err := s.creds.GetTx(tx, k.CredentialID)
			if err == nil {
				rec.KeyIDs = slices.DeleteFunc(rec.KeyIDs, func(x string) bool { return x == kid })
				if err := s.creds.PutTx(tx, rec.ID, rec); err != nil {
					return err
				}
			}
		}
		return nil
	}, store.Synced())
	if err != nil {
		s.log.Warn("removing expired keys", "err", err)
		return
	}
	s.sigMu.Lock()
	for _, kid := range kids {
		delete(s.signers, kid)
	}
	s.sigMu.Unlock()
	s.log.Info("retired keys removed from the JWKS", "kids", strings.Join(kids, ","))
}

// JWKSHandler serves the JWKS (GET {public_url}/.well-known/jwks.json):
// no authentication (smart-2.2-client #302), JSON, and a Cache-Control
// header (#303) short enough that a server picks up a rotated key soon.
func (s *Store) JWKSHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := s.JWKS(r.Context())
		if err != nil {
			s.log.Error("serving jwks", "err", err)
			http.Error(w, "the key set is unavailable", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "public, max-age=60")
		w.Header().Set("Access-Control-Allow-Origin", "*")
		_, _ = w.Write(b)
	})
}
