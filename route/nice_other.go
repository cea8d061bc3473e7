//go:build !linux

package route

// lowerThreadPriority is a no-op where per-thread nice values do not exist.
func lowerThreadPriority(n int) error { return nil }
