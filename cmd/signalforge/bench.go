package main

import (
	"context"
	"errors"
)

// cmdBench is filled in by its issue; until then it says so.
func cmdBench(ctx context.Context, e *env, args []string) error {
	return errors.New("bench: not built yet")
}
