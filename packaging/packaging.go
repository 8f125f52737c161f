// Package packaging builds the .deb and .rpm (nfpm, as a library) from
// nfpm.yaml and the binaries in a bin directory. `make package` runs it
// through cmd/mkpkg; the tests run it on freshly built binaries and read
// the packages back.
package packaging

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/goreleaser/nfpm/v2"
	_ "github.com/goreleaser/nfpm/v2/deb" // registers the deb packager
	"github.com/goreleaser/nfpm/v2/files"
	_ "github.com/goreleaser/nfpm/v2/rpm" // registers the rpm packager
)

// Options of Build.
type Options struct {
	// Root is the repository root (nfpm.yaml paths are relative to it).
	Root string
	// BinDir replaces "bin/" in nfpm.yaml (default Root/bin).
	BinDir  string
	OutDir  string
	Version string
	Arch    string // amd64, arm64
	Formats []string
}

// Build writes one package per format into OutDir and returns their paths.
func Build(o Options) ([]string, error) {
	if o.BinDir == "" {
		o.BinDir = filepath.Join(o.Root, "bin")
	}
	if len(o.Formats) == 0 {
		o.Formats = []string{"deb", "rpm"}
	}
	version := strings.TrimPrefix(o.Version, "v")
	if version == "" || version[0] < '0' || version[0] > '9' {
		// deb and rpm versions start with a digit; a git describe of an
		// untagged tree ("53cfadf-dirty") sorts before any release.
		version = "0.0.0~" + strings.NewReplacer("-", ".").Replace(cmpOr(version, "dev"))
	}
	env := map[string]string{"VERSION": version, "ARCH": o.Arch}
	cfg, err := nfpm.ParseFileWithEnvMapping(filepath.Join(o.Root, "packaging", "nfpm.yaml"), func(k string) string { return env[k] })
	if err != nil {
		return nil, fmt.Errorf("nfpm.yaml: %w", err)
	}
	var contents files.Contents
	for _, c := range cfg.Contents {
		if c.Source != "" {
			if rest, ok := strings.CutPrefix(c.Source, "bin/"); ok {
				c.Source = filepath.Join(o.BinDir, rest)
			} else {
				c.Source = filepath.Join(o.Root, c.Source)
			}
			// An optional glob (no plugins built) is left out, not an error.
			if strings.Contains(c.Source, "*") {
				if m, _ := filepath.Glob(c.Source); len(m) == 0 {
					continue
				}
			}
		}
		contents = append(contents, c)
	}
	cfg.Contents = contents
	for _, s := range []*string{&cfg.Scripts.PreInstall, &cfg.Scripts.PostInstall, &cfg.Scripts.PreRemove, &cfg.Scripts.PostRemove} {
		if *s != "" {
			*s = filepath.Join(o.Root, *s)
		}
	}
	if err := os.MkdirAll(o.OutDir, 0o755); err != nil {
		return nil, err
	}
	var out []string
	for _, format := range o.Formats {
		info, err := cfg.Get(format)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", format, err)
		}
		info = nfpm.WithDefaults(info)
		if err := nfpm.PrepareForPackager(info, format); err != nil {
			return nil, fmt.Errorf("%s: %w", format, err)
		}
		pkgr, err := nfpm.Get(format)
		if err != nil {
			return nil, err
		}
		path := filepath.Join(o.OutDir, pkgr.ConventionalFileName(info))
		f, err := os.Create(path)
		if err != nil {
			return nil, err
		}
		if err := pkgr.Package(info, f); err != nil {
			f.Close()
			return nil, fmt.Errorf("%s: %w", format, err)
		}
		if err := f.Close(); err != nil {
			return nil, err
		}
		out = append(out, path)
	}
	return out, nil
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
