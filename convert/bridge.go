package convert

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/signalforge/signalforge/onnx"
)

//go:embed bridge.py
var bridgeScript []byte

// DefaultPython is Debian's interpreter, the one that sees python3-torch
// (the python3 first on PATH on these machines is a separate install).
const DefaultPython = "/usr/bin/python3"

// ErrNoTorch is wrapped when the bridge cannot run: no Python at the
// configured path, or torch does not import there.
var ErrNoTorch = errors.New("convert: PyTorch bridge unavailable")

// ErrUntrusted is wrapped when the bridge refuses a file that only
// PyTorch's unrestricted loading could read (a pickle referencing other
// classes or functions, a TorchScript archive run for its code): that
// loading can execute code from the file, so it needs Bridge.TrustPickle.
var ErrUntrusted = errors.New("convert: the torch bridge needs --trust-pickle for this file")

// Bridge runs PyTorch in a Python subprocess: torch.onnx.export for models
// with custom forward logic, reference outputs for Verify, and eager-mode
// timing for Benchmark.
//
// Nothing from the model file runs unless TrustPickle is set. The bridge
// first reads the file in Go (LoadFile's checks and limits under Load) and
// gives PyTorch a private copy of exactly those bytes; PyTorch then loads a
// state dict with torch.load(weights_only=True), rebuilds a whole-model
// pickle with a restricted unpickler (tensors, the supported torch.nn
// modules and Load.AllowClasses only, whose code is not called), and reads
// only the weights of a TorchScript archive (its code is never compiled or
// run, so it needs a spec). Anything else fails with ErrUntrusted.
type Bridge struct {
	// Python is the interpreter. If empty, DefaultPython.
	Python string
	// TorchModule is an optional Python file defining the classes a
	// whole-model pickle references (a custom nn.Module saved from
	// __main__); it is run before the model is loaded. It is your code,
	// not the file's: allow its classes with Load.AllowClasses.
	TorchModule string
	// TrustPickle lets PyTorch load the file with its unrestricted
	// unpickler (torch.load(weights_only=False)) and run a TorchScript
	// archive's code, which can execute anything the file holds: set it
	// only for files you made yourself. The Go checks still apply.
	TrustPickle bool
	// Load bounds the Go reading of the file before PyTorch sees it, and
	// its AllowClasses are the classes of your own the bridge may rebuild.
	Load LoadOptions
}

type bridgeRequest struct {
	Cmd         string         `json:"cmd"`
	Model       string         `json:"model,omitempty"`
	Spec        map[string]any `json:"spec,omitempty"`
	TorchModule string         `json:"torch_module,omitempty"`
	// TrustPickle, AllowClasses and Modules set what PyTorch may load.
	TrustPickle  bool              `json:"trust_pickle,omitempty"`
	AllowClasses []string          `json:"allow_classes,omitempty"`
	Modules      map[string]string `json:"modules,omitempty"`
	Threads      int               `json:"threads,omitempty"`
	Inputs       []RefTensor       `json:"inputs,omitempty"`
	// export
	InputShape []int64 `json:"input_shape,omitempty"`
	BatchAxis  int     `json:"batch_axis"`
	InputName  string  `json:"input_name,omitempty"`
	OutputName string  `json:"output_name,omitempty"`
	Opset      int     `json:"opset,omitempty"`
	Out        string  `json:"out,omitempty"`
	// bench
	Cases         []Case  `json:"cases,omitempty"`
	Iterations    int     `json:"iterations,omitempty"`
	BudgetSeconds float64 `json:"budget_seconds,omitempty"`
}

type bridgeReply struct {
	Error string `json:"error"`
	// Refused marks an error of the restricted loading; RefusedClass names
	// the class or function it met, if any.
	Refused      bool        `json:"refused"`
	RefusedClass string      `json:"refused_class"`
	Torch        string      `json:"torch"`
	Outputs      []RefTensor `json:"outputs"`
	Rows         []struct {
		MedianNS float64 `json:"median_ns"`
		Runs     int     `json:"runs"`
	} `json:"rows"`
}

func (b *Bridge) python() string {
	if b == nil || b.Python == "" {
		return DefaultPython
	}
	return b.Python
}

func (b *Bridge) run(ctx context.Context, req bridgeRequest) (*bridgeReply, error) {
	py := b.python()
	if _, err := os.Stat(py); err != nil {
		return nil, fmt.Errorf("%w: %s not found (on Debian: apt-get install python3-torch)", ErrNoTorch, py)
	}
	if b != nil && req.TorchModule == "" {
		req.TorchModule = b.TorchModule
	}
	var opts LoadOptions
	if b != nil {
		opts, req.TrustPickle = b.Load, b.TrustPickle
	}
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	req.AllowClasses, req.Modules = opts.AllowClasses, moduleFiles
	if req.Model != "" {
		staged, cleanup, err := stageModel(req.Model, opts, req.TrustPickle)
		if err != nil {
			return nil, err
		}
		defer cleanup()
		req.Model = staged
	}
	in, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, py, "-c", string(bridgeScript))
	cmd.Stdin = bytes.NewReader(in)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// One thread for BLAS too, so "1 thread" means the same on both sides.
	cmd.Env = append(os.Environ(), "OMP_NUM_THREADS=1", "OPENBLAS_NUM_THREADS=1", "MKL_NUM_THREADS=1")
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("convert: bridge (%s): %v: %s", py, err, lastLines(stderr.String(), 5))
	}
	var rep bridgeReply
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		return nil, fmt.Errorf("convert: bridge (%s): bad reply: %v: %s", py, err, lastLines(stderr.String(), 5))
	}
	if rep.Error != "" {
		if strings.HasPrefix(rep.Error, "cannot import torch") {
			return nil, fmt.Errorf("%w: %s", ErrNoTorch, rep.Error)
		}
		if rep.Refused {
			hint := ""
			if rep.RefusedClass != "" && checkAllowClass(rep.RefusedClass) == nil {
				hint = fmt.Sprintf(" If %s is your own nn.Module, allow it with --allow-class %s and define it with -torch-module.", rep.RefusedClass, rep.RefusedClass)
			}
			return nil, fmt.Errorf("%w: %s. %s%s", ErrUntrusted, rep.Error, untrustedWhy, hint)
		}
		return nil, fmt.Errorf("convert: bridge: %s", rep.Error)
	}
	return &rep, nil
}

// stageModel checks the model file in Go and copies it to a private
// temporary file for PyTorch, so that PyTorch reads the very bytes Go
// checked (the original could change in between). Untrusted, the file
// must load in Go (Load: allow-list, limits, one entry per name);
// trusted, only its archive structure is checked (CheckArchive), as
// PyTorch may need classes Go does not read.
func stageModel(path string, opts LoadOptions, trusted bool) (string, func(), error) {
	// PyTorch would read a device such as /dev/zero until memory runs
	// out, and block on a FIFO: check the file as ConvertFile does.
	f, st, err := onnx.OpenFileLimited(path, MaxFileSize)
	if err != nil {
		return "", nil, err
	}
	defer f.Close()
	dir, err := os.MkdirTemp("", "signalforge-bridge-")
	if err != nil {
		return "", nil, err
	}
	cleanup := func() { os.RemoveAll(dir) }
	staged := filepath.Join(dir, "model.pt")
	err = func() error {
		out, err := os.OpenFile(staged, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return err
		}
		n, err := io.Copy(out, io.LimitReader(f, st.Size()))
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err == nil && n != st.Size() {
			err = fmt.Errorf("convert: %s changed size while being read", path)
		}
		if err != nil {
			return err
		}
		in, err := os.Open(staged)
		if err != nil {
			return err
		}
		defer in.Close()
		if trusted {
			err = CheckArchive(in, n, opts)
		} else {
			_, err = Load(in, n, opts)
		}
		if errors.Is(err, ErrRefused) {
			return fmt.Errorf("%w: %s: %w. %s", ErrUntrusted, path, err, untrustedWhy)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		return nil
	}()
	if err != nil {
		cleanup()
		return "", nil, err
	}
	return staged, cleanup, nil
}

// untrustedWhy explains ErrUntrusted.
const untrustedWhy = "Without --trust-pickle PyTorch loads only tensors (weights_only), the supported torch.nn modules " +
	"and classes of your own allowed by name, never running code from the file; --trust-pickle makes PyTorch run the " +
	"file's pickle (and a TorchScript archive's code), which can execute anything: use it only for files you made yourself"

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Check reports the torch version the bridge would use, or an error
// wrapping ErrNoTorch.
func (b *Bridge) Check(ctx context.Context) (string, error) {
	rep, err := b.run(ctx, bridgeRequest{Cmd: "check"})
	if err != nil {
		return "", err
	}
	return rep.Torch, nil
}

// specJSON is the spec as the bridge reads it: each layer's arguments next
// to type/param/layers.
func specJSON(s *Spec) map[string]any {
	if s == nil {
		return nil
	}
	var layers func([]SpecLayer) []any
	layers = func(ls []SpecLayer) []any {
		out := make([]any, len(ls))
		for i, l := range ls {
			m := map[string]any{"type": l.Type, "param": l.Param}
			for k, v := range l.Args {
				m[k] = v
			}
			if len(l.Layers) > 0 {
				m["layers"] = layers(l.Layers)
			}
			out[i] = m
		}
		return out
	}
	return map[string]any{"layers": layers(s.Layers)}
}

// Reference computes PyTorch's eager outputs for the inputs: a Reference
// for Verify, from the model at path (with spec if it is weights only).
func (b *Bridge) Reference(ctx context.Context, path string, spec *Spec, inputs [][]RefTensor) (*Reference, error) {
	ref := &Reference{}
	for _, in := range inputs {
		rep, err := b.run(ctx, bridgeRequest{Cmd: "reference", Model: path, Spec: specJSON(spec), Inputs: in, Threads: 1})
		if err != nil {
			return nil, err
		}
		ref.Cases = append(ref.Cases, Case{Inputs: in, Outputs: rep.Outputs})
	}
	return ref, nil
}

// Export converts with torch.onnx.export in the subprocess, for models the
// Go converter cannot map (custom forward logic). opts.Load.AllowClasses
// are allowed to the bridge when its own Load lists none. inputShape is the full
// input shape with -1 for dynamic sizes; the batch axis is made dynamic
// unless opts.StaticBatch. The lineage metadata and feature names are added
// as for ConvertFile.
func (b *Bridge) Export(ctx context.Context, path string, inputShape []int64, batchAxis int, opts Options) (*Result, error) {
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	if len(inputShape) == 0 {
		inputShape = opts.InputShape
	}
	if len(inputShape) == 0 {
		return nil, errors.New("convert: the torch exporter needs the input shape (--input-shape)")
	}
	shape := append([]int64{}, inputShape...)
	if !opts.StaticBatch && batchAxis < len(shape) {
		shape[batchAxis] = -1
	}
	dir, err := os.MkdirTemp("", "signalforge-export-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	out := filepath.Join(dir, "model.onnx")
	// The classes opts allow the Go reader are allowed to the bridge too.
	eb := Bridge{}
	if b != nil {
		eb = *b
	}
	if len(eb.Load.AllowClasses) == 0 {
		eb.Load.AllowClasses = opts.Load.AllowClasses
	}
	_, err = eb.run(ctx, bridgeRequest{
		Cmd: "export", Model: path, Spec: specJSON(opts.Spec), InputShape: shape, BatchAxis: batchAxis,
		InputName: opts.InputName, OutputName: opts.OutputName, Opset: opts.Opset, Out: out, Threads: 1,
	})
	if err != nil {
		return nil, err
	}
	m, err := onnx.Load(out)
	if err != nil {
		return nil, err
	}
	src, err := onnx.ReadFileLimited(path, MaxFileSize)
	if err != nil {
		return nil, err
	}
	sum := sha256Hex(src)
	format := Format(0)
	// Record the file's format when Go can read it (a custom class cannot).
	if cp, err := Load(bytes.NewReader(src), int64(len(src)), opts.Load); err == nil {
		format = cp.Format
	}
	conv := conversion(opts, "torch.onnx.export", format, shape)
	writeLineage(func(k, v string) { setMetadata(m, map[string]string{k: v}) }, sum, conv, opts.Features)
	data, err := onnx.Marshal(m)
	if err != nil {
		return nil, err
	}
	outShape := []int64{-1}
	if g := m.GetGraph(); g != nil && len(g.GetOutput()) > 0 {
		outShape = valueInfoShape(g.GetOutput()[0])
	}
	return &Result{Model: m, Bytes: data, Format: format, InputShape: shape, OutputShape: outShape,
		InputBatchAxis: batchAxis, SourceSHA256: sum, Conversion: conv}, nil
}

func setMetadata(m *onnx.ModelProto, kv map[string]string) {
	for k, v := range kv {
		found := false
		for _, e := range m.MetadataProps {
			if e.GetKey() == k {
				e.Value = &v
				found = true
			}
		}
		if !found {
			k, v := k, v
			m.MetadataProps = append(m.MetadataProps, &onnx.StringStringEntryProto{Key: &k, Value: &v})
		}
	}
}

func valueInfoShape(v *onnx.ValueInfoProto) []int64 {
	var out []int64
	for _, d := range v.GetType().GetTensorType().GetShape().GetDim() {
		if d.GetDimParam() == "" && d.GetDimValue() > 0 {
			out = append(out, d.GetDimValue())
		} else {
			out = append(out, -1)
		}
	}
	return out
}

// TorchTimes times the model in PyTorch eager mode (inference_mode, one
// intra-op thread) on each case and returns the median time per forward.
func (b *Bridge) TorchTimes(ctx context.Context, path string, spec *Spec, cases []Case, iterations int, budget time.Duration) ([]time.Duration, error) {
	rep, err := b.run(ctx, bridgeRequest{
		Cmd: "bench", Model: path, Spec: specJSON(spec), Cases: cases, Threads: 1,
		Iterations: iterations, BudgetSeconds: budget.Seconds(),
	})
	if err != nil {
		return nil, err
	}
	if len(rep.Rows) != len(cases) {
		return nil, fmt.Errorf("convert: bridge: %d timings for %d cases", len(rep.Rows), len(cases))
	}
	out := make([]time.Duration, len(cases))
	for i, r := range rep.Rows {
		out[i] = time.Duration(r.MedianNS)
	}
	return out, nil
}
