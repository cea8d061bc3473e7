package registry

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/signalforge/signalforge/infer"
	"github.com/signalforge/signalforge/onnx"
	"github.com/signalforge/signalforge/tensor"
)

// ModelInfo is what a Validator learned about an artifact.
type ModelInfo struct {
	// Inputs are the model's inputs in the order the engine feeds them
	// (graph initializers excluded).
	Inputs []infer.IOInfo
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

// EngineValidator returns a Validator that loads the model in eng (one
// session, closed again at once) and reports the session's inputs and
// metadata. With the ONNX Runtime engine this is the check that the artifact
// will load when served.
func EngineValidator(eng infer.Engine) Validator {
	return ValidatorFunc(func(ctx context.Context, model []byte) (ModelInfo, error) {
		sess, err := eng.LoadBytes(ctx, model, infer.Options{})
		if err != nil {
			if ctx.Err() != nil {
				return ModelInfo{}, ctx.Err()
			}
			return ModelInfo{}, fmt.Errorf("%w: %s cannot load it: %v", ErrInvalidArtifact, eng.Name(), err)
		}
		defer sess.Close()
		return ModelInfo{Inputs: sess.Inputs(), Metadata: sess.Metadata()}, nil
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
	return info, nil
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
