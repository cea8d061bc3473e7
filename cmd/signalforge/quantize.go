package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/signalforge/signalforge/infer/ort"
	"github.com/signalforge/signalforge/onnx"
	"github.com/signalforge/signalforge/quantize"
	"github.com/signalforge/signalforge/tensor"
)

// cmdQuantize quantizes an ONNX model to INT8, prints the accuracy report
// against the fp32 model and, with -bench, the fp32 vs int8 benchmark.
func cmdQuantize(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "quantize", "[flags] model.onnx")
	out := fs.String("o", "", "output path (default: model.int8.onnx next to the input)")
	mode := fs.String("mode", "dynamic", "dynamic (weights int8, activations at run time) or static (QDQ, calibrated)")
	perChannel := fs.Bool("per-channel", false, "one weight scale per output channel")
	symmetric := fs.Bool("symmetric", false, "static: int8 symmetric activations instead of uint8 asymmetric")
	calib := fs.String("calibration", "", "calibration data: .csv or .jsonl (columns named by the model's features) or .npy")
	method := fs.String("method", "minmax", "static calibration method: minmax, percentile or entropy")
	pct := fs.Float64("percentile", 99.999, "percentile of |x| kept by -method percentile")
	evalPath := fs.String("eval", "", "held-out data for the accuracy report and gate (default: the calibration data, or synthetic N(0,1) inputs)")
	maxSamples := fs.Int64("max-samples", 0, "read at most this many samples per data pass (0: all)")
	opTypes := fs.String("op-types", "", "comma-separated op types to quantize (default: MatMul,Gemm,LSTM dynamic; MatMul,Gemm,Conv static)")
	exclude := fs.String("exclude", "", "comma-separated node names to keep in fp32")
	maxErr := fs.Float64("max-error", 0, "accuracy gate: largest allowed absolute output error")
	minSQNR := fs.Float64("min-sqnr", 0, "accuracy gate: lowest allowed output SQNR in dB")
	minSign := fs.Float64("min-sign", 0, "accuracy gate: lowest allowed sign agreement (0..1)")
	bench := fs.Bool("bench", false, "benchmark fp32 vs int8 after quantizing")
	batches := fs.String("batch-sizes", "1,32", "benchmark batch sizes")
	iters := fs.Int("iterations", 200, "benchmark iterations per model and batch size")
	parent := fs.String("parent", "", "lineage: the source model's name:version, recorded in the output's metadata")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return errUsage
	}
	in := fs.Arg(0)
	if *out == "" {
		*out = strings.TrimSuffix(in, filepath.Ext(in)) + ".int8.onnx"
	}
	cfg := quantize.Config{PerChannel: *perChannel, Symmetric: *symmetric, Percentile: *pct, Parent: *parent,
		OpTypes: splitList(*opTypes), Exclude: splitList(*exclude)}
	var err error
	if cfg.Mode, err = quantize.ParseMode(*mode); err != nil {
		return err
	}
	if cfg.Calibration, err = quantize.ParseMethod(*method); err != nil {
		return err
	}
	var sizes []int
	for _, s := range splitList(*batches) {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			return fmt.Errorf("bad -batch-sizes entry %q", s)
		}
		sizes = append(sizes, n)
	}
	model, err := onnx.Load(in)
	if err != nil {
		return err
	}
	eng, err := ort.New(ort.Config{Getenv: e.getenv})
	if err != nil {
		return err
	}
	defer eng.Close()
	cfg.Engine = eng
	q, err := quantize.New(cfg)
	if err != nil {
		return err
	}

	open := func(path, what string) (quantize.Dataset, error) {
		// One line per doubling of the sample count: visible progress on
		// big files, a handful of lines in logs.
		next := int64(1024)
		return quantize.OpenDataset(path, model, quantize.DataOptions{MaxSamples: *maxSamples, Progress: func(n int64) {
			if n < next {
				return
			}
			for next <= n {
				next *= 2
			}
			fmt.Fprintf(e.stderr, "%s: %s: %d samples read\n", what, filepath.Base(path), n)
		}})
	}
	var calData, evalData quantize.Dataset
	if *calib != "" {
		if calData, err = open(*calib, "calibration"); err != nil {
			return err
		}
	} else if cfg.Mode == quantize.Static {
		return errors.New("static quantization needs -calibration data")
	}
	evalWhat := "calibration data"
	switch {
	case *evalPath != "":
		if evalData, err = open(*evalPath, "evaluation"); err != nil {
			return err
		}
		evalWhat = *evalPath
	case calData != nil:
		evalData = calData
		evalWhat = *calib + " (the calibration data: pass -eval for held-out data)"
	default:
		if evalData, err = synthetic(model); err != nil {
			return fmt.Errorf("no -eval data and %w", err)
		}
		evalWhat = "512 synthetic N(0,1) samples (pass -eval for real data)"
	}

	var res *quantize.Result
	var rep *quantize.Report
	budget := quantize.Budget{MaxError: *maxErr, MinSQNR: *minSQNR, MinSignAgreement: *minSign}
	if budget != (quantize.Budget{}) {
		g, gerr := q.QuantizeWithBudget(ctx, model, calData, evalData, budget)
		if g != nil {
			for _, s := range g.Steps {
				if s.Excluded == "" {
					fmt.Fprintf(e.stdout, "gate: with every selected node int8: max error %.4g, SQNR %.1f dB\n", s.MaxError, s.SQNR)
				} else {
					fmt.Fprintf(e.stdout, "gate: excluded %s (output SQNR %.1f dB when it alone is int8) → max error %.4g, SQNR %.1f dB\n", s.Excluded, s.IsolatedSQNR, s.MaxError, s.SQNR)
				}
			}
		}
		if gerr != nil {
			if g != nil && g.Report != nil {
				fmt.Fprintf(e.stdout, "\nlast attempt, on %s:\n", evalWhat)
				g.Report.WriteText(e.stdout)
			}
			return fmt.Errorf("%w; no model written", gerr)
		}
		res, rep = g.Result, g.Report
	} else {
		if res, err = q.Quantize(ctx, model, calData); err != nil {
			return err
		}
		if rep, err = q.Evaluate(ctx, model, res, evalData); err != nil {
			return err
		}
	}
	if err := onnx.Save(*out, res.Model); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "wrote %s: %s, %d node(s) quantized", *out, res.Lineage.Method, len(res.Nodes))
	if len(res.Excluded) > 0 {
		fmt.Fprintf(e.stdout, ", excluded %s", strings.Join(res.Excluded, ","))
	}
	fmt.Fprintln(e.stdout)
	for _, s := range res.Skipped {
		fmt.Fprintf(e.stdout, "kept fp32: %s (%s): %s\n", s.Name, s.OpType, s.Reason)
	}
	if res.Lineage.CalibrationSHA256 != "" {
		fmt.Fprintf(e.stdout, "calibration sha256 %s\n", res.Lineage.CalibrationSHA256)
	}
	fmt.Fprintf(e.stdout, "\naccuracy against fp32 on %s:\n", evalWhat)
	if err := rep.WriteText(e.stdout); err != nil {
		return err
	}
	if *bench {
		br, err := quantize.Benchmark(ctx, eng, model, res.Model, quantize.BenchConfig{BatchSizes: sizes, Iterations: *iters})
		if err != nil {
			return err
		}
		fmt.Fprintln(e.stdout)
		if err := br.WriteText(e.stdout); err != nil {
			return err
		}
	}
	return nil
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// synthetic makes 512 standard-normal samples for a single-input model.
func synthetic(model *onnx.ModelProto) (quantize.Dataset, error) {
	s, err := quantize.SchemaOf(model)
	if err != nil {
		return nil, err
	}
	shape := append(tensor.Shape{512}, s.Shape...)
	rng := rand.New(rand.NewPCG(1, 1))
	v := make([]float32, shape.NumElements())
	for i := range v {
		v[i] = float32(rng.NormFloat64())
	}
	t, err := tensor.New(shape, v)
	if err != nil {
		return nil, err
	}
	return quantize.Tensors(t), nil
}
