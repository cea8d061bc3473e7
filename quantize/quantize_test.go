package quantize_test

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/signalforge/signalforge/infer"
	"github.com/signalforge/signalforge/onnx"
	"github.com/signalforge/signalforge/quantize"
	"github.com/signalforge/signalforge/tensor"
)

func loadFixture(tb testing.TB, name string) *onnx.ModelProto {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		tb.Fatal(err)
	}
	m := &onnx.ModelProto{}
	if err := proto.Unmarshal(b, m); err != nil {
		tb.Fatal(err)
	}
	return m
}

// normal returns n samples of the given per-sample shape, N(0, 1) with seed.
func normal(seed uint64, n int, shape ...int64) tensor.Tensor {
	rng := rand.New(rand.NewPCG(seed, 7))
	s := append(tensor.Shape{int64(n)}, shape...)
	v := make([]float32, s.NumElements())
	for i := range v {
		v[i] = float32(rng.NormFloat64())
	}
	return tensor.Must(s, v)
}

func mustNew(tb testing.TB, cfg quantize.Config) *quantize.Quantizer {
	tb.Helper()
	q, err := quantize.New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	return q
}

// opTypes lists the op types of a model file written by ONNX Runtime.
func opTypes(tb testing.TB, path string) []string {
	tb.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	m := &onnx.ModelProto{}
	if err := proto.Unmarshal(b, m); err != nil {
		tb.Fatal(err)
	}
	var ops []string
	for _, n := range m.Graph.Node {
		ops = append(ops, n.GetOpType())
	}
	return ops
}

// optimizedOps loads m with full optimization and returns the op types of
// the graph ONNX Runtime actually runs.
func optimizedOps(t *testing.T, eng infer.Engine, m *onnx.ModelProto) []string {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "optimized.onnx")
	s, err := eng.LoadBytes(context.Background(), b, infer.Options{OptimizedModelPath: path})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	return opTypes(t, path)
}

func TestDynamic(t *testing.T) {
	eng := newEngine(t)
	ctx := context.Background()
	cases := []struct {
		fixture    string
		shape      []int64
		perChannel bool
		minSQNR    float64 // documented error bound: output SQNR in dB
		fused      string  // op ONNX Runtime must fuse the int8 pattern into
	}{
		{"mlp_100_50_10.onnx", []int64{100}, false, 30, "DynamicQuantizeMatMul"},
		{"mlp_100_50_10.onnx", []int64{100}, true, 30, "DynamicQuantizeMatMul"},
		{"mlp_small.onnx", []int64{8}, false, 25, "DynamicQuantizeMatMul"},
		{"matmul.onnx", []int64{32, 16}, true, 30, "DynamicQuantizeMatMul"},
		{"lstm.onnx", []int64{32, 16}, false, 25, "DynamicQuantizeLSTM"},
		{"lstm.onnx", []int64{32, 16}, true, 25, "DynamicQuantizeLSTM"},
	}
	for _, c := range cases {
		name := strings.TrimSuffix(c.fixture, ".onnx")
		if c.perChannel {
			name += "/per-channel"
		}
		t.Run(name, func(t *testing.T) {
			m := loadFixture(t, c.fixture)
			q := mustNew(t, quantize.Config{Engine: eng, PerChannel: c.perChannel})
			res, err := q.Quantize(ctx, m, nil)
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Nodes) == 0 {
				t.Fatal("no node quantized")
			}
			rep, err := q.Evaluate(ctx, m, res, quantize.Tensors(normal(1, 256, c.shape...)))
			if err != nil {
				t.Fatal(err)
			}
			var sb strings.Builder
			rep.WriteText(&sb)
			t.Logf("%s\n%s", name, sb.String())
			_, sqnr, sign := rep.Worst()
			if sqnr < c.minSQNR {
				t.Errorf("output SQNR %.1f dB, want >= %.0f", sqnr, c.minSQNR)
			}
			if sign < 0.95 {
				t.Errorf("sign agreement %.3f, want >= 0.95", sign)
			}
			ops := optimizedOps(t, eng, res.Model)
			if !slices.Contains(ops, c.fused) {
				t.Errorf("optimized graph %v has no %s: ONNX Runtime did not fuse the int8 pattern", ops, c.fused)
			}
			if slices.Contains(ops, "MatMul") || slices.Contains(ops, "Gemm") || slices.Contains(ops, "LSTM") {
				t.Errorf("optimized graph %v still has an fp32 MatMul/Gemm/LSTM", ops)
			}
		})
	}
}
