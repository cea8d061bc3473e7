package onnx_test

import (
	"slices"
	"testing"

	"github.com/signalforge/signalforge/onnx"
	"github.com/signalforge/signalforge/onnx/onnxtest"
)

func TestExternalTensors(t *testing.T) {
	m := onnxtest.MustMLP(1, 3, 2).Model
	if got := onnx.ExternalTensors(m); len(got) != 0 {
		t.Fatalf("self-contained model: ExternalTensors = %v", got)
	}
	if _, err := onnxtest.Externalize(m, "weights.bin"); err != nil {
		t.Fatal(err)
	}
	// A Constant node inside a subgraph (If branch) with external data is
	// found too.
	ext := onnx.TensorProto_EXTERNAL
	loc, key := "../other.bin", "location"
	sub := &onnx.GraphProto{Node: []*onnx.NodeProto{{OpType: strp("Constant"), Attribute: []*onnx.AttributeProto{{
		Name: strp("value"), T: &onnx.TensorProto{Name: strp("c"), DataLocation: &ext, ExternalData: []*onnx.StringStringEntryProto{{Key: &key, Value: &loc}}},
	}}}}}
	m.Graph.Node = append(m.Graph.Node, &onnx.NodeProto{OpType: strp("If"), Attribute: []*onnx.AttributeProto{{Name: strp("then_branch"), G: sub}}})
	var got []string
	for _, e := range onnx.ExternalTensors(m) {
		got = append(got, e.Name+"@"+e.Location)
	}
	want := []string{"fc0.weight@weights.bin", "fc0.bias@weights.bin", "c@../other.bin"}
	if !slices.Equal(got, want) {
		t.Errorf("ExternalTensors = %q, want %q", got, want)
	}
}
