//go:build !linux

package pluginhost

import "os/exec"

func setParentDeath(*exec.Cmd) {}
