//go:build unix

package pluginhost

import (
	"path/filepath"
	"testing"
)

// Manifests are read from a directory an administrator fills: bad ones get
// an error, never a path outside the directory.
func FuzzParseManifest(f *testing.F) {
	f.Add([]byte(`{"name":"epic","version":"1.0","binary":"medrelay-plugin-epic","sha256":"` + "ab" + `","protocol_versions":[1]}`))
	f.Add([]byte(`{"name":"epic","sha256":"0000000000000000000000000000000000000000000000000000000000000000"}`))
	f.Add([]byte(`{"name":"x","binary":"../../bin/sh","sha256":"0000000000000000000000000000000000000000000000000000000000000000"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseManifest(b)
		if err != nil {
			return
		}
		if m.Binary != filepath.Base(m.Binary) || m.Binary == ".." || len(m.SHA256) != 64 || !nameRE.MatchString(m.Name) {
			t.Fatalf("accepted %+v", m)
		}
	})
}
