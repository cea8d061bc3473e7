package convert

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/signalforge/signalforge/infer"
	"github.com/signalforge/signalforge/tensor"
)

// BenchOptions configure Benchmark. The zero value times batch sizes 1
// and 32 with one thread on each side.
type BenchOptions struct {
	// BatchSizes to time. If empty, 1 and 32.
	BatchSizes []int
	// SeqLen is the size given to dynamic non-batch axes (sequence length,
	// Conv1d length). If zero, 32.
	SeqLen int
	// Iterations is the number of timed runs per batch size and side. If
	// zero, 200 (fewer if Budget runs out first).
	Iterations int
	// Budget caps the time spent timing one batch size on one side. If
	// zero, 3s.
	Budget time.Duration
	// Bridge runs PyTorch. If nil, the default bridge.
	Bridge *Bridge
	// Spec is passed to the bridge for weights-only files.
	Spec *Spec
}

// BenchRow is one batch size of a Benchmark: median time per forward pass.
type BenchRow struct {
	Batch   int
	Torch   time.Duration
	ORT     time.Duration
	Speedup float64 // Torch / ORT
}

// BenchInputs makes one random input case (seeded, normal) per batch size
// for a model of the given input shape. Batch sizes must be positive, and
// so must seqLen when a non-batch axis is dynamic (it gives that axis its
// size).
func BenchInputs(inputName string, shape []int64, batchAxis int, batches []int, seqLen int) ([]Case, error) {
	if batchAxis < 0 || batchAxis >= len(shape) {
		return nil, fmt.Errorf("convert: batch axis %d of input shape %v", batchAxis, shape)
	}
	for _, b := range batches {
		if b <= 0 {
			return nil, fmt.Errorf("convert: batch size %d: want at least 1", b)
		}
	}
	for j, d := range shape {
		if j != batchAxis && d < 0 && seqLen <= 0 {
			return nil, fmt.Errorf("convert: sequence length %d for dynamic axis %d of input shape %v: want at least 1", seqLen, j, shape)
		}
	}
	rng := rand.New(rand.NewPCG(8, 8))
	cases := make([]Case, len(batches))
	for i, b := range batches {
		s := slices.Clone(shape)
		for j := range s {
			switch {
			case j == batchAxis:
				s[j] = int64(b)
			case s[j] < 0:
				s[j] = int64(seqLen)
			}
		}
		n := tensor.Shape(s).NumElements()
		data := make([]float64, n)
		for k := range data {
			data[k] = float64(float32(rng.NormFloat64()))
		}
		cases[i] = Case{Inputs: []RefTensor{{Name: inputName, Shape: s, Data: data}}}
	}
	return cases, nil
}

// Benchmark times the converted model in the engine (one intra-op thread)
// against the PyTorch model at path in eager mode (timed inside the bridge's
// Python process, one thread, the same inputs), at each batch size. This is
// the seed's benchmark_comparison.
func Benchmark(ctx context.Context, eng infer.Engine, res *Result, path string, opts BenchOptions) ([]BenchRow, error) {
	if len(opts.BatchSizes) == 0 {
		opts.BatchSizes = []int{1, 32}
	}
	if opts.SeqLen == 0 {
		opts.SeqLen = 32
	}
	if opts.Iterations == 0 {
		opts.Iterations = 200
	}
	if opts.Budget == 0 {
		opts.Budget = 3 * time.Second
	}
	cases, err := BenchInputs("input", res.InputShape, res.InputBatchAxis, opts.BatchSizes, opts.SeqLen)
	if err != nil {
		return nil, err
	}
	torch, err := opts.Bridge.TorchTimes(ctx, path, opts.Spec, cases, opts.Iterations, opts.Budget)
	if err != nil {
		return nil, err
	}
	sess, err := eng.LoadBytes(ctx, res.Bytes, infer.Options{IntraOpThreads: 1, InterOpThreads: 1})
	if err != nil {
		return nil, err
	}
	defer sess.Close()
	rows := make([]BenchRow, len(cases))
	for i, c := range cases {
		x, err := repeatBatch(c.Inputs[0], res.InputBatchAxis, 1)
		if err != nil {
			return nil, err
		}
		in := []tensor.Tensor{x}
		for range 10 {
			if _, err := sess.Run(ctx, in); err != nil {
				return nil, err
			}
		}
		var times []time.Duration
		start := time.Now()
		for len(times) < opts.Iterations && (len(times) < 5 || time.Since(start) < opts.Budget) {
			t0 := time.Now()
			if _, err := sess.Run(ctx, in); err != nil {
				return nil, err
			}
			times = append(times, time.Since(t0))
		}
		slices.Sort(times)
		rows[i] = BenchRow{Batch: opts.BatchSizes[i], Torch: torch[i], ORT: times[len(times)/2]}
		if rows[i].ORT > 0 {
			rows[i].Speedup = float64(rows[i].Torch) / float64(rows[i].ORT)
		}
	}
	return rows, nil
}

// WriteBenchTable prints rows as an aligned table.
func WriteBenchTable(w io.Writer, rows []BenchRow) error {
	if len(rows) == 0 {
		return errors.New("convert: no benchmark rows")
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "batch\tPyTorch eager\tONNX Runtime\tspeed-up\t")
	for _, r := range rows {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%.1f×\t\n", r.Batch, fmtDur(r.Torch), fmtDur(r.ORT), r.Speedup)
	}
	return tw.Flush()
}

func fmtDur(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%.1f µs", float64(d)/1e3)
	default:
		return fmt.Sprintf("%.2f ms", float64(d)/1e6)
	}
}
