package onnx

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"

	"github.com/signalforge/signalforge/tensor"
)

// Defaults of a Builder. IR version 8 and opset 17 are the newest that
// Debian's ONNX 1.12 checker accepts; ONNX Runtime 1.30 runs both.
const (
	DefaultIRVersion = 8
	DefaultOpset     = 17
	// Producer is the producer_name written by Builder.
	Producer = "signalforge"
)

// Dimension is one dimension of a declared input or output shape: a fixed
// size (Param == ""), a symbolic name such as "batch" (a dynamic axis), or
// unknown (Value < 0 and Param == "").
type Dimension struct {
	Value int64  `json:"value,omitempty"`
	Param string `json:"param,omitempty"`
}

// Dim returns a fixed dimension for an integer and a symbolic (dynamic)
// dimension for a string: Dim(100), Dim("batch").
func Dim[T int | int64 | string](v T) Dimension {
	switch x := any(v).(type) {
	case int:
		return Dimension{Value: int64(x)}
	case int64:
		return Dimension{Value: x}
	case string:
		return Dimension{Param: x}
	}
	panic("unreachable")
}

// Fixed reports whether d is a fixed size.
func (d Dimension) Fixed() bool { return d.Param == "" && d.Value >= 0 }

// String returns "100", "batch", or "?" for an unknown dimension.
func (d Dimension) String() string {
	switch {
	case d.Param != "":
		return d.Param
	case d.Value < 0:
		return "?"
	}
	return strconv.FormatInt(d.Value, 10)
}

// Option configures a Builder.
type Option func(*Builder)

// Opset sets the version of the default ONNX operator set ("ai.onnx").
// If not given, DefaultOpset.
func Opset(version int64) Option {
	return func(b *Builder) { b.opsets[""] = version }
}

// Domain imports an extra operator set, for example
// Domain("com.microsoft", 1) for ONNX Runtime's contrib operators.
func Domain(domain string, version int64) Option {
	return func(b *Builder) { b.opsets[domain] = version }
}

// IRVersion sets the model's IR version. If not given, DefaultIRVersion.
func IRVersion(v int64) Option {
	return func(b *Builder) { b.irVersion = v }
}

// ProducerVersion sets the producer_version field (producer_name is
// always Producer).
func ProducerVersion(v string) Option {
	return func(b *Builder) { b.producerVersion = v }
}

// A Builder assembles an ONNX model graph. Methods that add values return
// the value's name, to be passed as an input to later nodes. Mistakes
// (duplicate names, attributes of an unsupported type, tensors that do not
// convert) are recorded and returned by Build, so a model can be written as
// straight-line code without checking every call.
//
// Nodes must be added in topological order (inputs before use), which is
// what ONNX requires of a graph.
type Builder struct {
	name            string
	irVersion       int64
	producerVersion string
	opsets          map[string]int64
	graph           GraphProto
	meta            []*StringStringEntryProto
	names           map[string]bool // every value name defined so far
	nodeNames       map[string]bool
	errs            []error
}

// NewBuilder returns a Builder for a graph called name.
func NewBuilder(name string, opts ...Option) *Builder {
	b := &Builder{
		name:      name,
		irVersion: DefaultIRVersion,
		opsets:    map[string]int64{"": DefaultOpset},
		names:     map[string]bool{},
		nodeNames: map[string]bool{},
	}
	for _, o := range opts {
		o(b)
	}
	return b
}

func (b *Builder) fail(format string, args ...any) {
	b.errs = append(b.errs, fmt.Errorf("onnx: builder: "+format, args...))
}

func (b *Builder) define(name, what string) {
	switch {
	case name == "":
		b.fail("%s has an empty name", what)
	case b.names[name]:
		b.fail("%s %q: name already defined", what, name)
	}
	b.names[name] = true
}

// Unique returns prefix if no value or node of that name exists yet, or
// else prefix_1, prefix_2, ... The name is not reserved until used.
func (b *Builder) Unique(prefix string) string {
	if !b.names[prefix] && !b.nodeNames[prefix] {
		return prefix
	}
	for i := 1; ; i++ {
		n := prefix + "_" + strconv.Itoa(i)
		if !b.names[n] && !b.nodeNames[n] {
			return n
		}
	}
}

// Input declares a graph input of the given element type and dimensions and
// returns its name.
func (b *Builder) Input(name string, dtype tensor.DType, dims ...Dimension) string {
	b.define(name, "input")
	if ElemType(dtype) == TensorProto_UNDEFINED {
		b.fail("input %q: invalid dtype %v", name, dtype)
	}
	b.graph.Input = append(b.graph.Input, ValueInfo(name, ElemType(dtype), dims...))
	return name
}

// Output declares an already defined value as a graph output with the
// given element type and dimensions.
func (b *Builder) Output(name string, dtype tensor.DType, dims ...Dimension) {
	if ElemType(dtype) == TensorProto_UNDEFINED {
		b.fail("output %q: invalid dtype %v", name, dtype)
	}
	b.graph.Output = append(b.graph.Output, ValueInfo(name, ElemType(dtype), dims...))
}

// Initializer adds a constant tensor (a weight) and returns its name.
func (b *Builder) Initializer(name string, t tensor.Tensor) string {
	b.define(name, "initializer")
	tp, err := FromTensor(name, t)
	if err != nil {
		b.errs = append(b.errs, fmt.Errorf("onnx: builder: %w", err))
		return name
	}
	b.graph.Initializer = append(b.graph.Initializer, tp)
	return name
}

// InitializerProto adds a constant given as a TensorProto, for element types
// tensor.Tensor does not hold. It returns tp's name.
func (b *Builder) InitializerProto(tp *TensorProto) string {
	b.define(tp.GetName(), "initializer")
	b.graph.Initializer = append(b.graph.Initializer, tp)
	return tp.GetName()
}

// SetMetadata sets a metadata_props entry (for example
// "signalforge.features"). Setting a key again replaces its value.
func (b *Builder) SetMetadata(key, value string) {
	for _, e := range b.meta {
		if e.GetKey() == key {
			e.Value = ptr(value)
			return
		}
	}
	b.meta = append(b.meta, &StringStringEntryProto{Key: ptr(key), Value: ptr(value)})
}

// NodeOption configures a node added by Builder.Node.
type NodeOption func(*nodeSpec)

type nodeSpec struct {
	name    string
	domain  string
	outputs []string
	nOut    int
	attrs   []*AttributeProto
	err     error
}

// Name sets the node's name. If not given, the builder derives a unique
// name from the op type.
func Name(name string) NodeOption { return func(s *nodeSpec) { s.name = name } }

// InDomain sets the node's operator set domain, for example
// "com.microsoft". The domain must be imported with the Domain option.
func InDomain(domain string) NodeOption { return func(s *nodeSpec) { s.domain = domain } }

// Outputs gives the node's outputs explicit names; "" means an omitted
// optional output. Without it a node has one output with a generated
// unique name.
func Outputs(names ...string) NodeOption {
	return func(s *nodeSpec) { s.outputs = names }
}

// NumOutputs asks for n outputs with generated unique names.
func NumOutputs(n int) NodeOption { return func(s *nodeSpec) { s.nOut = n } }

// Attr adds an attribute. Supported value types: int, int64, float32,
// float64 (stored as float), string, []int, []int64, []float32, []float64,
// []string, tensor.Tensor and *TensorProto. Any other type makes Build
// fail with an error naming the attribute.
func Attr(name string, value any) NodeOption {
	return func(s *nodeSpec) {
		a, err := NewAttr(name, value)
		if err != nil {
			s.err = errors.Join(s.err, err)
			return
		}
		s.attrs = append(s.attrs, a)
	}
}

// NewAttr builds an AttributeProto from a Go value; see Attr for the types.
func NewAttr(name string, value any) (*AttributeProto, error) {
	a := &AttributeProto{Name: ptr(name)}
	set := func(t AttributeProto_AttributeType) { a.Type = t.Enum() }
	switch v := value.(type) {
	case int:
		a.I = ptr(int64(v))
		set(AttributeProto_INT)
	case int64:
		a.I = ptr(v)
		set(AttributeProto_INT)
	case float32:
		a.F = ptr(v)
		set(AttributeProto_FLOAT)
	case float64:
		if v != 0 && !math.IsInf(v, 0) && (math.Abs(v) > math.MaxFloat32) {
			return nil, fmt.Errorf("onnx: attribute %q: %v overflows float32", name, v)
		}
		a.F = ptr(float32(v))
		set(AttributeProto_FLOAT)
	case string:
		a.S = []byte(v)
		set(AttributeProto_STRING)
	case []int:
		for _, x := range v {
			a.Ints = append(a.Ints, int64(x))
		}
		set(AttributeProto_INTS)
	case []int64:
		a.Ints = slices.Clone(v)
		set(AttributeProto_INTS)
	case []float32:
		a.Floats = slices.Clone(v)
		set(AttributeProto_FLOATS)
	case []float64:
		for _, x := range v {
			a.Floats = append(a.Floats, float32(x))
		}
		set(AttributeProto_FLOATS)
	case []string:
		for _, x := range v {
			a.Strings = append(a.Strings, []byte(x))
		}
		set(AttributeProto_STRINGS)
	case tensor.Tensor:
		tp, err := FromTensor("", v)
		if err != nil {
			return nil, fmt.Errorf("onnx: attribute %q: %w", name, err)
		}
		a.T = tp
		set(AttributeProto_TENSOR)
	case *TensorProto:
		a.T = v
		set(AttributeProto_TENSOR)
	default:
		return nil, fmt.Errorf("onnx: attribute %q: unsupported value type %T", name, value)
	}
	return a, nil
}

// Node adds an operator node and returns the name of its first output
// (or "" if it has none). inputs may contain "" for an omitted optional
// input. Use NodeOutputs for a node with several outputs.
//
//	y := b.Node("Gemm", []string{x, w, bias}, onnx.Attr("transB", 1))
func (b *Builder) Node(op string, inputs []string, opts ...NodeOption) string {
	outs := b.NodeOutputs(op, inputs, opts...)
	if len(outs) == 0 {
		return ""
	}
	return outs[0]
}

// NodeOutputs is Node for operators with several outputs; it returns all
// output names.
//
//	outs := b.NodeOutputs("LSTM", []string{x, w, r, bias}, onnx.NumOutputs(3), onnx.Attr("hidden_size", 64))
func (b *Builder) NodeOutputs(op string, inputs []string, opts ...NodeOption) []string {
	s := nodeSpec{nOut: 1}
	for _, o := range opts {
		o(&s)
	}
	if s.err != nil {
		b.errs = append(b.errs, fmt.Errorf("onnx: builder: node %s: %w", op, s.err))
	}
	if s.domain != "" {
		if _, ok := b.opsets[s.domain]; !ok {
			b.fail("node %s: domain %q is not imported (use onnx.Domain)", op, s.domain)
		}
	}
	if s.name == "" {
		s.name = b.Unique(op)
	} else if b.nodeNames[s.name] {
		b.fail("node %q: name already used", s.name)
	}
	b.nodeNames[s.name] = true
	outs := s.outputs
	if outs == nil {
		if s.nOut < 0 {
			b.fail("node %q: negative output count %d", s.name, s.nOut)
			s.nOut = 0
		}
		outs = make([]string, s.nOut)
		for i := range outs {
			suffix := "out"
			if s.nOut > 1 {
				suffix = "out" + strconv.Itoa(i)
			}
			outs[i] = b.Unique(s.name + "_" + suffix)
			b.names[outs[i]] = true
		}
	} else {
		outs = slices.Clone(outs)
		for _, o := range outs {
			if o != "" {
				b.define(o, "output of node "+strconv.Quote(s.name))
			}
		}
	}
	n := &NodeProto{
		Name:      ptr(s.name),
		OpType:    ptr(op),
		Input:     slices.Clone(inputs),
		Output:    outs,
		Attribute: s.attrs,
	}
	if s.domain != "" {
		n.Domain = ptr(s.domain)
	}
	b.graph.Node = append(b.graph.Node, n)
	return slices.Clone(outs)
}

// Build returns the model, after checking it with Check. It reports every
// mistake recorded while building, joined. The Builder should not be used
// afterwards.
func (b *Builder) Build() (*ModelProto, error) {
	if len(b.errs) > 0 {
		return nil, errors.Join(b.errs...)
	}
	m := &ModelProto{
		IrVersion:    ptr(b.irVersion),
		ProducerName: ptr(Producer),
		Graph:        &b.graph,
	}
	if b.producerVersion != "" {
		m.ProducerVersion = ptr(b.producerVersion)
	}
	b.graph.Name = ptr(b.name)
	domains := make([]string, 0, len(b.opsets))
	for d := range b.opsets {
		domains = append(domains, d)
	}
	slices.Sort(domains) // "" first: deterministic output
	for _, d := range domains {
		m.OpsetImport = append(m.OpsetImport, &OperatorSetIdProto{Domain: ptr(d), Version: ptr(b.opsets[d])})
	}
	m.MetadataProps = b.meta
	if err := Check(m); err != nil {
		return nil, err
	}
	return m, nil
}

// ValueInfo returns a ValueInfoProto for a tensor value of element type et
// with the given dimensions.
func ValueInfo(name string, et TensorProto_DataType, dims ...Dimension) *ValueInfoProto {
	shape := &TensorShapeProto{Dim: make([]*TensorShapeProto_Dimension, len(dims))}
	for i, d := range dims {
		pd := &TensorShapeProto_Dimension{}
		switch {
		case d.Param != "":
			pd.Value = &TensorShapeProto_Dimension_DimParam{DimParam: d.Param}
		case d.Value >= 0:
			pd.Value = &TensorShapeProto_Dimension_DimValue{DimValue: d.Value}
		}
		shape.Dim[i] = pd
	}
	return &ValueInfoProto{
		Name: ptr(name),
		Type: &TypeProto{Value: &TypeProto_TensorType{TensorType: &TypeProto_Tensor{
			ElemType: ptr(int32(et)),
			Shape:    shape,
		}}},
	}
}
