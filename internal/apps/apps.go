// Package apps owns host-app identities: creating an app and its token,
// listing, revoking, and turning a presented token back into an app.
//
// Tokens are 256-bit random strings shown once; the store keeps only their
// SHA-256 (a slow hash buys nothing against a 256-bit secret and would cost
// every call). Revocation deletes the hash, so a revoked token fails on the
// very next call.
package apps

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/medrelay/medrelay/internal/errdefs"
	"github.com/medrelay/medrelay/internal/store"
)

// TokenPrefix starts every app token, so secret scanners can recognise one.
const TokenPrefix = "mrapp_"

// Sentinel errors.
var (
	ErrInvalidName  = errdefs.Define(errdefs.InvalidArgument, "APP_NAME_INVALID", "app name must be 1-64 letters, digits, '.', '-' or '_'")
	ErrNameTaken    = errdefs.Define(errdefs.AlreadyExists, "APP_NAME_TAKEN", "an app with this name exists")
	ErrNotFound     = errdefs.Define(errdefs.NotFound, "APP_NOT_FOUND", "no such app")
	ErrBadToken     = errdefs.Define(errdefs.Unauthenticated, "APP_TOKEN_INVALID", "app token is not valid")
	ErrRevoked      = errdefs.Define(errdefs.Unauthenticated, "APP_REVOKED", "app has been revoked")
	ErrAlreadyGone  = errdefs.Define(errdefs.FailedPrecondition, "APP_ALREADY_REVOKED", "app is already revoked")
	validName       = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
	lastSeenEvery   = time.Minute
	tokenPrefixShow = len(TokenPrefix) + 6
)

// App is a host application's identity.
type App struct {
	ID          string     `json:"id"`
	Name        string     `json:"name"`
	CreatedAt   time.Time  `json:"created_at"`
	RevokedAt   *time.Time `json:"revoked_at,omitempty"`
	TokenPrefix string     `json:"token_prefix"`
	TokenHash   string     `json:"token_hash"`
	LastSeenAt  *time.Time `json:"last_seen_at,omitempty"`
}

// Revoked reports whether the app has been revoked.
func (a App) Revoked() bool { return a.RevokedAt != nil }

// Registry stores apps. Create one per agent.
type Registry struct {
	db     *store.DB
	apps   *store.Table[App]
	tokens *store.Table[string]
	names  *store.Table[string]
	now    func() time.Time

	// seenMu guards seen: when each app's last_seen was last written, so a
	// busy app costs one write a minute, not one per call.
	seenMu sync.Mutex
	seen   map[string]time.Time
}

// Option configures a Registry.
type Option func(*Registry)

// WithClock replaces time.Now (tests).
func WithClock(now func() time.Time) Option { return func(r *Registry) { r.now = now } }

// NewRegistry returns the app registry kept in db.
func NewRegistry(db *store.DB, opts ...Option) *Registry {
	r := &Registry{
		db:     db,
		apps:   store.NewTable[App](db, store.Apps),
		tokens: store.NewTable[string](db, store.AppTokens),
		names:  store.NewTable[string](db, store.AppNames),
		now:    time.Now,
		seen:   map[string]time.Time{},
	}
	for _, o := range opts {
		o(r)
	}
	return r
}

func hashToken(tok string) string {
	h := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(h[:])
}

func randomString(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("random: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// Create makes a new app and returns it with its token. The token is not
// stored and cannot be shown again.
func (r *Registry) Create(ctx context.Context, name string) (App, string, error) {
	if !validName.MatchString(name) {
		return App{}, "", fmt.Errorf("%w: %q", ErrInvalidName, name)
	}
	secret, err := randomString(32)
	if err != nil {
		return App{}, "", err
	}
	idPart, err := randomString(9)
	if err != nil {
		return App{}, "", err
	}
	token := TokenPrefix + secret
	app := App{
		ID:          "app_" + strings.ToLower(strings.NewReplacer("-", "0", "_", "1").Replace(idPart)),
		Name:        name,
		CreatedAt:   r.now().UTC(),
		TokenPrefix: token[:tokenPrefixShow],
		TokenHash:   hashToken(token),
	}
	err = r.db.Update(ctx, func(tx *store.Txn) error {
		if _, err := r.names.GetTx(tx, strings.ToLower(name)); err == nil {
			return fmt.Errorf("%w: %q", ErrNameTaken, name)
		} else if !errors.Is(err, store.ErrNotFound) {
			return err
		}
		if err := r.apps.PutTx(tx, app.ID, app); err != nil {
			return err
		}
		if err := r.names.PutTx(tx, strings.ToLower(name), app.ID); err != nil {
			return err
		}
		return r.tokens.PutTx(tx, app.TokenHash, app.ID)
	}, store.Synced())
	if err != nil {
		return App{}, "", err
	}
	return app, token, nil
}

// Get returns an app by id or by name.
func (r *Registry) Get(ctx context.Context, idOrName string) (App, error) {
	var app App
	err := r.db.View(ctx, func(tx *store.Txn) error {
		var err error
		app, err = r.getTx(tx, idOrName)
		return err
	})
	return app, err
}

func (r *Registry) getTx(tx *store.Txn, idOrName string) (App, error) {
	app, err := r.apps.GetTx(tx, idOrName)
	if err == nil {
		return app, nil
	}
	if !errors.Is(err, store.ErrNotFound) {
		return App{}, err
	}
	id, err := r.names.GetTx(tx, strings.ToLower(idOrName))
	if errors.Is(err, store.ErrNotFound) {
		return App{}, fmt.Errorf("%w: %q", ErrNotFound, idOrName)
	}
	if err != nil {
		return App{}, err
	}
	return r.apps.GetTx(tx, id)
}

// List returns apps in id order, a page at a time. after is the previous
// page's last id ("" for the first page).
func (r *Registry) List(ctx context.Context, includeRevoked bool, limit int, after string) ([]App, string, error) {
	if limit <= 0 || limit > 1000 {
		limit = 100
	}
	var out []App
	next := ""
	err := r.apps.Scan(ctx, store.ScanOptions{After: after}, func(id string, a App) error {
		if a.Revoked() && !includeRevoked {
			return nil
		}
		if len(out) == limit {
			next = out[len(out)-1].ID
			return store.ErrStopScan
		}
		out = append(out, a)
		return nil
	})
	return out, next, err
}

// Revoke revokes an app by id or name. Its token stops working at once; its
// name becomes free for a new app.
func (r *Registry) Revoke(ctx context.Context, idOrName string) (App, error) {
	var app App
	err := r.db.Update(ctx, func(tx *store.Txn) error {
		var err error
		app, err = r.getTx(tx, idOrName)
		if err != nil {
			return err
		}
		if app.Revoked() {
			return fmt.Errorf("%w: %s", ErrAlreadyGone, app.ID)
		}
		now := r.now().UTC()
		app.RevokedAt = &now
		if err := r.tokens.DeleteTx(tx, app.TokenHash); err != nil {
			return err
		}
		if err := r.names.DeleteTx(tx, strings.ToLower(app.Name)); err != nil {
			return err
		}
		return r.apps.PutTx(tx, app.ID, app)
	}, store.Synced())
	return app, err
}

// Authenticate returns the app whose token this is.
func (r *Registry) Authenticate(ctx context.Context, token string) (App, error) {
	if !strings.HasPrefix(token, TokenPrefix) {
		return App{}, ErrBadToken
	}
	h := hashToken(token)
	var app App
	err := r.db.View(ctx, func(tx *store.Txn) error {
		id, err := r.tokens.GetTx(tx, h)
		if errors.Is(err, store.ErrNotFound) {
			return ErrBadToken
		}
		if err != nil {
			return err
		}
		app, err = r.apps.GetTx(tx, id)
		if errors.Is(err, store.ErrNotFound) {
			return ErrBadToken
		}
		return err
	})
	if err != nil {
		return App{}, err
	}
	// Defence in depth: the index said so, the record must agree.
	if subtle.ConstantTimeCompare([]byte(app.TokenHash), []byte(h)) != 1 {
		return App{}, ErrBadToken
	}
	if app.Revoked() {
		return App{}, ErrRevoked
	}
	r.touch(ctx, app)
	return app, nil
}

// touch records that the app was seen, at most once per lastSeenEvery.
func (r *Registry) touch(ctx context.Context, app App) {
	now := r.now().UTC()
	r.seenMu.Lock()
	last, ok := r.seen[app.ID]
	if ok && now.Sub(last) < lastSeenEvery {
		r.seenMu.Unlock()
		return
	}
	r.seen[app.ID] = now
	r.seenMu.Unlock()
	_, _ = r.apps.Modify(ctx, app.ID, func(cur App, found bool) (App, error) {
		if !found || cur.Revoked() {
			return cur, errors.New("gone")
		}
		cur.LastSeenAt = &now
		return cur, nil
	})
}
