package ort

import (
	"fmt"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/signalforge/signalforge/infer"
	"github.com/signalforge/signalforge/onnx"
	"github.com/signalforge/signalforge/tensor"
)

// modelInfo is what a session needs to know about its model, read from the
// ONNX protobuf in Go (the binding can only report IO through a second,
// temporary ONNX Runtime session, and it does not report symbolic dims).
type modelInfo struct {
	inputs, outputs []infer.IOInfo
	// unsupported names IO whose element type has no tensor.DType; Run
	// rejects such models with this message.
	unsupported string
	meta        map[string]string
}

// readModelInfo decodes the model's graph inputs (minus those backed by an
// initializer, which ONNX Runtime lets callers omit), outputs and
// metadata_props.
func readModelInfo(data []byte) (*modelInfo, error) {
	m := new(onnx.ModelProto)
	// This decodes the initializers too (most of the bytes) only to drop
	// them; loading is not the hot path.
	if err := proto.Unmarshal(data, m); err != nil {
		return nil, fmt.Errorf("ort: not an ONNX model: %v", err)
	}
	g := m.GetGraph()
	if g == nil {
		return nil, fmt.Errorf("ort: not an ONNX model: no graph")
	}
	inits := make(map[string]bool, len(g.GetInitializer()))
	for _, t := range g.GetInitializer() {
		inits[t.GetName()] = true
	}
	info := &modelInfo{meta: make(map[string]string, len(m.GetMetadataProps()))}
	var bad []string
	for _, vi := range g.GetInput() {
		if inits[vi.GetName()] {
			continue
		}
		io, err := ioInfo(vi)
		if err != nil {
			return nil, fmt.Errorf("ort: input %q: %w", vi.GetName(), err)
		}
		if io.DType == tensor.Invalid {
			bad = append(bad, fmt.Sprintf("input %q is %s", vi.GetName(), typeName(vi)))
		}
		info.inputs = append(info.inputs, io)
	}
	for _, vi := range g.GetOutput() {
		io, err := ioInfo(vi)
		if err != nil {
			return nil, fmt.Errorf("ort: output %q: %w", vi.GetName(), err)
		}
		if io.DType == tensor.Invalid {
			bad = append(bad, fmt.Sprintf("output %q is %s", vi.GetName(), typeName(vi)))
		}
		info.outputs = append(info.outputs, io)
	}
	if len(info.outputs) == 0 {
		return nil, fmt.Errorf("ort: model has no outputs")
	}
	if len(bad) > 0 {
		info.unsupported = strings.Join(bad, ", ") + " (supported element types: float32, int64, int32, int8, uint8)"
	}
	for _, p := range m.GetMetadataProps() {
		info.meta[p.GetKey()] = p.GetValue()
	}
	return info, nil
}

func typeName(vi *onnx.ValueInfoProto) string {
	return onnx.TypeName(onnx.TensorProto_DataType(vi.GetType().GetTensorType().GetElemType()))
}

// dtypeOf maps ONNX element types onto tensor dtypes (Invalid if none).
func dtypeOf(et onnx.TensorProto_DataType) tensor.DType { return onnx.DTypeOf(et) }

func ioInfo(vi *onnx.ValueInfoProto) (infer.IOInfo, error) {
	tt := vi.GetType().GetTensorType()
	if tt == nil {
		return infer.IOInfo{}, fmt.Errorf("not a tensor (sequences, maps and optionals are not supported)")
	}
	io := infer.IOInfo{
		Name:      vi.GetName(),
		DType:     dtypeOf(onnx.TensorProto_DataType(tt.GetElemType())),
		BatchAxis: -1,
	}
	if tt.Shape == nil {
		return io, nil // rank unknown: Shape stays nil
	}
	dims := tt.GetShape().GetDim()
	io.Shape = make(tensor.Shape, len(dims))
	io.DimNames = make([]string, len(dims))
	for i, d := range dims {
		io.DimNames[i] = d.GetDimParam()
		if v, ok := d.GetValue().(*onnx.TensorShapeProto_Dimension_DimValue); ok && v.DimValue >= 0 {
			io.Shape[i] = v.DimValue
		} else {
			io.Shape[i] = -1
		}
	}
	io.BatchAxis = infer.BatchAxis(io.Shape, io.DimNames)
	return io, nil
}
