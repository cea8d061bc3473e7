package registry_test

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/signalforge/signalforge/registry"
)

// The crash and two-process tests re-execute the test binary as a child
// registry writer, selected by these environment variables.
const (
	envChild = "REGISTRY_TEST_CHILD" // "crash", "writer", "admit" or "lease"
	envDir   = "REGISTRY_TEST_DIR"
	envN     = "REGISTRY_TEST_N"
)

func TestMain(m *testing.M) {
	switch os.Getenv(envChild) {
	case "crash":
		crashChild(os.Getenv(envDir))
	case "admit":
		os.Exit(admitChild())
	case "lease":
		os.Exit(leaseChild(os.Getenv(envDir), os.Getenv(envN)))
	case "writer":
		n, _ := strconv.Atoi(os.Getenv(envN))
		writerChild(os.Getenv(envDir), n)
	default:
		os.Exit(m.Run())
	}
}

func die(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "child: "+format+"\n", args...)
	os.Exit(1)
}

// crashChild registers and promotes versions until it is killed: every
// version gets fresh artifact bytes (so artifacts are written too), is
// promoted at 20%, and once four versions serve the one with the least
// traffic is archived with force.
func crashChild(dir string) {
	ctx := context.Background()
	r, err := registry.Open(ctx, registry.Config{Dir: dir})
	if err != nil {
		die("open: %v", err)
	}
	fmt.Println("ready")
	seed := uint64(time.Now().UnixNano())
	for i := uint64(0); ; i++ {
		name := fmt.Sprintf("m%d", i%2)
		art, err := modelBytes(seed+i, "rsi_14", "macd")
		if err != nil {
			die("model: %v", err)
		}
		v, err := r.Register(ctx, registry.RegisterRequest{Name: name, ONNX: art})
		if err != nil {
			die("register: %v", err)
		}
		if _, err := r.Promote(ctx, v.Ref(), 20); err != nil {
			die("promote: %v", err)
		}
		prod, _ := r.Split(ctx, name)
		if len(prod) >= 4 {
			least, lt := "", 101.0
			for k, p := range prod {
				if p < lt {
					least, lt = k, p
				}
			}
			if _, err := r.Archive(ctx, registry.Ref{Name: name, Version: least}, true); err != nil {
				die("archive: %v", err)
			}
		}
	}
}

// writerChild registers n versions of model "shared" from 3 goroutines and
// promotes each at 10%, printing each version it got.
func writerChild(dir string, n int) {
	ctx := context.Background()
	r, err := registry.Open(ctx, registry.Config{Dir: dir})
	if err != nil {
		die("open: %v", err)
	}
	art, err := modelBytes(1, "rsi_14", "macd")
	if err != nil {
		die("model: %v", err)
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for g := range 3 {
		wg.Go(func() {
			for i := g; i < n; i += 3 {
				v, err := r.Register(ctx, registry.RegisterRequest{Name: "shared", ONNX: art})
				if err != nil {
					die("register: %v", err)
				}
				if _, err := r.Promote(ctx, v.Ref(), 10); err != nil {
					die("promote: %v", err)
				}
				mu.Lock()
				fmt.Println(v.Version)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	r.Close()
	os.Exit(0)
}

func child(t *testing.T, mode, dir string, n int) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envChild+"="+mode, envDir+"="+dir, envN+"="+strconv.Itoa(n))
	cmd.Stderr = os.Stderr
	return cmd
}

// TestCrashSafety SIGKILLs a writer at random points, many times; after
// each kill the registry must reopen consistent (checkConsistent: intact
// artifacts, traffic totals, an audit log that replays to the state) with
// no partial version.
func TestCrashSafety(t *testing.T) {
	dir := t.TempDir()
	iterations := 30
	if testing.Short() {
		iterations = 8
	}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	grew, midWrite, tmpFiles := 0, 0, 0
	prev := 0
	for i := range iterations {
		cmd := child(t, "crash", dir, 0)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		line, err := bufio.NewReader(out).ReadString('\n')
		if err != nil || line != "ready\n" {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("iteration %d: child did not start: %q %v", i, line, err)
		}
		time.Sleep(time.Duration(rng.IntN(60_000)) * time.Microsecond)
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		err = cmd.Wait()
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() {
			t.Fatalf("iteration %d: child ended before the kill: %v", i, err)
		}
		if left, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(left) > tmpFiles {
			midWrite++ // killed between creating a temporary file and renaming it
			tmpFiles = len(left)
		}
		n := checkConsistent(t, dir)
		if n > prev {
			grew++
		}
		prev = n
	}
	if grew < iterations/6 {
		t.Fatalf("the registry grew in only %d of %d runs: the kills did not land while writing", grew, iterations)
	}
	t.Logf("%d versions after %d kills; %d kills left a temporary file behind", prev, iterations, midWrite)
	// And the registry still works after all that.
	r := openReg(t, dir)
	v, err := r.Register(context.Background(), registry.RegisterRequest{Name: "m0", ONNX: onnxModel(t, 424242, feats...)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Promote(context.Background(), v.Ref(), 50); err != nil {
		t.Fatal(err)
	}
	checkConsistent(t, dir)
}

// TestTwoProcesses: two processes, each with three goroutines, register and
// promote into the same model at once; no update is lost.
func TestTwoProcesses(t *testing.T) {
	dir := t.TempDir()
	const n = 12
	var outs [2]strings.Builder
	var cmds [2]*exec.Cmd
	for i := range cmds {
		cmds[i] = child(t, "writer", dir, n)
		cmds[i].Stdout = &outs[i]
		if err := cmds[i].Start(); err != nil {
			t.Fatal(err)
		}
	}
	for i, c := range cmds {
		if err := c.Wait(); err != nil {
			t.Fatalf("writer %d: %v", i, err)
		}
	}
	seen := map[string]bool{}
	for _, o := range outs {
		for _, v := range strings.Fields(o.String()) {
			if seen[v] {
				t.Fatalf("version %s handed out twice", v)
			}
			seen[v] = true
		}
	}
	if len(seen) != 2*n {
		t.Fatalf("%d versions reported; want %d", len(seen), 2*n)
	}
	r := openReg(t, dir)
	vs, err := r.Versions(context.Background(), "shared")
	if err != nil || len(vs) != 2*n {
		t.Fatalf("registry has %d versions, %v; want %d", len(vs), err, 2*n)
	}
	for _, v := range vs {
		if !seen[v.Version] || v.Status != registry.StatusProduction {
			t.Fatalf("%s: %s, reported %v", v.Ref(), v.Status, seen[v.Version])
		}
	}
	h, _ := r.History(context.Background(), "shared")
	if len(h) != 4*n {
		t.Fatalf("%d events; want %d (a register and a promote per version)", len(h), 4*n)
	}
	checkConsistent(t, dir)
}

// TestConcurrentGoroutines: parallel registers and promotes through one
// Registry and through a second one on the same folder lose nothing.
func TestConcurrentGoroutines(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	regs := []*registry.Registry{openReg(t, dir), openReg(t, dir)}
	art := onnxModel(t, 1, feats...)
	const workers, each = 8, 5
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			r := regs[w%2]
			for range each {
				v, err := r.Register(ctx, registry.RegisterRequest{Name: "m", ONNX: art})
				if err == nil {
					_, err = r.Promote(ctx, v.Ref(), 10)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	vs, _ := regs[0].Versions(ctx, "m")
	if len(vs) != workers*each {
		t.Fatalf("%d versions; want %d", len(vs), workers*each)
	}
	for i, v := range vs {
		if v.Version != fmt.Sprintf("v%d", i+1) || v.Status != registry.StatusProduction {
			t.Fatalf("version %d is %s %s", i, v.Version, v.Status)
		}
	}
	checkConsistent(t, dir)
}
