// Package home owns the agent's directories: where the store, the master key,
// the socket, the config and the plugins live, their permissions, and the
// lock that keeps a second agent off the same state.
//
// Two layouts exist. With --home DIR everything of one agent is under DIR
// (development, tests, several agents on one machine). Without it the
// operating system's conventional places are used (see default_*.go).
package home

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/medrelay/medrelay/internal/secrets"
)

// Layout is where one agent keeps its files.
type Layout struct {
	// Home is set only for the --home layout.
	Home string
	// StateDir holds the store and, by default, the master key. 0700.
	StateDir string
	StoreDir string
	// RecordsDir holds the bodies of stored records (encrypted segment
	// files; the store indexes them). 0700. Back it up with StoreDir.
	RecordsDir string
	KeyFile    string
	// SocketDir holds the socket. 0750 so that the admin group can reach it.
	SocketDir  string
	Socket     string
	ConfigFile string
	PluginDir  string
	LockFile   string
}

// ForHome is the layout of an agent whose files all live under dir.
func ForHome(dir string) (Layout, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return Layout{}, fmt.Errorf("home %s: %w", dir, err)
	}
	return Layout{
		Home:       abs,
		StateDir:   abs,
		StoreDir:   filepath.Join(abs, "store"),
		RecordsDir: filepath.Join(abs, "records"),
		KeyFile:    filepath.Join(abs, "master.key"),
		SocketDir:  abs,
		Socket:     socketPath(abs),
		ConfigFile: filepath.Join(abs, "medrelay.toml"),
		PluginDir:  filepath.Join(abs, "plugins"),
		LockFile:   filepath.Join(abs, "medrelayd.lock"),
	}, nil
}

// Prepare creates the directories with their modes and refuses state that
// other users could read. In the --home layout the home directory doubles as
// the socket directory (0750); the store directory inside it is 0700.
func (l Layout) Prepare() error {
	if l.Home != "" {
		if err := mkdir(l.Home, 0o750); err != nil {
			return err
		}
	} else {
		if err := mkdir(l.StateDir, 0o700); err != nil {
			return err
		}
		if err := secrets.CheckPrivateDir(l.StateDir); err != nil {
			return fmt.Errorf("state directory: %w", err)
		}
		if err := mkdir(l.SocketDir, 0o750); err != nil {
			return err
		}
	}
	if err := mkdir(l.StoreDir, 0o700); err != nil {
		return err
	}
	if err := secrets.CheckPrivateDir(l.StoreDir); err != nil {
		return fmt.Errorf("store directory: %w", err)
	}
	if l.RecordsDir != "" {
		if err := mkdir(l.RecordsDir, 0o700); err != nil {
			return err
		}
		if err := secrets.CheckPrivateDir(l.RecordsDir); err != nil {
			return fmt.Errorf("records directory: %w", err)
		}
	}
	return nil
}

func mkdir(dir string, mode os.FileMode) error {
	err := os.Mkdir(dir, mode)
	if err == nil {
		// Mkdir is subject to the umask; set the mode we mean.
		return os.Chmod(dir, mode)
	}
	if errors.Is(err, os.ErrExist) {
		return nil
	}
	if errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
			return fmt.Errorf("create %s: %w", filepath.Dir(dir), err)
		}
		return mkdir(dir, mode)
	}
	return fmt.Errorf("create %s: %w", dir, err)
}
