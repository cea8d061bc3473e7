package ort

import (
	"testing"

	"github.com/signalforge/signalforge/onnx/onnxtest"
)

// FuzzReadModelInfo: model bytes come from users (uploads to the
// registry); decoding their IO must never panic.
func FuzzReadModelInfo(f *testing.F) {
	data, err := onnxtest.MustMLP(1, 3, 2).Bytes()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(data)
	f.Add([]byte{})
	f.Add([]byte("PK\x03\x04"))
	f.Fuzz(func(t *testing.T, b []byte) {
		info, err := readModelInfo(b)
		if err != nil {
			return
		}
		for _, io := range append(info.inputs, info.outputs...) {
			if io.Shape != nil && len(io.DimNames) != len(io.Shape) {
				t.Fatalf("%s: %d dim names for shape %v", io.Name, len(io.DimNames), io.Shape)
			}
			if io.BatchAxis >= len(io.Shape) {
				t.Fatalf("%s: batch axis %d for shape %v", io.Name, io.BatchAxis, io.Shape)
			}
		}
	})
}

func TestReadModelInfo(t *testing.T) {
	m := onnxtest.MustMLP(1, 3, 2)
	data, err := m.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	info, err := readModelInfo(data)
	if err != nil {
		t.Fatal(err)
	}
	// The weights are initializers, not inputs.
	if len(info.inputs) != 1 || info.inputs[0].Name != "x" || len(info.outputs) != 1 || info.outputs[0].Name != "y" {
		t.Fatalf("inputs %+v outputs %+v", info.inputs, info.outputs)
	}
	if got := info.meta["signalforge.features"]; got != "f0,f1,f2" {
		t.Errorf("features metadata %q", got)
	}
	for _, bad := range [][]byte{[]byte("garbage"), {0x0a, 0x00}} {
		if _, err := readModelInfo(bad); err == nil {
			t.Errorf("readModelInfo(%q) succeeded", bad)
		}
	}
}
