package ort

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/signalforge/signalforge/infer"
	"github.com/signalforge/signalforge/infer/infertest"
	"github.com/signalforge/signalforge/onnx"
	"github.com/signalforge/signalforge/onnx/onnxtest"
	"github.com/signalforge/signalforge/tensor"
)

// loadMLP loads m in a test engine with default options; the session is
// closed with the test, before the engine.
func loadMLP(t *testing.T, m *onnxtest.MLP) *Session {
	t.Helper()
	return infertest.Load(t, testEngine(t), m.Model, infer.Options{}).(*Session)
}

// Cancellations racing runs must never leave a terminate flag set on a
// pooled RunOptions: every later run with a live ctx must succeed.
func TestCancelRaceLeavesNoStaleTerminate(t *testing.T) {
	m := onnxtest.MustMLP(1, 16, 8, 2)
	sess := loadMLP(t, m)
	in := []tensor.Tensor{m.RandomInput(1, 1)}
	for i := range 300 {
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		wg.Go(cancel)
		sess.Run(ctx, in) // may or may not be cancelled
		wg.Wait()
		live, stop := context.WithCancel(context.Background())
		if _, err := sess.Run(live, in); err != nil {
			t.Fatalf("iteration %d: Run with a live ctx after a cancelled one: %v", i, err)
		}
		stop()
	}
}

// A model whose declared output shape is wrong still runs: the session
// falls back from its preallocated output to ONNX Runtime's allocation.
func TestWrongDeclaredOutputShape(t *testing.T) {
	m := onnxtest.MustMLP(1, 4, 3)
	out := m.Model.GetGraph().GetOutput()[0]
	out.GetType().GetTensorType().GetShape().GetDim()[1].Value = &onnx.TensorShapeProto_Dimension_DimValue{DimValue: 5}
	sess := loadMLP(t, m)
	for run := range 2 { // the first run falls back, the second skips preallocation
		// The reference's shape is the true [2,3], not the declared [2,5].
		if err := infertest.CheckMLP(context.Background(), sess, m, m.RandomInput(2, 3), 0, 1e-5); err != nil {
			t.Fatalf("run %d: %v", run, err)
		}
	}
	if !sess.noPrealloc.Load() {
		t.Error("preallocation still on after ONNX Runtime rejected it")
	}
}

// Big inputs bypass the pool and are wrapped in place; results must match.
func TestLargeBatchBypassesPool(t *testing.T) {
	m := onnxtest.MustMLP(2, 100, 10)
	sess := loadMLP(t, m)
	x := m.RandomInput(poolMaxElems/100+1, 4)
	if sess.poolable([]tensor.Tensor{x}) {
		t.Fatal("test input is small enough for the pool")
	}
	if err := infertest.CheckMLP(context.Background(), sess, m, x, 0, 1e-4); err != nil {
		t.Fatal(err)
	}
}

// Many input shapes keep at most poolMaxFree idle IO sets, and results
// stay right as sets are evicted and reused.
func TestPoolEviction(t *testing.T) {
	m := onnxtest.MustMLP(3, 6, 4)
	sess := loadMLP(t, m)
	for round := range 2 {
		for b := 1; b <= poolMaxFree+8; b++ {
			if err := infertest.CheckMLP(context.Background(), sess, m, m.RandomInput(b, uint64(b+round)), 0, 1e-5); err != nil {
				t.Fatalf("batch %d: %v", b, err)
			}
		}
	}
	sess.poolMu.Lock()
	n := len(sess.free)
	sess.poolMu.Unlock()
	if n != poolMaxFree {
		t.Errorf("%d idle IO sets, want %d", n, poolMaxFree)
	}
}

// LoadFile refuses what is not a regular model file before reading it: a
// device like /dev/zero used to be read until memory ran out.
func TestLoadFileRefusesNonRegularFiles(t *testing.T) {
	e := testEngine(t)
	empty := filepath.Join(t.TempDir(), "empty.onnx")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ path, want string }{
		{"/dev/zero", "/dev/zero: not a regular file"},
		{t.TempDir(), "is a directory"},
		{empty, empty + ": is empty"},
	} {
		s, err := e.LoadFile(context.Background(), c.path, infer.Options{})
		if err == nil {
			s.Close()
			t.Fatalf("LoadFile(%s) succeeded", c.path)
		}
		if !errors.Is(err, onnx.ErrFileRefused) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("LoadFile(%s) error = %v; want %q matching onnx.ErrFileRefused", c.path, err, c.want)
		}
	}
	// A real model file still loads.
	m := onnxtest.MustMLP(1, 4, 3)
	data, err := onnx.Marshal(m.Model)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "mlp.onnx")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := e.LoadFile(context.Background(), path, infer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := infertest.CheckMLP(context.Background(), s, m, m.RandomInput(2, 1), 0, 1e-5); err != nil {
		t.Fatal(err)
	}
}
