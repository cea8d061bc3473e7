package onnx_test

import (
	"testing"

	"github.com/signalforge/signalforge/onnx"
	"github.com/signalforge/signalforge/onnx/onnxtest"
)

func TestCloneIsDeep(t *testing.T) {
	m := onnxtest.MustMLP(1, 3, 2).Model
	c := onnx.Clone(m)
	c.Graph.Node[0].OpType = strp("MatMul")
	onnx.SetMetadata(c, "signalforge.features", "a,b,c")
	if m.Graph.Node[0].GetOpType() != "Gemm" || onnx.Metadata(m)["signalforge.features"] != "f0,f1,f2" {
		t.Error("editing the clone changed the original")
	}
}

func TestMetadata(t *testing.T) {
	m := onnxtest.MustMLP(1, 2, 1).Model
	if onnx.Metadata(&onnx.ModelProto{}) != nil {
		t.Error("Metadata of a model without props must be nil")
	}
	m.MetadataProps = append(m.MetadataProps,
		&onnx.StringStringEntryProto{Key: strp("k"), Value: strp("1")},
		&onnx.StringStringEntryProto{Key: strp("k"), Value: strp("2")})
	if got := onnx.Metadata(m)["k"]; got != "2" {
		t.Errorf("repeated key: got %q, want the last value", got)
	}
	onnx.SetMetadata(m, "k", "3")
	onnx.SetMetadata(m, "new", "x")
	md := onnx.Metadata(m)
	if len(m.MetadataProps) != 3 || md["k"] != "3" || md["new"] != "x" || md["signalforge.features"] != "f0,f1" {
		t.Errorf("after SetMetadata: %d props, %v", len(m.MetadataProps), md)
	}
}

func TestAttrAccessors(t *testing.T) {
	m := onnxtest.MustMLP(1, 2, 1).Model
	gemm := m.Graph.Node[0]
	if onnx.AttrInt(gemm, "transB", 0) != 1 || onnx.AttrInt(gemm, "transA", 0) != 0 {
		t.Error("AttrInt")
	}
	if onnx.AttrFloat(gemm, "alpha", 1) != 1 {
		t.Error("AttrFloat default")
	}
	if err := onnx.SetAttr(gemm, "alpha", 0.5); err != nil {
		t.Fatal(err)
	}
	if err := onnx.SetAttr(gemm, "transB", 0); err != nil {
		t.Fatal(err)
	}
	if onnx.AttrFloat(gemm, "alpha", 1) != 0.5 || onnx.AttrInt(gemm, "transB", 1) != 0 || len(gemm.Attribute) != 2 {
		t.Errorf("after SetAttr: %v", gemm.Attribute)
	}
	if err := onnx.SetAttr(gemm, "perm", []int{1, 0}); err != nil {
		t.Fatal(err)
	}
	if got := onnx.AttrInts(gemm, "perm"); len(got) != 2 || got[0] != 1 {
		t.Errorf("AttrInts = %v", got)
	}
	if err := onnx.SetAttr(gemm, "mode", "linear"); err != nil {
		t.Fatal(err)
	}
	if onnx.AttrString(gemm, "mode", "") != "linear" || onnx.AttrString(gemm, "none", "d") != "d" {
		t.Error("AttrString")
	}
	// A wrongly typed attribute gives the default, not a zero value.
	if onnx.AttrInt(gemm, "alpha", 7) != 7 {
		t.Error("AttrInt of a float attribute must return the default")
	}
	if err := onnx.SetAttr(gemm, "bad", map[string]int{}); err == nil {
		t.Error("SetAttr accepted a map")
	}
}
