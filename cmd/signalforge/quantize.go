package main

import (
	"context"
	"errors"
)

// cmdQuantize is filled in by its issue; until then it says so.
func cmdQuantize(ctx context.Context, e *env, args []string) error {
	return errors.New("quantize: not built yet")
}
