package server

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/signalforge/signalforge/infer"
	"github.com/signalforge/signalforge/infer/ort"
	"github.com/signalforge/signalforge/internal/demo"
	"github.com/signalforge/signalforge/onnx/onnxtest"
	"github.com/signalforge/signalforge/registry"
)

// The child check re-executes this test binary as the admission child
// (what `signalforge internal-admit` is in production), selected by these
// environment variables.
const (
	envAdmitChild = "SERVER_TEST_ADMIT_CHILD" // "1": run registry.ServeChildCheck
	envAdmitLog   = "SERVER_TEST_ADMIT_LOG"   // a file each child appends its model path to
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

// writeUncheckedVersion is writeUnchecked for any version, as a staging
// version (no traffic).
func writeUncheckedVersion(t *testing.T, dir string, ref registry.Ref, artifact []byte, features []string) {
	t.Helper()
	writeUncheckedAt(t, dir, ref, registry.StatusStaging, 0, artifact, features)
}

// TestChildCheckMarksBloatedVersionFailed (D2): a version already in the
// registry whose declared tensors are small but whose warm-up at batch 32
// allocates an 8 GiB intermediate (onnxtest.Bloat) passes the static
// check of the declared tensors; the server warmed it in-process and
// allocated the 8 GiB (died, with a bigger one, on every start). With
// Config.ChildCheck every artifact is first loaded and warmed in a child
// process under a memory limit: the version is marked failed with the
// budget and the batch, the server stays up and keeps serving its other
// models (which passed the same check), and a second version with the
// same artifact is refused from the kept verdict, without another child.
func TestChildCheckMarksBloatedVersionFailed(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	childLog := filepath.Join(t.TempDir(), "children.log")
	ts := startServer(t, testOpts{noCache: true, mutate: func(c *Config) {
		c.ChildCheck = &registry.ChildCheck{Command: exe, Env: []string{envAdmitChild + "=1", envAdmitLog + "=" + childLog}}
	}})
	ctx := context.Background()
	children := func() []string {
		b, _ := os.ReadFile(childLog)
		return strings.Fields(string(b))
	}
	// The demo models passed the check in children before they loaded.
	demoV1, err := ts.reg.Get(ctx, registry.Ref{Name: demo.ModelName, Version: "v1.0"})
	if err != nil {
		t.Fatal(err)
	}
	if n := count(children(), demoV1.Artifact.Path); n != 1 {
		t.Fatalf("%s was checked in %d children, want 1: %q", demoV1.Ref(), n, children())
	}
	mustServeDemo(t, ts)

	bloat, err := onnxtest.Bloat(1 << 26) // 256 MiB at batch 1, 8 GiB at batch 32
	if err != nil {
		t.Fatal(err)
	}
	writeUncheckedVersion(t, ts.dir, registry.Ref{Name: "bloat", Version: "v1"}, bloat, onnxtest.BloatFeatures)
	state := func(ref string) string {
		_, b := get(t, ts.URL+"/v1/models")
		var l struct {
			Models []struct {
				Name     string `json:"name"`
				Versions []struct {
					Version   string `json:"version"`
					State     string `json:"state"`
					LoadError string `json:"load_error"`
				} `json:"versions"`
			} `json:"models"`
		}
		if err := json.Unmarshal(b, &l); err != nil {
			t.Fatalf("/v1/models: %v: %s", err, b)
		}
		for _, m := range l.Models {
			for _, v := range m.Versions {
				if m.Name+":"+v.Version == ref {
					return v.State + " " + v.LoadError
				}
			}
		}
		return ""
	}
	waitFor(t, func() bool { return strings.HasPrefix(state("bloat:v1"), "failed") })
	want := "the model exhausted the admission memory budget of 4294967296 bytes (4.0 GiB) while warming at batch 32"
	if s := state("bloat:v1"); !strings.Contains(s, want) || !strings.Contains(s, "Expand") {
		t.Fatalf("bloat:v1 = %q, want it to contain %q", s, want)
	}
	t.Logf("bloat:v1: %s", state("bloat:v1"))
	mustServeDemo(t, ts)
	_, b := get(t, ts.URL+"/metrics")
	if !strings.Contains(string(b), `signalforge_model_version_failed{model="bloat",version="v1"} 1`) {
		t.Errorf("/metrics does not show bloat:v1 failed")
	}

	// The same artifact under another version: refused from the verdict
	// kept for its sha256.
	writeUncheckedVersion(t, ts.dir, registry.Ref{Name: "bloat", Version: "v2"}, bloat, onnxtest.BloatFeatures)
	waitFor(t, func() bool { return strings.HasPrefix(state("bloat:v2"), "failed") })
	if s := state("bloat:v2"); !strings.Contains(s, want) {
		t.Errorf("bloat:v2 = %q, want it to contain %q", s, want)
	}
	v1, err := ts.reg.Get(ctx, registry.Ref{Name: "bloat", Version: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	if n := count(children(), v1.Artifact.Path); n != 1 {
		t.Errorf("the bloated artifact was checked in %d children, want 1", n)
	}
	mustServeDemo(t, ts)
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
