package config_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/medrelay/medrelay/internal/config"
)

// smart-2.2-client #1 #301: OAuth codes travel through public_url and the
// JWKS is served under it, so it must be https unless it is this machine.
func TestValidateRefusesPlainHTTPPublicURL(t *testing.T) {
	for url, ok := range map[string]bool{
		"https://medrelay.example.org": true,
		"http://127.0.0.1:8750":        true,
		"http://localhost:8750":        true,
		"http://medrelay.example.org":  false,
		"ftp://medrelay.example.org":   false,
		"medrelay.example.org":         false,
	} {
		c := config.Default()
		c.PublicURL = url
		err := c.Validate()
		if ok != (err == nil) {
			t.Errorf("%s: %v", url, err)
		}
		if err != nil && !errors.Is(err, config.ErrInvalid) {
			t.Errorf("%s: not ErrInvalid: %v", url, err)
		}
	}
}

func TestAdminAddrMustBeLoopback(t *testing.T) {
	c := config.Default()
	c.AdminAddr = "0.0.0.0:8751"
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Fatalf("%v", err)
	}
}

func TestLoadNamesUnknownKeysAndBadValues(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "medrelay.toml")
	os.WriteFile(p, []byte("http_addr = \"127.0.0.1:1\"\n[patient_access]\nsesion_ttl = \"1h\"\n"), 0o600)
	if _, err := config.Load(p, false); err == nil || !strings.Contains(err.Error(), "patient_access.sesion_ttl") {
		t.Fatalf("unknown key: %v", err)
	}
	os.WriteFile(p, []byte("shutdown_timeout = \"soon\"\n"), 0o600)
	if _, err := config.Load(p, false); err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Fatalf("bad duration: %v", err)
	}
	if _, err := config.Load(filepath.Join(dir, "absent.toml"), true); err != nil {
		t.Fatalf("an optional missing file is fine: %v", err)
	}
	if _, err := config.Load(filepath.Join(dir, "absent.toml"), false); err == nil {
		t.Fatal("a named missing file is an error")
	}
}

func TestMemoryLimitReadsSizes(t *testing.T) {
	p := filepath.Join(t.TempDir(), "medrelay.toml")
	for text, want := range map[string]config.Bytes{
		`"256MiB"`: 256 << 20,
		`"200MB"`:  200_000_000,
		`"1 GiB"`:  1 << 30,
		`"123456"`: 123456,
	} {
		os.WriteFile(p, []byte("memory_limit = "+text+"\n"), 0o600)
		c, err := config.Load(p, false)
		if err != nil || c.MemoryLimit != want {
			t.Errorf("memory_limit = %s: %d, %v; want %d", text, c.MemoryLimit, err, want)
		}
	}
	os.WriteFile(p, []byte("memory_limit = \"lots\"\n"), 0o600)
	if _, err := config.Load(p, false); err == nil || !strings.Contains(err.Error(), "line 1") || !strings.Contains(err.Error(), "lots") {
		t.Fatalf("a bad size names the line and the value: %v", err)
	}
	if config.Default().MemoryLimit != 0 {
		t.Fatal("no limit unless configured")
	}
}

// The configuration file is the administrator's, but a broken one must
// give an error, never a panic or a silently half-read config.
func FuzzLoad(f *testing.F) {
	f.Add("http_addr = \"127.0.0.1:8750\"\n[log]\nlevel = \"debug\"\n")
	f.Add("shutdown_timeout = \"10s\"\n[patient_access]\nsession_ttl = \"1h\"\n")
	f.Add("[tls]\ncert_file = 1\n")
	f.Add("unknown = true")
	f.Add("memory_limit = \"256MiB\"")
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, text string) {
		p := filepath.Join(dir, "medrelay.toml")
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := config.Load(p, false)
		if err == nil {
			_ = c.Validate()
		}
	})
}
