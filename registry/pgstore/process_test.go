package pgstore_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/signalforge/signalforge/internal/testpg"
	"github.com/signalforge/signalforge/registry"
	"github.com/signalforge/signalforge/registry/pgstore"
)

// The two-process test re-executes the test binary as a writer process,
// selected by these environment variables.
const (
	envChild = "PGSTORE_TEST_CHILD" // "traffic" or "lease"
	envURL   = "PGSTORE_TEST_URL"
	envArgs  = "PGSTORE_TEST_ARGS" // "PROCESS GOROUTINES CHANGES"
)

// childMain runs a child mode if the environment selects one and reports
// whether it did (then TestMain exits with its code).
func childMain() (int, bool) {
	switch os.Getenv(envChild) {
	case "traffic":
	case "lease":
		return leaseChildMain(), true
	default:
		return 0, false
	}
	var p, k, n int
	if _, err := fmt.Sscan(os.Getenv(envArgs), &p, &k, &n); err != nil {
		fmt.Fprintf(os.Stderr, "child: %s=%q: %v\n", envArgs, os.Getenv(envArgs), err)
		return 2, true
	}
	if err := trafficChild(os.Getenv(envURL), p, k, n); err != nil {
		fmt.Fprintf(os.Stderr, "child %d: %v\n", p, err)
		return 1, true
	}
	return 0, true
}

// childVersion is the version goroutine g of process p changes.
func childVersion(p, g int) string { return fmt.Sprintf("p%dg%d", p, g) }

// trafficChild opens its own Store on url, prints "ready", waits for a
// line on stdin (so the processes start together), then runs k goroutines
// that each set the traffic of their own version n times, to values no
// rescaling produces (every call is a change).
func trafficChild(url string, p, k, n int) error {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "pgstore-child-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	s, err := pgstore.Open(ctx, pgstore.Config{URL: url, CacheDir: dir})
	if err != nil {
		return err
	}
	defer s.Close()
	r, err := registry.Open(ctx, registry.Config{Store: s, PollInterval: -1})
	if err != nil {
		return err
	}
	defer r.Close()
	fmt.Println("ready")
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		return fmt.Errorf("waiting for the start: %w", err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, k*n)
	for g := range k {
		wg.Go(func() {
			ref := registry.Ref{Name: "m", Version: childVersion(p, g)}
			for i := range n {
				pct := 1 + float64(p*k+g)/2 + float64(i+1)/1000
				if _, err := r.SetTraffic(ctx, ref, pct); err != nil {
					errs <- fmt.Errorf("%s to %v%%: %w", ref, pct, err)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	return <-errs // nil when every change succeeded
}

// TestTwoProcessesChangingTrafficLoseNothing: two processes (each with its
// own Store and pool, as on two machines) × 6 goroutines each set the
// traffic of one model 8 times, all at once. Every change must be
// committed exactly once on top of the one before (checkTrafficLog).
func TestTwoProcessesChangingTrafficLoseNothing(t *testing.T) {
	ctx := context.Background()
	url := testpg.NewDatabase(t)
	const procs, perProc, each = 2, 6, 8
	reg := openReg(t, open(t, url))
	art := onnxModel(t, 1)
	if _, err := reg.Register(ctx, registry.RegisterRequest{Name: "m", Version: "v0", ONNX: art, Status: registry.StatusProduction, Traffic: 100}); err != nil {
		t.Fatal(err)
	}
	var versions []string
	for p := range procs {
		for g := range perProc {
			v := childVersion(p, g)
			versions = append(versions, v)
			if _, err := reg.Register(ctx, registry.RegisterRequest{Name: "m", Version: v, ONNX: art}); err != nil {
				t.Fatal(err)
			}
			if _, err := reg.Promote(ctx, registry.Ref{Name: "m", Version: v}, 1); err != nil {
				t.Fatal(err)
			}
		}
	}
	setup, _ := reg.Seq(ctx)

	cmds := make([]*exec.Cmd, procs)
	starts := make([]io.WriteCloser, procs)
	outs := make([]strings.Builder, procs)
	for p := range cmds {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), envChild+"=traffic", envURL+"="+url,
			envArgs+"="+strconv.Itoa(p)+" "+strconv.Itoa(perProc)+" "+strconv.Itoa(each))
		cmd.Stderr = &outs[p]
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if starts[p], err = cmd.StdinPipe(); err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		if line, err := bufio.NewReader(stdout).ReadString('\n'); line != "ready\n" {
			t.Fatalf("process %d did not start: %q %v\n%s", p, line, err, outs[p].String())
		}
		cmds[p] = cmd
	}
	for _, w := range starts {
		fmt.Fprintln(w, "go")
	}
	for p, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Fatalf("process %d: %v\n%s", p, err, outs[p].String())
		}
	}
	checkTrafficLog(t, open(t, url), setup, versions, each)
}
