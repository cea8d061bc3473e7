package ort

import (
	"context"
	"sync"
	"testing"

	"github.com/signalforge/signalforge/infer"
	"github.com/signalforge/signalforge/onnx"
	"github.com/signalforge/signalforge/onnx/onnxtest"
	"github.com/signalforge/signalforge/tensor"
)

// Cancellations racing runs must never leave a terminate flag set on a
// pooled RunOptions: every later run with a live ctx must succeed.
func TestCancelRaceLeavesNoStaleTerminate(t *testing.T) {
	eng := testEngine(t)
	m := onnxtest.MustMLP(1, 16, 8, 2)
	data, err := m.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	sess, err := eng.LoadBytes(context.Background(), data, infer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
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
	eng := testEngine(t)
	m := onnxtest.MustMLP(1, 4, 3)
	out := m.Model.GetGraph().GetOutput()[0]
	out.GetType().GetTensorType().GetShape().GetDim()[1].Value = &onnx.TensorShapeProto_Dimension_DimValue{DimValue: 5}
	data, err := m.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	sess, err := eng.LoadBytes(context.Background(), data, infer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	for range 2 { // the first run falls back, the second skips preallocation
		x := m.RandomInput(2, 3)
		got, err := sess.Run(context.Background(), []tensor.Tensor{x})
		if err != nil {
			t.Fatal(err)
		}
		want, _ := m.Forward(x)
		if !got[0].Shape().Equal(tensor.Shape{2, 3}) {
			t.Fatalf("shape %v, want [2,3]", got[0].Shape())
		}
		for i, w := range want.Float32s() {
			if d := got[0].Float32s()[i] - w; d > 1e-5 || d < -1e-5 {
				t.Fatalf("output %v, want %v", got[0].Float32s(), want.Float32s())
			}
		}
	}
	if !sess.(*Session).noPrealloc.Load() {
		t.Error("preallocation still on after ONNX Runtime rejected it")
	}
}

// Big inputs bypass the pool and are wrapped in place; results must match.
func TestLargeBatchBypassesPool(t *testing.T) {
	eng := testEngine(t)
	m := onnxtest.MustMLP(2, 100, 10)
	data, err := m.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	sess, err := eng.LoadBytes(context.Background(), data, infer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	x := m.RandomInput(poolMaxElems/100+1, 4)
	if sess.(*Session).poolable([]tensor.Tensor{x}) {
		t.Fatal("test input is small enough for the pool")
	}
	got, err := sess.Run(context.Background(), []tensor.Tensor{x})
	if err != nil {
		t.Fatal(err)
	}
	want, _ := m.Forward(x)
	for i, w := range want.Float32s() {
		if d := got[0].Float32s()[i] - w; d > 1e-4 || d < -1e-4 {
			t.Fatalf("value %d = %v, want %v", i, got[0].Float32s()[i], w)
		}
	}
}

// Many input shapes keep at most poolMaxFree idle IO sets, and results
// stay right as sets are evicted and reused.
func TestPoolEviction(t *testing.T) {
	eng := testEngine(t)
	m := onnxtest.MustMLP(3, 6, 4)
	data, err := m.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	s, err := eng.LoadBytes(context.Background(), data, infer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	sess := s.(*Session)
	for round := range 2 {
		for b := 1; b <= poolMaxFree+8; b++ {
			x := m.RandomInput(b, uint64(b+round))
			got, err := sess.Run(context.Background(), []tensor.Tensor{x})
			if err != nil {
				t.Fatal(err)
			}
			want, _ := m.Forward(x)
			for i, w := range want.Float32s() {
				if d := got[0].Float32s()[i] - w; d > 1e-5 || d < -1e-5 {
					t.Fatalf("batch %d value %d = %v, want %v", b, i, got[0].Float32s()[i], w)
				}
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
