package quantize

import (
	"fmt"
	"math"
	"slices"

	"github.com/signalforge/signalforge/onnx"
)

// rewriteStatic inserts QuantizeLinear → DequantizeLinear pairs (QDQ
// format) on the activations of each selected node and stores its weights as
// int8 behind a DequantizeLinear (per channel along the output-channel axis
// when configured) and its Gemm/Conv bias as int32 with scale
// x_scale·w_scale, which is what ONNX Runtime's QDQ fusions look for.
func (q *Quantizer) rewriteStatic(gr *graph, sel []*onnx.NodeProto, ranges map[string]Range, res *Result) error {
	if q.cfg.PerChannel && gr.opset("") < 13 {
		return fmt.Errorf("%w: per-channel QDQ needs opset 13 or later, model has %d", ErrModel, gr.opset(""))
	}
	isSel := map[*onnx.NodeProto]bool{}
	for _, n := range sel {
		isSel[n] = true
	}
	dq := map[string]string{}      // activation → its dequantized name
	scales := map[string]float32{} // activation → scale
	var out []*onnx.NodeProto
	drop := map[*onnx.NodeProto]bool{} // Relus folded into a QuantizeLinear
	for _, n := range gr.g.Node {
		if drop[n] {
			continue
		}
		if !isSel[n] {
			out = append(out, n)
			continue
		}
		acts := activationInputs(gr, n)
		for _, a := range acts {
			if _, ok := dq[a]; ok {
				continue
			}
			r, ok := ranges[a]
			if !ok {
				return fmt.Errorf("%w: no calibrated range for %q", ErrData, a)
			}
			s, zpName, scaleName := q.activationParams(gr, a, r)
			scales[a] = s
			qn, dn := gr.unique(a+"_quantized"), gr.unique(a+"_dequantized")
			out = append(out,
				node("QuantizeLinear", gr.unique(a+"_QuantizeLinear"), []string{a, scaleName, zpName}, []string{qn}),
				node("DequantizeLinear", gr.unique(a+"_DequantizeLinear"), []string{qn, scaleName, zpName}, []string{dn}))
			dq[a] = dn
		}
		for i, in := range n.Input {
			if d, ok := dq[in]; ok && (i < 2 || n.GetOpType() == "MatMul") {
				n.Input[i] = d
			}
		}
		if gr.inits[n.Input[1]] != nil {
			nodes, err := q.staticWeights(gr, n, scales[acts[0]])
			if err != nil {
				return err
			}
			out = append(out, nodes...)
		}
		out = append(out, n)
		qn := QuantizedNode{Name: n.GetName(), OpType: n.GetOpType(), Output: n.Output[0], Activations: acts}
		if dst, relu := q.convOutput(gr, n); dst != "" {
			// Conv → Q → DQ (→ consumers): ONNX Runtime fuses
			// DQ → Conv → Q into QLinearConv. A following Relu is
			// folded: uint8 with zero point 0 clamps at 0 itself.
			r, ok := ranges[dst]
			if !ok {
				return fmt.Errorf("%w: no calibrated range for %q", ErrData, dst)
			}
			s, zpName, scaleName := q.activationParams(gr, dst, r)
			f := gr.unique(n.Output[0] + "_float")
			n.Output[0] = f
			qt := gr.unique(dst + "_quantized")
			out = append(out,
				node("QuantizeLinear", gr.unique(dst+"_QuantizeLinear"), []string{f, scaleName, zpName}, []string{qt}),
				node("DequantizeLinear", gr.unique(dst+"_DequantizeLinear"), []string{qt, scaleName, zpName}, []string{dst}))
			if relu != nil {
				drop[relu] = true
			}
			dq[dst], scales[dst] = dst, s // already dequantized for later nodes
			qn.Output = dst
		}
		res.Nodes = append(res.Nodes, qn)
	}
	gr.g.Node = out
	return nil
}

// activationParams creates the scale and zero-point initializers of an
// activation with range r.
func (q *Quantizer) activationParams(gr *graph, a string, r Range) (scale float32, zpName, scaleName string) {
	scaleName = gr.unique(a + "_scale")
	zpName = gr.unique(a + "_zero_point")
	if q.cfg.Symmetric {
		m := max(-r.Min, r.Max)
		scale = m / 127
		if scale == 0 {
			scale = 1
		}
		gr.addInit(floatTensor(scaleName, nil, []float32{scale}))
		gr.addInit(int8Tensor(zpName, nil, []int8{0}))
		return scale, zpName, scaleName
	}
	scale = (r.Max - r.Min) / 255
	if scale == 0 {
		scale = 1
	}
	zp := uint8(clamp(math.Round(float64(-r.Min/scale)), 0, 255))
	gr.addInit(floatTensor(scaleName, nil, []float32{scale}))
	gr.addInit(uint8Tensor(zpName, nil, []uint8{zp}))
	return scale, zpName, scaleName
}

// staticWeights replaces n's weight (and bias) initializers by int8 (int32)
// initializers behind DequantizeLinear nodes, rewiring n's inputs.
func (q *Quantizer) staticWeights(gr *graph, n *onnx.NodeProto, xScale float32) ([]*onnx.NodeProto, error) {
	wname := n.Input[1]
	wt := gr.inits[wname]
	w, err := floats(wt)
	if err != nil {
		return nil, err
	}
	axis := 0
	switch n.GetOpType() {
	case "MatMul":
		axis = 1
	case "Gemm":
		if getAttrInt(n, "transB", 0) == 0 {
			axis = 1
		}
	}
	qw, ws := quantizeWeights(w, wt.Dims, q.cfg.PerChannel, axis)
	sdims := []int64{}
	var attrs []*onnx.AttributeProto
	if q.cfg.PerChannel {
		sdims = []int64{wt.Dims[axis]}
		attrs = append(attrs, attrInt("axis", int64(axis)))
	}
	wq := gr.addInit(int8Tensor(gr.unique(wname+"_quantized"), wt.Dims, qw))
	wsn := gr.addInit(floatTensor(gr.unique(wname+"_scale"), sdims, ws))
	wzp := gr.addInit(int8Tensor(gr.unique(wname+"_zero_point"), sdims, make([]int8, len(ws))))
	wd := gr.unique(wname + "_dequantized")
	nodes := []*onnx.NodeProto{node("DequantizeLinear", gr.unique(wname+"_DequantizeLinear"), []string{wq, wsn, wzp}, []string{wd}, attrs...)}
	n.Input[1] = wd
	gr.removeInitIfUnused(wname)

	// Bias: int32 with scale x_scale·w_scale[c], zero point 0.
	if n.GetOpType() == "MatMul" || len(n.Input) < 3 || n.Input[2] == "" {
		return nodes, nil
	}
	bname := n.Input[2]
	bt := gr.inits[bname]
	nOut := wt.Dims[axis]
	if !q.cfg.PerChannel {
		nOut = wt.Dims[0]
		if n.GetOpType() == "Gemm" && getAttrInt(n, "transB", 0) == 0 {
			nOut = wt.Dims[1]
		}
	}
	if bt == nil || len(bt.Dims) != 1 || bt.Dims[0] != nOut {
		return nodes, nil // leave an unusual bias in fp32
	}
	b, err := floats(bt)
	if err != nil {
		return nil, err
	}
	bs := make([]float32, len(ws))
	for i := range ws {
		bs[i] = xScale * ws[i]
	}
	bq := make([]int32, len(b))
	for i, v := range b {
		s := bs[0]
		if q.cfg.PerChannel {
			s = bs[i]
		}
		bq[i] = int32(clamp(math.RoundToEven(float64(v/s)), math.MinInt32, math.MaxInt32))
	}
	bqn := gr.addInit(int32Tensor(gr.unique(bname+"_quantized"), bt.Dims, bq))
	bsn := gr.addInit(floatTensor(gr.unique(bname+"_scale"), sdims, bs))
	bd := gr.unique(bname + "_dequantized")
	// No zero point: it defaults to 0, and an int32 one per channel would
	// cost as much as the bias itself.
	nodes = append(nodes, node("DequantizeLinear", gr.unique(bname+"_DequantizeLinear"), []string{bqn, bsn}, []string{bd}, attrs...))
	n.Input[2] = bd
	gr.removeInitIfUnused(bname)
	return nodes, nil
}

// convOutput says whether a selected Conv's output gets a QDQ pair, and on
// which tensor: the output of a sole following Relu (which is then folded
// away; only with asymmetric activations, whose zero point 0 clamps like a
// Relu), else the Conv's own output. It returns "" for other ops.
func (q *Quantizer) convOutput(gr *graph, n *onnx.NodeProto) (dst string, relu *onnx.NodeProto) {
	if n.GetOpType() != "Conv" {
		return "", nil
	}
	out := n.Output[0]
	if q.cfg.Symmetric || gr.consumers(out) != 1 {
		return out, nil
	}
	for _, c := range gr.g.Node {
		if slices.Contains(c.Input, out) {
			if c.GetOpType() == "Relu" && c.GetDomain() == "" {
				return c.Output[0], c
			}
			break
		}
	}
	return out, nil
}
