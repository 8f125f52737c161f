package secrets_test

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/medrelay/medrelay/internal/secrets"
)

func TestCreateThenLoadSameKey(t *testing.T) {
	t.Setenv(secrets.EnvMasterKey, "")
	os.Unsetenv(secrets.EnvMasterKey)
	t.Setenv("CREDENTIALS_DIRECTORY", "")
	dir := t.TempDir()
	p := filepath.Join(dir, "master.key")
	k1, created, err := secrets.Load(p, true)
	if err != nil || !created {
		t.Fatalf("create: %v created=%v", err, created)
	}
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %o, want 0600", fi.Mode().Perm())
	}
	k2, created, err := secrets.Load(p, true)
	if err != nil || created {
		t.Fatalf("reload: %v created=%v", err, created)
	}
	if !k1.Equal(k2) || !bytes.Equal(k1.StoreKey(), k2.StoreKey()) {
		t.Fatal("reloaded key differs")
	}
	if bytes.Equal(k1.StoreKey(), k1.Derive("other")) {
		t.Fatal("purposes derive the same key")
	}
}

func TestRefusesKeyReadableByOthers(t *testing.T) {
	os.Unsetenv(secrets.EnvMasterKey)
	dir := t.TempDir()
	p := filepath.Join(dir, "master.key")
	if _, _, err := secrets.Load(p, true); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []os.FileMode{0o640, 0o604, 0o644} {
		os.Chmod(p, mode)
		_, _, err := secrets.Load(p, true)
		if !errors.Is(err, secrets.ErrInsecure) {
			t.Fatalf("mode %o: %v, want ErrInsecure", mode, err)
		}
		if !strings.Contains(err.Error(), "chmod 0600") {
			t.Fatalf("error does not say how to fix it: %v", err)
		}
	}
	os.Chmod(dir, 0o700)
	if err := secrets.CheckPrivateDir(dir); err != nil {
		t.Fatalf("0700 temp dir refused: %v", err)
	}
	os.Chmod(dir, 0o750)
	defer os.Chmod(dir, 0o700)
	if err := secrets.CheckPrivateDir(dir); !errors.Is(err, secrets.ErrInsecure) {
		t.Fatalf("group-readable dir: %v, want ErrInsecure", err)
	}
}

func TestKeyFromEnvironment(t *testing.T) {
	raw := bytes.Repeat([]byte{0xab}, 32)
	t.Setenv(secrets.EnvMasterKey, base64.StdEncoding.EncodeToString(raw))
	k, created, err := secrets.Load(filepath.Join(t.TempDir(), "absent"), true)
	if err != nil || created {
		t.Fatalf("%v created=%v", err, created)
	}
	want, _ := secrets.NewKeyring(raw)
	if !k.Equal(want) {
		t.Fatal("env key not used")
	}
	t.Setenv(secrets.EnvMasterKey, "tooshort")
	if _, _, err := secrets.Load("x", true); !errors.Is(err, secrets.ErrBadKey) {
		t.Fatalf("bad env key: %v", err)
	}
}

func TestValueNeverPrints(t *testing.T) {
	v := secrets.Value("SENTINEL-4711")
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	log.Info("x", "secret", v, "struct", struct{ S secrets.Value }{v})
	out := buf.String() + fmt.Sprintf("%v %s %+v %#v %q", v, v, v, v, v)
	if strings.Contains(out, "SENTINEL") {
		t.Fatalf("secret leaked: %s", out)
	}
	if v.Reveal() != "SENTINEL-4711" {
		t.Fatal("Reveal lost the value")
	}
}

func TestSealerRoundTripAndTamper(t *testing.T) {
	k, _ := secrets.NewKeyring(bytes.Repeat([]byte{1}, 32))
	s := k.Sealer("backup")
	sealed := s.Seal([]byte("hello"), []byte("ad"))
	if out, err := s.Open(sealed, []byte("ad")); err != nil || string(out) != "hello" {
		t.Fatalf("open: %q %v", out, err)
	}
	sealed[len(sealed)-1] ^= 1
	if _, err := s.Open(sealed, []byte("ad")); !errors.Is(err, secrets.ErrOpen) {
		t.Fatalf("tampered: %v", err)
	}
	if _, err := k.Sealer("other").Open(s.Seal([]byte("x"), nil), nil); !errors.Is(err, secrets.ErrOpen) {
		t.Fatal("a sealer for another purpose opened it")
	}
}
