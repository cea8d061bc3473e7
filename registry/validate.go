package registry

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/signalforge/signalforge/infer"
	"github.com/signalforge/signalforge/onnx"
	"github.com/signalforge/signalforge/tensor"
)

// ModelInfo is what a Validator learned about an artifact.
type ModelInfo struct {
	// Inputs are the model's inputs in the order the engine feeds them
	// (graph initializers excluded).
	Inputs []infer.IOInfo
	// Outputs are the model's outputs as declared (Shape nil when the
	// model does not declare a rank).
	Outputs []infer.IOInfo
	// Metadata is the model's ONNX metadata_props.
	Metadata map[string]string
}

// Validator checks, before anything is written, that an artifact is a model
// the serving engine can load, and describes its inputs. The registry
// package has no cgo, so the engine comes in through this interface: the CLI
// and the server use EngineValidator over the ONNX Runtime engine (infer/ort).
type Validator interface {
	Validate(ctx context.Context, model []byte) (ModelInfo, error)
}

// ValidatorFunc adapts a function to Validator.
type ValidatorFunc func(ctx context.Context, model []byte) (ModelInfo, error)

// Validate calls f.
func (f ValidatorFunc) Validate(ctx context.Context, model []byte) (ModelInfo, error) {
	return f(ctx, model)
}

// AdmissionConfig is what a model must do to be admitted by
// NewEngineValidator: load and warm up the way the servers will. The zero
// value matches a server with default settings.
type AdmissionConfig struct {
	// WarmupBatchSizes are the batch sizes the servers warm each version
	// at (server.Config.Session.WarmupBatchSizes). If empty, {1, 32}: a
	// server's default, 1 and its largest batch.
	WarmupBatchSizes []int
	// MaxWarmupBytes caps the input and output tensors of one warm-up run,
	// as the model declares them (infer.CheckWarmupMemory), at the largest
	// batch. It is checked before the model is loaded, so a model declaring
	// gigabytes is refused without allocating them. If zero,
	// infer.DefaultMaxWarmupBytes (1 GiB), the servers' default too;
	// negative means no limit.
	MaxWarmupBytes int64
	// Timeout bounds loading and warming the model. If zero, 2 minutes.
	Timeout time.Duration
	// Session are the engine options to load with (threads); its warm-up
	// fields are replaced by the two above.
	Session infer.Options
	// TempDir is where the artifact is written to be loaded from a file,
	// alone in a fresh folder, as a server loads the stored artifact. If
	// empty, os.TempDir().
	TempDir string
}

func (c *AdmissionConfig) setDefaults() {
	if len(c.WarmupBatchSizes) == 0 {
		c.WarmupBatchSizes = []int{1, 32}
	}
	if c.MaxWarmupBytes == 0 {
		c.MaxWarmupBytes = infer.DefaultMaxWarmupBytes
	}
	if c.Timeout <= 0 {
		c.Timeout = 2 * time.Minute
	}
}

// CheckAdmission is the static part of admission, pure Go and without
// running anything: the model is inspected (InspectONNX: structure, no
// external data) and one warm-up run at each of cfg's batch sizes must
// fit in cfg.MaxWarmupBytes by the shapes it declares. It allocates
// nothing by a declared shape. Errors wrap ErrInvalidArtifact; a memory
// refusal also wraps infer.ErrWarmupMemory and names the input, its
// declared shape, the bytes it needs at the warm-up batch and the limit.
func CheckAdmission(model []byte, cfg AdmissionConfig) (ModelInfo, error) {
	cfg.setDefaults()
	info, err := InspectONNX(model)
	if err != nil {
		return ModelInfo{}, err
	}
	if err := infer.CheckWarmupMemory(info.Inputs, info.Outputs, cfg.WarmupBatchSizes, cfg.MaxWarmupBytes); err != nil {
		return ModelInfo{}, fmt.Errorf("%w: %w", ErrInvalidArtifact, err)
	}
	return info, nil
}

// EngineValidator is NewEngineValidator with the zero AdmissionConfig (a
// server with default settings).
func EngineValidator(eng infer.Engine) Validator {
	return NewEngineValidator(eng, AdmissionConfig{})
}

// NewEngineValidator returns a Validator that admits a model only if it
// can serve: CheckAdmission first (nothing is loaded if the declared
// tensors do not fit), then the model is loaded in eng from a file holding
// exactly the artifact's bytes alone in a fresh folder — what a server
// does with the stored, content-addressed artifact, so a model that
// depends on files beside it fails here as it would there — and warmed at
// cfg.WarmupBatchSizes within cfg.Timeout. It reports the session's inputs
// and metadata. With the ONNX Runtime engine this is the check that the
// artifact will load and run when served.
func NewEngineValidator(eng infer.Engine, cfg AdmissionConfig) Validator {
	cfg.setDefaults()
	return admitFromFile(cfg, func(ctx context.Context, path string) (ModelInfo, error) {
		opts := cfg.Session
		opts.WarmupBatchSizes, opts.MaxWarmupBytes = cfg.WarmupBatchSizes, cfg.MaxWarmupBytes
		lctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
		defer cancel()
		sess, err := eng.LoadFile(lctx, path, opts)
		if err != nil {
			switch {
			case ctx.Err() != nil:
				return ModelInfo{}, ctx.Err()
			case lctx.Err() != nil:
				return ModelInfo{}, fmt.Errorf("%w: %s did not load and warm it (batch sizes %v) within %v", ErrInvalidArtifact, eng.Name(), cfg.WarmupBatchSizes, cfg.Timeout)
			}
			return ModelInfo{}, fmt.Errorf("%w: %s cannot load and warm it (batch sizes %v): %v", ErrInvalidArtifact, eng.Name(), cfg.WarmupBatchSizes, err)
		}
		defer sess.Close()
		return ModelInfo{Inputs: sess.Inputs(), Outputs: sess.Outputs(), Metadata: sess.Metadata()}, nil
	})
}

// admitFromFile is the Validator both admission checks share: the static
// CheckAdmission, then load (a func of the file's path) on a file holding
// exactly the artifact's bytes alone in a fresh folder under cfg.TempDir,
// as a server loads the stored, content-addressed artifact.
func admitFromFile(cfg AdmissionConfig, load func(ctx context.Context, path string) (ModelInfo, error)) Validator {
	return ValidatorFunc(func(ctx context.Context, model []byte) (ModelInfo, error) {
		if _, err := CheckAdmission(model, cfg); err != nil {
			return ModelInfo{}, err
		}
		dir, err := os.MkdirTemp(cfg.TempDir, "signalforge-admit-")
		if err != nil {
			return ModelInfo{}, fmt.Errorf("registry: admission: %w", err)
		}
		defer os.RemoveAll(dir)
		path := filepath.Join(dir, "model.onnx")
		if err := os.WriteFile(path, model, 0o600); err != nil {
			return ModelInfo{}, fmt.Errorf("registry: admission: %w", err)
		}
		return load(ctx, path)
	})
}

// InspectONNX parses model as an ONNX ModelProto (pure Go, no engine) and
// checks that it is structurally a model: an IR version, an opset import, a
// graph with at least one node, one input that is not an initializer and one
// output. It returns the inputs with their element types and shapes (-1 for
// symbolic or unknown dimensions). Errors wrap ErrInvalidArtifact.
//
// The registry always runs it before Config.Validator: protobuf decoding is
// lenient (many byte strings decode as some message), so these checks are
// what tells "not ONNX" apart from "ONNX the engine rejects".
func InspectONNX(model []byte) (ModelInfo, error) {
	mp, err := onnx.Parse(model)
	if err != nil {
		return ModelInfo{}, fmt.Errorf("%w: %w", ErrInvalidArtifact, err)
	}
	g := mp.GetGraph()
	switch {
	case len(mp.GetOpsetImport()) == 0:
		return ModelInfo{}, fmt.Errorf("%w: not an ONNX model (no opset_import)", ErrInvalidArtifact)
	case g == nil || len(g.GetNode()) == 0:
		return ModelInfo{}, fmt.Errorf("%w: ONNX model has an empty graph", ErrInvalidArtifact)
	case len(g.GetOutput()) == 0:
		return ModelInfo{}, fmt.Errorf("%w: ONNX graph has no outputs", ErrInvalidArtifact)
	}
	if ext := onnx.ExternalTensors(mp); len(ext) > 0 {
		return ModelInfo{}, externalDataError(ext)
	}
	inits := map[string]bool{}
	for _, t := range g.GetInitializer() {
		inits[t.GetName()] = true
	}
	info := ModelInfo{Metadata: map[string]string{}}
	for _, p := range mp.GetMetadataProps() {
		info.Metadata[p.GetKey()] = p.GetValue()
	}
	for _, in := range g.GetInput() {
		if inits[in.GetName()] {
			continue
		}
		tt := in.GetType().GetTensorType()
		if tt == nil {
			return ModelInfo{}, fmt.Errorf("%w: input %q is not a tensor", ErrInvalidArtifact, in.GetName())
		}
		io := infer.IOInfo{Name: in.GetName(), DType: dtypeOf(tt.GetElemType()), BatchAxis: -1}
		for i, d := range tt.GetShape().GetDim() {
			v := d.GetDimValue()
			if _, ok := d.GetValue().(*onnx.TensorShapeProto_Dimension_DimValue); !ok || v <= 0 {
				v = -1
				if i == 0 {
					io.BatchAxis = 0
				}
			}
			io.Shape = append(io.Shape, v)
			io.DimNames = append(io.DimNames, d.GetDimParam())
		}
		info.Inputs = append(info.Inputs, io)
	}
	if len(info.Inputs) == 0 {
		return ModelInfo{}, fmt.Errorf("%w: ONNX graph has no inputs", ErrInvalidArtifact)
	}
	for _, out := range g.GetOutput() {
		io := infer.IOInfo{Name: out.GetName(), BatchAxis: -1}
		tt := out.GetType().GetTensorType()
		if tt != nil {
			io.DType = dtypeOf(tt.GetElemType())
		}
		if tt != nil && tt.GetShape() != nil {
			io.Shape = tensor.Shape{}
			for _, d := range tt.GetShape().GetDim() {
				v := d.GetDimValue()
				if _, ok := d.GetValue().(*onnx.TensorShapeProto_Dimension_DimValue); !ok || v < 0 {
					v = -1
				}
				io.Shape = append(io.Shape, v)
				io.DimNames = append(io.DimNames, d.GetDimParam())
			}
			io.BatchAxis = infer.BatchAxis(io.Shape, io.DimNames)
		}
		info.Outputs = append(info.Outputs, io)
	}
	return info, nil
}

// externalDataError refuses a model that keeps tensors in other files.
// Artifacts are single content-addressed files that every server fetches
// by their sha256; the files beside the model are not part of that, and a
// path the model names would be read wherever the registering process
// happens to run (and could name any file the server can read).
func externalDataError(ext []onnx.ExternalTensor) error {
	e := ext[0]
	more := ""
	if len(ext) > 1 {
		more = fmt.Sprintf(" (and %d more tensor", len(ext)-1)
		if len(ext) > 2 {
			more += "s"
		}
		more += ")"
	}
	return fmt.Errorf("%w: tensor %q keeps its data in the external file %q%s; a registered model must be one self-contained file "+
		"(in Python: onnx.save(onnx.load(path), out_path, save_as_external_data=False); models over 2 GiB cannot be registered)",
		ErrInvalidArtifact, e.Name, e.Location, more)
}

func dtypeOf(t int32) tensor.DType {
	switch onnx.TensorProto_DataType(t) {
	case onnx.TensorProto_FLOAT:
		return tensor.Float32
	case onnx.TensorProto_INT64:
		return tensor.Int64
	case onnx.TensorProto_INT8:
		return tensor.Int8
	case onnx.TensorProto_UINT8:
		return tensor.Uint8
	}
	return tensor.Invalid
}

// MatchFeatures checks declared feature names against a model and returns
// the version's feature list. The rules are those of infer.NewPredictor,
// which serves the version, so that a registered version can be served:
//
//   - The model has one float32 input of shape [batch, F] (an MLP) or
//     [batch, time, F] (an LSTM), F the features along its last axis.
//   - Names must be non-empty and unique.
//   - If the model lists its features in metadata (infer.FeaturesMetadataKey),
//     the declared list must equal it, order included; with none declared the
//     metadata's list is used. With neither, registration fails: the names
//     cannot be guessed.
//   - If F is static, the number of features must be F.
//
// Errors wrap ErrFeatures and name the offending features.
func MatchFeatures(declared []string, info ModelInfo) ([]string, error) {
	seen := map[string]bool{}
	for _, f := range declared {
		if strings.TrimSpace(f) == "" {
			return nil, fmt.Errorf("%w: empty feature name in %q", ErrFeatures, declared)
		}
		if seen[f] {
			return nil, fmt.Errorf("%w: feature %q declared twice", ErrFeatures, f)
		}
		seen[f] = true
	}
	if len(info.Inputs) != 1 {
		var names []string
		for _, in := range info.Inputs {
			names = append(names, in.Name)
		}
		return nil, fmt.Errorf("%w: the model has %d inputs %q; SignalForge serves models with one float32 input of shape [batch, features] or [batch, time, features]", ErrFeatures, len(names), names)
	}
	in := info.Inputs[0]
	if in.DType != tensor.Float32 {
		return nil, fmt.Errorf("%w: input %q is %v; it must be float32", ErrFeatures, in.Name, in.DType)
	}
	if len(in.Shape) != 2 && len(in.Shape) != 3 {
		return nil, fmt.Errorf("%w: input %q has shape %v; it must be [batch, features] or [batch, time, features]", ErrFeatures, in.Name, in.Shape)
	}
	features := slices.Clone(declared)
	if meta, ok := info.Metadata[infer.FeaturesMetadataKey]; ok && strings.TrimSpace(meta) != "" {
		var listed []string
		for _, f := range strings.Split(meta, ",") {
			listed = append(listed, strings.TrimSpace(f))
		}
		if len(features) == 0 {
			features = listed
		} else if !slices.Equal(features, listed) {
			return nil, fmt.Errorf("%w: declared %q but the model's metadata lists %q", ErrFeatures, features, listed)
		}
	}
	if len(features) == 0 {
		return nil, fmt.Errorf("%w: the model has no %s metadata; declare its feature names (input %q has shape %v)", ErrFeatures, infer.FeaturesMetadataKey, in.Name, in.Shape)
	}
	if f := in.Shape[len(in.Shape)-1]; f > 0 && int64(len(features)) != f {
		return nil, fmt.Errorf("%w: %d features (%q) but input %q has shape %v: %d features along its last axis", ErrFeatures, len(features), features, in.Name, in.Shape, f)
	}
	return features, nil
}
