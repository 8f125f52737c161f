//go:build !windows

package home

import "path/filepath"

// Default is the layout of an agent installed as an OS service.
func Default() Layout {
	return Layout{
		StateDir:   "/var/lib/medrelay",
		StoreDir:   "/var/lib/medrelay/store",
		RecordsDir: "/var/lib/medrelay/records",
		KeyFile:    "/var/lib/medrelay/master.key",
		SocketDir:  "/run/medrelay",
		Socket:     DefaultSocket,
		ConfigFile: "/etc/medrelay/medrelay.toml",
		PluginDir:  "/usr/lib/medrelay/plugins",
		LockFile:   "/var/lib/medrelay/medrelayd.lock",
	}
}

// DefaultSocket is where the installed agent listens. agent/client carries
// the same constant; a test keeps them equal.
const DefaultSocket = "/run/medrelay/medrelay.sock"

func socketPath(home string) string { return filepath.Join(home, "medrelay.sock") }
