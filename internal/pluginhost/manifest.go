package pluginhost

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

// BinaryPrefix starts every plugin binary's name: medrelay-plugin-<name>.
const BinaryPrefix = "medrelay-plugin-"

// Manifest is <binary>.json beside each plugin binary, as written by
// `medrelay-plugin-NAME manifest --write` (plugins/sdk).
type Manifest struct {
	Name             string `json:"name"`
	Version          string `json:"version"`
	Binary           string `json:"binary"`
	SHA256           string `json:"sha256"`
	ProtocolVersions []int  `json:"protocol_versions"`
	SDKVersion       string `json:"sdk_version"`
}

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

// ParseManifest reads and checks a manifest.
func ParseManifest(b []byte) (Manifest, error) {
	var m Manifest
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&m); err != nil {
		return m, fmt.Errorf("%w: %v", ErrManifest, err)
	}
	if !nameRE.MatchString(m.Name) {
		return m, fmt.Errorf("%w: name %q (want lower-case letters, digits, - and _)", ErrManifest, m.Name)
	}
	if m.Binary == "" {
		m.Binary = BinaryPrefix + m.Name
	}
	if m.Binary != filepath.Base(m.Binary) || m.Binary == "." || m.Binary == ".." {
		return m, fmt.Errorf("%w: binary %q must be a file name in the plugin directory", ErrManifest, m.Binary)
	}
	sum, err := hex.DecodeString(m.SHA256)
	if err != nil || len(sum) != 32 {
		return m, fmt.Errorf("%w: sha256 %q is not 64 hex digits", ErrManifest, m.SHA256)
	}
	m.SHA256 = strings.ToLower(m.SHA256)
	return m, nil
}

// candidate is one plugin found in the directory: its manifest, or why it
// cannot be used.
type candidate struct {
	name     string
	path     string
	manifest Manifest
	err      error
}

// discover lists the plugins in dir: every medrelay-plugin-* binary and its
// manifest. A manifest without a binary, or a binary without a manifest, is
// reported (as a failed plugin), not skipped in silence.
func discover(dir string) ([]candidate, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("plugin directory: %w", err)
	}
	if err := checkWritable(dir); err != nil {
		return nil, err
	}
	manifests := map[string]*candidate{}
	binaries := map[string]string{}
	for _, e := range entries {
		n := e.Name()
		if !strings.HasPrefix(n, BinaryPrefix) || e.IsDir() {
			continue
		}
		path := filepath.Join(dir, n)
		switch {
		case strings.HasSuffix(n, ".json"):
			c := &candidate{name: strings.TrimPrefix(strings.TrimSuffix(n, ".json"), BinaryPrefix)}
			b, err := os.ReadFile(path)
			if err != nil {
				c.err = fmt.Errorf("%w: %v", ErrManifest, err)
			} else if c.manifest, c.err = ParseManifest(b); c.err == nil {
				c.name = c.manifest.Name
				c.path = filepath.Join(dir, c.manifest.Binary)
				if c.manifest.Binary+".json" != n {
					c.err = fmt.Errorf("%w: %s names binary %s; the manifest must be <binary>.json", ErrManifest, n, c.manifest.Binary)
				}
			}
			if prev, ok := manifests[c.name]; ok {
				if prev.err == nil {
					prev.err = fmt.Errorf("%w: two manifests name plugin %q", ErrManifest, c.name)
				}
				continue
			}
			manifests[c.name] = c
		case strings.HasSuffix(n, "~"), strings.HasPrefix(n, "."):
		default:
			binaries[strings.TrimSuffix(strings.TrimPrefix(n, BinaryPrefix), ".exe")] = path
		}
	}
	var out []candidate
	for _, c := range manifests {
		if c.path == "" {
			c.path = filepath.Join(dir, BinaryPrefix+c.name)
		}
		if c.err == nil {
			if _, err := os.Stat(c.path); errors.Is(err, fs.ErrNotExist) {
				c.err = fmt.Errorf("%w: the manifest names binary %s, which is not in the plugin directory", ErrManifest, c.manifest.Binary)
			} else if err != nil {
				c.err = fmt.Errorf("%w: binary %s: %v", ErrManifest, c.manifest.Binary, err)
			} else if err := checkWritable(c.path); err != nil {
				c.err = err
			}
		}
		out = append(out, *c)
	}
	for name, path := range binaries {
		if _, ok := manifests[name]; ok {
			continue
		}
		covered := false
		for _, c := range manifests {
			if c.path == path {
				covered = true
			}
		}
		if !covered {
			b := filepath.Base(path)
			out = append(out, candidate{name: name, path: path,
				err: fmt.Errorf("%w: %s has no manifest %s.json (write one with `%s manifest --write`)", ErrManifest, b, b, b)})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out, nil
}
