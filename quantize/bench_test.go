package quantize_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/signalforge/signalforge/infer"
	"github.com/signalforge/signalforge/onnx"
	"github.com/signalforge/signalforge/onnx/onnxtest"
	"github.com/signalforge/signalforge/quantize"
	"github.com/signalforge/signalforge/tensor"
)

type benchModel struct {
	name  string
	model func(testing.TB) *onnx.ModelProto
	shape []int64
}

var benchModels = []benchModel{
	{"mlp_512_1024_1024_1", func(testing.TB) *onnx.ModelProto { return onnxtest.MustMLP(1, 512, 1024, 1024, 1).Model }, []int64{512}},
	{"mlp_100_50_10", func(tb testing.TB) *onnx.ModelProto { return loadFixture(tb, "mlp_100_50_10.onnx") }, []int64{100}},
	{"lstm_16_64_seq32", func(tb testing.TB) *onnx.ModelProto { return loadFixture(tb, "lstm.onnx") }, []int64{32, 16}},
}

// BenchmarkInt8VsFP32 measures one Run of each model in fp32 and after
// dynamic int8 quantization, side by side, at batch 1 and 32, one intra-op
// thread (the server's setting). It also reports the size ratio and the
// output SQNR of the int8 model.
//
//	go test ./quantize -run '^$' -bench Int8VsFP32 -benchtime 2s
func BenchmarkInt8VsFP32(b *testing.B) {
	eng := newEngine(b)
	ctx := context.Background()
	for _, bm := range benchModels {
		m := bm.model(b)
		q := mustNew(b, quantize.Config{Engine: eng})
		res, err := q.Quantize(ctx, m, nil)
		if err != nil {
			b.Fatal(err)
		}
		fb, _ := proto.Marshal(m)
		qb, _ := proto.Marshal(res.Model)
		rep, err := q.Evaluate(ctx, m, res, quantize.Tensors(normal(3, 256, bm.shape...)))
		if err != nil {
			b.Fatal(err)
		}
		maxErr, sqnr, sign := rep.Worst()
		for _, batch := range []int{1, 32} {
			x := normal(4, batch, bm.shape...)
			for _, prec := range []struct {
				name  string
				bytes []byte
			}{{"fp32", fb}, {"int8", qb}} {
				b.Run(fmt.Sprintf("%s/batch=%d/%s", bm.name, batch, prec.name), func(b *testing.B) {
					s, err := eng.LoadBytes(ctx, prec.bytes, infer.Options{})
					if err != nil {
						b.Fatal(err)
					}
					defer s.Close()
					in := []tensor.Tensor{x}
					for b.Loop() {
						if _, err := s.Run(ctx, in); err != nil {
							b.Fatal(err)
						}
					}
					b.ReportMetric(float64(len(fb))/float64(len(qb)), "size_ratio")
					if prec.name == "int8" {
						b.ReportMetric(sqnr, "SQNR_dB")
						b.ReportMetric(maxErr, "max_abs_err")
						b.ReportMetric(100*sign, "sign_agree_%")
					}
				})
			}
		}
	}
}

// Benchmark's table must be consistent: sizes, one row per batch size, the
// recommendation following the measured speed-ups. (No timing thresholds:
// those belong in BenchmarkInt8VsFP32 and the report.)
func TestBenchmarkTable(t *testing.T) {
	eng := newEngine(t)
	ctx := context.Background()
	m := loadFixture(t, "mlp_100_50_10.onnx")
	res, err := mustNew(t, quantize.Config{}).Quantize(ctx, m, nil)
	if err != nil {
		t.Fatal(err)
	}
	br, err := quantize.Benchmark(ctx, eng, m, res.Model, quantize.BenchConfig{BatchSizes: []int{1, 8}, Iterations: 20})
	if err != nil {
		t.Fatal(err)
	}
	var sb strings.Builder
	br.WriteText(&sb)
	t.Log("\n" + sb.String())
	if len(br.Rows) != 2 || br.Rows[0].Batch != 1 || br.Rows[1].Batch != 8 {
		t.Fatalf("rows %+v", br.Rows)
	}
	if br.Int8Bytes >= br.FP32Bytes || br.SizeReductionPct < 50 {
		t.Errorf("int8 %d B vs fp32 %d B (%.1f%%)", br.Int8Bytes, br.FP32Bytes, br.SizeReductionPct)
	}
	slower := false
	for _, r := range br.Rows {
		if r.FP32 <= 0 || r.Int8 <= 0 {
			t.Errorf("row %+v", r)
		}
		slower = slower || r.Speedup < 1
	}
	if m := br.Metrics(); len(m) != 7 || m["speedup_batch8"] != br.Rows[1].Speedup || m["size_reduction_pct"] != br.SizeReductionPct {
		t.Errorf("metrics %v", m)
	}
	if want := map[bool]string{true: "fp32", false: "int8"}[slower]; br.Recommendation != want {
		t.Errorf("recommendation %q with rows %+v, want %q", br.Recommendation, br.Rows, want)
	}
}
