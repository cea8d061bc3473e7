package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/signalforge/signalforge/convert"
	"github.com/signalforge/signalforge/infer/ort"
	"github.com/signalforge/signalforge/onnx"
	"github.com/signalforge/signalforge/quantize"
	"github.com/signalforge/signalforge/registry"
	"github.com/signalforge/signalforge/tensor"
)

// quantizeAbout and quantizeExamples are printed by `signalforge quantize
// -h`. Every example runs from the repository root with the committed
// fixtures (TestQuantizeExamples runs them).
const quantizeAbout = `Quantizes an ONNX model to INT8 in Go: dynamic (int8 weights, activations
quantized at run time; no data needed) or static (QDQ, activation ranges
calibrated on -calibration data). Prints the accuracy against the fp32 model
(on -eval data, else the calibration data, else synthetic N(0,1) inputs),
with the row counts, and, with -bench, fp32 against int8 latency. An
accuracy gate (-max-error, -min-sqnr, -min-sign) keeps the nodes that break
it in fp32, worst first; it is decided on -eval data when given (without
it, static accuracy is measured on the calibration rows themselves and the
report says it is optimistic).
Static calibration data is checked first: fewer than 8 rows, every row the
same, a NaN or infinite value, or a value more than 1000 robust σ from its
column's median is refused, naming the column and row, and nothing is
written unless -force; fewer than 64 rows, a constant column or a value
beyond 20σ is a warning in the report.
The output is written atomically and, with --register, added to the model
registry with its lineage: parent version (-parent, or the registered
version whose artifact is the input file), quantization parameters,
calibration sha256, benchmarks, and the conversion lineage the input carries.`

var quantizeExamples = []example{
	{"dynamic INT8, accuracy on synthetic inputs",
		"signalforge quantize -o /tmp/mlp.int8.onnx quantize/testdata/mlp_100_50_10.onnx"},
	{"static, entropy-calibrated, per-channel, with an accuracy gate",
		"signalforge quantize -mode static -method entropy -per-channel -calibration quantize/testdata/calib_mlp_small.csv -min-sqnr 25 -min-sign 0.95 -o /tmp/mlp_small.int8.onnx quantize/testdata/mlp_small.onnx"},
	{"keep one node in fp32",
		"signalforge quantize -exclude /4/Gemm -o /tmp/mlp_small.int8.onnx quantize/testdata/mlp_small.onnx"},
	{"register the fp32 model, then its INT8 version with the benchmark (parent: the fp32 version)",
		"signalforge models register --registry /tmp/sf-registry --name mlp_100_50_10 quantize/testdata/mlp_100_50_10.onnx && signalforge quantize -bench -iterations 50 --register mlp_100_50_10 --registry /tmp/sf-registry -o /tmp/mlp.int8.onnx quantize/testdata/mlp_100_50_10.onnx"},
}

// cmdQuantize quantizes an ONNX model to INT8, prints the accuracy report
// against the fp32 model and, with -bench, the fp32 vs int8 benchmark.
// Options are validated before any work: -exclude must name quantizable
// nodes, -min-sign is a fraction in [0, 1], -parent a registry VERSION or
// NAME:VERSION, and -o may not be the input. --register adds the output to
// the registry with its lineage.
func cmdQuantize(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "quantize", "[flags] model.onnx")
	setUsage(e, fs, "quantize", "[flags] model.onnx", quantizeAbout, quantizeExamples)
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
	minSign := fs.Float64("min-sign", 0, "accuracy gate: lowest allowed fraction of output elements whose sign matches fp32, 0 to 1 (0.95 for 95%)")
	force := fs.Bool("force", false, "static: quantize even calibration data the check refuses (under 8 rows, every row the same, NaN/Inf, a value beyond 1000 robust σ); the refusals are printed and recorded in the model")
	bench := fs.Bool("bench", false, "benchmark fp32 vs int8 after quantizing")
	batches := fs.String("batch-sizes", "1,32", "benchmark batch sizes")
	iters := fs.Int("iterations", 200, "benchmark iterations per model and batch size")
	parent := fs.String("parent", "", "lineage: the fp32 source's VERSION (or NAME:VERSION) in the registry, recorded in the output's metadata and by --register (default with --register: the registered version whose artifact is the input)")
	reg := addRegisterFlags(e, fs)
	in, err := parseModelArgs(fs, args, out, ".int8.onnx", reg)
	if err != nil {
		return err
	}
	parentVersion, err := parseParent(*parent, reg)
	if err != nil {
		return err
	}
	budget := quantize.Budget{MaxError: *maxErr, MinSQNR: *minSQNR, MinSignAgreement: *minSign}
	// Name the flag at fault; Budget.Validate has the rules.
	for _, f := range []struct {
		flag string
		b    quantize.Budget
	}{{"-max-error", quantize.Budget{MaxError: *maxErr}}, {"-min-sqnr", quantize.Budget{MinSQNR: *minSQNR}}, {"-min-sign", quantize.Budget{MinSignAgreement: *minSign}}} {
		if err := f.b.Validate(); err != nil {
			return fmt.Errorf("%s: %w", f.flag, err)
		}
	}
	cfg := quantize.Config{PerChannel: *perChannel, Symmetric: *symmetric, Percentile: *pct, Parent: *parent,
		OpTypes: splitNames(*opTypes), Exclude: splitNames(*exclude), Force: *force}
	if cfg.Mode, err = quantize.ParseMode(*mode); err != nil {
		return err
	}
	if cfg.Calibration, err = quantize.ParseMethod(*method); err != nil {
		return err
	}
	var sizes []int
	for _, s := range splitNames(*batches) {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			return fmt.Errorf("bad -batch-sizes entry %q", s)
		}
		sizes = append(sizes, n)
	}
	model, err := loadONNXFile(in)
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

	// A refused calibration set names the file and the flag that
	// overrides; nothing is written.
	calibErr := func(err error) error {
		var ce *quantize.CalibrationError
		if errors.As(err, &ce) {
			ce.Override = "pass -force to quantize anyway (the model may be useless); no model written"
			return fmt.Errorf("%s: %w", *calib, err)
		}
		return err
	}
	var res *quantize.Result
	var rep *quantize.Report
	if budget != (quantize.Budget{}) {
		fmt.Fprintf(e.stdout, "gate: measured on %s\n", evalWhat)
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
			if errors.Is(gerr, quantize.ErrCalibration) {
				return calibErr(gerr)
			}
			if g != nil && g.Report != nil {
				fmt.Fprintf(e.stdout, "\nlast attempt, on %s:\n", evalWhat)
				g.Report.WriteText(e.stdout)
			}
			return fmt.Errorf("%w; no model written", gerr)
		}
		res, rep = g.Result, g.Report
	} else {
		if res, err = q.Quantize(ctx, model, calData); err != nil {
			return calibErr(err)
		}
		if rep, err = q.Evaluate(ctx, model, res, evalData); err != nil {
			return err
		}
	}
	if err := onnx.Save(*out, res.Model); err != nil {
		return err
	}
	if c := res.Calibration; c != nil && c.Forced {
		for _, f := range c.Refusals() {
			fmt.Fprintf(e.stderr, "WARNING: -force: wrote %s from calibration data that was refused: %s\n", *out, f)
		}
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
	var br *quantize.BenchResult
	if *bench {
		if br, err = quantize.Benchmark(ctx, eng, model, res.Model, quantize.BenchConfig{BatchSizes: sizes, Iterations: *iters}); err != nil {
			return err
		}
		fmt.Fprintln(e.stdout)
		if err := br.WriteText(e.stdout); err != nil {
			return err
		}
	}
	if reg.target == "" {
		return nil
	}
	if parentVersion == "" {
		if parentVersion, err = registeredAs(ctx, reg, in); err != nil {
			return err
		}
	}
	data, err := onnx.Marshal(res.Model)
	if err != nil {
		return err
	}
	_, err = reg.register(ctx, e, data, quantizeLineage(res, rep, br, parentVersion), "INT8 ("+res.Lineage.Method+") of "+filepath.Base(in)+" by signalforge quantize")
	return err
}

// parseParent validates -parent: a VERSION, or NAME:VERSION, each part a
// valid registry name. The registry records a parent within one model, so
// with --register a NAME must be the registered model's; the version is
// returned.
func parseParent(p string, reg *registerFlags) (string, error) {
	if p == "" {
		return "", nil
	}
	name, version, hasName := strings.Cut(p, ":")
	if !hasName {
		version, name = name, ""
	}
	if hasName {
		if err := registry.ValidateName(name); err != nil {
			return "", fmt.Errorf("-parent %s: model name: %w", p, err)
		}
	}
	if err := registry.ValidateName(version); err != nil {
		return "", fmt.Errorf("-parent %s: want VERSION or NAME:VERSION: %w", p, err)
	}
	if hasName && reg.target != "" && name != reg.name {
		return "", fmt.Errorf("-parent %s names model %s, but --register %s registers into model %s: the registry records the fp32 parent within the same model (give -parent VERSION of %s, or register as %s:VERSION)",
			p, name, reg.target, reg.name, reg.name, name)
	}
	return version, nil
}

// registeredAs returns the newest version of --register's model whose
// artifact has the bytes of the file at path (the fp32 model being
// quantized), or "" when there is none or no registry yet.
func registeredAs(ctx context.Context, reg *registerFlags, path string) (string, error) {
	r, closeFn, err := openRegistry(ctx, reg.dir, false, registry.Config{})
	if nr := (*noRegistryError)(nil); errors.As(err, &nr) || errors.Is(err, registry.ErrStateMissing) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	defer closeFn()
	data, err := onnx.ReadFileLimited(path, onnx.MaxModelSize)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(data)
	vs, err := r.Versions(ctx, reg.name)
	if errors.Is(err, registry.ErrNotFound) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	found := ""
	var newest registry.Version
	for _, v := range vs {
		if v.Artifact.SHA256 == hex.EncodeToString(sum[:]) && (found == "" || v.CreatedAt.After(newest.CreatedAt)) {
			found, newest = v.Version, v
		}
	}
	return found, nil
}

// quantizeLineage is what --register records: the parent, the quantization
// parameters, the calibration hash, the benchmark (if run), the accuracy
// against fp32 as metrics-like benchmarks, and the conversion lineage that
// `signalforge convert` wrote into the input's metadata.
func quantizeLineage(res *quantize.Result, rep *quantize.Report, br *quantize.BenchResult, parent string) registry.Lineage {
	lin := registry.Lineage{
		Parent: parent, Quantization: res.Params(), CalibrationSHA256: res.Lineage.CalibrationSHA256,
	}
	meta := onnx.Metadata(res.Model)
	lin.SourceSHA256 = meta[convert.MetaSourceSHA256]
	for k, v := range meta {
		if c, ok := strings.CutPrefix(k, convert.MetaConvertPrefix); ok {
			if lin.Conversion == nil {
				lin.Conversion = map[string]string{}
			}
			lin.Conversion[c] = v
		}
	}
	bm := map[string]float64{}
	if rep != nil {
		maxErr, sqnr, sign := rep.Worst()
		bm["int8_max_abs_error"], bm["int8_sqnr_db"], bm["int8_sign_agreement"] = maxErr, sqnr, sign
	}
	if br != nil {
		bm["size_reduction_pct"] = br.SizeReductionPct
		for _, r := range br.Rows {
			bm[fmt.Sprintf("p50_us_batch%d", r.Batch)] = float64(r.Int8.Nanoseconds()) / 1e3
			bm[fmt.Sprintf("fp32_p50_us_batch%d", r.Batch)] = float64(r.FP32.Nanoseconds()) / 1e3
			bm[fmt.Sprintf("speedup_vs_fp32_batch%d", r.Batch)] = r.Speedup
		}
	}
	for k, v := range bm {
		if math.IsNaN(v) || math.IsInf(v, 0) { // e.g. SQNR of identical outputs
			delete(bm, k)
		}
	}
	if len(bm) > 0 {
		lin.Benchmarks = bm
	}
	return lin
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

// loadONNXFile reads and parses the ONNX model at path. Unlike onnx.Load it
// refuses what is not a regular, non-empty file of at most
// onnx.MaxModelSize bytes before reading anything (onnx.ReadFileLimited):
// `quantize /dev/zero` used to read 2 GiB before refusing.
func loadONNXFile(path string) (*onnx.ModelProto, error) {
	data, err := onnx.ReadFileLimited(path, onnx.MaxModelSize)
	if err != nil {
		return nil, err
	}
	m, err := onnx.Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return m, nil
}
