package quantize_test

import (
	"context"
	"errors"
	"math"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/signalforge/signalforge/infer"
	"github.com/signalforge/signalforge/onnx"
	"github.com/signalforge/signalforge/quantize"
	"github.com/signalforge/signalforge/tensor"
)

func report(t *testing.T, rep *quantize.Report) string {
	var sb strings.Builder
	rep.WriteText(&sb)
	return sb.String()
}

func TestStatic(t *testing.T) {
	eng := newEngine(t)
	ctx := context.Background()
	cases := []struct {
		fixture string
		shape   []int64
		cfg     quantize.Config
		minSQNR float64 // documented bound on held-out data
	}{
		{"mlp_100_50_10.onnx", []int64{100}, quantize.Config{}, 25},
		{"mlp_100_50_10.onnx", []int64{100}, quantize.Config{PerChannel: true, Symmetric: true}, 25},
		{"mlp_100_50_10.onnx", []int64{100}, quantize.Config{Calibration: quantize.Percentile}, 25},
		{"mlp_100_50_10.onnx", []int64{100}, quantize.Config{Calibration: quantize.Entropy}, 25},
		{"mlp_small.onnx", []int64{8}, quantize.Config{Calibration: quantize.Entropy, PerChannel: true}, 25},
		{"matmul.onnx", []int64{32, 16}, quantize.Config{PerChannel: true}, 25},
		{"conv.onnx", []int64{32, 16}, quantize.Config{}, 25},
		{"conv.onnx", []int64{32, 16}, quantize.Config{PerChannel: true, Calibration: quantize.Entropy}, 25},
		// The LSTM stays fp32 in static mode (no QDQ LSTM kernel); its head is quantized.
		{"lstm.onnx", []int64{32, 16}, quantize.Config{}, 25},
	}
	for _, c := range cases {
		c.cfg.Engine, c.cfg.Mode = eng, quantize.Static
		name := strings.TrimSuffix(c.fixture, ".onnx") + "/" + c.cfg.Calibration.String()
		if c.cfg.PerChannel {
			name += "/per-channel"
		}
		if c.cfg.Symmetric {
			name += "/symmetric"
		}
		t.Run(name, func(t *testing.T) {
			m := loadFixture(t, c.fixture)
			q := mustNew(t, c.cfg)
			res, err := q.Quantize(ctx, m, quantize.Tensors(normal(1, 512, c.shape...)))
			if err != nil {
				t.Fatal(err)
			}
			rep, err := q.Evaluate(ctx, m, res, quantize.Tensors(normal(2, 256, c.shape...)))
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s\n%s", name, report(t, rep))
			_, sqnr, sign := rep.Worst()
			if sqnr < c.minSQNR {
				t.Errorf("output SQNR %.1f dB, want >= %.0f", sqnr, c.minSQNR)
			}
			if sign < 0.95 {
				t.Errorf("sign agreement %.3f, want >= 0.95", sign)
			}
			if res.Lineage.CalibrationSHA256 == "" || !strings.HasPrefix(res.Lineage.Method, "static/") {
				t.Errorf("lineage %+v", res.Lineage)
			}
			ops := optimizedOps(t, eng, res.Model)
			t.Logf("optimized: %v", ops)
			// With uint8 asymmetric activations ONNX Runtime folds each
			// Relu into the following QuantizeLinear and fuses every QDQ
			// node into an int8 kernel. (Symmetric int8 activations keep
			// the Relu, which blocks that fusion for the layer before it.)
			fused := map[string]string{"conv.onnx": "QLinearConv", "matmul.onnx": "MatMulIntegerToFloat"}[c.fixture]
			if fused == "" {
				fused = "QGemm"
			}
			if !c.cfg.Symmetric {
				if !slices.Contains(ops, fused) {
					t.Errorf("optimized graph %v has no %s", ops, fused)
				}
				for _, fp := range []string{"Gemm", "FusedGemm", "MatMul", "Conv", "FusedConv", "Relu"} {
					if slices.Contains(ops, fp) {
						t.Errorf("optimized graph %v still has fp32 %s", ops, fp)
					}
				}
			}
		})
	}
}

// On a layer whose output channels differ by 4^j in scale, one per-tensor
// weight scale rounds the small channels to nothing; per-channel does not.
func TestPerChannelBeatsPerTensorOnSkewedChannels(t *testing.T) {
	eng := newEngine(t)
	ctx := context.Background()
	m := loadFixture(t, "skewed.onnx")
	for _, mode := range []quantize.Mode{quantize.Dynamic, quantize.Static} {
		t.Run(mode.String(), func(t *testing.T) {
			calib, eval := quantize.Tensors(normal(1, 256, 16)), quantize.Tensors(normal(2, 256, 16))
			var worst [2]float64 // worst per-channel relative error, per-tensor and per-channel
			for i, pc := range []bool{false, true} {
				q := mustNew(t, quantize.Config{Engine: eng, Mode: mode, PerChannel: pc})
				res, err := q.Quantize(ctx, m, calib)
				if err != nil {
					t.Fatal(err)
				}
				worst[i] = worstChannelRelError(t, eng, m, res.Model, normal(2, 256, 16))
				rep, err := q.Evaluate(ctx, m, res, eval)
				if err != nil {
					t.Fatal(err)
				}
				t.Logf("per-channel=%v: worst channel rel err %.4g\n%s", pc, worst[i], report(t, rep))
			}
			if !(worst[1] <= worst[0]) {
				t.Errorf("per-channel worst channel rel err %.4g > per-tensor %.4g", worst[1], worst[0])
			}
			if worst[1] > 0.05 || worst[0] < 0.2 {
				t.Errorf("want per-channel <= 5%% and per-tensor >= 20%% worst channel error; got %.3g, %.3g", worst[1], worst[0])
			}
		})
	}
}

// Calibration data with rare huge outliers: MinMax stretches the input
// range for them and loses resolution on the ordinary rows; Percentile and
// Entropy clip and win on held-out ordinary data.
func TestClippingBeatsMinMaxWithOutliers(t *testing.T) {
	eng := newEngine(t)
	ctx := context.Background()
	m := loadFixture(t, "mlp_100_50_10.onnx")
	calib := normal(1, 2000, 100)
	v := calib.Float32s()
	for i := 0; i < len(v); i += 4999 { // 0.02% of values, at 200σ
		v[i] = 200
	}
	eval := quantize.Tensors(normal(2, 512, 100))
	sqnr := map[quantize.Method]float64{}
	for _, meth := range []quantize.Method{quantize.MinMax, quantize.Percentile, quantize.Entropy} {
		q := mustNew(t, quantize.Config{Engine: eng, Mode: quantize.Static, Calibration: meth, Percentile: 99.9})
		res, err := q.Quantize(ctx, m, quantize.Tensors(calib))
		if err != nil {
			t.Fatal(err)
		}
		rep, err := q.Evaluate(ctx, m, res, eval)
		if err != nil {
			t.Fatal(err)
		}
		_, sqnr[meth], _ = rep.Worst()
		t.Logf("%s: input range %+v\n%s", meth, res.Ranges["input"], report(t, rep))
	}
	for _, meth := range []quantize.Method{quantize.Percentile, quantize.Entropy} {
		if sqnr[meth] < sqnr[quantize.MinMax]+6 {
			t.Errorf("%s SQNR %.1f dB, want at least 6 dB over MinMax's %.1f", meth, sqnr[meth], sqnr[quantize.MinMax])
		}
	}
}

// gate_fail.onnx has one weight 2000× the others in its middle layer: per
// tensor int8 zeroes the rest of that layer. The gate must find that node
// (and only it) and meet the budget.
func TestGateExcludesWorstNode(t *testing.T) {
	eng := newEngine(t)
	ctx := context.Background()
	m := loadFixture(t, "gate_fail.onnx")
	calib, eval := quantize.Tensors(normal(1, 256, 16)), quantize.Tensors(normal(2, 256, 16))
	for _, mode := range []quantize.Mode{quantize.Dynamic, quantize.Static} {
		t.Run(mode.String(), func(t *testing.T) {
			q := mustNew(t, quantize.Config{Engine: eng, Mode: mode})
			plain, err := q.Quantize(ctx, m, calib)
			if err != nil {
				t.Fatal(err)
			}
			rep, err := q.Evaluate(ctx, m, plain, eval)
			if err != nil {
				t.Fatal(err)
			}
			// Output SQNR stays high (the large outputs dominate it) while
			// small outputs flip sign: the budget is on absolute error.
			budget := quantize.Budget{MaxError: 0.05}
			if budget.Met(rep) {
				t.Fatalf("fixture meets the budget without the gate:\n%s", report(t, rep))
			}
			g, err := q.QuantizeWithBudget(ctx, m, calib, eval, budget)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("steps %+v\n%s", g.Steps, report(t, g.Report))
			if !budget.Met(g.Report) {
				t.Errorf("gate returned a model outside the budget")
			}
			if len(g.Excluded) != 1 || g.Excluded[0] != "/2/Gemm" {
				t.Errorf("excluded %v, want [/2/Gemm]", g.Excluded)
			}
			if len(g.Nodes) != 2 {
				t.Errorf("quantized %d nodes, want the other 2", len(g.Nodes))
			}
			// An impossible budget: stop and say so.
			_, err = q.QuantizeWithBudget(ctx, m, calib, eval, quantize.Budget{MaxError: 1e-9})
			if !errors.Is(err, quantize.ErrBudget) {
				t.Errorf("impossible budget: err %v, want ErrBudget", err)
			}
		})
	}
}

// worstChannelRelError runs both models on x and returns the largest
// per-output-channel relative L2 error.
func worstChannelRelError(t *testing.T, eng infer.Engine, fp32, int8 *onnx.ModelProto, x tensor.Tensor) float64 {
	t.Helper()
	run := func(m *onnx.ModelProto) tensor.Tensor {
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		s, err := eng.LoadBytes(context.Background(), b, infer.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		out, err := s.Run(context.Background(), []tensor.Tensor{x})
		if err != nil {
			t.Fatal(err)
		}
		return out[0]
	}
	f, q := run(fp32), run(int8)
	ch := int(f.Shape()[1])
	fv, qv := f.Float32s(), q.Float32s()
	worst := 0.0
	for c := range ch {
		var s2, e2 float64
		for i := c; i < len(fv); i += ch {
			s2 += float64(fv[i]) * float64(fv[i])
			e := float64(qv[i] - fv[i])
			e2 += e * e
		}
		worst = max(worst, math.Sqrt(e2/s2))
	}
	return worst
}

func TestSelectionAndMetadata(t *testing.T) {
	eng := newEngine(t)
	ctx := context.Background()
	m := loadFixture(t, "lstm.onnx")
	calib := quantize.Tensors(normal(1, 64, 32, 16))

	// Op-type selection: only the LSTM.
	res, err := mustNew(t, quantize.Config{Engine: eng, OpTypes: []string{"LSTM"}, Parent: "lstm_model:v2.0"}).Quantize(ctx, m, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Nodes) != 1 || res.Nodes[0].OpType != "LSTM" {
		t.Fatalf("quantized %+v, want the LSTM only", res.Nodes)
	}
	meta := onnx.Metadata(res.Model)
	for k, want := range map[string]string{
		"signalforge.quantize.mode":   "dynamic",
		"signalforge.quantize.nodes":  "/lstm/LSTM",
		"signalforge.quantize.parent": "lstm_model:v2.0",
		"signalforge.features":        meta["signalforge.features"],
	} {
		if meta[k] != want || want == "" {
			t.Errorf("metadata %s = %q, want %q", k, meta[k], want)
		}
	}

	// Static mode says why the LSTM stays fp32.
	res, err = mustNew(t, quantize.Config{Engine: eng, Mode: quantize.Static}).Quantize(ctx, m, calib)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Skipped) != 1 || res.Skipped[0].OpType != "LSTM" || !strings.Contains(res.Skipped[0].Reason, "dynamic") {
		t.Errorf("skipped %+v, want the LSTM with a reason", res.Skipped)
	}

	// Exclusion by node name, static: the head stays fp32, nothing left.
	_, err = mustNew(t, quantize.Config{Engine: eng, Mode: quantize.Static, Exclude: []string{"/head/Gemm"}}).Quantize(ctx, m, calib)
	if !errors.Is(err, quantize.ErrNothing) {
		t.Errorf("err %v, want ErrNothing", err)
	}
	res, err = mustNew(t, quantize.Config{Engine: eng, Mode: quantize.Static, Calibration: quantize.Percentile, Percentile: 99.9}).Quantize(ctx, m, calib)
	if err != nil {
		t.Fatal(err)
	}
	meta = onnx.Metadata(res.Model)
	if p := res.Params(); p["mode"] != "static" || p["calibration"] != "percentile" || p["nodes"] != "/head/Gemm" {
		t.Errorf("params %v", p)
	}
	if meta["signalforge.quantize.calibration"] != "percentile" || meta["signalforge.quantize.percentile"] != "99.9" ||
		meta["signalforge.quantize.calibration_sha256"] != calib.Hash() || res.Lineage.CalibrationSHA256 != calib.Hash() {
		t.Errorf("metadata %v, lineage %+v", meta, res.Lineage)
	}

	// Invalid configurations are errors, not surprises.
	for _, cfg := range []quantize.Config{
		{Mode: quantize.Static},     // no engine
		{OpTypes: []string{"Conv"}}, // Conv is static only
		{Engine: eng, Mode: quantize.Static, OpTypes: []string{"LSTM"}}, // no QDQ LSTM
		{Percentile: 20},
	} {
		if _, err := quantize.New(cfg); !errors.Is(err, quantize.ErrConfig) {
			t.Errorf("New(%+v) err %v, want ErrConfig", cfg, err)
		}
	}
}
