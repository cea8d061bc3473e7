package convert

import (
	"fmt"
	"math"
	"sort"
	"strings"

	"github.com/signalforge/signalforge/onnx"
	"github.com/signalforge/signalforge/tensor"
)

// dim is one dimension of a value in the graph being built.
type dim = onnx.Dimension

var unknownDim = dim{Value: -1}

// value is a tensor flowing between layers. shape is the shape PyTorch
// sees. A recurrent layer's output stays time-major in the graph even when
// PyTorch sees it batch-first (timeMajor), so that a following LastStep or
// recurrent layer needs no Transpose; any other layer materialises it.
type value struct {
	name      string
	shape     []dim
	timeMajor bool // graph tensor is [T,N,F] while PyTorch sees [N,T,F]
	seq       bool // output of a recurrent layer: LastStep applies
	seqAxis   int  // time axis as PyTorch sees it (0 or 1)
	batchAxis int
}

type emitter struct {
	b      *onnx.Builder
	opset  int
	params map[string]*Tensor
	used   map[string]bool
	err    error // first weight whose size does not fit its declared shape
}

func (e *emitter) param(l *layer, name string) (*Tensor, bool) {
	t, ok := e.params[l.prefix+name]
	if ok {
		e.used[l.prefix+name] = true
	}
	return t, ok
}

func (e *emitter) mustParam(l *layer, name string) (*Tensor, error) {
	t, ok := e.param(l, name)
	if !ok {
		return nil, fmt.Errorf("%s: weight %q missing from the file", l.typ, l.prefix+name)
	}
	if !isFloat(t.DType) {
		return nil, fmt.Errorf("%s: weight %q has dtype %v, want a float type", l.typ, l.prefix+name, t.DType)
	}
	return t, nil
}

func isFloat(d DType) bool { return d == Float32 || d == Float64 || d == Float16 || d == BFloat16 }

// init adds a float initializer. Weights from a file may be inconsistent
// with each other (a hostile or mismatched file); a size that does not fit
// the shape is recorded as an error rather than a panic.
func (e *emitter) init(name string, shape []int64, data []float32) string {
	t, err := tensor.New(tensor.Shape(shape), data)
	if err != nil {
		if e.err == nil {
			e.err = fmt.Errorf("weight %s: %d values do not fit shape %v", strings.TrimSuffix(name, "."), len(data), shape)
		}
		t, _ = tensor.Zeros(tensor.Float32, tensor.Shape{0})
	}
	return e.b.Initializer(e.b.Unique(sanitize(name)), t)
}

func (e *emitter) initInts(name string, shape []int64, data []int64) string {
	return e.b.Initializer(e.b.Unique(name), tensor.Must(tensor.Shape(shape), data))
}

func (e *emitter) scalar(name string, v float32) string {
	return e.init(name, []int64{}, []float32{v})
}

func sanitize(s string) string {
	s = strings.TrimSuffix(s, ".")
	if s == "" {
		return "w"
	}
	return s
}

// materialize applies the Transpose a batch-first recurrent output owes.
func (e *emitter) materialize(x value) value {
	if !x.timeMajor {
		return x
	}
	x.name = e.b.Node("Transpose", []string{x.name}, onnx.Attr("perm", []int64{1, 0, 2}))
	x.timeMajor = false
	return x
}

func (e *emitter) emit(l *layer, x value) (value, error) {
	if l.typ != "LastStep" && l.typ != "LSTM" && l.typ != "GRU" && l.typ != "Sequential" &&
		l.typ != "Dropout" && l.typ != "Identity" {
		x = e.materialize(x)
		x.seq = false
	}
	op := func(name string, attrs ...onnx.NodeOption) value {
		y := x
		y.name = e.b.Node(name, []string{x.name}, attrs...)
		return y
	}
	switch l.typ {
	case "Sequential":
		for _, c := range l.children {
			var err error
			if x, err = e.emit(c, x); err != nil {
				return x, err
			}
		}
		return x, nil
	case "Identity", "Dropout":
		return x, nil
	case "ReLU":
		return op("Relu"), nil
	case "Tanh":
		return op("Tanh"), nil
	case "Sigmoid":
		return op("Sigmoid"), nil
	case "LeakyReLU":
		a, err := argFloat(l.args, "negative_slope", 0.01)
		if err != nil {
			return x, err
		}
		return op("LeakyRelu", onnx.Attr("alpha", a)), nil
	case "SiLU":
		s := e.b.Node("Sigmoid", []string{x.name})
		x.name = e.b.Node("Mul", []string{x.name, s})
		return x, nil
	case "GELU":
		return e.gelu(l, x)
	case "Softmax":
		return e.softmax(l, x)
	case "Flatten":
		return e.flatten(l, x)
	case "Linear":
		return e.linear(l, x)
	case "BatchNorm1d":
		return e.batchNorm(l, x)
	case "LayerNorm":
		return e.layerNorm(l, x)
	case "Conv1d":
		return e.conv1d(l, x)
	case "LSTM", "GRU":
		return e.recurrent(l, x)
	case "LastStep":
		if !x.seq {
			return x, fmt.Errorf("LastStep must follow an LSTM or GRU")
		}
		axis := int64(x.seqAxis)
		if x.timeMajor {
			axis = 0
		}
		idx := e.initInts("last_index", []int64{}, []int64{-1})
		x.name = e.b.Node("Gather", []string{x.name, idx}, onnx.Attr("axis", axis))
		x.shape = append(append([]dim{}, x.shape[:x.seqAxis]...), x.shape[x.seqAxis+1:]...)
		if x.batchAxis > x.seqAxis {
			x.batchAxis--
		}
		x.timeMajor, x.seq = false, false
		return x, nil
	}
	return x, unsupportedModule(l.typ)
}

func lastDim(x value) dim {
	if len(x.shape) == 0 {
		return unknownDim
	}
	return x.shape[len(x.shape)-1]
}

func checkDim(what string, d dim, want int64) error {
	if d.Fixed() && d.Value != want {
		return fmt.Errorf("%s: input has size %d, the weights want %d", what, d.Value, want)
	}
	return nil
}

func (e *emitter) linear(l *layer, x value) (value, error) {
	w, err := e.mustParam(l, "weight")
	if err != nil {
		return x, err
	}
	if len(w.Shape) != 2 {
		return x, fmt.Errorf("module Linear %s: weight shape %v", l.prefix, w.Shape)
	}
	out, in := w.Shape[0], w.Shape[1]
	for _, chk := range []struct {
		k string
		v int64
	}{{"in_features", in}, {"out_features", out}} {
		if n, err := argInt(l.args, chk.k, chk.v); err != nil || n != chk.v {
			return x, fmt.Errorf("module Linear %s: %s=%d but weight is %v", l.prefix, chk.k, n, w.Shape)
		}
	}
	if err := checkDim("Linear "+l.prefix, lastDim(x), in); err != nil {
		return x, err
	}
	var bias string
	if b, ok := e.param(l, "bias"); ok {
		bias = e.init(l.prefix+"bias", b.Shape, b.Float32s())
	}
	if len(x.shape) == 2 {
		wn := e.init(l.prefix+"weight", w.Shape, w.Float32s())
		in := []string{x.name, wn}
		if bias != "" {
			in = append(in, bias)
		}
		x.name = e.b.Node("Gemm", in, onnx.Attr("transB", 1))
	} else {
		wt := transpose2(w.Float32s(), int(out), int(in))
		wn := e.init(l.prefix+"weight_t", []int64{in, out}, wt)
		x.name = e.b.Node("MatMul", []string{x.name, wn})
		if bias != "" {
			x.name = e.b.Node("Add", []string{x.name, bias})
		}
	}
	x.shape = append(append([]dim{}, x.shape[:len(x.shape)-1]...), onnx.Dim(out))
	return x, nil
}

func transpose2(a []float32, rows, cols int) []float32 {
	t := make([]float32, len(a))
	for r := 0; r < rows; r++ {
		for c := 0; c < cols; c++ {
			t[c*rows+r] = a[r*cols+c]
		}
	}
	return t
}

func (e *emitter) gelu(l *layer, x value) (value, error) {
	approx, err := argString(l.args, "approximate", "none")
	if err != nil {
		return x, err
	}
	half := e.scalar("gelu_half", 0.5)
	one := e.scalar("gelu_one", 1)
	var inner string
	switch approx {
	case "none":
		// 0.5·x·(1 + erf(x/√2))
		s := e.scalar("gelu_inv_sqrt2", float32(1/math.Sqrt2))
		inner = e.b.Node("Erf", []string{e.b.Node("Mul", []string{x.name, s})})
	case "tanh":
		// 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
		c := e.scalar("gelu_c", 0.044715)
		k := e.scalar("gelu_k", float32(math.Sqrt(2/math.Pi)))
		x3 := e.b.Node("Mul", []string{e.b.Node("Mul", []string{x.name, x.name}), x.name})
		sum := e.b.Node("Add", []string{x.name, e.b.Node("Mul", []string{x3, c})})
		inner = e.b.Node("Tanh", []string{e.b.Node("Mul", []string{sum, k})})
	default:
		return x, fmt.Errorf("GELU: approximate=%q (want none or tanh)", approx)
	}
	p := e.b.Node("Add", []string{inner, one})
	x.name = e.b.Node("Mul", []string{e.b.Node("Mul", []string{x.name, half}), p})
	return x, nil
}

func (e *emitter) softmax(l *layer, x value) (value, error) {
	rank := int64(len(x.shape))
	// PyTorch's legacy implicit dim (dim=None): 0 for rank 0, 1 and 3, else 1.
	def := int64(1)
	if rank == 0 || rank == 1 || rank == 3 {
		def = 0
	}
	d, err := argInt(l.args, "dim", def)
	if err != nil {
		return x, err
	}
	if d < -rank || d >= rank {
		return x, fmt.Errorf("module Softmax: dim %d out of range for rank %d", d, rank)
	}
	x.name = e.b.Node("Softmax", []string{x.name}, onnx.Attr("axis", d))
	return x, nil
}

func (e *emitter) flatten(l *layer, x value) (value, error) {
	rank := int64(len(x.shape))
	s, err := argInt(l.args, "start_dim", 1)
	if err != nil {
		return x, err
	}
	en, err := argInt(l.args, "end_dim", -1)
	if err != nil {
		return x, err
	}
	if s < 0 {
		s += rank
	}
	if en < 0 {
		en += rank
	}
	if s < 0 || en >= rank || s > en {
		return x, fmt.Errorf("module Flatten: start_dim/end_dim out of range for input rank %d", rank)
	}
	if s == en {
		return x, nil
	}
	prod := int64(1)
	for _, d := range x.shape[s : en+1] {
		if !d.Fixed() {
			prod = -1
			break
		}
		prod *= d.Value
	}
	if s == 1 && en == rank-1 && x.batchAxis == 0 {
		x.name = e.b.Node("Flatten", []string{x.name}, onnx.Attr("axis", int64(1)))
	} else {
		// Reshape with 0 (keep) for leading dims, -1 for the merged ones,
		// and the fixed trailing dims; needs the trailing dims known.
		target := make([]int64, 0, rank)
		for i := int64(0); i < s; i++ {
			target = append(target, 0)
		}
		target = append(target, -1)
		for _, d := range x.shape[en+1:] {
			if !d.Fixed() {
				return x, fmt.Errorf("module Flatten: dims after end_dim must have known sizes")
			}
			target = append(target, d.Value)
		}
		shp := e.initInts("flatten_shape", []int64{int64(len(target))}, target)
		x.name = e.b.Node("Reshape", []string{x.name, shp})
	}
	nd := unknownDim
	if prod >= 0 {
		nd = onnx.Dim(prod)
	}
	shape := append(append(append([]dim{}, x.shape[:s]...), nd), x.shape[en+1:]...)
	x.shape = shape
	return x, nil
}

func (e *emitter) batchNorm(l *layer, x value) (value, error) {
	track, err := argBool(l.args, "track_running_stats", true)
	if err != nil {
		return x, err
	}
	mean, okM := e.param(l, "running_mean")
	variance, okV := e.param(l, "running_var")
	if !track || !okM || !okV {
		return x, fmt.Errorf("BatchNorm1d %s: no running statistics (track_running_stats=False uses batch statistics even in eval mode, which a served model cannot)", l.prefix)
	}
	e.param(l, "num_batches_tracked")
	c := mean.NumElements()
	if len(x.shape) < 2 {
		return x, fmt.Errorf("BatchNorm1d: input rank %d, want 2 or 3", len(x.shape))
	}
	if err := checkDim("BatchNorm1d "+l.prefix, x.shape[1], c); err != nil {
		return x, err
	}
	eps, err := argFloat(l.args, "eps", 1e-5)
	if err != nil {
		return x, err
	}
	scale := ones(int(c))
	shift := make([]float32, c)
	if w, ok := e.param(l, "weight"); ok {
		scale = w.Float32s()
	}
	if b, ok := e.param(l, "bias"); ok {
		shift = b.Float32s()
	}
	in := []string{x.name,
		e.init(l.prefix+"weight", []int64{c}, scale),
		e.init(l.prefix+"bias", []int64{c}, shift),
		e.init(l.prefix+"running_mean", []int64{c}, mean.Float32s()),
		e.init(l.prefix+"running_var", []int64{c}, variance.Float32s()),
	}
	x.name = e.b.Node("BatchNormalization", in, onnx.Attr("epsilon", eps))
	return x, nil
}

func ones(n int) []float32 {
	o := make([]float32, n)
	for i := range o {
		o[i] = 1
	}
	return o
}

func (e *emitter) layerNorm(l *layer, x value) (value, error) {
	w, hasW := e.param(l, "weight")
	b, hasB := e.param(l, "bias")
	ns, err := argInts(l.args, "normalized_shape")
	if err != nil {
		return x, err
	}
	if ns == nil {
		if !hasW {
			return x, fmt.Errorf("LayerNorm %s: normalized_shape unknown (no weight and none given)", l.prefix)
		}
		ns = w.Shape
	}
	if len(ns) > len(x.shape) {
		return x, fmt.Errorf("LayerNorm: normalized_shape %v longer than the input rank %d", ns, len(x.shape))
	}
	n := int64(1)
	for i, d := range ns {
		n *= d
		if err := checkDim("LayerNorm "+l.prefix, x.shape[len(x.shape)-len(ns)+i], d); err != nil {
			return x, err
		}
	}
	eps, err := argFloat(l.args, "eps", 1e-5)
	if err != nil {
		return x, err
	}
	scale, shift := ones(int(n)), make([]float32, n)
	if hasW {
		scale = w.Float32s()
	}
	if hasB {
		shift = b.Float32s()
	}
	wn := e.init(l.prefix+"weight", ns, scale)
	bn := e.init(l.prefix+"bias", ns, shift)
	first := int64(len(x.shape) - len(ns))
	if e.opset >= 17 {
		x.name = e.b.Node("LayerNormalization", []string{x.name, wn, bn},
			onnx.Attr("axis", first), onnx.Attr("epsilon", eps))
		return x, nil
	}
	axes := make([]int64, len(ns))
	for i := range axes {
		axes[i] = first + int64(i)
	}
	mean := e.b.Node("ReduceMean", []string{x.name}, onnx.Attr("axes", axes), onnx.Attr("keepdims", int64(1)))
	d := e.b.Node("Sub", []string{x.name, mean})
	v := e.b.Node("ReduceMean", []string{e.b.Node("Mul", []string{d, d})}, onnx.Attr("axes", axes), onnx.Attr("keepdims", int64(1)))
	std := e.b.Node("Sqrt", []string{e.b.Node("Add", []string{v, e.scalar("ln_eps", float32(eps))})})
	y := e.b.Node("Div", []string{d, std})
	x.name = e.b.Node("Add", []string{e.b.Node("Mul", []string{y, wn}), bn})
	return x, nil
}

func (e *emitter) conv1d(l *layer, x value) (value, error) {
	w, err := e.mustParam(l, "weight")
	if err != nil {
		return x, err
	}
	if len(w.Shape) != 3 || len(x.shape) != 3 {
		return x, fmt.Errorf("Conv1d %s: weight %v, input rank %d (want 3 and 3)", l.prefix, w.Shape, len(x.shape))
	}
	groups, err := argInt(l.args, "groups", 1)
	if err != nil {
		return x, err
	}
	if err := checkDim("Conv1d "+l.prefix, x.shape[1], w.Shape[1]*groups); err != nil {
		return x, err
	}
	mode, err := argString(l.args, "padding_mode", "zeros")
	if err != nil || mode != "zeros" {
		return x, fmt.Errorf("Conv1d: padding_mode %q not supported (only zeros)", mode)
	}
	k := w.Shape[2]
	stride, err := argInt(l.args, "stride", 1)
	if err != nil {
		return x, err
	}
	dil, err := argInt(l.args, "dilation", 1)
	if err != nil {
		return x, err
	}
	var padL, padR int64
	switch p := l.args["padding"].(type) {
	case string:
		switch p {
		case "valid":
		case "same":
			total := dil * (k - 1)
			padL, padR = total/2, total-total/2
		default:
			return x, fmt.Errorf("Conv1d: padding %q", p)
		}
	default:
		pv, err := argInt(l.args, "padding", 0)
		if err != nil {
			return x, err
		}
		padL, padR = pv, pv
	}
	if ks, err := argInt(l.args, "kernel_size", k); err != nil || ks != k {
		return x, fmt.Errorf("Conv1d %s: kernel_size=%d but weight is %v", l.prefix, ks, w.Shape)
	}
	in := []string{x.name, e.init(l.prefix+"weight", w.Shape, w.Float32s())}
	if b, ok := e.param(l, "bias"); ok {
		in = append(in, e.init(l.prefix+"bias", b.Shape, b.Float32s()))
	}
	x.name = e.b.Node("Conv", in,
		onnx.Attr("kernel_shape", []int64{k}), onnx.Attr("strides", []int64{stride}),
		onnx.Attr("pads", []int64{padL, padR}), onnx.Attr("dilations", []int64{dil}),
		onnx.Attr("group", groups))
	length := unknownDim
	if L := x.shape[2]; L.Fixed() {
		length = onnx.Dim((L.Value+padL+padR-dil*(k-1)-1)/stride + 1)
	}
	x.shape = []dim{x.shape[0], onnx.Dim(w.Shape[0]), length}
	return x, nil
}

// Gate orders: PyTorch stores LSTM gates as (i, f, g, o) and GRU gates as
// (r, z, n); ONNX wants (i, o, f, c) and (z, r, h). gateOrder[k] is the
// PyTorch block that goes to ONNX block k.
var gateOrder = map[string][]int{"LSTM": {0, 3, 1, 2}, "GRU": {1, 0, 2}}

// reorderGates permutes the gate blocks (of rows) of a [G*H, cols] matrix
// or a [G*H] vector.
func reorderGates(a []float32, order []int, h, cols int) []float32 {
	out := make([]float32, 0, len(a))
	for _, g := range order {
		out = append(out, a[g*h*cols:(g+1)*h*cols]...)
	}
	return out
}

func (e *emitter) recurrent(l *layer, x value) (value, error) {
	typ := l.typ
	gates := len(gateOrder[typ])
	order := gateOrder[typ]
	if p, err := argInt(l.args, "proj_size", 0); err != nil || p != 0 {
		return x, fmt.Errorf("%s: proj_size is not supported", typ)
	}
	w0, err := e.mustParam(l, "weight_ih_l0")
	if err != nil {
		return x, err
	}
	hh0, err := e.mustParam(l, "weight_hh_l0")
	if err != nil {
		return x, err
	}
	if len(w0.Shape) != 2 || len(hh0.Shape) != 2 || w0.Shape[0]%int64(gates) != 0 {
		return x, fmt.Errorf("%s %s: weight shapes %v, %v", typ, l.prefix, w0.Shape, hh0.Shape)
	}
	hidden := hh0.Shape[1]
	if w0.Shape[0] != int64(gates)*hidden {
		return x, fmt.Errorf("%s %s: weight_ih_l0 %v does not match hidden size %d", typ, l.prefix, w0.Shape, hidden)
	}
	numLayers := int64(0)
	for {
		if _, ok := e.params[fmt.Sprintf("%sweight_ih_l%d", l.prefix, numLayers)]; !ok {
			break
		}
		numLayers++
	}
	_, bidir := e.params[l.prefix+"weight_ih_l0_reverse"]
	checks := []struct {
		k    string
		have int64
	}{{"hidden_size", hidden}, {"num_layers", numLayers}, {"input_size", w0.Shape[1]}}
	for _, c := range checks {
		if n, err := argInt(l.args, c.k, c.have); err != nil || n != c.have {
			return x, fmt.Errorf("%s %s: %s=%v but the weights say %d", typ, l.prefix, c.k, l.args[c.k], c.have)
		}
	}
	if b, err := argBool(l.args, "bidirectional", bidir); err != nil || b != bidir {
		return x, fmt.Errorf("%s %s: bidirectional=%v but the weights say %v", typ, l.prefix, l.args["bidirectional"], bidir)
	}
	batchFirst, err := argBool(l.args, "batch_first", false)
	if err != nil {
		return x, err
	}
	if len(x.shape) != 3 {
		return x, fmt.Errorf("%s: input rank %d, want 3 (unbatched input is not supported)", typ, len(x.shape))
	}
	if err := checkDim(typ+" "+l.prefix, x.shape[2], w0.Shape[1]); err != nil {
		return x, err
	}
	// Bring the input to time-major [T, N, F].
	switch {
	case x.timeMajor && batchFirst:
		// a batch-first recurrent output, still time-major in the graph
	case x.timeMajor:
		x = e.materialize(x)
	case batchFirst:
		x.name = e.b.Node("Transpose", []string{x.name}, onnx.Attr("perm", []int64{1, 0, 2}))
	}
	var batch, steps dim
	if batchFirst {
		batch, steps = x.shape[0], x.shape[1]
	} else {
		steps, batch = x.shape[0], x.shape[1]
	}
	dirs := []string{""}
	direction := "forward"
	if bidir {
		dirs = append(dirs, "_reverse")
		direction = "bidirectional"
	}
	h := int(hidden)
	cur := x.name
	for k := int64(0); k < numLayers; k++ {
		var W, R, B []float32
		var in int64
		for _, sfx := range dirs {
			name := func(s string) string { return fmt.Sprintf("%s_l%d%s", s, k, sfx) }
			wih, err := e.mustParam(l, name("weight_ih"))
			if err != nil {
				return x, err
			}
			whh, err := e.mustParam(l, name("weight_hh"))
			if err != nil {
				return x, err
			}
			if len(wih.Shape) != 2 || len(whh.Shape) != 2 {
				return x, fmt.Errorf("%s %s: layer %d weight shapes %v, %v", typ, l.prefix, k, wih.Shape, whh.Shape)
			}
			in = wih.Shape[1]
			if wih.Shape[0] != int64(gates*h) || whh.Shape[0] != int64(gates*h) || whh.Shape[1] != hidden {
				return x, fmt.Errorf("%s %s: layer %d weight shapes %v, %v", typ, l.prefix, k, wih.Shape, whh.Shape)
			}
			W = append(W, reorderGates(wih.Float32s(), order, h, int(in))...)
			R = append(R, reorderGates(whh.Float32s(), order, h, h)...)
			for _, bn := range []string{"bias_ih", "bias_hh"} {
				if b, ok := e.param(l, name(bn)); ok {
					if b.NumElements() != int64(gates*h) {
						return x, fmt.Errorf("%s %s: %s has shape %v, want [%d]", typ, l.prefix, name(bn), b.Shape, gates*h)
					}
					B = append(B, reorderGates(b.Float32s(), order, h, 1)...)
				} else {
					B = append(B, make([]float32, gates*h)...)
				}
			}
		}
		d := int64(len(dirs))
		g := int64(gates) * hidden
		pre := fmt.Sprintf("%sl%d_", l.prefix, k)
		inputs := []string{cur,
			e.init(pre+"W", []int64{d, g, in}, W),
			e.init(pre+"R", []int64{d, g, hidden}, R),
			e.init(pre+"B", []int64{d, 2 * g}, B),
		}
		attrs := []onnx.NodeOption{onnx.Attr("hidden_size", hidden), onnx.Attr("direction", direction)}
		if typ == "GRU" {
			attrs = append(attrs, onnx.Attr("linear_before_reset", int64(1)))
		}
		y := e.b.Node(typ, inputs, attrs...)
		// Y is [T, D, N, H]; make it [T, N, D*H] like PyTorch's output.
		if d == 1 {
			y = e.b.Node("Squeeze", []string{y, e.initInts("axis1", []int64{1}, []int64{1})})
		} else {
			y = e.b.Node("Transpose", []string{y}, onnx.Attr("perm", []int64{0, 2, 1, 3}))
			y = e.b.Node("Reshape", []string{y, e.initInts("merge_dirs", []int64{3}, []int64{0, 0, -1})})
		}
		cur = y
	}
	out := onnx.Dim(int64(len(dirs)) * hidden)
	x.name = cur
	x.seq = true
	if batchFirst {
		x.shape = []dim{batch, steps, out}
		x.timeMajor, x.seqAxis, x.batchAxis = true, 1, 0
	} else {
		x.shape = []dim{steps, batch, out}
		x.timeMajor, x.seqAxis, x.batchAxis = false, 0, 1
	}
	return x, nil
}

// unusedParams lists weights the conversion did not use (a spec that does
// not match the file).
func (e *emitter) unusedParams(names []string) []string {
	var out []string
	for _, n := range names {
		if !e.used[n] && !strings.HasSuffix(n, "num_batches_tracked") {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}
