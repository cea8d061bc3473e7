package quantize

import (
	"encoding/binary"
	"fmt"
	"math"
	"strconv"

	"google.golang.org/protobuf/proto"

	"github.com/signalforge/signalforge/onnx"
)

// graph wraps a model being rewritten: initializers by name, consumer counts
// and a generator of unique names.
type graph struct {
	m     *onnx.ModelProto
	g     *onnx.GraphProto
	inits map[string]*onnx.TensorProto
	names map[string]bool // every tensor and node name in use
	seq   int
}

func newGraph(m *onnx.ModelProto) (*graph, error) {
	if m.GetGraph() == nil {
		return nil, fmt.Errorf("%w: model has no graph", ErrModel)
	}
	gr := &graph{m: m, g: m.Graph, inits: map[string]*onnx.TensorProto{}, names: map[string]bool{}}
	for _, t := range m.Graph.Initializer {
		gr.inits[t.GetName()] = t
		gr.names[t.GetName()] = true
	}
	for _, v := range m.Graph.Input {
		gr.names[v.GetName()] = true
	}
	for i, n := range m.Graph.Node {
		if n.GetName() == "" {
			// Selection and reports refer to nodes by name: give every
			// node one, stable for a given graph.
			n.Name = proto.String(n.GetOpType() + "_" + strconv.Itoa(i))
		}
		gr.names[n.GetName()] = true
		for _, o := range n.Output {
			gr.names[o] = true
		}
	}
	return gr, nil
}

// unique returns base, or base with a numeric suffix, not yet used in the graph.
func (gr *graph) unique(base string) string {
	name := base
	for gr.names[name] {
		gr.seq++
		name = base + "_" + strconv.Itoa(gr.seq)
	}
	gr.names[name] = true
	return name
}

// graphInputs returns the model's real inputs (not initializers listed as inputs).
func graphInputs(g *onnx.GraphProto) []*onnx.ValueInfoProto {
	inits := map[string]bool{}
	for _, t := range g.Initializer {
		inits[t.GetName()] = true
	}
	var in []*onnx.ValueInfoProto
	for _, v := range g.Input {
		if !inits[v.GetName()] {
			in = append(in, v)
		}
	}
	return in
}

// inputShape returns the shape of a graph input with -1 for symbolic or
// unknown dimensions.
func inputShape(v *onnx.ValueInfoProto) []int64 {
	dims := v.GetType().GetTensorType().GetShape().GetDim()
	s := make([]int64, len(dims))
	for i, d := range dims {
		if dv, ok := d.GetValue().(*onnx.TensorShapeProto_Dimension_DimValue); ok {
			s[i] = dv.DimValue
		} else {
			s[i] = -1
		}
	}
	return s
}

func (gr *graph) consumers(name string) int {
	n := 0
	for _, node := range gr.g.Node {
		for _, in := range node.Input {
			if in == name {
				n++
			}
		}
	}
	for _, o := range gr.g.Output {
		if o.GetName() == name {
			n++
		}
	}
	return n
}

// removeInit deletes an initializer (and its graph-input entry, for old
// models that list initializers as inputs) once nothing consumes it.
func (gr *graph) removeInitIfUnused(name string) {
	if gr.consumers(name) > 0 {
		return
	}
	delete(gr.inits, name)
	out := gr.g.Initializer[:0]
	for _, t := range gr.g.Initializer {
		if t.GetName() != name {
			out = append(out, t)
		}
	}
	gr.g.Initializer = out
	in := gr.g.Input[:0]
	for _, v := range gr.g.Input {
		if v.GetName() != name {
			in = append(in, v)
		}
	}
	gr.g.Input = in
}

func (gr *graph) addInit(t *onnx.TensorProto) string {
	gr.g.Initializer = append(gr.g.Initializer, t)
	gr.inits[t.GetName()] = t
	return t.GetName()
}

func (gr *graph) opset(domain string) int64 {
	for _, o := range gr.m.OpsetImport {
		if o.GetDomain() == domain || (domain == "" && o.GetDomain() == "ai.onnx") {
			return o.GetVersion()
		}
	}
	return 0
}

func (gr *graph) requireOpset(domain string, version int64) {
	for _, o := range gr.m.OpsetImport {
		if o.GetDomain() == domain {
			if o.GetVersion() < version {
				o.Version = proto.Int64(version)
			}
			return
		}
	}
	gr.m.OpsetImport = append(gr.m.OpsetImport, &onnx.OperatorSetIdProto{Domain: proto.String(domain), Version: proto.Int64(version)})
}

func node(op, name string, in, out []string, attrs ...*onnx.AttributeProto) *onnx.NodeProto {
	return &onnx.NodeProto{OpType: proto.String(op), Name: proto.String(name), Input: in, Output: out, Attribute: attrs}
}

func attrInt(name string, v int64) *onnx.AttributeProto {
	t := onnx.AttributeProto_INT
	return &onnx.AttributeProto{Name: proto.String(name), Type: &t, I: proto.Int64(v)}
}

func getAttrInt(n *onnx.NodeProto, name string, def int64) int64 {
	for _, a := range n.Attribute {
		if a.GetName() == name {
			return a.GetI()
		}
	}
	return def
}

func getAttrFloat(n *onnx.NodeProto, name string, def float32) float32 {
	for _, a := range n.Attribute {
		if a.GetName() == name {
			return a.GetF()
		}
	}
	return def
}

// floats returns the values of a float32 initializer.
func floats(t *onnx.TensorProto) ([]float32, error) {
	if onnx.TensorProto_DataType(t.GetDataType()) != onnx.TensorProto_FLOAT {
		return nil, fmt.Errorf("%w: initializer %q is %s, not float32", ErrModel, t.GetName(), onnx.TypeName(onnx.TensorProto_DataType(t.GetDataType())))
	}
	if t.GetDataLocation() == onnx.TensorProto_EXTERNAL {
		return nil, fmt.Errorf("%w: initializer %q uses external data", ErrModel, t.GetName())
	}
	n := int64(1)
	for _, d := range t.Dims {
		n *= d
	}
	if len(t.FloatData) > 0 {
		if int64(len(t.FloatData)) != n {
			return nil, fmt.Errorf("%w: initializer %q has %d values for %d elements", ErrModel, t.GetName(), len(t.FloatData), n)
		}
		return append([]float32(nil), t.FloatData...), nil
	}
	if int64(len(t.RawData)) != 4*n {
		return nil, fmt.Errorf("%w: initializer %q has %d bytes for %d elements", ErrModel, t.GetName(), len(t.RawData), n)
	}
	out := make([]float32, n)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(t.RawData[4*i:]))
	}
	return out, nil
}

func floatTensor(name string, dims []int64, v []float32) *onnx.TensorProto {
	raw := make([]byte, 4*len(v))
	for i, f := range v {
		binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(f))
	}
	return &onnx.TensorProto{Name: proto.String(name), Dims: dims, DataType: proto.Int32(int32(onnx.TensorProto_FLOAT)), RawData: raw}
}

func int8Tensor(name string, dims []int64, v []int8) *onnx.TensorProto {
	raw := make([]byte, len(v))
	for i, x := range v {
		raw[i] = byte(x)
	}
	return &onnx.TensorProto{Name: proto.String(name), Dims: dims, DataType: proto.Int32(int32(onnx.TensorProto_INT8)), RawData: raw}
}

func uint8Tensor(name string, dims []int64, v []uint8) *onnx.TensorProto {
	return &onnx.TensorProto{Name: proto.String(name), Dims: dims, DataType: proto.Int32(int32(onnx.TensorProto_UINT8)), RawData: append([]byte(nil), v...)}
}

func int32Tensor(name string, dims []int64, v []int32) *onnx.TensorProto {
	raw := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(raw[4*i:], uint32(x))
	}
	return &onnx.TensorProto{Name: proto.String(name), Dims: dims, DataType: proto.Int32(int32(onnx.TensorProto_INT32)), RawData: raw}
}

// setMeta sets (or replaces) a metadata_props entry.
func setMeta(m *onnx.ModelProto, key, value string) {
	for _, p := range m.MetadataProps {
		if p.GetKey() == key {
			p.Value = proto.String(value)
			return
		}
	}
	m.MetadataProps = append(m.MetadataProps, &onnx.StringStringEntryProto{Key: proto.String(key), Value: proto.String(value)})
}

func getMeta(m *onnx.ModelProto, key string) string {
	for _, p := range m.MetadataProps {
		if p.GetKey() == key {
			return p.GetValue()
		}
	}
	return ""
}

// withOutputs returns a copy of m that also outputs the named tensors,
// declared float32 of unknown shape (every tensor this package taps is a
// float activation). Names that already are graph outputs or graph inputs
// are skipped.
func withOutputs(m *onnx.ModelProto, names []string) *onnx.ModelProto {
	c := proto.Clone(m).(*onnx.ModelProto)
	have := map[string]bool{}
	for _, o := range c.Graph.Output {
		have[o.GetName()] = true
	}
	for _, v := range c.Graph.Input {
		have[v.GetName()] = true
	}
	for _, n := range names {
		if !have[n] {
			have[n] = true
			c.Graph.Output = append(c.Graph.Output, &onnx.ValueInfoProto{Name: proto.String(n), Type: &onnx.TypeProto{
				Value: &onnx.TypeProto_TensorType{TensorType: &onnx.TypeProto_Tensor{ElemType: proto.Int32(int32(onnx.TensorProto_FLOAT))}},
			}})
		}
	}
	return c
}
