package onnx

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/signalforge/signalforge/tensor"
)

// Info is a plain summary of a model, for `signalforge inspect`, the
// registry and logs. Describe fills it; it holds no proto types.
type Info struct {
	IRVersion       int64        `json:"ir_version"`
	ProducerName    string       `json:"producer_name,omitempty"`
	ProducerVersion string       `json:"producer_version,omitempty"`
	Domain          string       `json:"domain,omitempty"`
	ModelVersion    int64        `json:"model_version,omitempty"`
	Doc             string       `json:"doc,omitempty"`
	Graph           string       `json:"graph,omitempty"`
	Opsets          []OpsetInfo  `json:"opsets"`
	Inputs          []IOInfo     `json:"inputs"`
	Outputs         []IOInfo     `json:"outputs"`
	Initializers    []TensorInfo `json:"initializers"`
	// ParamCount and ParamBytes total the initializers' elements and
	// bytes (the model's weights).
	ParamCount int64 `json:"param_count"`
	ParamBytes int64 `json:"param_bytes"`
	// Nodes is the number of nodes in the main graph; OpTypes counts them
	// by operator, written "domain.Op" outside the default domain.
	Nodes    int               `json:"nodes"`
	OpTypes  map[string]int    `json:"op_types"`
	Metadata map[string]string `json:"metadata,omitempty"`
}

// OpsetInfo is one imported operator set; Domain "" is the default ONNX
// domain.
type OpsetInfo struct {
	Domain  string `json:"domain"`
	Version int64  `json:"version"`
}

// IOInfo describes a graph input or output.
type IOInfo struct {
	Name string `json:"name"`
	// Type names the element type ("float32", "float16", ...); it is
	// "non-tensor" for sequences and maps.
	Type string `json:"type"`
	// DType is the tensor dtype, or tensor.Invalid if this product does
	// not handle the element type.
	DType tensor.DType `json:"-"`
	// Dims are the declared dimensions: fixed sizes, symbolic names such
	// as "batch", or unknown. Nil if the shape is not declared at all.
	Dims []Dimension `json:"dims"`
}

// Shape returns the dims as a tensor.Shape with -1 for every dimension
// that is not fixed.
func (v IOInfo) Shape() tensor.Shape {
	s := make(tensor.Shape, len(v.Dims))
	for i, d := range v.Dims {
		s[i] = -1
		if d.Fixed() {
			s[i] = d.Value
		}
	}
	return s
}

// DimsString formats the dims as [batch,100].
func (v IOInfo) DimsString() string {
	if v.Dims == nil {
		return "(unknown shape)"
	}
	parts := make([]string, len(v.Dims))
	for i, d := range v.Dims {
		parts[i] = d.String()
	}
	return "[" + strings.Join(parts, ",") + "]"
}

// TensorInfo describes an initializer.
type TensorInfo struct {
	Name  string       `json:"name"`
	Type  string       `json:"type"`
	Shape tensor.Shape `json:"shape"`
	// Bytes is the size of the data (element count times element size;
	// for strings, the stored bytes).
	Bytes int64 `json:"bytes"`
	// External is true if the data lives in a separate file.
	External bool `json:"external,omitempty"`
}

// Describe summarizes m. It never fails: fields a model lacks are zero.
func Describe(m *ModelProto) *Info {
	g := m.GetGraph()
	info := &Info{
		IRVersion:       m.GetIrVersion(),
		ProducerName:    m.GetProducerName(),
		ProducerVersion: m.GetProducerVersion(),
		Domain:          m.GetDomain(),
		ModelVersion:    m.GetModelVersion(),
		Doc:             m.GetDocString(),
		Graph:           g.GetName(),
		Opsets:          []OpsetInfo{},
		Inputs:          []IOInfo{},
		Outputs:         []IOInfo{},
		Initializers:    []TensorInfo{},
		OpTypes:         map[string]int{},
		Nodes:           len(g.GetNode()),
	}
	for _, o := range m.GetOpsetImport() {
		info.Opsets = append(info.Opsets, OpsetInfo{Domain: o.GetDomain(), Version: o.GetVersion()})
	}
	inits := map[string]bool{}
	for _, t := range g.GetInitializer() {
		inits[t.GetName()] = true
		ti := TensorInfo{
			Name:     t.GetName(),
			Type:     TypeName(TensorProto_DataType(t.GetDataType())),
			Shape:    tensor.Shape(t.GetDims()).Clone(),
			External: t.GetDataLocation() == TensorProto_EXTERNAL,
		}
		n, err := numElements(t.GetDims())
		if err == nil {
			if size := elemSize(TensorProto_DataType(t.GetDataType())); size > 0 {
				ti.Bytes = mulOr(n, size)
			} else {
				for _, s := range t.GetStringData() {
					ti.Bytes += int64(len(s))
				}
			}
			info.ParamCount += n
		}
		info.ParamBytes += ti.Bytes
		info.Initializers = append(info.Initializers, ti)
	}
	for _, v := range g.GetInput() {
		if inits[v.GetName()] {
			continue // an initializer listed as input by older exporters
		}
		info.Inputs = append(info.Inputs, describeValue(v))
	}
	for _, v := range g.GetOutput() {
		info.Outputs = append(info.Outputs, describeValue(v))
	}
	for _, n := range g.GetNode() {
		op := n.GetOpType()
		if d := n.GetDomain(); d != "" && d != "ai.onnx" {
			op = d + "." + op
		}
		info.OpTypes[op]++
	}
	if props := m.GetMetadataProps(); len(props) > 0 {
		info.Metadata = make(map[string]string, len(props))
		for _, p := range props {
			info.Metadata[p.GetKey()] = p.GetValue()
		}
	}
	return info
}

func describeValue(v *ValueInfoProto) IOInfo {
	out := IOInfo{Name: v.GetName(), Type: "non-tensor"}
	tt := v.GetType().GetTensorType()
	if tt == nil {
		return out
	}
	et := TensorProto_DataType(tt.GetElemType())
	out.Type = TypeName(et)
	out.DType = DTypeOf(et)
	if tt.Shape == nil {
		return out
	}
	out.Dims = make([]Dimension, len(tt.GetShape().GetDim()))
	for i, d := range tt.GetShape().GetDim() {
		switch {
		case d.GetDimParam() != "":
			out.Dims[i] = Dimension{Param: d.GetDimParam()}
		case d.Value != nil:
			out.Dims[i] = Dimension{Value: d.GetDimValue()}
		default:
			out.Dims[i] = Dimension{Value: -1}
		}
	}
	return out
}

// Opset returns the imported version of the default ONNX domain, or 0.
func (i *Info) Opset() int64 {
	for _, o := range i.Opsets {
		if o.Domain == "" || o.Domain == "ai.onnx" {
			return o.Version
		}
	}
	return 0
}

// String renders the summary as the text `signalforge inspect` prints.
func (i *Info) String() string {
	var b strings.Builder
	i.WriteTo(&b)
	return b.String()
}

// WriteTo writes the summary as aligned text tables: model facts, inputs
// and outputs, the operator histogram, metadata, and the largest
// initializers (at most 10; the total covers all of them).
func (i *Info) WriteTo(w io.Writer) (int64, error) {
	cw := &countWriter{w: w}
	tw := tabwriter.NewWriter(cw, 0, 0, 2, ' ', 0)
	p := func(format string, args ...any) { fmt.Fprintf(tw, format, args...) }

	producer := strings.TrimSpace(i.ProducerName + " " + i.ProducerVersion)
	if producer == "" {
		producer = "-"
	}
	p("graph:\t%s\n", orDash(i.Graph))
	p("producer:\t%s\n", producer)
	p("ir version:\t%d\n", i.IRVersion)
	opsets := make([]string, len(i.Opsets))
	for j, o := range i.Opsets {
		d := o.Domain
		if d == "" {
			d = "ai.onnx"
		}
		opsets[j] = fmt.Sprintf("%s %d", d, o.Version)
	}
	p("opsets:\t%s\n", strings.Join(opsets, ", "))
	p("parameters:\t%d (%s in %d initializers)\n", i.ParamCount, FormatBytes(i.ParamBytes), len(i.Initializers))
	p("\n")
	p("IO\tNAME\tTYPE\tSHAPE\n")
	for _, v := range i.Inputs {
		p("input\t%s\t%s\t%s\n", v.Name, v.Type, v.DimsString())
	}
	for _, v := range i.Outputs {
		p("output\t%s\t%s\t%s\n", v.Name, v.Type, v.DimsString())
	}
	p("\n")
	ops := slices.Sorted(maps.Keys(i.OpTypes))
	slices.SortStableFunc(ops, func(a, b string) int { return i.OpTypes[b] - i.OpTypes[a] })
	p("OP\tCOUNT\n")
	for _, op := range ops {
		p("%s\t%d\n", op, i.OpTypes[op])
	}
	p("total\t%d\n", i.Nodes)
	if len(i.Metadata) > 0 {
		p("\nMETADATA\tVALUE\n")
		for _, k := range slices.Sorted(maps.Keys(i.Metadata)) {
			p("%s\t%s\n", k, i.Metadata[k])
		}
	}
	if len(i.Initializers) > 0 {
		inits := slices.Clone(i.Initializers)
		slices.SortStableFunc(inits, func(a, b TensorInfo) int { return int(min(max(b.Bytes-a.Bytes, -1), 1)) })
		p("\nINITIALIZER\tTYPE\tSHAPE\tBYTES\n")
		for j, t := range inits {
			if j == 10 {
				p("... %d more\t\t\t\n", len(inits)-10)
				break
			}
			ext := ""
			if t.External {
				ext = " (external)"
			}
			p("%s\t%s\t%v\t%s%s\n", t.Name, t.Type, t.Shape, FormatBytes(t.Bytes), ext)
		}
	}
	err := tw.Flush()
	return cw.n, err
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// FormatBytes formats a byte count as "812 B", "2.0 KiB", "4.5 MiB".
func FormatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTP"[exp])
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
