package ort

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/signalforge/signalforge/infer/infertest"
)

func testEngine(t *testing.T) *Engine {
	t.Helper()
	eng, err := New(Config{})
	if err != nil {
		t.Fatalf("ONNX Runtime is required (run `make deps`): %v", err)
	}
	t.Cleanup(func() { eng.Close() })
	return eng
}

// unsupported are backend tests ONNX Runtime 1.30's CPU provider rejects.
var unsupported = map[string]string{
	"test_lstm_batchwise":            "no CPU kernel for batchwise RNNs (layout=1)",
	"test_gru_batchwise":             "no CPU kernel for batchwise RNNs (layout=1)",
	"test_Linear":                    "opset 6 Gemm is older than any ONNX Runtime kernel (Gemm starts at 7)",
	"test_BatchNorm1d_3d_input_eval": "opset 6 BatchNormalization has no ONNX Runtime kernel (starts at 7)",
	"test_BatchNorm2d_eval":          "opset 6 BatchNormalization has no ONNX Runtime kernel (starts at 7)",
	"test_BatchNorm2d_momentum_eval": "opset 6 BatchNormalization has no ONNX Runtime kernel (starts at 7)",
	"test_BatchNorm3d_eval":          "opset 6 BatchNormalization has no ONNX Runtime kernel (starts at 7)",
	"test_BatchNorm3d_momentum_eval": "opset 6 BatchNormalization has no ONNX Runtime kernel (starts at 7)",
}

func TestConformance(t *testing.T) {
	infertest.RunConfig(t, testEngine(t), infertest.Config{Unsupported: unsupported})
}

func TestEngineRefCount(t *testing.T) {
	a := testEngine(t)
	b, err := New(Config{LibraryPath: a.LibraryPath()})
	if err != nil {
		t.Fatal(err)
	}
	if v := b.RuntimeVersion(); v != Version {
		t.Errorf("RuntimeVersion = %q, want %q", v, Version)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	// The runtime is still up for a: a session loads and runs.
	infertestSmoke(t, a)
	if _, err := b.LoadBytes(t.Context(), nil, infertestOpts); !errors.Is(err, errEngineClosed) {
		t.Errorf("LoadBytes on closed engine = %v, want errEngineClosed", err)
	}

	other := filepath.Join(t.TempDir(), "libonnxruntime.so")
	if err := os.WriteFile(other, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := New(Config{LibraryPath: other}); err == nil || !strings.Contains(err.Error(), "one ONNX Runtime per process") {
		t.Errorf("New with a second library = %v, want a one-runtime-per-process error", err)
	}
}

func TestNewNamesTheSettingOfALibraryThatDoesNotLoad(t *testing.T) {
	bogus := filepath.Join(t.TempDir(), "libonnxruntime.so")
	if err := os.WriteFile(bogus, []byte("not a shared library"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := New(Config{LibraryPath: bogus, LibrarySetting: "--ort-lib", Getenv: func(string) string { return "" }})
	if err == nil {
		t.Fatal("New loaded a text file as ONNX Runtime")
	}
	for _, want := range []string{"loading ONNX Runtime from " + bogus + " (set by --ort-lib)", "make deps", "--ort-lib or $" + EnvLibrary} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q:\n%v", want, err)
		}
	}
	// The failed load left no state behind.
	TestEngineRestart(t)
}

func TestEngineRestart(t *testing.T) {
	// The last Close unloads the runtime; a later New loads it again.
	for range 2 {
		eng, err := New(Config{})
		if err != nil {
			t.Fatal(err)
		}
		infertestSmoke(t, eng)
		if err := eng.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestEngineCloseClosesSessions(t *testing.T) {
	eng, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	sess := infertestSmoke(t, eng)
	if err := eng.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := sess.Run(t.Context(), smokeInput()); err == nil {
		t.Error("Run on a session of a closed engine succeeded")
	}
}

func TestFindLibrary(t *testing.T) {
	env := func(kv map[string]string) func(string) string {
		return func(k string) string { return kv[k] }
	}
	root := t.TempDir()
	lib := filepath.Join(root, depsLibrary)
	if err := os.MkdirAll(filepath.Dir(lib), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(lib, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	own := filepath.Join(t.TempDir(), "libonnxruntime.so")
	if err := os.WriteFile(own, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(t.TempDir(), "nope.so")

	for _, c := range []struct {
		name    string
		cfg     Config
		want    string
		wantErr string
	}{
		{"config wins", Config{LibraryPath: own, Getenv: env(map[string]string{EnvLibrary: missing, EnvRoot: root})}, own, ""},
		{"env var next", Config{Getenv: env(map[string]string{EnvLibrary: own, EnvRoot: root})}, own, ""},
		{"project root", Config{Getenv: env(map[string]string{EnvRoot: root})}, lib, ""},
		{"explicit missing path is an error", Config{LibraryPath: missing}, "", "Config.LibraryPath is set to " + missing + ", which does not exist"},
		{"env var missing path is an error", Config{Getenv: env(map[string]string{EnvLibrary: missing})}, "", "$SIGNALFORGE_ORT_LIB is set to " + missing},
		{"the setting's name is the caller's", Config{LibraryPath: missing, LibrarySetting: "--ort-lib", Getenv: env(nil)}, "",
			"--ort-lib is set to " + missing + ", which does not exist; point it at libonnxruntime.so (ONNX Runtime " + Version + "), or leave it out to use $SIGNALFORGE_ORT_LIB or the project's copy (`make deps`"},
		{"a folder is not the library", Config{LibraryPath: root, LibrarySetting: "--ort-lib", Getenv: env(nil)}, "", "--ort-lib is set to " + root + ", which is a folder"},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := FindLibrary(c.cfg)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) || !errors.Is(err, ErrLibraryNotFound) {
					t.Fatalf("FindLibrary = %q, %v; want an ErrLibraryNotFound containing %q", got, err, c.wantErr)
				}
				return
			}
			if err != nil || got != c.want {
				t.Fatalf("FindLibrary = %q, %v; want %q", got, err, c.want)
			}
		})
	}

	t.Run("walks up from the working directory to go.mod", func(t *testing.T) {
		mod := t.TempDir()
		if err := os.WriteFile(filepath.Join(mod, "go.mod"), []byte("module x\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		l := filepath.Join(mod, depsLibrary)
		os.MkdirAll(filepath.Dir(l), 0o755)
		os.WriteFile(l, []byte("x"), 0o644)
		pkg := filepath.Join(mod, "infer", "ort")
		os.MkdirAll(pkg, 0o755)
		t.Chdir(pkg)
		got, err := FindLibrary(Config{Getenv: env(nil)})
		if err != nil || got != l {
			t.Fatalf("FindLibrary = %q, %v; want %q", got, err, l)
		}
	})

	t.Run("not found lists every path and how to install", func(t *testing.T) {
		for _, p := range systemLibraries {
			if _, err := os.Stat(p); err == nil {
				t.Skipf("this machine has a system ONNX Runtime at %s", p)
			}
		}
		t.Chdir(t.TempDir())
		empty := t.TempDir()
		_, err := FindLibrary(Config{Getenv: env(map[string]string{EnvRoot: empty})})
		if !errors.Is(err, ErrLibraryNotFound) {
			t.Fatalf("FindLibrary = %v, want ErrLibraryNotFound", err)
		}
		msg := err.Error()
		for _, want := range append([]string{filepath.Join(empty, depsLibrary), "make deps", EnvLibrary}, systemLibraries...) {
			if !strings.Contains(msg, want) {
				t.Errorf("error does not mention %q:\n%s", want, msg)
			}
		}
	})
}
