package importers

import (
	"fmt"
	"regexp"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Fasten Health's platform definitions are the only public per-vendor setup
// requirements we found. Importing one records the vendor's requirements;
// it adds no sources.

var fastenKey = regexp.MustCompile(`(?m)^platform_type:\s*\S`)

func isFasten(head string) bool { return fastenKey.MatchString(head) }

type fastenPlatform struct {
	PlatformType                      string   `yaml:"platform_type"`
	ScopesSupported                   []string `yaml:"scopes_supported"`
	GrantTypesSupported               []string `yaml:"grant_types_supported"`
	CodeChallengeMethodsSupported     []string `yaml:"code_challenge_methods_supported"`
	TokenEndpointAuthMethodsSupported []string `yaml:"token_endpoint_auth_methods_supported"`
	Confidential                      *bool    `yaml:"confidential"`
	Documentation                     string   `yaml:"documentation"`
}

// fastenVendors maps Fasten platform types to our vendor slugs where they
// differ.
var fastenVendors = map[string]string{
	"cerner":         "oraclehealth",
	"athena":         "athenahealth",
	"medicare":       "bluebutton",
	"allscripts":     "veradigm",
	"modmedema":      "modmed",
	"darena":         "meldrx",
	"maximeyes":      "firstinsight",
	"epic-legacy":    "epic",
	"tefca-epic":     "epic",
	"practicefusion": "practicefusion",
}

func parseFasten(data []byte) (*List, error) {
	var p fastenPlatform
	if err := yaml.Unmarshal(data, &p); err != nil {
		return nil, fmt.Errorf("%w: YAML: %v", ErrMalformed, err)
	}
	pt := strings.TrimSpace(p.PlatformType)
	if pt == "" {
		return nil, fmt.Errorf("%w: no platform_type", ErrMalformed)
	}
	vendor := fastenVendors[pt]
	if vendor == "" {
		vendor = slug(pt)
	}
	s := Setup{
		ClientAuthMethods: p.TokenEndpointAuthMethodsSupported,
		PKCEMethods:       p.CodeChallengeMethodsSupported,
		Confidential:      p.Confidential,
		Scopes:            p.ScopesSupported,
		GrantTypes:        p.GrantTypesSupported,
		Documentation:     strings.TrimSpace(p.Documentation),
	}
	l := &List{Format: FormatFasten, Title: "fasten:" + pt, Vendor: vendor, Rows: 1,
		Setups: []VendorSetup{{Vendor: vendor, Platform: pt, Setup: s}}}
	l.Notes = append(l.Notes, fmt.Sprintf("setup requirements for vendor %s (platform %s); no sources", vendor, pt))
	return l, nil
}
