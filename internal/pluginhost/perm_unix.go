//go:build !windows

package pluginhost

import (
	"fmt"
	"os"
	"syscall"
)

// checkWritable refuses a plugin directory or binary that someone other than
// its owner (or root) could change: whoever can write there can run code as
// the agent. Group write is tolerated only for the agent's own group.
func checkWritable(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	mode := fi.Mode().Perm()
	if mode&0o002 != 0 {
		return fmt.Errorf("%w: %s is writable by every user (mode %#o); run: chmod o-w %s", ErrUnsafe, path, mode, path)
	}
	if mode&0o020 != 0 {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Gid) != os.Getegid() {
			return fmt.Errorf("%w: %s is writable by group %d (mode %#o); run: chmod g-w %s", ErrUnsafe, path, st.Gid, mode, path)
		}
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid != 0 && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("%w: %s belongs to uid %d, neither root nor the agent's user", ErrUnsafe, path, st.Uid)
	}
	return nil
}
