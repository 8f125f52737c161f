package pluginhost

import (
	"os/exec"
	"syscall"
)

// setParentDeath asks the kernel to kill the plugin if the agent dies (the
// SDK asks the same from inside the plugin; both is belt and braces).
func setParentDeath(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
