package sdk

import (
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// watchParent makes the kernel kill the plugin when the agent dies, so that
// a killed agent leaves no orphans; a poll on the parent pid covers the race
// where the agent died before prctl ran.
func watchParent() {
	ppid := os.Getppid()
	_ = unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGKILL), 0, 0, 0)
	if os.Getppid() != ppid {
		os.Exit(1)
	}
	go pollParent(ppid, time.Second)
}
