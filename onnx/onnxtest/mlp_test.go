package onnxtest_test

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/signalforge/signalforge/onnx"
	"github.com/signalforge/signalforge/onnx/onnxtest"
	"github.com/signalforge/signalforge/tensor"
)

func TestMLPDeterministic(t *testing.T) {
	a, err := onnxtest.MustMLP(7, 100, 50, 10).Bytes()
	if err != nil {
		t.Fatal(err)
	}
	b, err := onnxtest.MustMLP(7, 100, 50, 10).Bytes()
	if err != nil {
		t.Fatal(err)
	}
	c, err := onnxtest.MustMLP(8, 100, 50, 10).Bytes()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Error("same seed gave different model bytes")
	}
	if bytes.Equal(a, c) {
		t.Error("different seeds gave identical model bytes")
	}
}

func TestMLPShapeAndMetadata(t *testing.T) {
	m, err := onnxtest.NewMLP(onnxtest.MLPConfig{Sizes: []int{3, 4, 2}, Features: []string{"rsi_14", "macd", "volume"}, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	info := onnx.Describe(m.Model)
	if got := info.Metadata[onnxtest.FeaturesKey]; got != "rsi_14,macd,volume" {
		t.Errorf("features metadata = %q", got)
	}
	if got := fmt.Sprint(info.Inputs[0].Dims); got != "[batch 3]" {
		t.Errorf("input dims = %s, want [batch 3]", got)
	}
	if got := fmt.Sprint(info.Outputs[0].Dims); got != "[batch 2]" {
		t.Errorf("output dims = %s, want [batch 2]", got)
	}
	if info.OpTypes["Gemm"] != 2 || info.OpTypes["Relu"] != 1 {
		t.Errorf("op histogram = %v, want 2 Gemm and 1 Relu", info.OpTypes)
	}
	// 3*4+4 + 4*2+2 = 26 float32 parameters.
	if info.ParamBytes != 26*4 {
		t.Errorf("param bytes = %d, want %d", info.ParamBytes, 26*4)
	}
}

func TestMLPForwardByHand(t *testing.T) {
	m := onnxtest.MustMLP(3, 2, 2, 1)
	w0, b0 := m.Weights[0].Float32s(), m.Biases[0].Float32s()
	w1, b1 := m.Weights[1].Float32s(), m.Biases[1].Float32s()
	x := []float32{0.5, -1}
	h0 := max(0, float64(b0[0])+0.5*float64(w0[0])-float64(w0[1]))
	h1 := max(0, float64(b0[1])+0.5*float64(w0[2])-float64(w0[3]))
	want := float32(float64(b1[0]) + h0*float64(w1[0]) + h1*float64(w1[1]))
	y, err := m.Forward(tensor.Must(tensor.Shape{1, 2}, x))
	if err != nil {
		t.Fatal(err)
	}
	if got := y.Float32s(); !y.Shape().Equal(tensor.Shape{1, 1}) || got[0] != want {
		t.Errorf("Forward = %v %v, want [1,1] [%v]", y.Shape(), got, want)
	}
	if _, err := m.Forward(tensor.Must(tensor.Shape{1, 3}, []float32{1, 2, 3})); err == nil {
		t.Error("Forward accepted a [1,3] input for a 2-input MLP")
	}
}

func TestMLPConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		cfg  onnxtest.MLPConfig
		want string
	}{
		{onnxtest.MLPConfig{Sizes: []int{4}}, "at least two sizes"},
		{onnxtest.MLPConfig{Sizes: []int{4, 0}}, "must be positive"},
		{onnxtest.MLPConfig{Sizes: []int{2, 1}, Features: []string{"a"}}, "1 feature names for 2 inputs"},
		{onnxtest.MLPConfig{Sizes: []int{2, 1}, Activation: "Gelu"}, `unsupported activation "Gelu"`},
	} {
		_, err := onnxtest.NewMLP(tc.cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewMLP(%+v) error = %v, want it to contain %q", tc.cfg, err, tc.want)
		}
	}
}

// The reference ONNX checker accepts the models, including full shape
// inference, for each activation.
func TestMLPPassesONNXChecker(t *testing.T) {
	for _, act := range []string{"Relu", "Tanh", "Sigmoid"} {
		path := onnxtest.WriteMLP(t, onnxtest.MLPConfig{Sizes: []int{16, 8, 8, 1}, Activation: act, Seed: 2})
		onnxtest.CheckModel(t, path)
	}
}
