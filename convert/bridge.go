package convert

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
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

// Bridge runs PyTorch in a Python subprocess: torch.onnx.export for models
// with custom forward logic, reference outputs for Verify, and eager-mode
// timing for Benchmark.
//
// Unlike LoadFile, the bridge uses PyTorch's own loader (torch.load), which
// can execute code embedded in a pickle: use it on files you trust.
type Bridge struct {
	// Python is the interpreter. If empty, DefaultPython.
	Python string
	// TorchModule is an optional Python file defining the classes a
	// whole-model pickle references (a custom nn.Module saved from
	// __main__); it is run before torch.load.
	TorchModule string
}

type bridgeRequest struct {
	Cmd         string         `json:"cmd"`
	Model       string         `json:"model,omitempty"`
	Spec        map[string]any `json:"spec,omitempty"`
	TorchModule string         `json:"torch_module,omitempty"`
	Threads     int            `json:"threads,omitempty"`
	Inputs      []RefTensor    `json:"inputs,omitempty"`
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
	Error   string      `json:"error"`
	Torch   string      `json:"torch"`
	Outputs []RefTensor `json:"outputs"`
	Rows    []struct {
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
	if req.Model != "" {
		// PyTorch would read a device such as /dev/zero until memory runs
		// out, and block on a FIFO: check the file as ConvertFile does.
		f, _, err := onnx.OpenFileLimited(req.Model, MaxFileSize)
		if err != nil {
			return nil, err
		}
		f.Close()
	}
	if b != nil && req.TorchModule == "" {
		req.TorchModule = b.TorchModule
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
		return nil, fmt.Errorf("convert: bridge: %s", rep.Error)
	}
	return &rep, nil
}

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
// Go converter cannot map (custom forward logic). inputShape is the full
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
	_, err = b.run(ctx, bridgeRequest{
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
