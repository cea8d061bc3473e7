// Package onnx reads, writes, inspects and builds ONNX models in Go.
//
// The protobuf types (ModelProto, GraphProto, TensorProto, ...) are
// generated from the onnx.proto that Debian's libonnx-dev ships (ONNX 1.12,
// see gen.go). On top of them this package has:
//
//   - Load, Parse, Read, Save (atomic) and Marshal (deterministic);
//   - Describe, a plain summary of a model (IO with symbolic dims, opsets,
//     initializer bytes, op histogram, metadata_props) that renders as the
//     text of `signalforge inspect`;
//   - ToTensor and FromTensor between TensorProto and tensor.Tensor;
//   - Builder, to write models as straight-line Go, and graph-editing
//     helpers (FindInitializer, ReplaceNode, ReplaceUses, SortTopological,
//     Check) for rewriters such as the quantizer.
//
// Building a model:
//
//	b := onnx.NewBuilder("mlp", onnx.Opset(17))
//	x := b.Input("x", tensor.Float32, onnx.Dim("batch"), onnx.Dim(2))
//	w := b.Initializer("w", tensor.Must(tensor.Shape{1, 2}, []float32{0.5, -1}))
//	y := b.Node("Gemm", []string{x, w}, onnx.Attr("transB", 1), onnx.Outputs("y"))
//	b.Output(y, tensor.Float32, onnx.Dim("batch"), onnx.Dim(1))
//	b.SetMetadata("signalforge.features", "rsi_14,macd")
//	m, err := b.Build()
//
// Package onnx/onnxtest makes random-weight MLPs for tests and demos.
package onnx
