// Package sandbox is medrelay-sandbox: a local EHR that plays the server side
// of SMART App Launch, Backend Services, FHIR R4 REST and Bulk Data, with
// synthetic patients, vendor profiles and injectable faults.
package sandbox

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// Profile names of the built-in vendor profiles.
const (
	ProfileGeneric        = "generic"
	ProfileEpic           = "epic"
	ProfileOracleHealth   = "oraclehealth"
	ProfileBlueButton     = "bluebutton"
	ProfileAthenahealth   = "athenahealth"
	ProfileEClinicalWorks = "eclinicalworks"
)

// Profiles lists every built-in profile; by default one tenant per profile is
// served, named like the profile.
var Profiles = []string{ProfileGeneric, ProfileEpic, ProfileOracleHealth, ProfileBlueButton, ProfileAthenahealth, ProfileEClinicalWorks}

// Sentinel errors.
var (
	ErrUnknownTenant = errors.New("sandbox: unknown tenant")
	ErrBadClient     = errors.New("sandbox: invalid client registration")
	ErrBadConfig     = errors.New("sandbox: invalid config")
	ErrBadFaults     = errors.New("sandbox: invalid faults")
)

// Config configures a sandbox. The zero value is usable: every field has a
// default. It can be loaded from TOML or JSON with LoadConfig.
type Config struct {
	// Addr to listen on; default 127.0.0.1:9100. "127.0.0.1:0" picks a free port.
	Addr string `json:"addr" toml:"addr"`
	// Patients per tenant; default 10.
	Patients int `json:"patients" toml:"patients"`
	// Seed of the synthetic data; same seed, same bytes.
	Seed int64 `json:"seed" toml:"seed"`
	// AutoApprove skips the login/consent page: authorize redirects at once as
	// the patient named by login_hint (or the first patient).
	AutoApprove bool `json:"auto_approve" toml:"auto_approve"`
	// OpenRegistration accepts any unknown client id as a public client with
	// any redirect URI (demos).
	OpenRegistration bool `json:"open_registration" toml:"open_registration"`
	// TokenPrefix starts every authorization code, access token and refresh
	// token the sandbox issues, so that tests can scan logs and files for
	// leaked tokens (e.g. "SENTINEL-").
	TokenPrefix string `json:"token_prefix,omitempty" toml:"token_prefix"`
	// TLS serves HTTPS with a self-signed certificate generated at start.
	TLS bool `json:"tls" toml:"tls"`
	// Tenants served; default one per built-in profile, named like it.
	Tenants []TenantConfig `json:"tenants" toml:"tenants"`
	// Clients registered at start.
	Clients []ClientConfig `json:"clients" toml:"clients"`
	// Faults active from the start.
	Faults []Faults `json:"faults" toml:"faults"`
	// BulkFileResources is the most resources one NDJSON output file holds;
	// default 50000.
	BulkFileResources int `json:"bulk_file_resources" toml:"bulk_file_resources"`
	// BulkFileTTL is how long export files stay downloadable; default 1h.
	BulkFileTTL Duration `json:"bulk_file_ttl" toml:"bulk_file_ttl"`
	// BulkRetryAfter is the Retry-After the status endpoint answers while an
	// export is in progress, in seconds; default 1.
	BulkRetryAfter int `json:"bulk_retry_after" toml:"bulk_retry_after"`
	// BulkMinDuration keeps every export "in progress" at least this long so
	// that polling can be exercised; default 0.
	BulkMinDuration Duration `json:"bulk_min_duration" toml:"bulk_min_duration"`
	// PageSize is the default search page size; default 50.
	PageSize int `json:"page_size" toml:"page_size"`
	// Now is the clock; default time.Now. Tests may move it.
	Now func() time.Time `json:"-" toml:"-"`
	// Logger; default discards.
	Logger Logger `json:"-" toml:"-"`
}

// Logger is the subset of *slog.Logger the sandbox uses.
type Logger interface {
	Debug(msg string, args ...any)
	Info(msg string, args ...any)
	Warn(msg string, args ...any)
}

// TenantConfig is one EHR served by the sandbox at {base}/{Name}/fhir.
type TenantConfig struct {
	Name    string `json:"name" toml:"name"`
	Profile string `json:"profile" toml:"profile"` // one of Profiles; default generic
	// Patients overrides Config.Patients for this tenant.
	Patients int `json:"patients,omitempty" toml:"patients"`
	// RequiresAccessToken for bulk files; nil uses true.
	RequiresAccessToken *bool `json:"requires_access_token,omitempty" toml:"requires_access_token"`
	// RotateRefreshTokens overrides the profile's default.
	RotateRefreshTokens *bool `json:"rotate_refresh_tokens,omitempty" toml:"rotate_refresh_tokens"`
	// AccessTokenLifetime overrides the profile's default.
	AccessTokenLifetime Duration `json:"access_token_lifetime,omitempty" toml:"access_token_lifetime"`
	// RefreshReuseGrace lets a client present a rotated refresh token again
	// within this window if it never used the token it was rotated to (it
	// crashed before storing it), as Okta's and Auth0's grace periods do.
	// 0 (default) treats every reuse as theft and revokes the grant.
	RefreshReuseGrace Duration `json:"refresh_reuse_grace,omitempty" toml:"refresh_reuse_grace"`
}

// ClientConfig registers an OAuth client with a tenant.
type ClientConfig struct {
	// Tenant the client belongs to; "" or "*" registers it with every tenant.
	Tenant       string   `json:"tenant,omitempty" toml:"tenant"`
	ClientID     string   `json:"client_id" toml:"client_id"`
	RedirectURIs []string `json:"redirect_uris,omitempty" toml:"redirect_uris"`
	// LaunchURLs the EHR may launch the app at (EHR launch).
	LaunchURLs []string `json:"launch_urls,omitempty" toml:"launch_urls"`
	// Scope is the most the client may be granted; "" allows anything.
	Scope string `json:"scope,omitempty" toml:"scope"`
	// ClientSecret makes it a confidential symmetric client (client_secret_basic/post).
	ClientSecret string `json:"client_secret,omitempty" toml:"client_secret"`
	// JWKSURL or JWKS make it a confidential asymmetric client (private_key_jwt).
	JWKSURL string          `json:"jwks_url,omitempty" toml:"jwks_url"`
	JWKS    json.RawMessage `json:"jwks,omitempty" toml:"-"`
	// JWKSText is JWKS as a string, for TOML configs.
	JWKSText string `json:"-" toml:"jwks"`
}

// Confidential reports whether the client authenticates at the token endpoint.
func (c ClientConfig) Confidential() bool {
	return c.ClientSecret != "" || c.JWKSURL != "" || len(c.JWKS) > 0
}

// Duration is a time.Duration that reads "10m" or a number of seconds from
// JSON and TOML.
type Duration time.Duration

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	s := strings.TrimSpace(string(b))
	if s == "" {
		*d = 0
		return nil
	}
	if v, err := time.ParseDuration(s); err == nil {
		*d = Duration(v)
		return nil
	}
	var secs float64
	if _, err := fmt.Sscanf(s, "%g", &secs); err != nil {
		return fmt.Errorf("%w: duration %q", ErrBadConfig, s)
	}
	*d = Duration(secs * float64(time.Second))
	return nil
}

// UnmarshalJSON accepts a string ("10m") or a number of seconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	s := strings.Trim(string(b), `"`)
	return d.UnmarshalText([]byte(s))
}

// MarshalJSON writes the duration as a Go duration string.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// LoadConfig reads a TOML (.toml) or JSON file into cfg, keeping fields the
// file does not set.
func LoadConfig(path string, cfg *Config) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrBadConfig, err)
	}
	if strings.EqualFold(filepath.Ext(path), ".toml") {
		if _, err := toml.Decode(string(b), cfg); err != nil {
			return fmt.Errorf("%w: %s: %w", ErrBadConfig, path, err)
		}
	} else if err := json.Unmarshal(b, cfg); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrBadConfig, path, err)
	}
	for i := range cfg.Clients {
		if cfg.Clients[i].JWKSText != "" && len(cfg.Clients[i].JWKS) == 0 {
			cfg.Clients[i].JWKS = json.RawMessage(cfg.Clients[i].JWKSText)
		}
	}
	return nil
}

func (c *Config) setDefaults() error {
	if c.Addr == "" {
		c.Addr = "127.0.0.1:9100"
	}
	if c.Patients <= 0 {
		c.Patients = 10
	}
	if c.BulkFileResources <= 0 {
		c.BulkFileResources = 50000
	}
	if c.BulkFileTTL <= 0 {
		c.BulkFileTTL = Duration(time.Hour)
	}
	if c.BulkRetryAfter <= 0 {
		c.BulkRetryAfter = 1
	}
	if c.PageSize <= 0 {
		c.PageSize = 50
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = nopLogger{}
	}
	if len(c.Tenants) == 0 {
		for _, p := range Profiles {
			c.Tenants = append(c.Tenants, TenantConfig{Name: p, Profile: p})
		}
	}
	seen := map[string]bool{}
	for i := range c.Tenants {
		t := &c.Tenants[i]
		if t.Profile == "" {
			t.Profile = ProfileGeneric
		}
		if !validName(t.Name) {
			return fmt.Errorf("%w: tenant name %q", ErrBadConfig, t.Name)
		}
		if _, ok := profiles[t.Profile]; !ok {
			return fmt.Errorf("%w: tenant %s: unknown profile %q", ErrBadConfig, t.Name, t.Profile)
		}
		if seen[t.Name] || t.Name == "admin" {
			return fmt.Errorf("%w: duplicate or reserved tenant %q", ErrBadConfig, t.Name)
		}
		seen[t.Name] = true
	}
	return nil
}

func validName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return false
		}
	}
	return true
}

type nopLogger struct{}

func (nopLogger) Debug(string, ...any) {}
func (nopLogger) Info(string, ...any)  {}
func (nopLogger) Warn(string, ...any)  {}
