package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/signalforge/signalforge/convert"
	"github.com/signalforge/signalforge/infer/ort"
	"github.com/signalforge/signalforge/onnx"
	"github.com/signalforge/signalforge/registry"
)

// convertAbout and convertExamples are printed by `signalforge convert -h`.
// Every example runs from the repository root with the committed fixtures
// (TestConvertExamples runs them).
const convertAbout = `Converts a PyTorch file to ONNX, checks it in ONNX Runtime against PyTorch's
own outputs at two batch sizes (which also proves the batch axis is dynamic),
writes it atomically and, with --register, adds it to the model registry with
its lineage (source checkpoint and sha256, conversion parameters).

State dicts, whole-model pickles (torch.save(model)) and TorchScript archives
are read in Go; a state dict or a custom forward needs an architecture spec
(-spec). Reference outputs come from -reference, or else from PyTorch in a
Python subprocess (Debian's /usr/bin/python3 with python3-torch).

What is trusted when:
  - The Go reader never runs code: pickles may reference only the supported
    torch.nn modules, tensor helpers and classes allowed with -allow-class
    (your own, such as __main__.Forecaster; system modules and functions are
    refused), read as data. Archives with duplicate or ambiguous entry names
    are refused, and loading is bounded (-load-limit).
  - The PyTorch bridge (verification without -reference, -exporter torch,
    -benchmark) gets only a file the Go reader accepted, as a private copy,
    and loads it with weights_only: tensors, the supported torch.nn modules
    and allowed classes (defined by -torch-module, your code), never running
    code from the file. A TorchScript archive is read for its weights only
    (give -spec).
  - -trust-pickle runs the file's pickle in PyTorch (torch.load with
    weights_only=False, and torch.jit.load for TorchScript code), which can
    execute anything: only for files you made yourself.`

var convertExamples = []example{
	{"a state dict with its spec, verified against live PyTorch, registered as mlp",
		"signalforge convert -spec convert/testdata/mlp_state.spec.json -features a,b,c,d,e,f,g,h -o /tmp/mlp.onnx --register mlp --registry /tmp/sf-registry convert/testdata/mlp_state.pt"},
	{"a whole-model pickle (torch.save(model)), verified against live PyTorch without running its pickle",
		"signalforge convert -o /tmp/relu.onnx convert/testdata/relu.pt"},
	{"an LSTM forecaster, verified against committed reference outputs (no Python needed)",
		"signalforge convert -spec convert/testdata/lstm.spec.json -reference convert/testdata/lstm.ref.json -o /tmp/lstm.onnx convert/testdata/lstm.pt"},
	{"a TorchScript archive, with the PyTorch eager vs ONNX Runtime speed-up table",
		"signalforge convert -spec convert/testdata/mlp_script.spec.json -benchmark -bench-iterations 50 -o /tmp/mlp_script.onnx convert/testdata/mlp_script.pt"},
}

// example is one command line in a command's -h, with what it shows.
type example struct{ what, cmd string }

// setUsage makes fs print a synopsis paragraph and examples before the flags.
func setUsage(e *env, fs *flag.FlagSet, name, synopsis, about string, examples []example) {
	fs.Usage = func() {
		fmt.Fprintf(e.stderr, "Usage: signalforge %s %s\n\n%s\n\nExamples (from the repository root):\n", name, synopsis, about)
		for _, ex := range examples {
			fmt.Fprintf(e.stderr, "  # %s:\n  %s\n", ex.what, ex.cmd)
		}
		fmt.Fprintln(e.stderr, "\nFlags:")
		fs.PrintDefaults()
	}
}

// checkOutput refuses an output path that is the input file itself (the
// same cleaned absolute path, or the same file through a link): the output
// is written by renaming a temporary file over it, which would replace the
// source.
func checkOutput(in, out string) error {
	ai, err1 := filepath.Abs(in)
	ao, err2 := filepath.Abs(out)
	same := err1 == nil && err2 == nil && ai == ao
	if !same {
		if si, err := os.Stat(in); err == nil {
			if so, err := os.Stat(out); err == nil {
				same = os.SameFile(si, so)
			}
		}
	}
	if same {
		return fmt.Errorf("-o %s is the input file itself: writing it would destroy the source; choose another output path", out)
	}
	return nil
}

// cmdConvert converts a PyTorch file to ONNX (in Go, or through the torch
// bridge), verifies it in ONNX Runtime against PyTorch's outputs and, with
// -benchmark, times PyTorch eager against ONNX Runtime. The output is
// written atomically (never onto the input) after verification passed;
// --register then adds it to the registry with its lineage.
func cmdConvert(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "convert", "[flags] model.pt")
	setUsage(e, fs, "convert", "[flags] model.pt", convertAbout, convertExamples)
	out := fs.String("o", "", "output ONNX path (default: model.onnx next to the input)")
	specPath := fs.String("spec", "", "architecture spec (YAML or JSON) for a state dict, TorchScript archive or custom forward")
	exporter := fs.String("exporter", "go", "go (read the file in Go, never runs code) or torch (torch.onnx.export in a Python subprocess)")
	python := fs.String("python", convert.DefaultPython, "Python interpreter with torch, for -exporter torch, reference outputs and -benchmark")
	allowClass := fs.String("allow-class", "", "comma-separated classes of your own (e.g. __main__.Forecaster) a whole-model pickle may reference; read as data, never run; needs -spec")
	torchModule := fs.String("torch-module", "", "Python file (your code) defining the custom classes a whole-model pickle references, for the PyTorch bridge; allow them with -allow-class")
	trustPickle := fs.Bool("trust-pickle", false, "let PyTorch load the file with its unrestricted unpickler (and run TorchScript code): runs code from the file; only for files you made yourself")
	var limits loadLimits
	fs.Var(&limits, "load-limit", "raise a loading limit, NAME=N (repeatable): "+strings.Join(loadLimitNames, ", "))
	inputName := fs.String("input-name", "input", "name of the ONNX input")
	outputName := fs.String("output-name", "output", "name of the ONNX output")
	opset := fs.Int("opset", convert.DefaultOpset, "ONNX opset (13 to 17)")
	staticBatch := fs.Bool("static-batch", false, "fix the batch axis instead of making it dynamic")
	inputShape := fs.String("input-shape", "", "full input shape, -1 for dynamic sizes (e.g. -1,32,16); needed when the first layer does not reveal it")
	features := fs.String("features", "", "comma-separated feature names of the input's last axis (metadata signalforge.features)")
	verify := fs.Bool("verify", true, "run the ONNX model in ONNX Runtime at two batch sizes and compare with PyTorch's outputs")
	refPath := fs.String("reference", "", "reference inputs/outputs JSON for -verify (default: computed by PyTorch through the bridge)")
	rtol := fs.Float64("rtol", 1e-4, "verify: relative tolerance")
	atol := fs.Float64("atol", 1e-5, "verify: absolute tolerance added to the relative one")
	bench := fs.Bool("benchmark", false, "time PyTorch eager (1 thread, in a Python subprocess) against ONNX Runtime (1 thread)")
	benchBatches := fs.String("bench-batches", "1,32", "benchmark batch sizes")
	benchIters := fs.Int("bench-iterations", 200, "benchmark runs per batch size and side")
	seqLen := fs.Int("seq-len", 32, "size given to dynamic non-batch axes (sequence length) for generated inputs")
	reg := addRegisterFlags(e, fs)
	src, err := parseModelArgs(fs, args, out, ".onnx", reg)
	if err != nil {
		return err
	}
	if reg.target != "" && *features == "" {
		// The registry serves models by feature name; refuse now rather
		// than after converting and verifying.
		return fmt.Errorf("--register needs -features (the input's feature names, in order): the registry serves models by feature name")
	}
	// Every flag is checked before anything is read or run, naming the
	// flag at fault: a zero -seq-len used to reach PyTorch and come back as
	// its RuntimeError, and a bad -bench-batches to fail after conversion.
	if err := checkConvertFlags(*exporter, *inputName, *outputName, *opset, *seqLen, *benchIters, *rtol, *atol); err != nil {
		return err
	}
	benchSizes, err := parseBatchSizes(*benchBatches)
	if err != nil {
		return fmt.Errorf("-bench-batches %q: %w", *benchBatches, err)
	}
	// The input is checked as ConvertFile and the torch bridge check it (a
	// regular, non-empty file of at most convert.MaxFileSize), before the
	// spec and reference are read.
	f, _, err := onnx.OpenFileLimited(src, convert.MaxFileSize)
	if err != nil {
		return err
	}
	f.Close()
	opts := convert.Options{
		InputName: *inputName, OutputName: *outputName, Opset: *opset, StaticBatch: *staticBatch,
		Features: splitNames(*features),
	}
	opts.Load = limits.opts
	opts.Load.AllowClasses = splitNames(*allowClass)
	if err := opts.Load.Validate(); err != nil {
		return err
	}
	if opts.InputShape, err = parseInt64s(*inputShape); err != nil {
		return fmt.Errorf("-input-shape: %w", err)
	}
	for _, d := range opts.InputShape {
		if d == 0 || d < -1 {
			return fmt.Errorf("-input-shape %s: size %d: want a positive size, or -1 for a dynamic one", *inputShape, d)
		}
	}
	if *specPath != "" {
		if opts.Spec, err = convert.ReadSpecFile(*specPath); err != nil {
			return err
		}
	}
	bridge := &convert.Bridge{Python: *python, TorchModule: *torchModule, TrustPickle: *trustPickle, Load: opts.Load}
	var ref *convert.Reference
	if *refPath != "" {
		if ref, err = convert.ReadReferenceFile(*refPath); err != nil {
			return err
		}
	}

	var res *convert.Result
	switch *exporter {
	case "go":
		res, err = convert.ConvertFile(src, opts)
		if errors.Is(err, convert.ErrInputShape) && ref != nil {
			// The reference's input reveals the shape the model takes.
			opts.InputShape = append([]int64{}, ref.Cases[0].Inputs[0].Shape...)
			res, err = convert.ConvertFile(src, opts)
		}
	case "torch":
		shape, batchAxis := opts.InputShape, 0
		if shape == nil {
			// Borrow the shape from the Go reader when it understands the
			// file, else from the reference.
			if goRes, gerr := convert.ConvertFile(src, opts); gerr == nil {
				shape, batchAxis = goRes.InputShape, goRes.InputBatchAxis
			} else if ref != nil {
				shape = ref.Cases[0].Inputs[0].Shape
			}
		}
		res, err = bridge.Export(ctx, src, shape, batchAxis, opts)
	default:
		return fmt.Errorf("-exporter %q: want go or torch", *exporter)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "converted %s (%s) with %s exporter: input %s %v → output %s %v, opset %d\n",
		src, res.Format, *exporter, opts.InputName, res.InputShape, opts.OutputName, res.OutputShape, *opset)

	eng, err := ort.New(ort.Config{Getenv: e.getenv})
	if err != nil {
		return err
	}
	defer eng.Close()

	if *verify {
		if ref == nil {
			batch := 3
			if *staticBatch {
				batch = int(res.InputShape[res.InputBatchAxis])
			}
			cases, err := convert.BenchInputs(opts.InputName, res.InputShape, res.InputBatchAxis, []int{batch}, *seqLen)
			if err != nil {
				return err
			}
			ref, err = bridge.Reference(ctx, src, opts.Spec, [][]convert.RefTensor{cases[0].Inputs})
			if err != nil {
				if errors.Is(err, convert.ErrNoTorch) {
					return fmt.Errorf("verification needs reference outputs: give -reference, install PyTorch for %s, or pass -verify=false: %w", *python, err)
				}
				return err
			}
		}
		rep, err := convert.Verify(ctx, eng, res.Bytes, ref, convert.VerifyOptions{
			RelTol: *rtol, AbsTol: *atol, InputBatchAxis: res.InputBatchAxis, OutputBatchAxis: res.OutputBatchAxis,
			StaticBatch: *staticBatch,
		})
		if rep != nil {
			for _, c := range rep.Checks {
				fmt.Fprintf(e.stdout, "verify: case %d batch %d: max abs error %.3g, max rel error %.3g\n", c.Case, c.Batch, c.MaxAbs, c.MaxRel)
			}
		}
		if err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "verify: ok (tolerance %g abs + %g rel)\n", *atol, *rtol)
	}
	if err := onnx.WriteFileAtomic(*out, res.Bytes); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "wrote %s (%d bytes, source sha256 %s)\n", *out, len(res.Bytes), res.SourceSHA256)

	var benchmarks map[string]float64
	if *bench {
		rows, err := convert.Benchmark(ctx, eng, res, src, convert.BenchOptions{
			BatchSizes: benchSizes, SeqLen: *seqLen, Iterations: *benchIters, Bridge: bridge, Spec: opts.Spec,
		})
		if err != nil {
			return err
		}
		fmt.Fprintln(e.stdout, "\nmedian time per forward pass, 1 thread each:")
		if err := convert.WriteBenchTable(e.stdout, rows); err != nil {
			return err
		}
		benchmarks = map[string]float64{}
		for _, r := range rows {
			benchmarks[fmt.Sprintf("p50_us_batch%d", r.Batch)] = float64(r.ORT.Nanoseconds()) / 1e3
			benchmarks[fmt.Sprintf("torch_p50_us_batch%d", r.Batch)] = float64(r.Torch.Nanoseconds()) / 1e3
			benchmarks[fmt.Sprintf("speedup_vs_torch_batch%d", r.Batch)] = r.Speedup
		}
	}
	if reg.target != "" {
		source := src
		if abs, err := filepath.Abs(src); err == nil {
			source = abs
		}
		_, err := reg.register(ctx, e, res.Bytes, registry.Lineage{
			SourceCheckpoint: source, SourceSHA256: res.SourceSHA256, Conversion: res.Conversion, Benchmarks: benchmarks,
		}, "converted from "+filepath.Base(src)+" by signalforge convert")
		return err
	}
	return nil
}

// convertMaxSeqLen and convertMaxBenchBatch bound -seq-len and the
// -bench-batches sizes: generated inputs are batch × seq-len × features
// float64s in JSON for PyTorch, and far beyond these sizes a typo would
// exhaust memory rather than verify or time anything.
const (
	convertMaxSeqLen     = 1 << 16
	convertMaxBenchBatch = 1 << 16
)

// checkConvertFlags checks convert's numeric and enumerated flags, naming
// the flag at fault.
func checkConvertFlags(exporter, inputName, outputName string, opset, seqLen, benchIters int, rtol, atol float64) error {
	switch {
	case exporter != "go" && exporter != "torch":
		return fmt.Errorf("-exporter %q: want go or torch", exporter)
	case inputName == "" || outputName == "":
		return errors.New("-input-name and -output-name must not be empty")
	case inputName == outputName:
		return fmt.Errorf("-input-name and -output-name are both %q: they must differ", inputName)
	case opset < convert.MinOpset || opset > convert.MaxOpset:
		return fmt.Errorf("-opset %d: want %d to %d", opset, convert.MinOpset, convert.MaxOpset)
	case seqLen < 1 || seqLen > convertMaxSeqLen:
		return fmt.Errorf("-seq-len %d: want 1 to %d (the size given to the input's dynamic non-batch axes, e.g. the sequence length)", seqLen, convertMaxSeqLen)
	case benchIters < 1:
		return fmt.Errorf("-bench-iterations %d: want at least 1", benchIters)
	case !(rtol >= 0) || math.IsInf(rtol, 0):
		return fmt.Errorf("-rtol %v: want a finite tolerance ≥ 0", rtol)
	case !(atol >= 0) || math.IsInf(atol, 0):
		return fmt.Errorf("-atol %v: want a finite tolerance ≥ 0", atol)
	}
	return nil
}

// parseBatchSizes parses a non-empty comma-separated list of batch sizes,
// each 1 to convertMaxBenchBatch.
func parseBatchSizes(s string) ([]int, error) {
	sizes, err := parseInt64s(s)
	if err != nil {
		return nil, err
	}
	if len(sizes) == 0 {
		return nil, errors.New("want a list of batch sizes")
	}
	out := make([]int, len(sizes))
	for i, n := range sizes {
		if n < 1 || n > convertMaxBenchBatch {
			return nil, fmt.Errorf("batch size %d: want 1 to %d", n, convertMaxBenchBatch)
		}
		out[i] = int(n)
	}
	return out, nil
}

func splitNames(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func parseInt64s(s string) ([]int64, error) {
	var out []int64
	for _, f := range splitNames(s) {
		n, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	return out, nil
}

// loadLimitNames are the LoadOptions limits -load-limit sets.
var loadLimitNames = []string{"MaxPickleBytes", "MaxTensorBytes", "MaxExpansion", "MaxPickleDepth",
	"MaxPickleStack", "MaxPickleMemo", "MaxPickleValues"}

// loadLimits is the -load-limit flag: NAME=N pairs setting LoadOptions
// limits, named as the errors of a refused file name them.
type loadLimits struct{ opts convert.LoadOptions }

func (l *loadLimits) String() string { return "" }

func (l *loadLimits) Set(v string) error {
	name, val, ok := strings.Cut(v, "=")
	n, err := strconv.ParseInt(strings.TrimSpace(val), 10, 64)
	if !ok || err != nil || n < 1 {
		return fmt.Errorf("want NAME=N with N ≥ 1 (NAME one of %s)", strings.Join(loadLimitNames, ", "))
	}
	fields := map[string]*int64{
		"MaxPickleBytes": &l.opts.MaxPickleBytes, "MaxTensorBytes": &l.opts.MaxTensorBytes,
		"MaxExpansion": &l.opts.MaxExpansion, "MaxPickleDepth": &l.opts.MaxPickleDepth,
		"MaxPickleStack": &l.opts.MaxPickleStack, "MaxPickleMemo": &l.opts.MaxPickleMemo,
		"MaxPickleValues": &l.opts.MaxPickleValues,
	}
	f, ok := fields[strings.TrimSpace(name)]
	if !ok {
		return fmt.Errorf("unknown limit %q: want one of %s", name, strings.Join(loadLimitNames, ", "))
	}
	*f = n
	return nil
}
