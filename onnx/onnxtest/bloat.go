package onnxtest

import (
	"github.com/signalforge/signalforge/onnx"
	"github.com/signalforge/signalforge/tensor"
)

// BloatFeatures are the feature names Bloat's model lists in its metadata.
var BloatFeatures = []string{"a", "b", "c", "d"}

// Bloat returns a model whose declared inputs and outputs are small —
// x [batch, 4] float32 in, y [batch, 1] out — but whose intermediate is
// [batch, width]: x summed over its features is Expanded to width columns
// and summed again. One run at batch b allocates 4·width·b bytes inside
// the engine (width 1<<26: 256 MiB at batch 1, 8 GiB at batch 32), which
// no check of the declared tensors can see. Never run it with a large
// width in a process without a memory limit.
func Bloat(width int64) ([]byte, error) {
	b := onnx.NewBuilder("bloat", onnx.Opset(17))
	x := b.Input("x", tensor.Float32, onnx.Dim("batch"), onnx.Dim(4))
	axes := b.Initializer("axes", tensor.Must(tensor.Shape{1}, []int64{1}))
	shape := b.Initializer("shape", tensor.Must(tensor.Shape{2}, []int64{1, width}))
	s := b.Node("ReduceSum", []string{x, axes}, onnx.Attr("keepdims", 1))
	wide := b.Node("Expand", []string{s, shape})
	y := b.Node("ReduceSum", []string{wide, axes}, onnx.Attr("keepdims", 1), onnx.Outputs("y"))
	b.Output(y, tensor.Float32, onnx.Dim("batch"), onnx.Dim(1))
	b.SetMetadata("signalforge.features", "a,b,c,d")
	m, err := b.Build()
	if err != nil {
		return nil, err
	}
	return onnx.Marshal(m)
}

// HugeInput returns a model with one input declared x [batch, rows, 4]
// (summed over the middle axis to y [batch, 4]; features a, b, c, d): with
// rows 1e8 one warm-up run at batch 32 needs 51.2 GB for the input alone,
// which the check of the declared tensors refuses before anything is
// allocated.
func HugeInput(rows int64) ([]byte, error) {
	b := onnx.NewBuilder("huge", onnx.Opset(17))
	x := b.Input("x", tensor.Float32, onnx.Dim("batch"), onnx.Dim(rows), onnx.Dim(4))
	axes := b.Initializer("axes", tensor.Must(tensor.Shape{1}, []int64{1}))
	y := b.Node("ReduceSum", []string{x, axes}, onnx.Attr("keepdims", 0), onnx.Outputs("y"))
	b.Output(y, tensor.Float32, onnx.Dim("batch"), onnx.Dim(4))
	b.SetMetadata("signalforge.features", "a,b,c,d")
	m, err := b.Build()
	if err != nil {
		return nil, err
	}
	return onnx.Marshal(m)
}
