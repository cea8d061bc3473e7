package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/signalforge/signalforge/infer"
	"github.com/signalforge/signalforge/infer/ort"
	"github.com/signalforge/signalforge/onnx/onnxtest"
)

// benchReport is the --json output of `signalforge bench`.
type benchReport struct {
	Model          string         `json:"model"`
	Runtime        string         `json:"runtime"`
	Library        string         `json:"library"`
	IntraOpThreads int            `json:"intra_op_threads"`
	Concurrency    int            `json:"concurrency"`
	Inputs         []string       `json:"inputs"`
	Results        []infer.Timing `json:"results"`
}

func cmdBench(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "bench", "[flags] [MODEL.onnx]\n\nTimes Run calls per batch size, after a warm-up, and prints the median and p99\nlatency per call and the samples per second (one caller, or --concurrency callers). Without MODEL (or with --demo) it\nbuilds a demo 100-50-10 MLP with random weights.")
	batches := fs.String("batch", "1,8,32,128", "comma-separated batch sizes")
	threads := fs.Int("threads", 1, "intra-op threads per run")
	conc := fs.Int("concurrency", 1, "goroutines calling Run at once (throughput under load)")
	duration := fs.Duration("duration", 2*time.Second, "measuring time per batch size")
	asJSON := fs.Bool("json", false, "print JSON instead of a table")
	demo := fs.Bool("demo", false, "benchmark the built-in demo MLP (100-50-10)")
	lib := fs.String("ort-lib", "", "ONNX Runtime library (default: $SIGNALFORGE_ORT_LIB, the project's .deps, system paths)")
	maxBytes := int64(benchDefaultMaxInputBytes)
	fs.Func("max-input-bytes", "refuse batch sizes whose input tensors need more than `SIZE` bytes (e.g. 512MiB, 2GiB; default 1GiB)", func(s string) error {
		n, err := parseByteSize(s)
		if err != nil {
			return err
		}
		maxBytes = n
		return nil
	})
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	sizes, err := parseBatches(*batches)
	if err != nil {
		fmt.Fprintf(e.stderr, "signalforge bench: --batch: %v\n", err)
		return errUsage
	}
	if *threads < 1 || *conc < 1 || *duration <= 0 {
		fmt.Fprintln(e.stderr, "signalforge bench: --threads and --concurrency must be at least 1, --duration positive")
		return errUsage
	}
	if *conc > benchMaxConcurrency || *threads > benchMaxThreads {
		fmt.Fprintf(e.stderr, "signalforge bench: --concurrency %d, --threads %d: at most %d callers and %d intra-op threads (every call in flight holds its own outputs and activations; past the cores, more only measures contention)\n",
			*conc, *threads, benchMaxConcurrency, benchMaxThreads)
		return errUsage
	}
	var path, label string
	switch {
	case fs.NArg() > 1 || (*demo && fs.NArg() > 0):
		fmt.Fprintln(e.stderr, "signalforge bench: give one MODEL.onnx, or --demo")
		return errUsage
	case fs.NArg() == 1:
		path = fs.Arg(0)
		label = path
	default:
		dir, err := os.MkdirTemp("", "signalforge-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		path = filepath.Join(dir, "demo-mlp.onnx")
		if err := onnxtest.MustMLP(1, 100, 50, 10).Save(path); err != nil {
			return err
		}
		label = "demo MLP 100-50-10 (random weights)"
	}

	eng, err := ort.New(ort.Config{LibraryPath: *lib, LibrarySetting: "--ort-lib", Getenv: e.getenv})
	if err != nil {
		return err
	}
	defer eng.Close()
	sess, err := eng.LoadFile(ctx, path, infer.Options{IntraOpThreads: *threads})
	if err != nil {
		return err
	}
	defer sess.Close()

	rep := benchReport{
		Model:          label,
		Runtime:        "ONNX Runtime " + eng.RuntimeVersion(),
		Library:        eng.LibraryPath(),
		IntraOpThreads: *threads,
		Concurrency:    *conc,
	}
	fixed := -1
	for _, in := range sess.Inputs() {
		rep.Inputs = append(rep.Inputs, fmt.Sprintf("%s %v %s", in.Name, in.DType, in.ShapeString()))
		if in.BatchAxis < 0 && in.Shape != nil && len(in.Shape) > 0 {
			fixed = int(in.Shape[0])
		}
	}
	if fixed > 0 {
		sizes = []int{fixed}
		fmt.Fprintf(e.stderr, "signalforge bench: the model has a fixed batch size; measuring batch %d only\n", fixed)
	}
	// Check every size before allocating anything: a typo like --batch
	// 100000000 must be an immediate error, not an OOM kill minutes later.
	for _, b := range sizes {
		n, ok := inputBytes(sess.Inputs(), b)
		if !ok || n > maxBytes {
			need := "more than 8 EiB"
			if ok {
				need = fmt.Sprintf("%s bytes (%s)", thousands(n), fmtBytes(n))
			}
			fmt.Fprintf(e.stderr, "signalforge bench: batch %d: the input tensors would need %s, over the --max-input-bytes limit of %s; use a smaller --batch, or raise --max-input-bytes if the machine has the memory (ONNX Runtime needs more again for activations and outputs)\n",
				b, need, fmtBytes(maxBytes))
			return errUsage
		}
	}
	progress := len(sizes) > 1 && time.Duration(len(sizes))*(*duration) >= 3*time.Second
	for i, b := range sizes {
		if progress {
			fmt.Fprintf(e.stderr, "bench: batch %d (%d/%d), %v ...\n", b, i+1, len(sizes), *duration)
		}
		in, err := infer.RandomInputs(sess.Inputs(), b, uint64(b))
		if err != nil {
			return err
		}
		// Warm-up: the first runs at a new shape allocate inside the runtime.
		tm, err := infer.Measure(ctx, sess, in, b, infer.MeasureConfig{Duration: *duration, Warmup: 50, Concurrency: *conc})
		if err != nil {
			if errors.Is(err, context.Canceled) {
				return fmt.Errorf("interrupted")
			}
			return fmt.Errorf("batch %d: %w", b, err)
		}
		rep.Results = append(rep.Results, tm)
	}
	if *asJSON {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	printBench(e.stdout, rep)
	return nil
}

// benchDefaultMaxInputBytes is --max-input-bytes's default: 1 GiB of
// input tensors is far beyond any batch worth measuring for SignalForge's
// models, and well inside a developer machine's memory.
const benchDefaultMaxInputBytes = 1 << 30

// benchMaxConcurrency and benchMaxThreads cap --concurrency and --threads.
// Callers share the input tensors, but every call in flight holds its own
// outputs and ONNX Runtime activations, so memory grows with the callers;
// and far past the machine's cores more callers or threads measure only
// contention. 1024 callers is well above the concurrency the server runs
// a model at on any machine SignalForge targets.
const (
	benchMaxConcurrency = 1024
	benchMaxThreads     = 256
)

// inputBytes returns the bytes of the input tensors bench would allocate
// for one run at batch size batch (the shapes infer.WarmupInputs and
// infer.RandomInputs build: the batch axis gets batch, other dynamic
// dimensions 1). ok is false if the size does not fit in an int64.
func inputBytes(inputs []infer.IOInfo, batch int) (n int64, ok bool) {
	mul := func(a, b int64) (int64, bool) {
		if a == 0 || b == 0 {
			return 0, true
		}
		if a > math.MaxInt64/b {
			return 0, false
		}
		return a * b, true
	}
	for _, in := range inputs {
		size := int64(in.DType.Size())
		for d, dim := range in.Shape {
			switch {
			case d == in.BatchAxis:
				dim = int64(batch)
			case dim < 0:
				dim = 1
			}
			if size, ok = mul(size, dim); !ok {
				return 0, false
			}
		}
		if n > math.MaxInt64-size {
			return 0, false
		}
		n += size
	}
	return n, true
}

// byteUnits are the suffixes --max-input-bytes accepts, and fmtBytes uses.
var byteUnits = []struct {
	name string
	size int64
}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}}

// parseByteSize parses a positive byte count: 1073741824, 1GiB, 512MiB,
// 1.5GiB. Only binary (IEC) suffixes are accepted, so that "1GB" cannot be
// read as either of two sizes.
func parseByteSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	unit := int64(1)
	for _, u := range byteUnits {
		if strings.HasSuffix(t, u.name) {
			t, unit = strings.TrimSpace(strings.TrimSuffix(t, u.name)), u.size
			break
		}
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || !(v > 0) || v*float64(unit) >= math.MaxInt64 { // !(v > 0) also refuses NaN
		return 0, fmt.Errorf("%q is not a positive size (bytes, or a number with KiB, MiB, GiB or TiB)", s)
	}
	return int64(v * float64(unit)), nil
}

// fmtBytes formats n in the largest binary unit it reaches, to one
// decimal: 1 GiB, 37.3 GiB, 512 B.
func fmtBytes(n int64) string {
	for _, u := range byteUnits {
		if n >= u.size && u.size > 1 {
			v := strconv.FormatFloat(float64(n)/float64(u.size), 'f', 1, 64)
			return strings.TrimSuffix(v, ".0") + " " + u.name
		}
	}
	return strconv.FormatInt(n, 10) + " B"
}

func parseBatches(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%q is not a positive batch size", f)
		}
		out = append(out, n)
	}
	return out, nil
}

func printBench(w io.Writer, r benchReport) {
	calls := "one call at a time"
	if r.Concurrency > 1 {
		calls = fmt.Sprintf("%d concurrent callers", r.Concurrency)
	}
	fmt.Fprintf(w, "model    %s\ninputs   %s\nruntime  %s, %d intra-op thread(s), %s\n\n",
		r.Model, strings.Join(r.Inputs, "; "), r.Runtime, r.IntraOpThreads, calls)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "batch\tcalls\tmedian µs\tp99 µs\tµs/sample\tsamples/s\t")
	us := func(d time.Duration) string { return strconv.FormatFloat(float64(d)/1e3, 'f', 1, 64) }
	for _, t := range r.Results {
		fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%s\t%s\t\n", t.Batch, t.Calls, us(t.Median), us(t.P99),
			strconv.FormatFloat(float64(t.Median)/1e3/float64(t.Batch), 'f', 2, 64), thousands(int64(t.SamplesPerSec)))
	}
	tw.Flush()
}

// thousands formats n with comma separators: 1234567 → 1,234,567.
func thousands(n int64) string {
	s := strconv.FormatInt(n, 10)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}
