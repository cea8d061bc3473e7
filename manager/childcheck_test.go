package manager_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/signalforge/signalforge/infer"
	"github.com/signalforge/signalforge/infer/ort"
	"github.com/signalforge/signalforge/manager"
	"github.com/signalforge/signalforge/onnx/onnxtest"
	"github.com/signalforge/signalforge/registry"
	"github.com/signalforge/signalforge/registry/registrytest"
)

// The child check re-executes this test binary as the admission child
// (what `signalforge internal-admit` is in production), selected by these
// environment variables.
const (
	envAdmitChild = "MANAGER_TEST_ADMIT_CHILD" // "1": run registry.ServeChildCheck
	envAdmitLog   = "MANAGER_TEST_ADMIT_LOG"   // a file each child appends its model path to
)

func TestMain(m *testing.M) {
	if os.Getenv(envAdmitChild) != "" {
		os.Exit(admitChild())
	}
	os.Exit(m.Run())
}

func admitChild() int {
	args := os.Args[1:]
	if log := os.Getenv(envAdmitLog); log != "" && len(args) > 0 {
		f, err := os.OpenFile(log, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err == nil {
			fmt.Fprintln(f, args[len(args)-1])
			f.Close()
		}
	}
	err := registry.ServeChildCheck(context.Background(), args, os.Stdout, func() (infer.Engine, error) { return ort.New(ort.Config{}) })
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// TestChildCheckMarksBloatedVersionFailed: a version already in the
// registry whose declared tensors are small but whose warm-up at batch 32
// allocates an 8 GiB intermediate (onnxtest.Bloat) passes the static
// check of the declared tensors; warmed in-process it would allocate the
// 8 GiB (and, bigger, take the process down on every start). With
// Config.ChildCheck every artifact is first loaded and warmed in a child
// process under a memory limit: the version is marked failed with the
// budget and the batch, the other models keep serving (they passed the
// same check), and a second version with the same artifact is refused
// from the kept verdict, without another child.
func TestChildCheckMarksBloatedVersionFailed(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	childLog := filepath.Join(t.TempDir(), "children.log")
	e := newEnv(t)
	m := e.start(t, manager.Config{ServeStaging: true,
		ChildCheck: &registry.ChildCheck{Command: exe, Env: []string{envAdmitChild + "=1", envAdmitLog + "=" + childLog}}})
	children := func() []string {
		b, _ := os.ReadFile(childLog)
		return strings.Fields(string(b))
	}
	// The demo models passed the check in children before they loaded.
	if n := count(children(), e.path(t, mlp1)); n != 1 || m.Current().Get(mlp1.Name, mlp1.Version) == nil {
		t.Fatalf("%s was checked in %d children (want 1): %q", mlp1, n, children())
	}

	bloat, err := onnxtest.Bloat(1 << 26) // 256 MiB at batch 1, 8 GiB at batch 32
	if err != nil {
		t.Fatal(err)
	}
	v1 := registry.Ref{Name: "bloat", Version: "v1"}
	registrytest.WriteUnchecked(t, e.dir, v1, registry.StatusStaging, 0, bloat, onnxtest.BloatFeatures)
	waitFor(t, "bloat:v1 marked failed", func() bool { _, ok := m.Failure(v1); return ok })
	want := "the model exhausted the admission memory budget of 4294967296 bytes (4.0 GiB) while warming at batch 32"
	f, _ := m.Failure(v1)
	if !strings.Contains(f.Err.Error(), want) || !strings.Contains(f.Err.Error(), "Expand") {
		t.Fatalf("bloat:v1 failed with %q, want it to contain %q", f.Err, want)
	}
	t.Logf("bloat:v1: %v", f.Err)
	if m.Current().Get(mlp1.Name, mlp1.Version) == nil {
		t.Fatal("the demo model stopped serving")
	}

	// The same artifact under another version: refused from the verdict
	// kept for its sha256.
	v2 := registry.Ref{Name: "bloat", Version: "v2"}
	registrytest.WriteUnchecked(t, e.dir, v2, registry.StatusStaging, 0, bloat, onnxtest.BloatFeatures)
	waitFor(t, "bloat:v2 marked failed", func() bool { _, ok := m.Failure(v2); return ok })
	if f, _ := m.Failure(v2); !strings.Contains(f.Err.Error(), want) {
		t.Errorf("bloat:v2 failed with %q, want it to contain %q", f.Err, want)
	}
	if n := count(children(), e.path(t, v1)); n != 1 {
		t.Errorf("the bloated artifact was checked in %d children, want 1", n)
	}
	v, ok := m.Acquire(mlp1.Name, mlp1.Version)
	if !ok {
		t.Fatal("the demo model stopped serving")
	}
	v.Release()
}

func count(list []string, s string) int {
	n := 0
	for _, x := range list {
		if x == s {
			n++
		}
	}
	return n
}
