package registry_test

import (
	"context"
	"errors"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/signalforge/signalforge/infer"
	"github.com/signalforge/signalforge/onnx"
	"github.com/signalforge/signalforge/onnx/onnxtest"
	"github.com/signalforge/signalforge/registry"
)

// hugeInputModel is onnxtest.HugeInput: an input declared [batch, rows, 4].
func hugeInputModel(t testing.TB, rows int64) []byte {
	t.Helper()
	data, err := onnxtest.HugeInput(rows)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestCheckAdmissionMemory(t *testing.T) {
	huge := hugeInputModel(t, 100000000)
	_, err := registry.CheckAdmission(huge, registry.AdmissionConfig{})
	var me *infer.MemoryError
	if !errors.As(err, &me) || !errors.Is(err, registry.ErrInvalidArtifact) || !errors.Is(err, infer.ErrWarmupMemory) {
		t.Fatalf("CheckAdmission = %v, want ErrInvalidArtifact wrapping a *MemoryError", err)
	}
	// Batch 1 already needs 1.6 GB, more than the 1 GiB default.
	if me.Name != "x" || me.Shape != "[batch,100000000,4]" || me.Batch != 1 || me.Bytes != 1600000000 || me.Limit != infer.DefaultMaxWarmupBytes {
		t.Errorf("MemoryError = %+v", me)
	}
	for _, want := range []string{`input "x"`, "[batch,100000000,4]", "1600000000 bytes", "warm-up batch 1", "1073741824 bytes"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	// With a 4 GiB budget it is the server's batch 32 that does not fit.
	_, err = registry.CheckAdmission(huge, registry.AdmissionConfig{MaxWarmupBytes: 4 << 30})
	if !errors.As(err, &me) || me.Batch != 32 || me.Bytes != 51200000000 {
		t.Fatalf("CheckAdmission with 4 GiB = %v", err)
	}
	// Batch sizes are the servers': at max batch 2 it fits in 4 GiB.
	if _, err := registry.CheckAdmission(huge, registry.AdmissionConfig{MaxWarmupBytes: 4 << 30, WarmupBatchSizes: []int{1, 2}}); err != nil {
		t.Fatal(err)
	}
	// A small one fits by default.
	if _, err := registry.CheckAdmission(hugeInputModel(t, 16), registry.AdmissionConfig{}); err != nil {
		t.Fatal(err)
	}
}

// TestRegisterRefusesHugeWarmup: the validator is the one the CLI and the
// server use; nothing is loaded (the fake engine would say so) and nothing
// is written.
func TestRegisterRefusesHugeWarmup(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	eng := &fakeEngine{}
	r, err := registry.Open(ctx, registry.Config{Dir: dir, Validator: registry.EngineValidator(eng)})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	_, err = r.Register(ctx, registry.RegisterRequest{Name: "huge", ONNX: hugeInputModel(t, 100000000)})
	if !errors.Is(err, infer.ErrWarmupMemory) || !strings.Contains(err.Error(), `input "x" declared [batch,100000000,4]`) {
		t.Fatalf("Register = %v", err)
	}
	if eng.opts.WarmupBatchSizes != nil {
		t.Errorf("the engine was asked to load the model (%+v)", eng.opts)
	}
	assertNothingWritten(t, dir)
}

func assertNothingWritten(t *testing.T, dir string) {
	t.Helper()
	s, err := registry.OpenFileStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if ms, err := s.Models(context.Background()); err != nil || len(ms) != 0 {
		t.Errorf("models after a refused registration: %v, %v", ms, err)
	}
	if seq, _ := s.Seq(context.Background()); seq != 0 {
		t.Errorf("Seq after a refused registration = %d", seq)
	}
	filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(path, ".onnx") {
			t.Errorf("artifact left behind: %s", path)
		}
		return nil
	})
}

// TestRegisterRefusesExternalData: a model whose weights live in a file
// beside it is refused, by path and by bytes, with or without an engine,
// naming the tensor and the file, and nothing is written.
func TestRegisterRefusesExternalData(t *testing.T) {
	ctx := context.Background()
	m := onnxtest.MustMLP(1, 2, 1).Model
	blob, err := onnxtest.Externalize(m, "weights.bin")
	if err != nil {
		t.Fatal(err)
	}
	src := t.TempDir()
	path := filepath.Join(src, "model.onnx")
	if err := onnx.Save(path, m); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "weights.bin"), blob, 0o644); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(path)
	for _, tc := range []struct {
		name string
		val  registry.Validator
		req  registry.RegisterRequest
	}{
		{"path, no engine", nil, registry.RegisterRequest{ONNXPath: path}},
		{"bytes, engine", registry.EngineValidator(&fakeEngine{}), registry.RegisterRequest{ONNX: data}},
	} {
		dir := t.TempDir()
		r, err := registry.Open(ctx, registry.Config{Dir: dir, Validator: tc.val})
		if err != nil {
			t.Fatal(err)
		}
		tc.req.Name, tc.req.Features = "ext", []string{"f0", "f1"}
		_, err = r.Register(ctx, tc.req)
		r.Close()
		if !errors.Is(err, registry.ErrInvalidArtifact) || !strings.Contains(err.Error(), `tensor "fc0.weight" keeps its data in the external file "weights.bin" (and 1 more tensor)`) ||
			!strings.Contains(err.Error(), "save_as_external_data=False") {
			t.Errorf("%s: Register = %v", tc.name, err)
		}
		assertNothingWritten(t, dir)
	}
}

// FuzzCheckAdmission feeds arbitrary bytes to the static admission check
// (parse, inspect, external data, memory estimate). It must never panic,
// and it must not allocate by declared shapes: a few bytes can declare an
// input of 2^62 elements. Seeds: a small model, the [batch, 1e8, 4] model
// and a model with external data.
//
//	go test -run '^$' -fuzz FuzzCheckAdmission -fuzztime 10m ./registry/
func FuzzCheckAdmission(f *testing.F) {
	f.Add(onnxModel(f, 1, "a", "b"))
	f.Add(hugeInputModel(f, 100000000))
	f.Add(hugeInputModel(f, math.MaxInt64))
	m := onnxtest.MustMLP(1, 2, 1).Model
	if _, err := onnxtest.Externalize(m, "../../etc/passwd"); err != nil {
		f.Fatal(err)
	}
	ext, _ := onnx.Marshal(m)
	f.Add(ext)
	f.Fuzz(func(t *testing.T, data []byte) {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		info, err := registry.CheckAdmission(data, registry.AdmissionConfig{})
		runtime.ReadMemStats(&after)
		// Protobuf decoding allocates in proportion to the input (a two-byte
		// empty message becomes a struct of a few hundred bytes); a check
		// that allocated by a declared shape would need gigabytes here.
		if n := after.TotalAlloc - before.TotalAlloc; n > 1024*uint64(len(data))+4<<20 {
			t.Fatalf("allocated %d bytes for a %d-byte input", n, len(data))
		}
		if err != nil {
			if !errors.Is(err, registry.ErrInvalidArtifact) {
				t.Fatalf("error does not wrap ErrInvalidArtifact: %v", err)
			}
			return
		}
		if len(info.Inputs) == 0 {
			t.Fatal("admitted a model without inputs")
		}
		if err := infer.CheckWarmupMemory(info.Inputs, info.Outputs, []int{1, 32}, 0); err != nil {
			t.Fatalf("admitted a model over the memory budget: %v", err)
		}
		if _, err := registry.MatchFeatures(nil, info); err != nil && !errors.Is(err, registry.ErrFeatures) {
			t.Fatalf("MatchFeatures: %v", err)
		}
	})
}
