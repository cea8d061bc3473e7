// Package convert turns PyTorch models into ONNX in Go, proves the result
// numerically, and benchmarks it against PyTorch.
//
// Reading a .pt file never runs code. torch.save writes a zip archive of
// pickles and raw tensor bytes; this package unpickles them with an
// allow-list (the supported torch.nn modules, tensor rebuild helpers,
// OrderedDict and set) and refuses anything else by name. That is a
// security property: loading a pickle in Python can execute arbitrary code,
// loading it here cannot. Archives two zip readers could read differently
// (duplicate or ambiguous entry names) are refused, and LoadOptions bound
// the memory loading takes. The PyTorch bridge (Bridge) keeps the property:
// it hands PyTorch only files Load accepted and loads them without running
// their code, unless Bridge.TrustPickle says the file is the user's own.
//
// Supported: nn.Sequential trees of Linear, ReLU, LeakyReLU, GELU, SiLU,
// Tanh, Sigmoid, Softmax, Dropout, Identity, Flatten, BatchNorm1d,
// LayerNorm and Conv1d, and recurrent forecasters (LSTM or GRU, any
// num_layers, batch_first, bidirectional) followed by "last time step →
// head". A whole-model pickle of an nn.Sequential carries its own
// structure; a state dict, a TorchScript archive or a model with a custom
// forward needs a Spec (see Spec), or the Python bridge (Exporter "torch").
//
//	res, err := convert.ConvertFile("model.pt", convert.Options{
//		Features: []string{"rsi_14", "macd"},
//	})
//	if err != nil { … }
//	err = onnx.Save("model.onnx", res.Model)
//	rep, err := convert.Verify(ctx, engine, res.Bytes, ref, convert.VerifyOptions{})
package convert

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/signalforge/signalforge/infer"
	"github.com/signalforge/signalforge/onnx"
	"github.com/signalforge/signalforge/tensor"
)

// Version is the converter version written into every model's lineage.
const Version = "signalforge-convert/1.0"

// Metadata keys written into the ONNX model's metadata_props, besides
// infer.FeaturesMetadataKey: the registry's lineage fields. Every entry of
// Result.Conversion is also written as MetaConvertPrefix+key
// ("signalforge.convert.opset"), like quantize's "signalforge.quantize.*".
const (
	MetaSourceSHA256  = "signalforge.source_sha256"
	MetaConvertPrefix = "signalforge.convert."
)

// Opset bounds. DefaultOpset matches the seed's ONNXConverter(opset_version=14).
const (
	DefaultOpset = 14
	MinOpset     = 13
	MaxOpset     = 17
)

// Options configure a conversion. The zero value converts with a dynamic
// batch axis at opset 14, input "input" and output "output".
type Options struct {
	// InputName and OutputName name the graph's input and output. If
	// empty, "input" and "output" (or the spec's input name).
	InputName  string
	OutputName string
	// StaticBatch fixes the batch axis to the size in InputShape (1 if
	// none) instead of the default dynamic "batch" axis.
	StaticBatch bool
	// Opset is the ONNX opset. If zero, 14; 13 to 17 are accepted.
	Opset int
	// InputShape is the full PyTorch input shape, -1 for a dynamic size.
	// Only needed when the first layer does not determine it (a model
	// starting with Flatten or an activation). Overrides the spec's.
	InputShape []int64
	// Features are the ordered feature names of the input's last axis,
	// written to metadata_props under infer.FeaturesMetadataKey.
	Features []string
	// Spec is the architecture for a state dict, a TorchScript archive or
	// a custom forward. For a whole-model Sequential it is optional and
	// replaces the pickled structure.
	Spec *Spec
	// Load bounds what reading the file may allocate and lists extra
	// classes to accept.
	Load LoadOptions
}

func (o *Options) defaults() error {
	if o.Opset == 0 {
		o.Opset = DefaultOpset
	}
	if o.Opset < MinOpset || o.Opset > MaxOpset {
		return fmt.Errorf("convert: opset %d not supported (%d to %d)", o.Opset, MinOpset, MaxOpset)
	}
	if o.InputName == "" {
		o.InputName = "input"
		if o.Spec != nil && o.Spec.Input.Name != "" {
			o.InputName = o.Spec.Input.Name
		}
	}
	if o.OutputName == "" {
		o.OutputName = "output"
	}
	if o.InputName == o.OutputName {
		return errors.New("convert: input and output names must differ")
	}
	if o.InputShape == nil && o.Spec != nil {
		o.InputShape = o.Spec.Input.Shape
	}
	return nil
}

// Result is a converted model.
type Result struct {
	Model *onnx.ModelProto
	// Bytes is Model serialized.
	Bytes []byte
	// Format is the kind of file converted.
	Format Format
	// InputShape and OutputShape are the declared shapes, -1 for dynamic
	// dimensions; InputBatchAxis/OutputBatchAxis locate the batch axis
	// (1 for the input of a sequence-first recurrent model, else 0).
	InputShape, OutputShape         []int64
	InputBatchAxis, OutputBatchAxis int
	// SourceSHA256 is the hex sha256 of the converted file ("" for
	// Convert on an in-memory checkpoint).
	SourceSHA256 string
	// Conversion holds the conversion parameters for the registry's
	// lineage (registry.Lineage.Conversion): converter_version, exporter,
	// opset, input_name, output_name, dynamic_batch, input_shape,
	// source_format and spec_sha256 when a spec was used.
	Conversion map[string]string
}

// conversion returns the lineage parameters of a conversion.
func conversion(opts Options, exporter string, format Format, inShape []int64) map[string]string {
	c := map[string]string{
		"converter_version": Version,
		"exporter":          exporter,
		"opset":             strconv.Itoa(opts.Opset),
		"input_name":        opts.InputName,
		"output_name":       opts.OutputName,
		"dynamic_batch":     strconv.FormatBool(!opts.StaticBatch),
		"input_shape":       fmt.Sprint(inShape),
		"source_format":     format.String(),
	}
	if opts.Spec != nil && opts.Spec.SHA256 != "" {
		c["spec_sha256"] = opts.Spec.SHA256
	}
	return c
}

func writeLineage(set func(k, v string), sum string, conv map[string]string, features []string) {
	if len(features) > 0 {
		set(infer.FeaturesMetadataKey, strings.Join(features, ","))
	}
	if sum != "" {
		set(MetaSourceSHA256, sum)
	}
	keys := make([]string, 0, len(conv))
	for k := range conv {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		set(MetaConvertPrefix+k, conv[k])
	}
}

// ConvertFile reads a PyTorch file and converts it. The file's sha256 and
// format, the converter version and the options are recorded in the
// model's metadata_props. The path must name a regular, non-empty file of
// at most MaxFileSize bytes (see onnx.ReadFileLimited).
func ConvertFile(path string, opts Options) (*Result, error) {
	data, err := onnx.ReadFileLimited(path, MaxFileSize)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(data)
	cp, err := Load(bytes.NewReader(data), int64(len(data)), opts.Load)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return convert(cp, opts, hex.EncodeToString(sum[:]))
}

// Convert converts a loaded checkpoint.
func Convert(cp *Checkpoint, opts Options) (*Result, error) {
	return convert(cp, opts, "")
}

func convert(cp *Checkpoint, opts Options, sum string) (*Result, error) {
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	var root *layer
	switch {
	case opts.Spec != nil:
		root = &layer{typ: "Sequential", args: map[string]any{}, children: layersFromSpec(opts.Spec.Layers)}
	case cp.Format == FormatModel:
		visits := 0
		l, err := layerFromObject(cp.Root, "", 0, &visits)
		if err != nil {
			return nil, err
		}
		root = l
		if l.typ != "Sequential" {
			root = &layer{typ: "Sequential", args: map[string]any{}, children: []*layer{l}}
		}
	default:
		return nil, fmt.Errorf("convert: a %s holds weights but not the architecture; give a spec (--spec) or use --exporter torch", cp.Format)
	}
	b := onnx.NewBuilder("signalforge", onnx.Opset(int64(opts.Opset)), onnx.ProducerVersion(Version))
	e := &emitter{b: b, opset: opts.Opset, params: cp.Params, used: map[string]bool{}}

	in, err := inputValue(root, cp.Params, opts)
	if err != nil {
		return nil, err
	}
	b.Input(opts.InputName, tensor.Float32, in.shape...)
	inShape, inBatch := in.shape, in.batchAxis
	x, err := e.emit(root, in)
	if err != nil {
		return nil, fmt.Errorf("convert: %w", err)
	}
	x = e.materialize(x)
	if e.err != nil {
		return nil, fmt.Errorf("convert: %w", e.err)
	}
	if unused := e.unusedParams(cp.Names); len(unused) > 0 {
		return nil, fmt.Errorf("convert: the architecture does not use these weights of the file: %s", strings.Join(unused, ", "))
	}
	b.Node("Identity", []string{x.name}, onnx.Outputs(opts.OutputName))
	b.Output(opts.OutputName, tensor.Float32, x.shape...)

	if len(opts.Features) > 0 {
		last := inShape[len(inShape)-1]
		if last.Fixed() && int64(len(opts.Features)) != last.Value {
			return nil, fmt.Errorf("convert: %d feature names for an input with %d features", len(opts.Features), last.Value)
		}
	}
	conv := conversion(opts, "go", cp.Format, dimsToInts(inShape))
	writeLineage(b.SetMetadata, sum, conv, opts.Features)
	m, err := b.Build()
	if err != nil {
		return nil, fmt.Errorf("convert: %w", err)
	}
	data, err := onnx.Marshal(m)
	if err != nil {
		return nil, err
	}
	return &Result{
		Model: m, Bytes: data, Format: cp.Format,
		InputShape: dimsToInts(inShape), OutputShape: dimsToInts(x.shape),
		InputBatchAxis: inBatch, OutputBatchAxis: x.batchAxis, SourceSHA256: sum, Conversion: conv,
	}, nil
}

func dimsToInts(ds []dim) []int64 {
	out := make([]int64, len(ds))
	for i, d := range ds {
		out[i] = -1
		if d.Fixed() {
			out[i] = d.Value
		}
	}
	return out
}

// firstLeaf is the first non-container, non-identity layer.
func firstLeaf(l *layer) *layer {
	if l.typ == "Sequential" {
		for _, c := range l.children {
			if f := firstLeaf(c); f != nil {
				return f
			}
		}
		return nil
	}
	if l.typ == "Dropout" || l.typ == "Identity" {
		return nil
	}
	return l
}

// inputValue derives the input's shape from the first layer (or the
// options) and names its dynamic axes: "batch", "seq", "length".
func inputValue(root *layer, params map[string]*Tensor, opts Options) (value, error) {
	f := firstLeaf(root)
	var shape []dim
	batchAxis := 0
	if f != nil && (f.typ == "LSTM" || f.typ == "GRU") {
		if bf, _ := argBool(f.args, "batch_first", false); !bf {
			batchAxis = 1
		}
	}
	if opts.InputShape != nil {
		if batchAxis >= len(opts.InputShape) {
			return value{}, fmt.Errorf("convert: input shape %v has no batch axis", opts.InputShape)
		}
		for i, d := range opts.InputShape {
			switch {
			case d >= 0:
				shape = append(shape, onnx.Dim(d))
			case i == batchAxis:
				shape = append(shape, onnx.Dim("batch"))
			default:
				shape = append(shape, onnx.Dim(fmt.Sprintf("dim%d", i)))
			}
		}
	} else if f != nil {
		shape = leafInputShape(f, params)
	}
	if shape == nil && f != nil {
		key := map[string]string{"Linear": "weight", "Conv1d": "weight", "BatchNorm1d": "running_mean",
			"LSTM": "weight_ih_l0", "GRU": "weight_ih_l0"}[f.typ]
		if _, ok := params[f.prefix+key]; key != "" && !ok {
			return value{}, fmt.Errorf("convert: %s: weight %q missing from the file", f.typ, f.prefix+key)
		}
	}
	if shape == nil {
		name := "an empty model"
		if f != nil {
			name = f.typ
		}
		return value{}, fmt.Errorf("%w from %s; give it (--input-shape)", ErrInputShape, name)
	}
	if opts.StaticBatch {
		if !shape[batchAxis].Fixed() {
			shape[batchAxis] = onnx.Dim(int64(1))
		}
	} else {
		shape[batchAxis] = onnx.Dim("batch")
	}
	return value{shape: shape, batchAxis: batchAxis, name: opts.InputName}, nil
}

func leafInputShape(f *layer, params map[string]*Tensor) []dim {
	batch := onnx.Dim("batch")
	w := func(name string, rank int) []int64 {
		if t, ok := params[f.prefix+name]; ok && len(t.Shape) == rank {
			return t.Shape
		}
		return nil
	}
	switch f.typ {
	case "Linear":
		if s := w("weight", 2); s != nil {
			return []dim{batch, onnx.Dim(s[1])}
		}
	case "BatchNorm1d":
		if s := w("running_mean", 1); s != nil {
			return []dim{batch, onnx.Dim(s[0])}
		}
	case "Conv1d":
		if s := w("weight", 3); s != nil {
			g, err := argInt(f.args, "groups", 1)
			if err != nil {
				return nil
			}
			return []dim{batch, onnx.Dim(s[1] * g), onnx.Dim("length")}
		}
	case "LayerNorm":
		ns, err := argInts(f.args, "normalized_shape")
		if err != nil {
			return nil
		}
		if ns == nil {
			ns = w("weight", 1)
		}
		if ns != nil {
			out := []dim{batch}
			for _, d := range ns {
				out = append(out, onnx.Dim(d))
			}
			return out
		}
	case "LSTM", "GRU":
		if s := w("weight_ih_l0", 2); s != nil {
			if bf, _ := argBool(f.args, "batch_first", false); bf {
				return []dim{batch, onnx.Dim("seq"), onnx.Dim(s[1])}
			}
			return []dim{onnx.Dim("seq"), batch, onnx.Dim(s[1])}
		}
	}
	return nil
}

// ErrInputShape is wrapped when the model's input shape is not determined
// by its first layer and Options.InputShape is not set.
var ErrInputShape = errors.New("convert: the input shape cannot be derived")

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
