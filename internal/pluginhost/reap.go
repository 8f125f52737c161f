package pluginhost

import (
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// pidFile records a running plugin process so that an agent that was killed
// (and whose plugins somehow outlived it) can kill them at its next start.
type pidFile struct {
	PID     int       `json:"pid"`
	Path    string    `json:"path"`
	Started time.Time `json:"started"`
}

func (h *Host) pidPath(name string) string {
	return filepath.Join(h.opts.StateDir, "plugins", name+".pid")
}

func (h *Host) writePid(name string, pid int, path string) {
	if h.opts.StateDir == "" || pid <= 0 {
		return
	}
	dir := filepath.Join(h.opts.StateDir, "plugins")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		h.log.Warn("plugin pid file", "err", err)
		return
	}
	b, _ := json.Marshal(pidFile{PID: pid, Path: path, Started: time.Now()})
	if err := os.WriteFile(h.pidPath(name), b, 0o600); err != nil {
		h.log.Warn("plugin pid file", "err", err)
	}
}

func (h *Host) removePid(name string) {
	if h.opts.StateDir == "" {
		return
	}
	_ = os.Remove(h.pidPath(name))
}

// reapOrphans kills plugin processes recorded by a previous agent that are
// still running the same executable, and removes their pid files.
func (h *Host) reapOrphans() {
	if h.opts.StateDir == "" {
		return
	}
	dir := filepath.Join(h.opts.StateDir, "plugins")
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	if err != nil {
		h.log.Warn("reading plugin pid files", "err", err)
		return
	}
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".pid") {
			continue
		}
		path := filepath.Join(dir, e.Name())
		b, err := os.ReadFile(path)
		var pf pidFile
		if err == nil {
			err = json.Unmarshal(b, &pf)
		}
		if err != nil || pf.PID <= 1 || pf.PID == os.Getpid() {
			_ = os.Remove(path)
			continue
		}
		killed, err := killIfRunning(pf.PID, pf.Path)
		switch {
		case err != nil:
			h.log.Warn("could not reap orphaned plugin", "pid", pf.PID, "path", pf.Path, "err", err)
		case killed:
			h.log.Warn("killed orphaned plugin left by a previous agent", "plugin", strings.TrimSuffix(e.Name(), ".pid"), "pid", pf.PID, "path", pf.Path)
		}
		_ = os.Remove(path)
	}
}

var errNotVerifiable = errors.New("cannot verify the process's executable on this system")
