package quantize

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strconv"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/signalforge/signalforge/infer"
	"github.com/signalforge/signalforge/onnx"
	"github.com/signalforge/signalforge/tensor"
)

// BenchConfig configures Benchmark. The zero value is a good default.
type BenchConfig struct {
	// BatchSizes to measure. If empty, 1 and 32.
	BatchSizes []int
	// Iterations per model and batch size. If zero, 200.
	Iterations int
	// Options for both sessions (zero: one intra-op thread, all
	// optimizations, as the server runs them).
	Options infer.Options
}

// BenchRow is one batch size of a benchmark: median latencies per Run.
type BenchRow struct {
	Batch      int
	FP32, Int8 time.Duration
	// Speedup is FP32 / Int8 (above 1: int8 is faster).
	Speedup float64
}

// BenchResult compares an fp32 model and its quantized version.
type BenchResult struct {
	FP32Bytes, Int8Bytes int
	// SizeReductionPct is 100·(1 − Int8Bytes/FP32Bytes).
	SizeReductionPct float64
	Rows             []BenchRow
	// Recommendation is "int8" when int8 is faster at every measured batch
	// size, otherwise "fp32" (int8's smaller file does not pay for slower
	// serving; for small models the quantize/dequantize work outweighs
	// the cheaper integer matmuls).
	Recommendation string
	// Reason explains the recommendation in one sentence.
	Reason string
}

// Benchmark measures the median Run latency of the fp32 and the int8 model
// at each batch size on random normal inputs, in interleaved blocks of
// consecutive runs so that both see the same machine load.
func Benchmark(ctx context.Context, eng infer.Engine, fp32, int8 *onnx.ModelProto, cfg BenchConfig) (*BenchResult, error) {
	if len(cfg.BatchSizes) == 0 {
		cfg.BatchSizes = []int{1, 32}
	}
	if cfg.Iterations == 0 {
		cfg.Iterations = 200
	}
	fb, err := proto.Marshal(fp32)
	if err != nil {
		return nil, err
	}
	qb, err := proto.Marshal(int8)
	if err != nil {
		return nil, err
	}
	res := &BenchResult{FP32Bytes: len(fb), Int8Bytes: len(qb)}
	res.SizeReductionPct = 100 * (1 - float64(len(qb))/float64(len(fb)))
	fs, err := eng.LoadBytes(ctx, fb, cfg.Options)
	if err != nil {
		return nil, fmt.Errorf("load fp32 model: %w", err)
	}
	defer fs.Close()
	qs, err := eng.LoadBytes(ctx, qb, cfg.Options)
	if err != nil {
		return nil, fmt.Errorf("load int8 model: %w", err)
	}
	defer qs.Close()
	rng := rand.New(rand.NewPCG(1, 2))
	for _, b := range cfg.BatchSizes {
		in, err := randomInputs(fs.Inputs(), b, rng)
		if err != nil {
			return nil, err
		}
		// Blocks of consecutive runs per model (as a server runs one
		// model: weights stay in cache; alternating run by run would let
		// the 4× larger fp32 weights evict int8's and understate int8),
		// interleaved in rounds so that both models see the same load.
		var ft, qt []time.Duration
		const rounds = 5
		per := max(1, cfg.Iterations/rounds)
		for range rounds {
			for _, s := range []infer.Session{fs, qs} {
				for i := -max(1, per/5); i < per; i++ { // warm-up first
					start := time.Now()
					if _, err := s.Run(ctx, in); err != nil {
						return nil, err
					}
					d := time.Since(start)
					switch {
					case i < 0:
					case s == fs:
						ft = append(ft, d)
					default:
						qt = append(qt, d)
					}
				}
			}
		}
		row := BenchRow{Batch: b, FP32: median(ft), Int8: median(qt)}
		row.Speedup = float64(row.FP32) / float64(row.Int8)
		res.Rows = append(res.Rows, row)
	}
	res.Recommendation, res.Reason = "int8", "int8 is faster at every measured batch size and smaller"
	for _, r := range res.Rows {
		if r.Speedup < 1 {
			res.Recommendation = "fp32"
			res.Reason = fmt.Sprintf("int8 is %.2f× slower than fp32 at batch %d: keep serving fp32 (the model is too small for int8 kernels to pay for quantizing activations)", 1/r.Speedup, r.Batch)
			break
		}
	}
	return res, nil
}

// Metrics flattens the result for a registry's lineage
// (registry.Lineage.Benchmarks): "p50_us_batch1_fp32", "p50_us_batch1_int8",
// "speedup_batch1", ..., "size_reduction_pct".
func (r *BenchResult) Metrics() map[string]float64 {
	m := map[string]float64{"size_reduction_pct": r.SizeReductionPct}
	for _, row := range r.Rows {
		b := strconv.Itoa(row.Batch)
		m["p50_us_batch"+b+"_fp32"] = float64(row.FP32.Nanoseconds()) / 1e3
		m["p50_us_batch"+b+"_int8"] = float64(row.Int8.Nanoseconds()) / 1e3
		m["speedup_batch"+b] = row.Speedup
	}
	return m
}

// WriteText writes the benchmark as a table and the recommendation.
func (r *BenchResult) WriteText(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "size\tfp32 %d B\tint8 %d B\t%.1f%% smaller (%.2f×)\n", r.FP32Bytes, r.Int8Bytes, r.SizeReductionPct, float64(r.FP32Bytes)/float64(r.Int8Bytes))
	fmt.Fprintf(tw, "batch\tfp32 median\tint8 median\tspeed-up\n")
	for _, row := range r.Rows {
		fmt.Fprintf(tw, "%d\t%v\t%v\t%.2f×\n", row.Batch, row.FP32, row.Int8, row.Speedup)
	}
	fmt.Fprintf(tw, "recommendation: %s (%s)\n", r.Recommendation, r.Reason)
	return tw.Flush()
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

// randomInputs makes standard-normal float inputs with batch rows; other
// dynamic dimensions must not exist.
func randomInputs(infos []infer.IOInfo, batch int, rng *rand.Rand) ([]tensor.Tensor, error) {
	in := make([]tensor.Tensor, len(infos))
	for i, info := range infos {
		if info.DType != tensor.Float32 {
			return nil, fmt.Errorf("%w: input %q is %s; benchmarks need float32 inputs", ErrModel, info.Name, info.DType)
		}
		shape := info.Shape.Clone()
		for d := range shape {
			if shape[d] < 0 {
				if d != 0 {
					return nil, fmt.Errorf("%w: input %q has a dynamic dimension %d besides the batch", ErrModel, info.Name, d)
				}
				shape[d] = int64(batch)
			}
		}
		v := make([]float32, shape.NumElements())
		for j := range v {
			v[j] = float32(rng.NormFloat64())
		}
		t, err := tensor.New(shape, v)
		if err != nil {
			return nil, err
		}
		in[i] = t
	}
	return in, nil
}
