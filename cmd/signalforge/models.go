package main

import (
	"context"
	"errors"
)

// cmdModels is filled in by its issue; until then it says so.
func cmdModels(ctx context.Context, e *env, args []string) error {
	return errors.New("models: not built yet")
}
