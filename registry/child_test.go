package registry_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/signalforge/signalforge/infer"
	"github.com/signalforge/signalforge/registry"
	"github.com/signalforge/signalforge/tensor"
)

// admitChild is the child of the ChildCheck tests (TestMain runs it when
// REGISTRY_TEST_CHILD=admit): registry.ServeChildCheck over modeEngine.
func admitChild() int {
	err := registry.ServeChildCheck(context.Background(), os.Args[1:], os.Stdout, func() (infer.Engine, error) { return modeEngine{}, nil })
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// modeEngine is a cgo-free engine whose behaviour is chosen by a word in
// the model file: "fake:refuse" fails to load, and at batch 32 Run
// "fake:grow"s (allocates and touches 64 MiB per row: 2 GiB), "fake:panic"s
// or "fake:hang"s; anything else loads and runs.
type modeEngine struct{}

type modeSession struct{ mode string }

func (modeEngine) Name() string { return "fake" }
func (modeEngine) Close() error { return nil }
func (modeEngine) LoadBytes(context.Context, []byte, infer.Options) (infer.Session, error) {
	return nil, errors.New("fake: LoadBytes")
}
func (modeEngine) LoadFile(_ context.Context, path string, _ infer.Options) (infer.Session, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	for _, m := range []string{"refuse", "grow", "panic", "hang"} {
		if bytes.Contains(data, []byte("fake:"+m)) {
			if m == "refuse" {
				return nil, errors.New("fake: no such operator")
			}
			return modeSession{m}, nil
		}
	}
	return modeSession{}, nil
}
func (modeSession) Inputs() []infer.IOInfo {
	return []infer.IOInfo{{Name: "x", DType: tensor.Float32, Shape: tensor.Shape{-1, 4}, DimNames: []string{"batch", ""}, BatchAxis: 0}}
}
func (modeSession) Outputs() []infer.IOInfo {
	return []infer.IOInfo{{Name: "y", DType: tensor.Float32, Shape: tensor.Shape{-1, 1}, DimNames: []string{"batch", ""}, BatchAxis: 0}}
}
func (modeSession) Metadata() map[string]string { return map[string]string{"k": "v"} }
func (modeSession) Close() error                { return nil }

var sink []byte

func (s modeSession) Run(ctx context.Context, in []tensor.Tensor) ([]tensor.Tensor, error) {
	b := int(in[0].Shape()[0])
	if b == 32 {
		switch s.mode {
		case "grow":
			sink = make([]byte, b<<26)
			for i := 0; i < len(sink); i += 4096 {
				sink[i] = 1
			}
		case "panic":
			panic("fake: kernel bug")
		case "hang":
			time.Sleep(time.Hour)
		}
	}
	out, err := tensor.Zeros(tensor.Float32, tensor.Shape{int64(b), 1})
	return []tensor.Tensor{out}, err
}

func testChildCheck(t *testing.T, budget int64) registry.ChildCheck {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return registry.ChildCheck{Command: exe, Env: []string{envChild + "=admit"}, MemoryBudget: budget}
}

func writeModelFile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "model.onnx")
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestChildCheck: each way a model can fail in the child is told apart,
// names the batch it was warming, and is a verdict on the model — except
// a command that cannot run. "grow" allocates 2 GiB at batch 32 in the
// child: the child's RLIMIT_AS makes that a fatal out of memory of the
// child, reported as the budget exhausted; the test process never
// allocates it.
func TestChildCheck(t *testing.T) {
	ctx := context.Background()
	cfg := registry.AdmissionConfig{Timeout: 20 * time.Second}
	for _, c := range []struct {
		mode    string
		timeout time.Duration
		want    []string
		budget  bool // a *BudgetError
	}{
		{mode: "ok"},
		{mode: "fake:refuse", want: []string{"fake cannot load and warm it (batch sizes [1 32]): fake: no such operator"}},
		{mode: "fake:grow", budget: true, want: []string{"the model exhausted the admission memory budget of 268435456 bytes (256.0 MiB) while warming at batch 32", "out of memory"}},
		{mode: "fake:panic", want: []string{"loading it crashed the admission check process while warming at batch 32 (exit status 2)", "fake: kernel bug"}},
		{mode: "fake:hang", timeout: 2 * time.Second, want: []string{"fake did not load and warm it (batch sizes [1 32]) within 2s (the admission check was stopped while warming at batch 32"}},
	} {
		t.Run(c.mode, func(t *testing.T) {
			if c.budget && raceEnabled {
				t.Skip("a race-instrumented child cannot start under RLIMIT_AS; make test runs this case without -race")
			}
			cfg := cfg
			if c.timeout > 0 {
				cfg.Timeout = c.timeout
			}
			info, err := testChildCheck(t, 256<<20).CheckFile(ctx, writeModelFile(t, c.mode), cfg)
			if c.want == nil {
				if err != nil || len(info.Inputs) != 1 || info.Inputs[0].Name != "x" || info.Inputs[0].BatchAxis != 0 || len(info.Outputs) != 1 || info.Metadata["k"] != "v" {
					t.Fatalf("CheckFile = %+v, %v", info, err)
				}
				return
			}
			if err == nil {
				t.Fatal("CheckFile admitted it")
			}
			t.Logf("%v", err)
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("CheckFile = %v\nwant it to contain %q", err, w)
				}
			}
			var be *registry.BudgetError
			if errors.As(err, &be) != c.budget || errors.Is(err, infer.ErrWarmupMemory) != c.budget {
				t.Errorf("CheckFile = %v: a budget error %v, want %v", err, errors.As(err, &be), c.budget)
			}
			if errors.Is(err, registry.ErrChildCheck) {
				t.Errorf("CheckFile = %v: a verdict on the model wraps ErrChildCheck", err)
			}
		})
	}

	// No verdict: the command does not exist, or is not a child check.
	for _, cc := range []registry.ChildCheck{
		{Command: filepath.Join(t.TempDir(), "missing")},
		{Command: "/bin/true"},
		{},
	} {
		if _, err := cc.CheckFile(ctx, writeModelFile(t, "ok"), cfg); !errors.Is(err, registry.ErrChildCheck) {
			t.Errorf("CheckFile with command %q = %v, want ErrChildCheck", cc.Command, err)
		}
	}
}

// TestChildValidator: registration through the child check runs the
// static check first, admits a model with the child's description of it,
// and refuses what the child refuses as an invalid artifact.
func TestChildValidator(t *testing.T) {
	ctx := context.Background()
	v := registry.NewChildValidator(testChildCheck(t, 0), registry.AdmissionConfig{})
	info, err := v.Validate(ctx, onnxModel(t, 1, feats...))
	if err != nil || len(info.Inputs) != 1 || info.Metadata["k"] != "v" {
		t.Fatalf("Validate = %+v, %v", info, err)
	}
	if _, err := v.Validate(ctx, append(onnxModel(t, 1, feats...), "fake:refuse"...)); err == nil {
		// Trailing bytes may not parse as ONNX; either way it is refused.
		t.Fatal("Validate admitted a model the child refuses")
	} else if !errors.Is(err, registry.ErrInvalidArtifact) {
		t.Errorf("Validate = %v, want ErrInvalidArtifact", err)
	}
	if _, err := v.Validate(ctx, []byte("not onnx")); !errors.Is(err, registry.ErrInvalidArtifact) {
		t.Errorf("Validate of garbage = %v", err)
	}
}
