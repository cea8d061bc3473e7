//go:build !linux

package registry

import (
	"fmt"
	"runtime"
	"syscall"
)

// limitAddressSpace is only implemented on Linux: elsewhere a child check
// refuses to run rather than run without its memory limit.
func limitAddressSpace(int64) error {
	return fmt.Errorf("a memory-limited admission check is not supported on %s", runtime.GOOS)
}

func childSysProcAttr() *syscall.SysProcAttr { return nil }
