package quantize

import (
	"fmt"

	"google.golang.org/protobuf/proto"

	"github.com/signalforge/signalforge/onnx"
)

// rewriteDynamic replaces each selected node with its dynamic int8 form.
//
// MatMul/Gemm become
//
//	DynamicQuantizeLinear(X) → x_q, x_scale, x_zp
//	MatMulInteger(x_q, W_q, x_zp, W_zp) → Cast(float) → Mul(x_scale·W_scale) [→ Add(bias)]
//
// which ONNX Runtime's optimizer fuses into DynamicQuantizeMatMul (or
// MatMulIntegerToFloat); W_q is int8 [K, N], symmetric, per tensor or per
// output column. LSTM becomes com.microsoft DynamicQuantizeLSTM with W and R
// quantized and transposed to [dirs, in, 4·hidden] as that kernel expects.
func (q *Quantizer) rewriteDynamic(gr *graph, sel []*onnx.NodeProto, res *Result) error {
	repl := map[*onnx.NodeProto][]*onnx.NodeProto{}
	for _, n := range sel {
		var nodes []*onnx.NodeProto
		var err error
		if n.GetOpType() == "LSTM" {
			nodes, err = q.dynamicLSTM(gr, n)
		} else {
			nodes, err = q.dynamicMatMul(gr, n)
		}
		if err != nil {
			return err
		}
		repl[n] = nodes
		res.Nodes = append(res.Nodes, QuantizedNode{Name: n.GetName(), OpType: n.GetOpType(), Output: n.Output[0], Activations: []string{n.Input[0]}})
	}
	var out []*onnx.NodeProto
	for _, n := range gr.g.Node {
		if r, ok := repl[n]; ok {
			out = append(out, r...)
		} else {
			out = append(out, n)
		}
	}
	gr.g.Node = out
	for _, n := range sel {
		gr.removeInitIfUnused(n.Input[1])
		if n.GetOpType() == "LSTM" {
			gr.removeInitIfUnused(n.Input[2])
		}
	}
	return nil
}

func (q *Quantizer) dynamicMatMul(gr *graph, n *onnx.NodeProto) ([]*onnx.NodeProto, error) {
	wt := gr.inits[n.Input[1]]
	w, err := floats(wt)
	if err != nil {
		return nil, err
	}
	k, nn := int(wt.Dims[0]), int(wt.Dims[1])
	if n.GetOpType() == "Gemm" && getAttrInt(n, "transB", 0) == 1 {
		w = transpose2(w, k, nn) // [N,K] → [K,N]
		k, nn = nn, k
	}
	// Per-channel: one scale per output column (axis 1 of [K, N]).
	qw, scales := quantizeWeights(w, []int64{int64(k), int64(nn)}, q.cfg.PerChannel, 1)
	base := n.GetName()
	wq := gr.addInit(int8Tensor(gr.unique(n.Input[1]+"_quantized"), []int64{int64(k), int64(nn)}, qw))
	sdims := []int64{}
	if q.cfg.PerChannel {
		sdims = []int64{int64(nn)}
	}
	ws := gr.addInit(floatTensor(gr.unique(n.Input[1]+"_scale"), sdims, scales))
	// The weights' zero point is 0 (symmetric). MatMulInteger needs one
	// to type B as int8; a per-column one (all zeros) would keep ONNX
	// Runtime off its fast prepacked path, so it is always a scalar.
	wzp := gr.addInit(int8Tensor(gr.unique(n.Input[1]+"_zero_point"), nil, []int8{0}))

	xq, xs, xzp := gr.unique(base+"_x_quantized"), gr.unique(base+"_x_scale"), gr.unique(base+"_x_zero_point")
	mmi, mmf, sc := gr.unique(base+"_matmul_int32"), gr.unique(base+"_matmul_float"), gr.unique(base+"_scale")
	out := n.Output[0]
	hasBias := n.GetOpType() == "Gemm" && len(n.Input) > 2 && n.Input[2] != ""
	mulOut := out
	if hasBias {
		mulOut = gr.unique(base + "_nobias")
	}
	nodes := []*onnx.NodeProto{
		node("DynamicQuantizeLinear", gr.unique(base+"_quant"), []string{n.Input[0]}, []string{xq, xs, xzp}),
		node("MatMulInteger", gr.unique(base+"_MatMulInteger"), []string{xq, wq, xzp, wzp}, []string{mmi}),
		node("Cast", gr.unique(base+"_cast"), []string{mmi}, []string{mmf}, attrInt("to", int64(onnx.TensorProto_FLOAT))),
		node("Mul", gr.unique(base+"_scale_mul"), []string{xs, ws}, []string{sc}),
		node("Mul", gr.unique(base+"_output_mul"), []string{mmf, sc}, []string{mulOut}),
	}
	if hasBias {
		nodes = append(nodes, node("Add", gr.unique(base+"_bias_add"), []string{mulOut, n.Input[2]}, []string{out}))
	}
	return nodes, nil
}

func (q *Quantizer) dynamicLSTM(gr *graph, n *onnx.NodeProto) ([]*onnx.NodeProto, error) {
	quant := func(name string) (wq, scale, zp string, err error) {
		t := gr.inits[name]
		if len(t.Dims) != 3 {
			return "", "", "", fmt.Errorf("%w: LSTM weight %q is not 3-D", ErrModel, name)
		}
		w, err := floats(t)
		if err != nil {
			return "", "", "", err
		}
		dirs, rows, cols := int(t.Dims[0]), int(t.Dims[1]), int(t.Dims[2])
		// Channels are the 4·hidden gate rows of each direction.
		qw, scales := quantizeWeights(w, []int64{int64(dirs * rows), int64(cols)}, q.cfg.PerChannel, 0)
		if !q.cfg.PerChannel {
			// The kernel wants one scale per direction.
			scales = repeat(scales[0], dirs)
		}
		// [dirs, 4h, in] → [dirs, in, 4h].
		tq := make([]int8, len(qw))
		for d := range dirs {
			for r := range rows {
				for c := range cols {
					tq[d*rows*cols+c*rows+r] = qw[d*rows*cols+r*cols+c]
				}
			}
		}
		sdims := []int64{int64(dirs)}
		if q.cfg.PerChannel {
			sdims = []int64{int64(dirs), int64(rows)}
		}
		wq = gr.addInit(int8Tensor(gr.unique(name+"_quantized"), []int64{int64(dirs), int64(cols), int64(rows)}, tq))
		scale = gr.addInit(floatTensor(gr.unique(name+"_scale"), sdims, scales))
		zp = gr.addInit(int8Tensor(gr.unique(name+"_zero_point"), sdims, make([]int8, len(scales))))
		return wq, scale, zp, nil
	}
	wq, ws, wzp, err := quant(n.Input[1])
	if err != nil {
		return nil, err
	}
	rq, rs, rzp, err := quant(n.Input[2])
	if err != nil {
		return nil, err
	}
	in := []string{n.Input[0], wq, rq}
	for i := 3; i < 8; i++ {
		if i < len(n.Input) {
			in = append(in, n.Input[i])
		} else {
			in = append(in, "")
		}
	}
	in = append(in, ws, wzp, rs, rzp)
	gr.requireOpset("com.microsoft", 1)
	nq := node("DynamicQuantizeLSTM", n.GetName(), in, n.Output)
	nq.Domain = proto.String("com.microsoft")
	for _, a := range n.Attribute {
		if a.GetName() != "layout" {
			nq.Attribute = append(nq.Attribute, a)
		}
	}
	return []*onnx.NodeProto{nq}, nil
}

func repeat(v float32, n int) []float32 {
	s := make([]float32, n)
	for i := range s {
		s[i] = v
	}
	return s
}
