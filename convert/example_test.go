package convert_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"strings"

	"github.com/signalforge/signalforge/convert"
	"github.com/signalforge/signalforge/infer/ort"
)

// The seed converted with ONNXConverter(opset_version=14).convert(model,
// sample_input, "model.onnx", input_names, output_names, dynamic_axes).
// Here a trained LSTM forecaster's state dict plus a spec of its
// architecture becomes ONNX with a dynamic batch axis, without Python, and
// is verified against PyTorch's outputs in ONNX Runtime.
func ExampleConvertFile() {
	spec, err := convert.ReadSpec(strings.NewReader(`
layers:
  - {type: LSTM, param: rnn, batch_first: true}
  - {type: LastStep}
  - {type: Linear, param: head}
`))
	if err != nil {
		log.Fatal(err)
	}
	res, err := convert.ConvertFile("testdata/lstm.pt", convert.Options{
		Spec:       spec,
		Opset:      14,
		InputName:  "features",
		OutputName: "forecast",
		Features:   []string{"rsi_14", "macd", "volume", "return"},
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(res.Format, res.InputShape, "→", res.OutputShape)
	// err = onnx.Save("model.onnx", res.Model)

	eng, err := ort.New(ort.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer eng.Close()
	ref, err := convert.ReadReferenceFile("testdata/lstm.ref.json") // inputs and PyTorch's outputs
	if err != nil {
		log.Fatal(err)
	}
	rep, err := convert.Verify(context.Background(), eng, res.Bytes, ref, convert.VerifyOptions{})
	if err != nil {
		log.Fatal(err)
	}
	for _, c := range rep.Checks {
		fmt.Printf("batch %d: max abs error below 1e-6: %v\n", c.Batch, c.MaxAbs < 1e-6)
	}
	// Output:
	// state dict [-1 -1 4] → [-1 2]
	// batch 3: max abs error below 1e-6: true
	// batch 6: max abs error below 1e-6: true
}

// The seed's benchmark_comparison(model, onnx_path, input, iterations):
// PyTorch eager (timed inside a Python subprocess, one thread) against ONNX
// Runtime (one thread) on the same inputs, at several batch sizes. Needs
// Debian's PyTorch at /usr/bin/python3.
func ExampleBenchmark() {
	res, err := convert.ConvertFile("model.pt", convert.Options{})
	if err != nil {
		log.Fatal(err)
	}
	eng, err := ort.New(ort.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer eng.Close()
	rows, err := convert.Benchmark(context.Background(), eng, res, "model.pt", convert.BenchOptions{
		BatchSizes: []int{1, 8, 32},
		Iterations: 200,
	})
	if err != nil {
		log.Fatal(err)
	}
	convert.WriteBenchTable(os.Stdout, rows)
}
