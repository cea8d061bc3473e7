// Command signalforge converts, quantizes, registers, benchmarks and serves
// SignalForge's forecasting models. Run `signalforge help` for the commands.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// command is one subcommand. run gets the arguments after the command name.
type command struct {
	name    string
	summary string
	run     func(ctx context.Context, env *env, args []string) error
}

// env is what a command may touch of the process: no globals.
type env struct {
	stdout, stderr io.Writer
	getenv         func(string) string
	stdin          io.Reader // nil when the command may not read stdin
}

func commands() []command {
	return []command{
		{"serve", "serve models over HTTP (native JSON API and Open Inference Protocol v2)", cmdServe},
		{"predict", "send a prediction request to a running server", cmdPredict},
		{"models", "manage the model registry (register, list, show, promote, traffic, archive, history, repair)", cmdModels},
		{"canary", "canary plans in the registry (start, status, pause, resume, abort)", cmdCanary},
		{"shadow", "shadow settings in the registry (set, clear, status)", cmdShadow},
		{"judge", "judge a canary against its baseline on the fleet's counters (via a running server)", cmdJudge},
		{"stats", "the fleet's per-version, per-replica request counters (via a running server)", cmdStats},
		{"convert", "convert a PyTorch .pt file to ONNX, verify parity, benchmark", cmdConvert},
		{"quantize", "quantize an ONNX model to INT8 (dynamic or static), with an accuracy report", cmdQuantize},
		{"bench", "benchmark an ONNX model in ONNX Runtime at several batch sizes", cmdBench},
		{"loadtest", "load a running server step by step: req/s, latency percentiles, errors, server batching", cmdLoadtest},
	}
}

// errUsage marks errors after which the usage text was already printed.
var errUsage = errors.New("usage")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	e := &env{stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv, stdin: os.Stdin}
	code := run(ctx, e, os.Args[1:])
	stop()
	os.Exit(code)
}

func run(ctx context.Context, e *env, args []string) int {
	if len(args) == 0 {
		// A bare `signalforge` is a mistake, not a request for help: the
		// usage goes to stderr and the exit status says so, as with an
		// unknown command.
		usage(e.stderr)
		return 2
	}
	if args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		if len(args) > 1 {
			return run(ctx, e, []string{args[1], "-h"})
		}
		usage(e.stdout)
		return 0
	}
	if args[0] == internalAdmit {
		// Hidden: a child process of our own (see internalAdmit).
		if err := cmdInternalAdmit(ctx, e, args[1:]); err != nil {
			fmt.Fprintf(e.stderr, "signalforge %s: %v\n", internalAdmit, err)
			return 1
		}
		return 0
	}
	for _, c := range commands() {
		if c.name == args[0] {
			err := c.run(ctx, e, args[1:])
			switch {
			case err == nil:
				return 0
			case errors.Is(err, flag.ErrHelp):
				return 0
			case errors.Is(err, errUsage):
				return 2
			}
			fmt.Fprintf(e.stderr, "signalforge %s: %v\n", c.name, err)
			return 1
		}
	}
	fmt.Fprintf(e.stderr, "signalforge: unknown command %q\n\n", args[0])
	usage(e.stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "signalforge: model conversion, quantization, registry and serving for SignalForge forecasting models.")
	fmt.Fprintln(w, "\nUsage: signalforge <command> [flags]\n\nCommands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-9s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nFlags may come before or after a command's arguments; -- ends the flags.")
	fmt.Fprintln(w, "Run `signalforge <command> -h` for a command's flags.")
}

// newFlagSet returns a FlagSet that prints its usage to e.stderr and returns
// errors instead of exiting.
func newFlagSet(e *env, name, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet("signalforge "+name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.Usage = func() {
		fmt.Fprintf(e.stderr, "Usage: signalforge %s %s\n\nFlags:\n", name, synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses args, mapping a bad flag to errUsage. Flags may come
// before, between or after the positional arguments (`signalforge bench
// m.onnx --batch 1` works), as in most CLIs users know, and unlike the flag
// package alone, which stops at the first argument and leaves the rest
// as arguments. A "--" ends the flags: everything after it is an argument,
// even if it starts with "-". Afterwards fs.Args() holds all the
// positional arguments, in order.
//
// A lone "-" is an argument (stdin, by convention), as with the flag
// package. The one ambiguity: "--" given as the value of a flag right
// before an argument (`--out -- x`) is read as the end of the flags.
func parseFlags(fs *flag.FlagSet, args []string) error {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return err
			}
			return errUsage
		}
		rest := fs.Args()
		if len(rest) == 0 {
			break
		}
		if used := len(args) - len(rest); used > 0 && args[used-1] == "--" {
			pos = append(pos, rest...) // Parse stopped at "--"
			break
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
	// Leave fs.Args() as every positional argument: parsing "--" first
	// sets no flag and keeps the rest verbatim.
	return fs.Parse(append([]string{"--"}, pos...))
}
