package infertest

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/signalforge/signalforge/infer"
	"github.com/signalforge/signalforge/onnx"
	"github.com/signalforge/signalforge/onnx/onnxtest"
	"github.com/signalforge/signalforge/tensor"
)

func runBehaviour(t *testing.T, eng infer.Engine) {
	ctx := context.Background()
	mlp := onnxtest.MustMLP(3, 4, 8, 3)
	data, err := mlp.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	check := func(t *testing.T, sess infer.Session, x tensor.Tensor) {
		t.Helper()
		if err := CheckMLP(ctx, sess, mlp, x, 1e-4, 1e-5); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("Name", func(t *testing.T) {
		if eng.Name() == "" {
			t.Error("engine Name is empty")
		}
	})

	t.Run("Metadata", func(t *testing.T) {
		sess := Load(t, eng, mlp.Model, infer.Options{})
		in, out := sess.Inputs(), sess.Outputs()
		if len(in) != 1 || len(out) != 1 {
			t.Fatalf("inputs %v outputs %v, want one of each", in, out)
		}
		wantIn := infer.IOInfo{Name: "x", DType: tensor.Float32, Shape: tensor.Shape{-1, 4}, DimNames: []string{"batch", ""}, BatchAxis: 0}
		wantOut := infer.IOInfo{Name: "y", DType: tensor.Float32, Shape: tensor.Shape{-1, 3}, DimNames: []string{"batch", ""}, BatchAxis: 0}
		for _, c := range []struct{ got, want infer.IOInfo }{{in[0], wantIn}, {out[0], wantOut}} {
			g, w := c.got, c.want
			if g.Name != w.Name || g.DType != w.DType || !g.Shape.Equal(w.Shape) || strings.Join(g.DimNames, ",") != strings.Join(w.DimNames, ",") || g.BatchAxis != w.BatchAxis {
				t.Errorf("IO info %+v, want %+v", g, w)
			}
		}
		if got := sess.Metadata()[infer.FeaturesMetadataKey]; got != "f0,f1,f2,f3" {
			t.Errorf("metadata %s = %q, want %q", infer.FeaturesMetadataKey, got, "f0,f1,f2,f3")
		}
	})

	t.Run("RunMatchesReference", func(t *testing.T) {
		sess := Load(t, eng, mlp.Model, infer.Options{})
		for _, batch := range []int{1, 2, 7, 33} {
			check(t, sess, mlp.RandomInput(batch, uint64(batch)))
		}
	})

	t.Run("LoadFile", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "mlp.onnx")
		if err := mlp.Save(path); err != nil {
			t.Fatal(err)
		}
		sess, err := eng.LoadFile(ctx, path, infer.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer sess.Close()
		check(t, sess, mlp.RandomInput(3, 1))
		if _, err := eng.LoadFile(ctx, filepath.Join(t.TempDir(), "missing.onnx"), infer.Options{}); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("LoadFile(missing) = %v, want an error wrapping os.ErrNotExist", err)
		}
	})

	t.Run("LoadGarbage", func(t *testing.T) {
		for _, b := range [][]byte{nil, []byte("not a model"), data[:len(data)/2]} {
			if s, err := eng.LoadBytes(ctx, b, infer.Options{}); err == nil {
				s.Close()
				t.Errorf("LoadBytes(%d bytes of garbage) succeeded", len(b))
			}
		}
	})

	t.Run("Options", func(t *testing.T) {
		for _, opts := range []infer.Options{
			{IntraOpThreads: 2, InterOpThreads: 2},
			{GraphOptimization: infer.OptDisabled},
			{GraphOptimization: infer.OptBasic},
			{GraphOptimization: infer.OptExtended},
			{WarmupBatchSizes: []int{1, 8, 8, 32}},
		} {
			check(t, Load(t, eng, mlp.Model, opts), mlp.RandomInput(5, 9))
		}
		for _, opts := range []infer.Options{
			{IntraOpThreads: -1},
			{GraphOptimization: 99},
			{WarmupBatchSizes: []int{0}},
		} {
			if s, err := eng.LoadBytes(ctx, data, opts); err == nil {
				s.Close()
				t.Errorf("LoadBytes with %+v succeeded, want an error", opts)
			}
		}
	})

	t.Run("OptimizedModelPath", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "optimized.onnx")
		Load(t, eng, mlp.Model, infer.Options{OptimizedModelPath: path})
		m, err := onnx.Load(path)
		if err != nil {
			t.Fatalf("optimized model not written: %v", err)
		}
		if len(m.GetGraph().GetNode()) == 0 {
			t.Error("optimized model has no nodes")
		}
	})

	t.Run("ConcurrentRun", func(t *testing.T) {
		sess := Load(t, eng, mlp.Model, infer.Options{})
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for g := range 8 {
			wg.Go(func() {
				for i := range 25 {
					x := mlp.RandomInput(1+(g+i)%5, uint64(g*100+i))
					if err := CheckMLP(ctx, sess, mlp, x, 1e-4, 1e-5); err != nil {
						errs <- err
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})

	t.Run("CancelledBeforeRun", func(t *testing.T) {
		sess := Load(t, eng, mlp.Model, infer.Options{})
		c, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := sess.Run(c, []tensor.Tensor{mlp.RandomInput(1, 1)}); !errors.Is(err, context.Canceled) {
			t.Errorf("Run with cancelled ctx = %v, want context.Canceled", err)
		}
		d, cancel2 := context.WithDeadline(ctx, time.Now().Add(-time.Second))
		defer cancel2()
		if _, err := sess.Run(d, []tensor.Tensor{mlp.RandomInput(1, 1)}); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Run with expired ctx = %v, want context.DeadlineExceeded", err)
		}
		if s, err := eng.LoadBytes(c, data, infer.Options{}); err == nil {
			s.Close()
			t.Error("LoadBytes with cancelled ctx succeeded")
		}
		// A cancelled call leaves the session usable.
		check(t, sess, mlp.RandomInput(2, 2))
	})

	t.Run("CancelStopsRunningInference", func(t *testing.T) { cancelRunning(t, eng) })

	t.Run("BadInputs", func(t *testing.T) {
		sess := Load(t, eng, mlp.Model, infer.Options{})
		for name, in := range map[string][]tensor.Tensor{
			"no inputs":   {},
			"two inputs":  {mlp.RandomInput(1, 1), mlp.RandomInput(1, 1)},
			"zero tensor": {{}},
			"wrong dtype": {tensor.Must(tensor.Shape{1, 4}, []int64{1, 2, 3, 4})},
			"wrong width": {tensor.Must(tensor.Shape{1, 5}, make([]float32, 5))},
			"wrong rank":  {tensor.Must(tensor.Shape{4}, make([]float32, 4))},
		} {
			_, err := sess.Run(ctx, in)
			if !errors.Is(err, infer.ErrInput) {
				t.Errorf("%s: Run = %v, want an error wrapping infer.ErrInput", name, err)
			}
		}
		check(t, sess, mlp.RandomInput(1, 3))
	})

	t.Run("CloseTwice", func(t *testing.T) {
		sess, err := eng.LoadBytes(ctx, data, infer.Options{})
		if err != nil {
			t.Fatal(err)
		}
		check(t, sess, mlp.RandomInput(1, 1))
		if err := sess.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if err := sess.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
		if _, err := sess.Run(ctx, []tensor.Tensor{mlp.RandomInput(1, 1)}); !errors.Is(err, infer.ErrClosed) {
			t.Errorf("Run after Close = %v, want infer.ErrClosed", err)
		}
	})

	t.Run("CloseWaitsForRuns", func(t *testing.T) {
		sess, err := eng.LoadBytes(ctx, data, infer.Options{})
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for g := range 4 {
			wg.Go(func() {
				for i := range 50 {
					_, err := sess.Run(ctx, []tensor.Tensor{mlp.RandomInput(1, uint64(g+i))})
					if err != nil && !errors.Is(err, infer.ErrClosed) {
						t.Errorf("Run racing Close = %v, want nil or infer.ErrClosed", err)
						return
					}
				}
			})
		}
		if err := sess.Close(); err != nil {
			t.Error(err)
		}
		wg.Wait()
	})
}

// Load loads model in eng with opts, fails t if it does not load, and
// closes the session when t's test ends.
func Load(t testing.TB, eng infer.Engine, model *onnx.ModelProto, opts infer.Options) infer.Session {
	t.Helper()
	data, err := onnx.Marshal(model)
	if err != nil {
		t.Fatal(err)
	}
	s, err := eng.LoadBytes(context.Background(), data, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// CheckMLP runs x through sess, a session of m, and compares its one
// output with m's Go reference (Forward) within atol + rtol*|want|, as
// Compare does.
func CheckMLP(ctx context.Context, sess infer.Session, m *onnxtest.MLP, x tensor.Tensor, rtol, atol float64) error {
	want, err := m.Forward(x)
	if err != nil {
		return err
	}
	out, err := sess.Run(ctx, []tensor.Tensor{x})
	if err != nil {
		return err
	}
	if len(out) != 1 {
		return fmt.Errorf("%d outputs, want 1", len(out))
	}
	return Compare(out[0], want, rtol, atol)
}

// cancelRunning runs a model that never finishes on its own (a Loop with
// 2^62 iterations of a 64×64 MatMul) under a ctx that expires: Run can only
// return if cancellation stops the running inference.
func cancelRunning(t *testing.T, eng infer.Engine) {
	sess := Load(t, eng, endlessLoop(), infer.Options{})
	x := make([]float32, 64*64)
	for i := range x {
		x[i] = float32(math.Sin(float64(i)))
	}
	in := []tensor.Tensor{
		tensor.Must(tensor.Shape{}, []int64{1 << 62}),
		tensor.Must(tensor.Shape{64, 64}, x),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := sess.Run(ctx, in)
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Run = %v, want context.DeadlineExceeded", err)
		}
	case <-time.After(60 * time.Second):
		// The run would go on for centuries: cancellation did not reach it.
		t.Fatal("Run did not stop 60 s after its ctx expired")
	}
	// The session still works after a terminated run.
	short := []tensor.Tensor{tensor.Must(tensor.Shape{}, []int64{3}), in[1]}
	if _, err := sess.Run(context.Background(), short); err != nil {
		t.Fatalf("Run after a terminated run: %v", err)
	}
}

// endlessLoop builds: y = Loop(m, x) with body s ← Tanh(s·W).
func endlessLoop() *onnx.ModelProto {
	w := make([]float32, 64*64)
	for i := range 64 {
		w[i*64+i] = 0.9
		w[i*64+(i+1)%64] = 0.1
	}
	wt, err := onnx.FromTensor("W", tensor.Must(tensor.Shape{64, 64}, w))
	if err != nil {
		panic(err)
	}
	mat := func(name string) *onnx.ValueInfoProto {
		return onnx.ValueInfo(name, onnx.TensorProto_FLOAT, onnx.Dim(64), onnx.Dim(64))
	}
	node := func(op string, in []string, out []string, attrs ...*onnx.AttributeProto) *onnx.NodeProto {
		return &onnx.NodeProto{OpType: ptr(op), Input: in, Output: out, Attribute: attrs}
	}
	body := &onnx.GraphProto{
		Name: ptr("body"),
		Input: []*onnx.ValueInfoProto{
			onnx.ValueInfo("i", onnx.TensorProto_INT64),
			onnx.ValueInfo("cond_in", onnx.TensorProto_BOOL),
			mat("s"),
		},
		Node: []*onnx.NodeProto{
			node("MatMul", []string{"s", "W"}, []string{"p"}),
			node("Tanh", []string{"p"}, []string{"s_out"}),
			node("Identity", []string{"cond_in"}, []string{"cond_out"}),
		},
		Output: []*onnx.ValueInfoProto{onnx.ValueInfo("cond_out", onnx.TensorProto_BOOL), mat("s_out")},
	}
	bodyAttr := &onnx.AttributeProto{Name: ptr("body"), Type: onnx.AttributeProto_GRAPH.Enum(), G: body}
	return &onnx.ModelProto{
		IrVersion:   ptr(int64(onnx.DefaultIRVersion)),
		OpsetImport: []*onnx.OperatorSetIdProto{{Domain: ptr(""), Version: ptr(int64(onnx.DefaultOpset))}},
		Graph: &onnx.GraphProto{
			Name:        ptr("endless"),
			Input:       []*onnx.ValueInfoProto{onnx.ValueInfo("m", onnx.TensorProto_INT64), mat("x")},
			Initializer: []*onnx.TensorProto{wt},
			Node:        []*onnx.NodeProto{node("Loop", []string{"m", "", "x"}, []string{"y"}, bodyAttr)},
			Output:      []*onnx.ValueInfoProto{mat("y")},
		},
	}
}
