//go:build windows

package home

import (
	"os"
	"path/filepath"
)

// Default is the layout of an agent installed as a Windows service.
func Default() Layout {
	pd := os.Getenv("ProgramData")
	if pd == "" {
		pd = `C:\ProgramData`
	}
	base := filepath.Join(pd, "medrelay")
	return Layout{
		StateDir:   base,
		StoreDir:   filepath.Join(base, "store"),
		RecordsDir: filepath.Join(base, "records"),
		KeyFile:    filepath.Join(base, "master.key"),
		SocketDir:  base,
		Socket:     DefaultSocket,
		ConfigFile: filepath.Join(base, "medrelay.toml"),
		PluginDir:  filepath.Join(os.Getenv("ProgramFiles"), "medrelay", "plugins"),
		LockFile:   filepath.Join(base, "medrelayd.lock"),
	}
}

// DefaultSocket is the agent's named pipe.
const DefaultSocket = `\\.\pipe\medrelay`

// socketPath gives each --home agent its own pipe, named after the directory
// so two agents on one machine do not collide.
func socketPath(home string) string {
	return `\\.\pipe\medrelay-` + filepath.Base(home)
}
