package onnx_test

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/signalforge/signalforge/onnx"
	"github.com/signalforge/signalforge/tensor"
)

func TestDescribeBackendLSTM(t *testing.T) {
	m, err := onnx.Load(filepath.Join(nodeTestData, "test_lstm_defaults", "model.onnx"))
	if err != nil {
		t.Fatal(err)
	}
	info := onnx.Describe(m)
	if info.IRVersion != 7 || info.Opset() != 14 || info.ProducerName != "backend-test" {
		t.Errorf("ir %d opset %d producer %q; want 7, 14, backend-test", info.IRVersion, info.Opset(), info.ProducerName)
	}
	if info.Nodes != 1 || info.OpTypes["LSTM"] != 1 {
		t.Errorf("nodes %d, ops %v; want one LSTM", info.Nodes, info.OpTypes)
	}
	var names []string
	for _, in := range info.Inputs {
		names = append(names, in.Name+in.DimsString())
	}
	if got := strings.Join(names, " "); got != "X[1,3,2] W[1,12,2] R[1,12,3]" {
		t.Errorf("inputs = %s", got)
	}
}

// Old exporters list initializers among the graph inputs; Describe shows
// only the real inputs and counts the weights.
func TestDescribePyTorchConvertedLinear(t *testing.T) {
	m, err := onnx.Load(filepath.Join(nodeTestData, "..", "pytorch-converted", "test_Linear", "model.onnx"))
	if err != nil {
		t.Fatal(err)
	}
	info := onnx.Describe(m)
	if len(info.Inputs) != 1 || info.Inputs[0].DimsString() != "[4,10]" {
		t.Errorf("inputs = %+v, want one [4,10]", info.Inputs)
	}
	// nn.Linear(10, 8): 80 weights + 8 biases.
	if info.ParamCount != 88 || info.ParamBytes != 352 || len(info.Initializers) != 2 {
		t.Errorf("params %d (%d bytes, %d initializers), want 88 (352, 2)", info.ParamCount, info.ParamBytes, len(info.Initializers))
	}
}

func smallModel(t *testing.T) *onnx.ModelProto {
	t.Helper()
	b := onnx.NewBuilder("demo", onnx.Opset(17), onnx.Domain("com.microsoft", 1))
	x := b.Input("x", tensor.Float32, onnx.Dim("batch"), onnx.Dim(2))
	w := b.Initializer("w", tensor.Must(tensor.Shape{3, 2}, []float32{1, 2, 3, 4, 5, 6}))
	q := b.Initializer("q", tensor.Must(tensor.Shape{3}, []int8{1, 2, 3}))
	h := b.Node("Gemm", []string{x, w}, onnx.Attr("transB", 1))
	h = b.Node("Relu", []string{h})
	h = b.Node("Relu", []string{h})
	h = b.Node("Fancy", []string{h, q}, onnx.InDomain("com.microsoft"), onnx.Outputs("y"))
	b.Output(h, tensor.Float32, onnx.Dim("batch"), onnx.Dimension{Value: -1})
	b.SetMetadata("signalforge.features", "rsi_14,macd")
	m, err := b.Build()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestDescribeRendering(t *testing.T) {
	got := onnx.Describe(smallModel(t)).String()
	want := `graph:       demo
producer:    signalforge
ir version:  8
opsets:      ai.onnx 17, com.microsoft 1
parameters:  9 (27 B in 2 initializers)

IO      NAME  TYPE     SHAPE
input   x     float32  [batch,2]
output  y     float32  [batch,?]

OP                   COUNT
Relu                 2
Gemm                 1
com.microsoft.Fancy  1
total                4

METADATA              VALUE
signalforge.features  rsi_14,macd

INITIALIZER  TYPE     SHAPE  BYTES
w            float32  [3,2]  24 B
q            int8     [3]    3 B
`
	if got != want {
		t.Errorf("rendering:\n%s\nwant:\n%s", got, want)
	}
}

func TestDescribeJSON(t *testing.T) {
	data, err := json.Marshal(onnx.Describe(smallModel(t)))
	if err != nil {
		t.Fatal(err)
	}
	var back onnx.Info
	if err := json.Unmarshal(data, &back); err != nil {
		t.Fatal(err)
	}
	in := back.Inputs[0]
	if in.Name != "x" || in.Type != "float32" || len(in.Dims) != 2 || in.Dims[0].Param != "batch" || in.Dims[1].Value != 2 {
		t.Errorf("input after JSON = %+v", in)
	}
	if !in.Shape().Equal(tensor.Shape{-1, 2}) {
		t.Errorf("Shape() = %v, want [-1,2]", in.Shape())
	}
	if back.Metadata["signalforge.features"] != "rsi_14,macd" || back.OpTypes["Relu"] != 2 {
		t.Errorf("metadata %v, ops %v", back.Metadata, back.OpTypes)
	}
}

func TestFormatBytes(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 1536: "1.5 KiB", 5 << 20: "5.0 MiB", 3 << 30: "3.0 GiB"} {
		if got := onnx.FormatBytes(n); got != want {
			t.Errorf("FormatBytes(%d) = %q, want %q", n, got, want)
		}
	}
}
