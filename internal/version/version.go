// Package version reports the agent's version, set at build time with
//
//	-ldflags "-X github.com/medrelay/medrelay/internal/version.Version=v1.2.3"
package version

import "runtime/debug"

// Version is overwritten by the linker in release builds.
var Version = ""

// String is the version, falling back to the VCS revision the binary was
// built from, then "dev".
func String() string {
	if Version != "" {
		return Version
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		if bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			return bi.Main.Version
		}
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				return "dev-" + s.Value[:12]
			}
		}
	}
	return "dev"
}
