package home

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/gofrs/flock"
)

// ErrAlreadyRunning means another agent holds this layout's lock.
var ErrAlreadyRunning = errors.New("another medrelayd is already running")

// Lock is held for the agent's whole life so a second agent on the same
// state fails at once with a clear message instead of a Badger lock trace.
type Lock struct{ fl *flock.Flock }

// AcquireLock takes the lock or fails at once with ErrAlreadyRunning, naming
// the pid that holds it when it is known.
func (l Layout) AcquireLock() (*Lock, error) {
	fl := flock.New(l.LockFile)
	ok, err := fl.TryLock()
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", l.LockFile, err)
	}
	if !ok {
		where := l.Home
		if where == "" {
			where = l.StateDir
		}
		msg := fmt.Sprintf("%s on %s", ErrAlreadyRunning, where)
		if b, err := os.ReadFile(l.LockFile); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				msg += fmt.Sprintf(" (pid %d)", pid)
			}
		}
		return nil, fmt.Errorf("%w%s", ErrAlreadyRunning, strings.TrimPrefix(msg, ErrAlreadyRunning.Error()))
	}
	// Record our pid for the message above. The lock, not the content, is
	// what excludes; a stale pid after a crash is harmless.
	if err := os.WriteFile(l.LockFile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600); err != nil {
		fl.Unlock()
		return nil, fmt.Errorf("lock %s: %w", l.LockFile, err)
	}
	return &Lock{fl: fl}, nil
}

// Release gives the lock up.
func (k *Lock) Release() error { return k.fl.Unlock() }
