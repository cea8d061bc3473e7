package main

import (
	"context"
	"errors"
)

// cmdConvert is filled in by its issue; until then it says so.
func cmdConvert(ctx context.Context, e *env, args []string) error {
	return errors.New("convert: not built yet")
}
