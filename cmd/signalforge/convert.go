package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/signalforge/signalforge/convert"
	"github.com/signalforge/signalforge/infer/ort"
	"github.com/signalforge/signalforge/onnx"
)

// cmdConvert converts a PyTorch file to ONNX (in Go, or through the torch
// bridge), verifies it in ONNX Runtime against PyTorch's outputs and, with
// -benchmark, times PyTorch eager against ONNX Runtime.
func cmdConvert(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "convert", "[flags] model.pt")
	out := fs.String("o", "", "output ONNX path (default: model.onnx next to the input)")
	specPath := fs.String("spec", "", "architecture spec (YAML or JSON) for a state dict, TorchScript archive or custom forward")
	exporter := fs.String("exporter", "go", "go (read the file in Go, never runs code) or torch (torch.onnx.export in a Python subprocess)")
	python := fs.String("python", convert.DefaultPython, "Python interpreter with torch, for -exporter torch, reference outputs and -benchmark")
	allowClass := fs.String("allow-class", "", "comma-separated classes of your own (e.g. __main__.Forecaster) a whole-model pickle may reference; read as data, never run; needs -spec")
	torchModule := fs.String("torch-module", "", "torch exporter: Python file defining the custom classes a whole-model pickle references")
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
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return errUsage
	}
	src := fs.Arg(0)
	if *out == "" {
		*out = strings.TrimSuffix(src, filepath.Ext(src)) + ".onnx"
	}
	opts := convert.Options{
		InputName: *inputName, OutputName: *outputName, Opset: *opset, StaticBatch: *staticBatch,
		Features: splitNames(*features),
	}
	opts.Load.AllowClasses = splitNames(*allowClass)
	var err error
	if opts.InputShape, err = parseInt64s(*inputShape); err != nil {
		return fmt.Errorf("-input-shape: %w", err)
	}
	if *specPath != "" {
		if opts.Spec, err = convert.ReadSpecFile(*specPath); err != nil {
			return err
		}
	}
	bridge := &convert.Bridge{Python: *python, TorchModule: *torchModule}
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

	if *bench {
		sizes, err := parseInt64s(*benchBatches)
		if err != nil || len(sizes) == 0 {
			return fmt.Errorf("-bench-batches %q: want a list of batch sizes", *benchBatches)
		}
		bs := make([]int, len(sizes))
		for i, s := range sizes {
			if s <= 0 {
				return fmt.Errorf("-bench-batches: batch size %d", s)
			}
			bs[i] = int(s)
		}
		rows, err := convert.Benchmark(ctx, eng, res, src, convert.BenchOptions{
			BatchSizes: bs, SeqLen: *seqLen, Iterations: *benchIters, Bridge: bridge, Spec: opts.Spec,
		})
		if err != nil {
			return err
		}
		fmt.Fprintln(e.stdout, "\nmedian time per forward pass, 1 thread each:")
		return convert.WriteBenchTable(e.stdout, rows)
	}
	return nil
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
