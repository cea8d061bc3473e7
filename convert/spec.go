package convert

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/signalforge/signalforge/onnx"
)

// Spec is an architecture spec: it names the layers of a model whose file
// holds only weights (a state dict or a TorchScript archive), or whose
// forward is custom. It is YAML or JSON (JSON is read as YAML):
//
//	input:
//	  name: input          # optional, defaults to Options.InputName
//	  shape: [-1, 32, 16]  # optional full input shape, -1 for any size
//	layers:
//	  - type: LSTM         # a torch.nn class name (see SupportedModules)
//	    param: rnn         # state-dict prefix of its weights ("rnn.weight_ih_l0")
//	    batch_first: true  # constructor arguments, as PyTorch names them
//	  - type: LastStep     # out[:, -1] (batch_first) or out[-1]
//	  - type: Linear
//	    param: head
//
// Layers run in order, like nn.Sequential; a layer of type Sequential has
// its own `layers`. Sizes that the weights determine (in/out features,
// hidden_size, num_layers, bidirectional, kernel size) may be omitted; if
// given they are checked against the weights. Hyper-parameters that no
// weight reveals (negative_slope, eps, stride, padding, batch_first, …)
// take PyTorch's defaults when omitted.
//
// LastStep is the one layer that is not a torch.nn class: it takes the last
// time step of a recurrent layer's output, which is how SignalForge's
// forecasting models feed a sequence into their head. The resulting ONNX
// graph keeps the PyTorch input layout ([batch, seq, features] when
// batch_first, else [seq, batch, features]).
type Spec struct {
	Input  SpecInput   `yaml:"input"`
	Layers []SpecLayer `yaml:"layers"`
	// SHA256 is the hex sha256 of the spec's bytes (set by ReadSpec),
	// recorded in the converted model's lineage.
	SHA256 string `yaml:"-"`
}

// SpecInput describes the model input.
type SpecInput struct {
	Name  string  `yaml:"name"`
	Shape []int64 `yaml:"shape"`
}

// SpecLayer is one layer of a Spec. Args holds the constructor arguments.
type SpecLayer struct {
	Type   string         `yaml:"type"`
	Param  string         `yaml:"param"`
	Layers []SpecLayer    `yaml:"layers"`
	Args   map[string]any `yaml:",inline"`
}

// layerArgs lists the arguments each layer type accepts in a spec.
var layerArgs = map[string][]string{
	"Sequential":  {},
	"Linear":      {"in_features", "out_features"},
	"Identity":    {},
	"ReLU":        {"inplace"},
	"LeakyReLU":   {"negative_slope", "inplace"},
	"GELU":        {"approximate"},
	"SiLU":        {"inplace"},
	"Tanh":        {},
	"Sigmoid":     {},
	"Softmax":     {"dim"},
	"Dropout":     {"p", "inplace"},
	"Flatten":     {"start_dim", "end_dim"},
	"BatchNorm1d": {"num_features", "eps", "momentum", "affine", "track_running_stats"},
	"LayerNorm":   {"normalized_shape", "eps", "elementwise_affine"},
	"Conv1d":      {"in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "padding_mode"},
	"LSTM":        {"input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional", "proj_size"},
	"GRU":         {"input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional"},
	"LastStep":    {},
}

// ReadSpecFile reads a Spec from a YAML or JSON file: a regular file of at
// most 1 MiB (devices and FIFOs are refused before they are opened).
func ReadSpecFile(path string) (*Spec, error) {
	f, _, err := onnx.OpenFileLimited(path, 1<<20)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return ReadSpec(f)
}

// ReadSpec decodes a Spec and checks its layer types and argument names.
func ReadSpec(r io.Reader) (*Spec, error) {
	data, err := io.ReadAll(io.LimitReader(r, 1<<20))
	if err != nil {
		return nil, err
	}
	var s Spec
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("convert: spec: %w", err)
	}
	if len(s.Layers) == 0 {
		return nil, errors.New("convert: spec: no layers")
	}
	if err := checkSpecLayers(s.Layers, "layers", 0); err != nil {
		return nil, err
	}
	s.SHA256 = sha256Hex(data)
	return &s, nil
}

func checkSpecLayers(ls []SpecLayer, path string, depth int) error {
	if depth > maxDepth {
		return fmt.Errorf("convert: spec: layers nested deeper than %d", maxDepth)
	}
	for i, l := range ls {
		where := fmt.Sprintf("%s[%d]", path, i)
		allowed, ok := layerArgs[l.Type]
		if !ok {
			return fmt.Errorf("convert: spec: %s: %w", where, unsupportedModule(l.Type))
		}
		for k := range l.Args {
			if !contains(allowed, k) {
				return fmt.Errorf("convert: spec: %s (%s): unknown argument %q (accepted: %s)", where, l.Type, k, strings.Join(allowed, ", "))
			}
		}
		if l.Type == "Sequential" {
			if err := checkSpecLayers(l.Layers, where+".layers", depth+1); err != nil {
				return err
			}
		} else if len(l.Layers) > 0 {
			return fmt.Errorf("convert: spec: %s: only Sequential has layers", where)
		}
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// ErrUnsupported is wrapped by the error for a module the converter does
// not map to ONNX.
var ErrUnsupported = errors.New("convert: unsupported module")

func unsupportedModule(name string) error {
	names := SupportedModules()
	names = append(names, "LastStep (spec only)")
	sort.Strings(names)
	return fmt.Errorf("%w %q; supported: %s; for models with custom forward logic use --exporter torch (torch.onnx.export in a Python subprocess)",
		ErrUnsupported, name, strings.Join(names, ", "))
}

// layer is the converter's view of one module, from a pickled module tree
// or a spec: its type, the state-dict prefix of its weights and its
// constructor arguments named as PyTorch names them.
type layer struct {
	typ      string
	prefix   string // "0." or "rnn." ("" at the root)
	args     map[string]any
	children []*layer
}

func layersFromSpec(ls []SpecLayer) []*layer {
	out := make([]*layer, len(ls))
	for i, l := range ls {
		p := l.Param
		if p != "" && !strings.HasSuffix(p, ".") {
			p += "."
		}
		out[i] = &layer{typ: l.Type, prefix: p, args: l.Args, children: layersFromSpec(l.Layers)}
		if out[i].args == nil {
			out[i].args = map[string]any{}
		}
	}
	return out
}

// maxModules bounds the module tree of a pickled model (a shared module
// reached through many paths counts once per path).
const maxModules = 1 << 14

func layerFromObject(o *Object, prefix string, depth int, visits *int) (*layer, error) {
	if *visits++; *visits > maxModules {
		return nil, fmt.Errorf("%w: more than %d modules", ErrFormat, maxModules)
	}
	if depth > maxDepth {
		return nil, fmt.Errorf("%w: modules nested deeper than %d", ErrFormat, maxDepth)
	}
	if !moduleClasses[o.Class] {
		return nil, unsupportedModule(o.Class)
	}
	l := &layer{typ: o.Class, prefix: prefix, args: o.Attrs}
	if o.Class == "Sequential" {
		for _, c := range o.Submodules() {
			cl, err := layerFromObject(c.Object, prefix+c.Name+".", depth+1, visits)
			if err != nil {
				return nil, err
			}
			l.children = append(l.children, cl)
		}
	}
	return l, nil
}

// Argument accessors: pickled modules carry int64/float64/bool/string/[]any,
// YAML specs int/float64/bool/string/[]any.

func argInt(args map[string]any, key string, def int64) (int64, error) {
	v, ok := args[key]
	if !ok || v == nil {
		return def, nil
	}
	switch x := v.(type) {
	case int:
		return int64(x), nil
	case int64:
		return x, nil
	case float64:
		if x == float64(int64(x)) {
			return int64(x), nil
		}
	case []any:
		if len(x) == 1 {
			return argInt(map[string]any{key: x[0]}, key, def)
		}
	}
	return 0, fmt.Errorf("argument %s: want an integer, have %v", key, v)
}

func argInts(args map[string]any, key string) ([]int64, error) {
	v, ok := args[key]
	if !ok || v == nil {
		return nil, nil
	}
	list, ok := v.([]any)
	if !ok {
		n, err := argInt(args, key, 0)
		if err != nil {
			return nil, err
		}
		return []int64{n}, nil
	}
	out := make([]int64, len(list))
	for i, it := range list {
		n, err := argInt(map[string]any{key: it}, key, 0)
		if err != nil {
			return nil, err
		}
		out[i] = n
	}
	return out, nil
}

func argFloat(args map[string]any, key string, def float64) (float64, error) {
	v, ok := args[key]
	if !ok || v == nil {
		return def, nil
	}
	switch x := v.(type) {
	case float64:
		return x, nil
	case int:
		return float64(x), nil
	case int64:
		return float64(x), nil
	}
	return 0, fmt.Errorf("argument %s: want a number, have %v", key, v)
}

func argBool(args map[string]any, key string, def bool) (bool, error) {
	v, ok := args[key]
	if !ok || v == nil {
		return def, nil
	}
	if b, ok := v.(bool); ok {
		return b, nil
	}
	return false, fmt.Errorf("argument %s: want true or false, have %v", key, v)
}

func argString(args map[string]any, key, def string) (string, error) {
	v, ok := args[key]
	if !ok || v == nil {
		return def, nil
	}
	if s, ok := v.(string); ok {
		return s, nil
	}
	return "", fmt.Errorf("argument %s: want a string, have %v", key, v)
}
