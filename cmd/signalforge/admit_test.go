package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/signalforge/signalforge/onnx/onnxtest"
)

// TestMain lets this test binary stand in for signalforge as the child of
// admission: `models register` (and convert/quantize --register) run
// os.Executable() internal-admit, which in the tests is this binary.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == internalAdmit {
		e := &env{stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv}
		os.Exit(run(context.Background(), e, os.Args[1:]))
	}
	os.Exit(m.Run())
}

// TestModelsRegisterRefusesBloatedWarmup (D2): a model whose declared
// tensors are small (x [batch, 4] in, y [batch, 1] out) but whose warm-up
// at batch 32 expands to an 8 GiB intermediate passes the static check;
// registration warmed it in the registering process, which allocated the
// 8 GiB (and, bigger, died). Now the warm-up runs in a child process under
// the admission memory budget: the registration is refused with the
// reason, nothing is registered, and this process never loads the model.
func TestModelsRegisterRefusesBloatedWarmup(t *testing.T) {
	dir := t.TempDir()
	reg := filepath.Join(dir, "reg")
	data, err := onnxtest.Bloat(1 << 26) // 256 MiB at batch 1, 8 GiB at batch 32
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "bloat.onnx")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errs := modelsRun(t, reg, "register", "--name", "bloat", path)
	if code != 1 {
		t.Fatalf("register: exit %d, want 1\nstdout: %s\nstderr: %s", code, out, errs)
	}
	for _, want := range []string{
		"the model exhausted the admission memory budget of 4294967296 bytes (4.0 GiB) while warming at batch 32",
		"Expand", "8589934592",
	} {
		if !strings.Contains(errs, want) {
			t.Errorf("the refusal does not say %q:\n%s", want, errs)
		}
	}
	t.Logf("refused: %s", errs)
	if code, out, _ := modelsRun(t, reg, "list", "--json"); code != 0 || strings.Contains(out, "bloat") {
		t.Errorf("after the refusal: list exit %d: %s", code, out)
	}

	// A small budget refuses it already at batch 1 (256 MiB); a normal
	// model passes the same check.
	code, _, errs = modelsRun(t, reg, "register", "--name", "bloat", "--max-admission-memory", "16777216", path)
	if code != 1 || !strings.Contains(errs, "budget of 16777216 bytes (16.0 MiB) while warming at batch 1") {
		t.Errorf("register with a 16 MiB budget: exit %d: %s", code, errs)
	}
	mlp := modelsWriteMLP(t, dir, "mlp.onnx", 1)
	if code, out, errs := modelsRun(t, reg, "register", "--name", "mlp", "--max-admission-memory", "16777216", mlp); code != 0 {
		t.Errorf("register of an MLP: exit %d\nstdout: %s\nstderr: %s", code, out, errs)
	}
}

// TestInternalAdmitIsHidden: the child's command is not offered to people.
func TestInternalAdmitIsHidden(t *testing.T) {
	_, out, _ := mainRun("help")
	if strings.Contains(out, internalAdmit) {
		t.Errorf("help lists %s:\n%s", internalAdmit, out)
	}
	if code, _, errs := mainRun(internalAdmit); code != 1 || !strings.Contains(errs, "one model file") {
		t.Errorf("internal-admit without arguments: exit %d: %s", code, errs)
	}
}
