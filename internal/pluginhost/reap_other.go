//go:build !linux

package pluginhost

import (
	"os"
	"syscall"
)

// killIfRunning cannot tell which executable a pid runs here, so it never
// kills: a recycled pid could be anyone's. It only reports a live one.
func killIfRunning(pid int, _ string) (bool, error) {
	p, err := os.FindProcess(pid)
	if err != nil {
		return false, nil
	}
	if err := p.Signal(syscall.Signal(0)); err != nil {
		return false, nil
	}
	return false, errNotVerifiable
}
