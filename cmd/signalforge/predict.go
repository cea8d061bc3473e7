package main

import (
	"context"
	"errors"
)

// cmdPredict is filled in by its issue; until then it says so.
func cmdPredict(ctx context.Context, e *env, args []string) error {
	return errors.New("predict: not built yet")
}
