package onnx_test

import (
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/signalforge/signalforge/onnx"
	"github.com/signalforge/signalforge/tensor"
)

// Build a one-layer model over two named market features, save it, load it
// back and inspect it.
func ExampleBuilder() {
	b := onnx.NewBuilder("signal", onnx.Opset(17))
	x := b.Input("x", tensor.Float32, onnx.Dim("batch"), onnx.Dim(2))
	w := b.Initializer("fc.weight", tensor.Must(tensor.Shape{1, 2}, []float32{0.5, -1}))
	bias := b.Initializer("fc.bias", tensor.Must(tensor.Shape{1}, []float32{0.1}))
	h := b.Node("Gemm", []string{x, w, bias}, onnx.Attr("transB", 1))
	y := b.Node("Sigmoid", []string{h}, onnx.Outputs("y"))
	b.Output(y, tensor.Float32, onnx.Dim("batch"), onnx.Dim(1))
	b.SetMetadata("signalforge.features", "rsi_14,macd")
	m, err := b.Build()
	if err != nil {
		log.Fatal(err)
	}

	dir, err := os.MkdirTemp("", "example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "signal.onnx")
	if err := onnx.Save(path, m); err != nil {
		log.Fatal(err)
	}
	loaded, err := onnx.Load(path)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Print(onnx.Describe(loaded))
	// Output:
	// graph:       signal
	// producer:    signalforge
	// ir version:  8
	// opsets:      ai.onnx 17
	// parameters:  3 (12 B in 2 initializers)
	//
	// IO      NAME  TYPE     SHAPE
	// input   x     float32  [batch,2]
	// output  y     float32  [batch,1]
	//
	// OP       COUNT
	// Gemm     1
	// Sigmoid  1
	// total    2
	//
	// METADATA              VALUE
	// signalforge.features  rsi_14,macd
	//
	// INITIALIZER  TYPE     SHAPE  BYTES
	// fc.weight    float32  [1,2]  8 B
	// fc.bias      float32  [1]    4 B
}

// Read an ONNX backend test input, as the conformance suite does.
func ExampleLoadTensor() {
	nt, err := onnx.LoadTensor("/usr/share/libonnx-testdata/data/node/test_matmulinteger/test_data_set_0/input_0.pb")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(nt.Name, nt.Tensor.DType(), nt.Tensor.Shape(), tensor.Data[uint8](nt.Tensor))
	// Output:
	// A uint8 [4,3] [11 7 3 10 6 2 9 5 1 8 4 0]
}
