package quantize_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/signalforge/signalforge/infer/ort"
	"github.com/signalforge/signalforge/onnx"
	"github.com/signalforge/signalforge/quantize"
)

// The seed's ModelQuantizer journey: quantize_dynamic(model, path),
// quantize_static(model, calibration_data, path) and
// benchmark_quantized(model, quantized, ...), with accuracy compared.
func Example() {
	ctx := context.Background()
	eng, err := ort.New(ort.Config{})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer eng.Close()
	model, err := onnx.Load("testdata/mlp_small.onnx") // features rsi_14, macd, ...
	if err != nil {
		fmt.Println(err)
		return
	}

	// Calibration data: a CSV with a column per feature, in any order.
	dir, _ := os.MkdirTemp("", "quantize-example")
	defer os.RemoveAll(dir)
	var csv strings.Builder
	csv.WriteString("rsi_14,macd,macd_signal,bb_width,atr_14,obv_z,ret_1,ret_5\n")
	for i := range 200 {
		for j := range 8 {
			if j > 0 {
				csv.WriteByte(',')
			}
			fmt.Fprintf(&csv, "%.3f", float64((i*7+j*13)%41)/10-2)
		}
		csv.WriteByte('\n')
	}
	calPath := filepath.Join(dir, "calib.csv")
	os.WriteFile(calPath, []byte(csv.String()), 0o644)
	calib, err := quantize.OpenDataset(calPath, model, quantize.DataOptions{})
	if err != nil {
		fmt.Println(err)
		return
	}

	for _, cfg := range []quantize.Config{
		{Engine: eng, Mode: quantize.Dynamic},
		{Engine: eng, Mode: quantize.Static, Calibration: quantize.Entropy, PerChannel: true},
	} {
		q, err := quantize.New(cfg)
		if err != nil {
			fmt.Println(err)
			return
		}
		res, err := q.Quantize(ctx, model, calib)
		if err != nil {
			fmt.Println(err)
			return
		}
		if err := onnx.Save(filepath.Join(dir, cfg.Mode.String()+".onnx"), res.Model); err != nil {
			fmt.Println(err)
			return
		}
		rep, err := q.Evaluate(ctx, model, res, calib)
		if err != nil {
			fmt.Println(err)
			return
		}
		_, sqnr, sign := rep.Worst()
		fmt.Printf("%s: %d nodes int8, SQNR > 30 dB: %v, direction kept > 99%%: %v\n", res.Lineage.Method, len(res.Nodes), sqnr > 30, sign > 0.99)

		bench, err := quantize.Benchmark(ctx, eng, model, res.Model, quantize.BenchConfig{Iterations: 20})
		if err != nil {
			fmt.Println(err)
			return
		}
		// A model this small gains little: names, scales and zero points
		// weigh as much as its weights. Speed is in bench.Rows and
		// bench.Recommendation (machine-dependent, so not printed here).
		fmt.Printf("  %d → %d bytes; batch sizes measured: %d\n", bench.FP32Bytes, bench.Int8Bytes, len(bench.Rows))
	}
	// Output:
	// dynamic: 3 nodes int8, SQNR > 30 dB: true, direction kept > 99%: true
	//   4069 → 3562 bytes; batch sizes measured: 2
	// static/entropy: 3 nodes int8, SQNR > 30 dB: true, direction kept > 99%: true
	//   4069 → 4895 bytes; batch sizes measured: 2
}
