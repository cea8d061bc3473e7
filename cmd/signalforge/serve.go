package main

import (
	"context"
	"errors"
)

// cmdServe is filled in by its issue; until then it says so.
func cmdServe(ctx context.Context, e *env, args []string) error {
	return errors.New("serve: not built yet")
}
