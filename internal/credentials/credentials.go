// Package credentials owns the workspace's own registrations with sources
// and vendors ("bring your own credentials"): client id, client secret or
// private key, scopes. A credential applies to one source, or to every
// source of a vendor; a source's own credential beats its vendor's.
//
// Secret parts are write-only: a client secret goes in with Set and comes
// out only as the oauth.ClientAuth that Resolve hands to the OAuth client,
// never in a Credential, an error or a log line. Private keys are generated
// here, inside the agent, stored only in the encrypted store, and used only
// to sign client assertions; their public halves are served as a JWK Set
// (JWKS) at {public_url}/.well-known/jwks.json. A rotated or deleted key
// stays in the JWKS until the last assertion it signed has expired.
package credentials

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/medrelay/medrelay/internal/errdefs"
	"github.com/medrelay/medrelay/internal/oauth"
	"github.com/medrelay/medrelay/internal/secrets"
	"github.com/medrelay/medrelay/internal/store"
)

// Credential is a registration as callers see it: no secret, no key.
type Credential struct {
	ID       string `json:"id"`
	SourceID string `json:"source_id,omitempty"`
	Vendor   string `json:"vendor,omitempty"`
	ClientID string `json:"client_id"`
	// Method is how the client authenticates at the token endpoint: none
	// (public client), client_secret_basic, client_secret_post or
	// private_key_jwt.
	Method string   `json:"method"`
	Scopes []string `json:"scopes,omitempty"`
	// KeyIDs are the kids of the credential's keys still published: the
	// active key first, then retired keys kept for assertions in flight.
	KeyIDs []string `json:"key_ids,omitempty"`
	// KeyAlgorithm of the active key (ES384 or RS384).
	KeyAlgorithm string    `json:"key_algorithm,omitempty"`
	CreatedAt    time.Time `json:"created_at"`
	UpdatedAt    time.Time `json:"updated_at"`
	HasSecret    bool      `json:"has_secret"`
}

// Target names what the credential applies to ("source X" or "vendor V").
func (c Credential) Target() string {
	if c.SourceID != "" {
		return "source " + c.SourceID
	}
	return "vendor " + c.Vendor
}

// record is what the store keeps. The secret never leaves this package.
type record struct {
	Credential
	Secret    secrets.Value `json:"secret,omitempty"`
	ActiveKID string        `json:"active_kid,omitempty"`
}

// Input is what Set takes.
type Input struct {
	// Exactly one of SourceID and Vendor.
	SourceID string
	Vendor   string
	ClientID string
	// ClientSecret sets a client secret (client_secret_basic unless Method
	// says client_secret_post).
	ClientSecret secrets.Value
	// GenerateKey generates a new private key in the agent: "ES384" or
	// "RS384". On a credential that has a key, this rotates it.
	GenerateKey string
	// Method, optional: client_secret_post to send the secret in the form,
	// none to make the client public (dropping its secret and keys).
	Method string
	// Scopes replace the credential's scopes when not nil.
	Scopes []string
}

// Sentinel errors.
var (
	ErrNotFound = errdefs.Define(errdefs.NotFound, "CREDENTIAL_NOT_FOUND", "no such credential")
	ErrInvalid  = errdefs.Define(errdefs.InvalidArgument, "CREDENTIAL_INVALID", "invalid credential")
	ErrNoKey    = errdefs.Define(errdefs.FailedPrecondition, "CREDENTIAL_HAS_NO_KEY", "the credential has no key")
)

// Key algorithms the agent generates (SMART: RS384 and ES384 SHALL be
// supported; smart-2.2-client #308, #309).
const (
	ES384 = "ES384"
	RS384 = "RS384"
)

// Options of New.
type Options struct {
	Logger *slog.Logger
	// AssertionLifetime is the exp of client assertions (at most, and by
	// default, four minutes: SMART allows five; the margin absorbs clock
	// skew at the server).
	AssertionLifetime time.Duration
	// RetireGrace is how long a rotated or deleted key stays in the JWKS
	// beyond the assertion lifetime (clock skew, servers' caches). Default
	// five minutes.
	RetireGrace time.Duration
	// Now is the clock (tests).
	Now func() time.Time
}

// Store keeps credentials and keys. Safe for concurrent use.
type Store struct {
	db      *store.DB
	creds   *store.Table[record]
	targets *store.Table[string]
	keys    *store.Table[keyRecord]
	log     *slog.Logger
	life    time.Duration
	grace   time.Duration
	now     func() time.Time

	// mu serialises writes with signing, so that no assertion is signed
	// with a key after the moment it was retired (its RemoveAfter counts
	// from then).
	mu sync.RWMutex
	// sigMu guards signers (filled by concurrent signers holding mu.RLock).
	sigMu   sync.Mutex
	signers map[string]*keySigner // kid → parsed key
}

// MaxAssertionLifetime is SMART's bound on a client assertion's exp.
const MaxAssertionLifetime = 5 * time.Minute

// New returns the credential store over db.
func New(db *store.DB, o Options) *Store {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.AssertionLifetime <= 0 || o.AssertionLifetime > MaxAssertionLifetime {
		o.AssertionLifetime = 4 * time.Minute
	}
	if o.RetireGrace <= 0 {
		o.RetireGrace = 5 * time.Minute
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Store{
		db: db, creds: store.NewTable[record](db, store.Credentials),
		targets: store.NewTable[string](db, store.CredentialTargets),
		keys:    store.NewTable[keyRecord](db, store.CredentialKeys),
		log:     o.Logger.With("component", "credentials"),
		life:    o.AssertionLifetime, grace: o.RetireGrace, now: o.Now,
		signers: map[string]*keySigner{},
	}
}

func targetKey(sourceID, vendor string) string {
	if sourceID != "" {
		return "source/" + sourceID
	}
	return "vendor/" + VendorKey(vendor)
}

// VendorKey is how vendors are compared: by slug, case and spaces aside
// ("Epic" and "epic", "Oracle Health" and "oraclehealth" are one vendor).
func VendorKey(vendor string) string {
	return strings.ToLower(strings.ReplaceAll(vendor, " ", ""))
}

func newID() string {
	b := make([]byte, 10)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return "cred_" + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b))
}

func validName(s string) bool {
	if s == "" || len(s) > 200 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("._:-/@", r)) {
			return false
		}
	}
	return true
}

func printable(s string) bool {
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}

func (in *Input) validate() error {
	if (in.SourceID == "") == (in.Vendor == "") {
		return fmt.Errorf("%w: name either a source or a vendor", ErrInvalid)
	}
	if in.SourceID != "" && !validName(in.SourceID) {
		return fmt.Errorf("%w: source id %q", ErrInvalid, in.SourceID)
	}
	if in.Vendor != "" && !validName(in.Vendor) {
		return fmt.Errorf("%w: vendor %q", ErrInvalid, in.Vendor)
	}
	if in.ClientID == "" || len(in.ClientID) > 512 || !printable(in.ClientID) || strings.TrimSpace(in.ClientID) != in.ClientID {
		return fmt.Errorf("%w: client id must be 1-512 printable characters without surrounding spaces", ErrInvalid)
	}
	// The secret's value must never appear in an error, even a refusal.
	if len(in.ClientSecret) > 4096 || !printable(in.ClientSecret.Reveal()) {
		return fmt.Errorf("%w: client secret must be at most 4096 printable characters", ErrInvalid)
	}
	if !in.ClientSecret.IsZero() && in.GenerateKey != "" {
		return fmt.Errorf("%w: a client secret or a generated key, not both", ErrInvalid)
	}
	switch in.GenerateKey {
	case "", ES384, RS384:
	default:
		return fmt.Errorf("%w: key algorithm %q (want ES384 or RS384)", ErrInvalid, in.GenerateKey)
	}
	switch in.Method {
	case "":
	case oauth.AuthNone:
		if !in.ClientSecret.IsZero() || in.GenerateKey != "" {
			return fmt.Errorf("%w: a public client (method none) has no secret or key", ErrInvalid)
		}
	case oauth.AuthClientSecretBasic, oauth.AuthClientSecretPost:
		if in.GenerateKey != "" {
			return fmt.Errorf("%w: method %s with a key", ErrInvalid, in.Method)
		}
	case oauth.AuthPrivateKeyJWT:
		if !in.ClientSecret.IsZero() {
			return fmt.Errorf("%w: method private_key_jwt with a client secret", ErrInvalid)
		}
	default:
		return fmt.Errorf("%w: method %q (want none, client_secret_basic, client_secret_post or private_key_jwt)", ErrInvalid, in.Method)
	}
	for _, s := range in.Scopes {
		if s == "" || len(s) > 512 || strings.ContainsAny(s, " \t\r\n") || !printable(s) {
			return fmt.Errorf("%w: scope %q", ErrInvalid, s)
		}
	}
	return nil
}

// Set creates or updates the credential of a source or vendor. Secret
// material is replaced only when new material is given (a secret, a key to
// generate, or method none): updating scopes or the method keeps the
// secret or key, without asking for it again. A changed client id drops a
// client secret (it belonged to the old id); keys may stay, as a JWKS URL
// can serve several registrations.
func (s *Store) Set(ctx context.Context, in Input) (Credential, error) {
	return s.set(ctx, in, "")
}

// set is Set; with onlyID it changes that existing credential or nothing
// (a rotation must not resurrect a credential deleted meanwhile).
func (s *Store) set(ctx context.Context, in Input, onlyID string) (Credential, error) {
	if err := in.validate(); err != nil {
		return Credential{}, err
	}
	var newKey *keyRecord
	if in.GenerateKey != "" {
		// Generated outside the lock: RSA takes a moment.
		k, err := generateKey(in.GenerateKey, s.now())
		if err != nil {
			return Credential{}, err
		}
		newKey = k
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	tk := targetKey(in.SourceID, in.Vendor)
	var out record
	err := s.db.Update(ctx, func(tx *store.Txn) error {
		var rec record
		id, err := s.targets.GetTx(tx, tk)
		if onlyID != "" && (err != nil || id != onlyID) {
			return fmt.Errorf("%w: %s", ErrNotFound, onlyID)
		}
		switch {
		case errors.Is(err, store.ErrNotFound):
			rec = record{Credential: Credential{ID: newID(), SourceID: in.SourceID, Vendor: in.Vendor,
				Method: oauth.AuthNone, CreatedAt: now}}
		case err != nil:
			return err
		default:
			if rec, err = s.creds.GetTx(tx, id); err != nil {
				return err
			}
		}
		if rec.ClientID != "" && rec.ClientID != in.ClientID && !rec.Secret.IsZero() && in.ClientSecret.IsZero() && in.GenerateKey == "" && in.Method != oauth.AuthNone {
			return fmt.Errorf("%w: the client id changed: give the new client's secret too (or a key, or method none)", ErrInvalid)
		}
		rec.ClientID = in.ClientID
		if in.Scopes != nil {
			rec.Scopes = slices.Clone(in.Scopes)
		}
		switch {
		case newKey != nil:
			if err := s.retireKeysTx(tx, &rec, now); err != nil {
				return err
			}
			newKey.CredentialID = rec.ID
			if err := s.keys.PutTx(tx, newKey.KID, *newKey); err != nil {
				return err
			}
			rec.ActiveKID, rec.KeyAlgorithm = newKey.KID, newKey.Alg
			rec.KeyIDs = append([]string{newKey.KID}, rec.KeyIDs...)
			rec.Secret, rec.Method = "", oauth.AuthPrivateKeyJWT
		case !in.ClientSecret.IsZero():
			if err := s.retireKeysTx(tx, &rec, now); err != nil {
				return err
			}
			rec.Secret = in.ClientSecret
			rec.Method = oauth.AuthClientSecretBasic
			if in.Method == oauth.AuthClientSecretPost {
				rec.Method = oauth.AuthClientSecretPost
			}
		case in.Method == oauth.AuthNone:
			if err := s.retireKeysTx(tx, &rec, now); err != nil {
				return err
			}
			rec.Secret, rec.Method = "", oauth.AuthNone
		case in.Method != "" && in.Method != rec.Method:
			// Switching between the two secret methods keeps the secret;
			// anything else needs material this call did not bring.
			secretSwitch := !rec.Secret.IsZero() && (in.Method == oauth.AuthClientSecretBasic || in.Method == oauth.AuthClientSecretPost)
			if !secretSwitch {
				return fmt.Errorf("%w: method %s needs a %s", ErrInvalid, in.Method, map[bool]string{true: "generated key", false: "client secret"}[in.Method == oauth.AuthPrivateKeyJWT])
			}
			rec.Method = in.Method
		}
		if rec.ClientID != "" && rec.Secret.IsZero() && (rec.Method == oauth.AuthClientSecretBasic || rec.Method == oauth.AuthClientSecretPost) {
			rec.Method = oauth.AuthNone
		}
		rec.HasSecret = !rec.Secret.IsZero()
		rec.UpdatedAt = now
		// Forget kids of keys gone from the store (removed from the JWKS).
		rec.KeyIDs = slices.DeleteFunc(rec.KeyIDs, func(kid string) bool {
			_, err := s.keys.GetTx(tx, kid)
			return errors.Is(err, store.ErrNotFound)
		})
		if err := s.creds.PutTx(tx, rec.ID, rec); err != nil {
			return err
		}
		if err := s.targets.PutTx(tx, tk, rec.ID); err != nil {
			return err
		}
		out = rec
		return nil
	}, store.Synced())
	if err != nil {
		return Credential{}, err
	}
	s.log.Info("credential set", "credential", out.ID, "target", out.Target(), "client_id", out.ClientID,
		"method", out.Method, "key", out.ActiveKID, "scopes", len(out.Scopes))
	return s.view(ctx, out), nil
}

// retireKeysTx retires every key of rec: they stop signing now and leave
// the JWKS once the last assertion they may have signed has expired.
func (s *Store) retireKeysTx(tx *store.Txn, rec *record, now time.Time) error {
	for _, kid := range rec.KeyIDs {
		k, err := s.keys.GetTx(tx, kid)
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		if k.RetiredAt.IsZero() {
			k.RetiredAt = now
			k.RemoveAfter = now.Add(s.life + s.grace)
			if err := s.keys.PutTx(tx, kid, k); err != nil {
				return err
			}
		}
	}
	rec.ActiveKID, rec.KeyAlgorithm = "", ""
	return nil
}

// Rotate replaces the credential's key with a new one of the same
// algorithm. The old key signs nothing from now on and stays published
// until its last assertion expires.
func (s *Store) Rotate(ctx context.Context, id string) (Credential, error) {
	rec, err := s.creds.Get(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return Credential{}, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if err != nil {
		return Credential{}, err
	}
	if rec.ActiveKID == "" {
		return Credential{}, fmt.Errorf("%w: %s authenticates with %s; set a key with --generate-key first", ErrNoKey, id, rec.Method)
	}
	return s.set(ctx, Input{SourceID: rec.SourceID, Vendor: rec.Vendor, ClientID: rec.ClientID, GenerateKey: rec.KeyAlgorithm}, id)
}

// Get returns a credential by id.
func (s *Store) Get(ctx context.Context, id string) (Credential, error) {
	rec, err := s.creds.Get(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return Credential{}, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if err != nil {
		return Credential{}, err
	}
	return s.view(ctx, rec), nil
}

// Find returns the credential set for exactly this source or vendor (no
// fallback from source to vendor; see Resolve for that).
func (s *Store) Find(ctx context.Context, sourceID, vendor string) (Credential, error) {
	if (sourceID == "") == (vendor == "") {
		return Credential{}, fmt.Errorf("%w: name either a source or a vendor", ErrInvalid)
	}
	id, err := s.targets.Get(ctx, targetKey(sourceID, vendor))
	if errors.Is(err, store.ErrNotFound) {
		return Credential{}, fmt.Errorf("%w for %s", ErrNotFound, Credential{SourceID: sourceID, Vendor: vendor}.Target())
	}
	if err != nil {
		return Credential{}, err
	}
	return s.Get(ctx, id)
}

// List returns every credential, sources first, then vendors, by name.
func (s *Store) List(ctx context.Context) ([]Credential, error) {
	var out []Credential
	err := s.creds.Scan(ctx, store.ScanOptions{}, func(_ string, rec record) error {
		out = append(out, rec.Credential)
		return nil
	})
	if err != nil {
		return nil, err
	}
	for i := range out {
		out[i] = s.withLiveKeys(ctx, out[i])
	}
	slices.SortFunc(out, func(a, b Credential) int {
		if (a.SourceID == "") != (b.SourceID == "") {
			if a.SourceID != "" {
				return -1
			}
			return 1
		}
		return strings.Compare(a.SourceID+a.Vendor, b.SourceID+b.Vendor)
	})
	return out, nil
}

// Delete removes a credential. Its keys stop signing at once and stay in
// the JWKS until their last assertion has expired.
func (s *Store) Delete(ctx context.Context, id string) (Credential, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var gone record
	err := s.db.Update(ctx, func(tx *store.Txn) error {
		rec, err := s.creds.GetTx(tx, id)
		if errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("%w: %s", ErrNotFound, id)
		}
		if err != nil {
			return err
		}
		if err := s.retireKeysTx(tx, &rec, s.now()); err != nil {
			return err
		}
		if err := s.creds.DeleteTx(tx, id); err != nil {
			return err
		}
		tk := targetKey(rec.SourceID, rec.Vendor)
		if cur, err := s.targets.GetTx(tx, tk); err == nil && cur == id {
			if err := s.targets.DeleteTx(tx, tk); err != nil {
				return err
			}
		}
		gone = rec
		return nil
	}, store.Synced())
	if err != nil {
		return Credential{}, err
	}
	s.log.Info("credential deleted", "credential", gone.ID, "target", gone.Target())
	return gone.Credential, nil
}

// Resolve finds the credential for a source: the source's own, else its
// vendor's; and the client authentication to use with it.
func (s *Store) Resolve(ctx context.Context, sourceID, vendor string) (Credential, oauth.ClientAuth, error) {
	for _, tk := range []struct{ src, vendor string }{{sourceID, ""}, {"", vendor}} {
		if tk.src == "" && tk.vendor == "" {
			continue
		}
		id, err := s.targets.Get(ctx, targetKey(tk.src, tk.vendor))
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return Credential{}, oauth.ClientAuth{}, err
		}
		return s.ByID(ctx, id)
	}
	return Credential{}, oauth.ClientAuth{}, fmt.Errorf("%w for source %q or vendor %q: set one with `medrelay credentials set`", ErrNotFound, sourceID, vendor)
}

// ByID returns a credential and its client authentication.
func (s *Store) ByID(ctx context.Context, id string) (Credential, oauth.ClientAuth, error) {
	rec, err := s.creds.Get(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return Credential{}, oauth.ClientAuth{}, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if err != nil {
		return Credential{}, oauth.ClientAuth{}, err
	}
	auth := oauth.ClientAuth{Method: rec.Method}
	switch rec.Method {
	case oauth.AuthClientSecretBasic, oauth.AuthClientSecretPost:
		auth.Secret = rec.Secret
	case oauth.AuthPrivateKeyJWT:
		auth.Signer = &Signer{store: s, credentialID: rec.ID, clientID: rec.ClientID}
	}
	return s.view(ctx, rec), auth, nil
}

// view is the caller's view of a record: no secret, and only the keys still
// published.
func (s *Store) view(ctx context.Context, rec record) Credential {
	return s.withLiveKeys(ctx, rec.Credential)
}

func (s *Store) withLiveKeys(ctx context.Context, c Credential) Credential {
	now := s.now()
	live := make([]string, 0, len(c.KeyIDs))
	for _, kid := range c.KeyIDs {
		k, err := s.keys.Get(ctx, kid)
		if err != nil || (!k.RemoveAfter.IsZero() && now.After(k.RemoveAfter)) {
			continue
		}
		live = append(live, kid)
	}
	c.KeyIDs = live
	c.Scopes = slices.Clone(c.Scopes)
	return c
}
