// Package secrets owns the agent's master key and everything derived from it:
// the store's encryption key, sealing of values that leave the store (backups,
// exported state), and the Value type that keeps secrets out of logs.
//
// Losing the master key means losing the store: there is no recovery. The
// administrator's guide says so, and tells how to back the key up.
package secrets

import (
	"bytes"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
)

// KeySize is the size of the master key in bytes.
const KeySize = 32

// EnvMasterKey names the environment variable that may carry the master key
// (base64 or hex of 32 bytes) instead of the key file.
const EnvMasterKey = "MEDRELAY_MASTER_KEY"

// CredentialName is the systemd credential (LoadCredential=) holding the key.
const CredentialName = "medrelay-master-key"

// Sentinel errors.
var (
	ErrInsecure = errors.New("insecure permissions")
	ErrBadKey   = errors.New("invalid master key")
)

// Keyring holds the master key in memory and derives purpose-bound keys from
// it, so a key used for one thing (the store) is never used for another.
type Keyring struct {
	master [KeySize]byte
	// Origin says where the key came from (for status and logs, never the key).
	Origin string
}

// Load finds the master key: the environment variable, then a systemd
// credential, then keyFile. When none exists and create is true a new random
// key is written to keyFile with mode 0600. The key file and its directory
// must not be accessible to group or others.
func Load(keyFile string, create bool) (*Keyring, bool, error) {
	if v, ok := os.LookupEnv(EnvMasterKey); ok {
		k, err := parseKey([]byte(v))
		if err != nil {
			return nil, false, fmt.Errorf("%s: %w", EnvMasterKey, err)
		}
		return &Keyring{master: k, Origin: "environment " + EnvMasterKey}, false, nil
	}
	if dir := os.Getenv("CREDENTIALS_DIRECTORY"); dir != "" {
		p := filepath.Join(dir, CredentialName)
		if b, err := os.ReadFile(p); err == nil {
			k, err := parseKey(b)
			if err != nil {
				return nil, false, fmt.Errorf("systemd credential %s: %w", p, err)
			}
			return &Keyring{master: k, Origin: "systemd credential " + CredentialName}, false, nil
		}
	}
	b, err := os.ReadFile(keyFile)
	switch {
	case err == nil:
		if err := CheckPrivateFile(keyFile); err != nil {
			return nil, false, err
		}
		k, err := parseKey(b)
		if err != nil {
			return nil, false, fmt.Errorf("master key %s: %w", keyFile, err)
		}
		return &Keyring{master: k, Origin: "file " + keyFile}, false, nil
	case errors.Is(err, fs.ErrNotExist) && create:
		kr, err := create32(keyFile)
		return kr, err == nil, err
	case errors.Is(err, fs.ErrNotExist):
		return nil, false, fmt.Errorf("master key %s does not exist: %w", keyFile, err)
	default:
		return nil, false, fmt.Errorf("master key %s: %w", keyFile, err)
	}
}

func create32(keyFile string) (*Keyring, error) {
	var k [KeySize]byte
	if _, err := rand.Read(k[:]); err != nil {
		return nil, fmt.Errorf("generate master key: %w", err)
	}
	// O_EXCL: two agents racing to create the key must not end up with two keys.
	f, err := os.OpenFile(keyFile, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create master key %s: %w", keyFile, err)
	}
	enc := base64.StdEncoding.EncodeToString(k[:]) + "\n"
	if _, err := f.WriteString(enc); err != nil {
		f.Close()
		os.Remove(keyFile)
		return nil, fmt.Errorf("write master key %s: %w", keyFile, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(keyFile)
		return nil, fmt.Errorf("write master key %s: %w", keyFile, err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("write master key %s: %w", keyFile, err)
	}
	return &Keyring{master: k, Origin: "file " + keyFile}, nil
}

// parseKey accepts 32 raw bytes, or their base64 or hex encoding, with
// surrounding whitespace.
func parseKey(b []byte) ([KeySize]byte, error) {
	var k [KeySize]byte
	if len(b) == KeySize {
		copy(k[:], b)
		return k, nil
	}
	s := strings.TrimSpace(string(b))
	if raw, err := base64.StdEncoding.DecodeString(s); err == nil && len(raw) == KeySize {
		copy(k[:], raw)
		return k, nil
	}
	if raw, err := hex.DecodeString(s); err == nil && len(raw) == KeySize {
		copy(k[:], raw)
		return k, nil
	}
	return k, fmt.Errorf("%w: want %d bytes as base64 or hex", ErrBadKey, KeySize)
}

// NewKeyring wraps a key the caller already has (tests, key rotation tools).
func NewKeyring(master []byte) (*Keyring, error) {
	k, err := parseKey(master)
	if err != nil {
		return nil, err
	}
	return &Keyring{master: k, Origin: "given"}, nil
}

// Derive returns a 32-byte key bound to purpose (HKDF-SHA256). Changing a
// purpose string makes everything encrypted under it unreadable.
func (k *Keyring) Derive(purpose string) []byte {
	out, err := hkdf.Key(sha256.New, k.master[:], nil, "medrelay/"+purpose, 32)
	if err != nil {
		// Only possible for lengths HKDF cannot produce; 32 always works.
		panic(err)
	}
	return out
}

// StoreKey is the key Badger encrypts the store with.
func (k *Keyring) StoreKey() []byte { return k.Derive("store/v1") }

// Fingerprint identifies the key without revealing it (status output).
func (k *Keyring) Fingerprint() string {
	h := sha256.Sum256(k.Derive("fingerprint/v1"))
	return hex.EncodeToString(h[:6])
}

// Equal reports whether two keyrings hold the same master key.
func (k *Keyring) Equal(o *Keyring) bool { return bytes.Equal(k.master[:], o.master[:]) }

// CheckPrivateFile refuses a file that group or others can read or write.
func CheckPrivateFile(path string) error {
	return checkMode(path, false)
}

// CheckPrivateDir refuses a directory that group or others can access.
func CheckPrivateDir(path string) error {
	return checkMode(path, true)
}

func checkMode(path string, dir bool) error {
	if runtime.GOOS == "windows" {
		// Mode bits mean nothing on Windows; the installer sets ACLs.
		return nil
	}
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if dir != fi.IsDir() {
		return fmt.Errorf("%s: unexpected file type %s", path, fi.Mode().Type())
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		want := "0600"
		if dir {
			want = "0700"
		}
		return fmt.Errorf("%w: %s has mode %04o, readable by group or others; run: chmod %s %s",
			ErrInsecure, path, perm, want, path)
	}
	return nil
}
