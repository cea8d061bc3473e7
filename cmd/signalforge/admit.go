package main

import (
	"context"
	"fmt"
	"os"

	"github.com/signalforge/signalforge/infer"
	"github.com/signalforge/signalforge/infer/ort"
	"github.com/signalforge/signalforge/registry"
)

// internalAdmit is the hidden command that checks one model in a process
// of its own, under a hard memory limit: `signalforge internal-admit
// --memory-budget BYTES --batch-sizes 1,32 … MODEL.onnx` (the arguments
// registry.ChildCheck passes; see registry.ServeChildCheck). It is what
// `models register`, `convert/quantize --register` and `serve` (admin
// uploads, and every new artifact before it is loaded) run as
// os.Executable(), so a model whose warm-up would exhaust memory kills
// this child, not them. It is not listed in the help: it is an interface
// between signalforge processes, not a command for people.
const internalAdmit = "internal-admit"

// cmdInternalAdmit runs the check; its result is JSON lines on stdout and
// a non-zero exit status when the model is refused.
func cmdInternalAdmit(ctx context.Context, e *env, args []string) error {
	return registry.ServeChildCheck(ctx, args, e.stdout, func() (infer.Engine, error) {
		return ort.New(ort.Config{Getenv: e.getenv})
	})
}

// childCheck is the admission check in a child process that runs this
// executable's internal-admit command with a memory budget (0: the
// default). The ONNX Runtime library is found here (ort.FindLibrary with
// ocfg, whose Getenv is set to e's), so a missing one fails now with a
// clear error, and the child loads that same file.
func childCheck(e *env, ocfg ort.Config, memory int64) (registry.ChildCheck, error) {
	ocfg.Getenv = e.getenv
	lib, err := ort.FindLibrary(ocfg)
	if err != nil {
		return registry.ChildCheck{}, err
	}
	exe, err := os.Executable()
	if err != nil {
		return registry.ChildCheck{}, fmt.Errorf("finding this executable for the admission check: %w", err)
	}
	return registry.ChildCheck{Command: exe, Args: []string{internalAdmit}, Env: []string{"SIGNALFORGE_ORT_LIB=" + lib}, MemoryBudget: memory}, nil
}
