package route

import (
	"runtime"
	"syscall"
)

// lowerThreadPriority pins the calling goroutine to its OS thread and
// gives that thread the nice value n, so the kernel's scheduler prefers
// every other thread of the process (the primary's) when CPU is short.
// The goroutine never unlocks: when it exits, Go ends the thread with it,
// so no lowered thread goes back to the pool.
func lowerThreadPriority(n int) error {
	runtime.LockOSThread()
	return syscall.Setpriority(syscall.PRIO_PROCESS, syscall.Gettid(), n)
}
