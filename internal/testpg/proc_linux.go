package testpg

import "syscall"

// sysProcAttr runs a PostgreSQL binary as cred (nil: this user), in a
// process group of its own, killed by the kernel if the test process dies
// without running its cleanups (a panic, a timeout, kill -9). The kernel
// clears the parent-death signal when credentials change; Go sets it after
// switching to cred, so it holds.
func sysProcAttr(cred *syscall.Credential) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Credential: cred, Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
