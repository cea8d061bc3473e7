package infertest

import (
	"math"
	"strings"
	"testing"

	"github.com/signalforge/signalforge/onnx"
	"github.com/signalforge/signalforge/tensor"
)

func TestCompare(t *testing.T) {
	f := func(v ...float32) tensor.Tensor { return tensor.Must(tensor.Shape{int64(len(v))}, v) }
	nan, inf := float32(math.NaN()), float32(math.Inf(1))
	for _, c := range []struct {
		got, want tensor.Tensor
		err       string
	}{
		{f(1, 2), f(1, 2), ""},
		{f(1.0005, 2), f(1, 2), ""},
		{f(1.01, 2), f(1, 2), "1 of 2 values differ beyond rtol 0.001, atol 1e-05; first at flat index 0: got 1.01, want 1"},
		{f(nan, inf), f(nan, inf), ""},
		{f(1, 2), f(nan, 2), "1 of 2 values differ"},
		{f(nan), f(1), "1 of 1 values differ"},
		{f(1, 2), f(1, inf), "1 of 2 values differ"},
		{f(1, 2, 3), f(1, 2), "shape [3], want [2]"},
		{tensor.Must(tensor.Shape{1}, []int64{1}), f(1), "dtype int64, want float32"},
		{tensor.Must(tensor.Shape{2}, []int32{1, 2}), tensor.Must(tensor.Shape{2}, []int32{1, 3}), "value at flat index 1: got 2, want 3"},
		{tensor.Must(tensor.Shape{1}, []uint8{7}), tensor.Must(tensor.Shape{1}, []uint8{7}), ""},
	} {
		err := Compare(c.got, c.want, 1e-3, 1e-5)
		switch {
		case c.err == "" && err != nil:
			t.Errorf("Compare(%v, %v) = %v", c.got.Raw(), c.want.Raw(), err)
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("Compare(%v, %v) = %v, want %q", c.got.Raw(), c.want.Raw(), err, c.err)
		}
	}
}

func TestAdaptWidensOutputs(t *testing.T) {
	g := &onnx.GraphProto{
		Input:  []*onnx.ValueInfoProto{onnx.ValueInfo("x", onnx.TensorProto_FLOAT, onnx.Dim(2))},
		Node:   []*onnx.NodeProto{{OpType: ptr("Cast"), Input: []string{"x"}, Output: []string{"y"}}},
		Output: []*onnx.ValueInfoProto{onnx.ValueInfo("y", onnx.TensorProto_INT16, onnx.Dim(2))},
	}
	notes, err := adapt(&onnx.ModelProto{Graph: g})
	if err != nil {
		t.Fatal(err)
	}
	if len(notes) != 1 || len(g.Node) != 2 || g.Node[1].GetOpType() != "Cast" || g.Node[1].GetOutput()[0] != "y" || g.Node[0].GetOutput()[0] == "y" {
		t.Fatalf("adapt: notes %q, nodes %v", notes, g.Node)
	}
	if et := elemType(g.Output[0]); et != onnx.TensorProto_INT64 {
		t.Errorf("output type %v, want INT64", et)
	}

	g.Input[0] = onnx.ValueInfo("x", onnx.TensorProto_DOUBLE, onnx.Dim(2))
	if _, err := adapt(&onnx.ModelProto{Graph: g}); err == nil || !strings.Contains(err.Error(), `input "x" is float64`) {
		t.Errorf("adapt with a float64 input = %v, want a skip naming it", err)
	}
}
