package testredis

import (
	"os/exec"
	"syscall"
)

// setDeathSignal makes the kernel kill redis-server if the test process
// dies without running its cleanups (a panic, a timeout, kill -9).
func setDeathSignal(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
