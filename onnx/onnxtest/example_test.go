package onnxtest_test

import (
	"fmt"

	"github.com/signalforge/signalforge/onnx"
	"github.com/signalforge/signalforge/onnx/onnxtest"
)

// A deterministic 100-50-10 MLP with a dynamic batch axis, for a benchmark
// or a demo server; Forward gives the outputs an engine must reproduce.
func ExampleNewMLP() {
	m, err := onnxtest.NewMLP(onnxtest.MLPConfig{
		Sizes:    []int{3, 50, 10},
		Features: []string{"rsi_14", "macd", "volume"},
		Seed:     42,
	})
	if err != nil {
		panic(err)
	}
	info := onnx.Describe(m.Model)
	fmt.Println(info.Inputs[0].Name, info.Inputs[0].DimsString(), "->", info.Outputs[0].Name, info.Outputs[0].DimsString())
	fmt.Println("features:", info.Metadata[onnxtest.FeaturesKey])
	fmt.Println("ops:", info.OpTypes)

	x := m.RandomInput(4, 1)
	y, err := m.Forward(x)
	if err != nil {
		panic(err)
	}
	fmt.Println("forward:", x.Shape(), "->", y.Shape())
	// Output:
	// x [batch,3] -> y [batch,10]
	// features: rsi_14,macd,volume
	// ops: map[Gemm:2 Relu:1]
	// forward: [4,3] -> [4,10]
}
