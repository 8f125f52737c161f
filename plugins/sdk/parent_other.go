//go:build !linux

package sdk

import (
	"os"
	"time"
)

// watchParent exits when the agent dies: on systems without a parent-death
// signal the parent pid changes (to init or a subreaper) when it does.
func watchParent() {
	go pollParent(os.Getppid(), 500*time.Millisecond)
}
