package registrytest

import (
	"fmt"
	"io"
	"time"

	"github.com/signalforge/signalforge/registry"
)

// LeaseContender is the body of a child process in a lease takeover test:
// it contends for the default lease of l as holder with an Elector of the
// given ttl, writes "ready" to out, then "leader EPOCH" or "standby EPOCH"
// on each change of leadership, and when in ends (the parent closed the
// child's stdin) closes the elector — releasing the lease — and returns 0.
// Errors go to errOut with exit code 1.
func LeaseContender(l registry.Leaser, holder string, ttl time.Duration, in io.Reader, out, errOut io.Writer) int {
	e, err := registry.NewElector(registry.ElectorConfig{Leaser: l, Holder: holder, TTL: ttl,
		OnChange: func(ld registry.Leadership) {
			state := "standby"
			if ld.Leader {
				state = "leader"
			}
			fmt.Fprintf(out, "%s %d\n", state, ld.Epoch)
		}})
	if err != nil {
		fmt.Fprintln(errOut, err)
		return 1
	}
	fmt.Fprintln(out, "ready")
	io.Copy(io.Discard, in)
	e.Close()
	return 0
}
