package pluginhost

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// killIfRunning SIGKILLs pid if it still runs the executable at path. The
// check against /proc/<pid>/exe keeps a recycled pid (some other program)
// safe.
func killIfRunning(pid int, path string) (bool, error) {
	exe, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	// A binary replaced since the process started shows as "path (deleted)".
	if strings.TrimSuffix(exe, " (deleted)") != path {
		return false, nil
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		if errors.Is(err, syscall.ESRCH) {
			return false, nil
		}
		return false, fmt.Errorf("kill %d: %w", pid, err)
	}
	// Wait briefly for it to be gone (it is not our child: poll).
	for range 50 {
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			break
		}
		if b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat"); err == nil && strings.Contains(string(b), ") Z ") {
			break // a zombie waiting for its (new) parent: dead enough
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true, nil
}
