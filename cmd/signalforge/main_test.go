package main

import (
	"bytes"
	"context"
	"flag"
	"os"
	"slices"
	"strings"
	"testing"
)

func mainRun(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	e := &env{stdout: &out, stderr: &errb, getenv: os.Getenv}
	code = run(context.Background(), e, args)
	return code, out.String(), errb.String()
}

func TestRunUsageAndExitStatus(t *testing.T) {
	for _, c := range []struct {
		name     string
		args     []string
		code     int
		toStdout bool // the usage goes to stdout (asked for) or stderr (a mistake)
	}{
		{"no arguments is a mistake", nil, 2, false},
		{"help", []string{"help"}, 0, true},
		{"-h", []string{"-h"}, 0, true},
		{"--help", []string{"--help"}, 0, true},
		{"unknown command", []string{"frobnicate"}, 2, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, out, errOut := mainRun(c.args...)
			if code != c.code {
				t.Errorf("exit %d, want %d", code, c.code)
			}
			usageIn, other := out, errOut
			if !c.toStdout {
				usageIn, other = errOut, out
			}
			if !strings.Contains(usageIn, "Usage: signalforge <command> [flags]") || !strings.Contains(usageIn, "bench") {
				t.Errorf("usage missing from the expected stream:\n%s", usageIn)
			}
			if other != "" {
				t.Errorf("unexpected output on the other stream: %q", other)
			}
		})
	}
}

func TestParseFlagsInterspersed(t *testing.T) {
	for _, c := range []struct {
		args    []string
		pos     []string
		n       int
		verbose bool
	}{
		{[]string{"m.onnx"}, []string{"m.onnx"}, 0, false},
		{[]string{"-n", "3", "m.onnx"}, []string{"m.onnx"}, 3, false},
		{[]string{"m.onnx", "--n", "3"}, []string{"m.onnx"}, 3, false},
		{[]string{"a", "-v", "b", "-n=4", "c"}, []string{"a", "b", "c"}, 4, true},
		{[]string{"-", "-v"}, []string{"-"}, 0, true},                                    // "-" is an argument (stdin)
		{[]string{"a", "--", "-v", "-n", "5"}, []string{"a", "-v", "-n", "5"}, 0, false}, // -- ends the flags
		{[]string{"--", "-v"}, []string{"-v"}, 0, false},
		{nil, nil, 0, false},
	} {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		n := fs.Int("n", 0, "")
		v := fs.Bool("v", false, "")
		if err := parseFlags(fs, c.args); err != nil {
			t.Errorf("parseFlags(%q) = %v", c.args, err)
			continue
		}
		if !slices.Equal(fs.Args(), c.pos) || *n != c.n || *v != c.verbose {
			t.Errorf("parseFlags(%q): args %q, n=%d, v=%v; want %q, %d, %v", c.args, fs.Args(), *n, *v, c.pos, c.n, c.verbose)
		}
	}

	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(&bytes.Buffer{})
	fs.Int("n", 0, "")
	if err := parseFlags(fs, []string{"m.onnx", "--bogus"}); err != errUsage {
		t.Errorf("an unknown flag after the argument: %v, want errUsage", err)
	}
	if err := parseFlags(fs, []string{"m.onnx", "-h"}); err != flag.ErrHelp {
		t.Errorf("-h after the argument: %v, want flag.ErrHelp", err)
	}
}
