package onnx_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/signalforge/signalforge/onnx"
	"github.com/signalforge/signalforge/onnx/onnxtest"
)

// FuzzParse feeds arbitrary bytes to Parse and everything that looks at a
// parsed model. Nothing may panic; errors must be the documented ones; a
// parsed model must re-serialize stably; and the memory used must stay
// proportional to the input: a few bytes claiming a huge tensor must not
// allocate it.
//
//	go test ./onnx -run '^$' -fuzz FuzzParse -fuzztime 1m
func FuzzParse(f *testing.F) {
	mlp, err := onnxtest.MustMLP(1, 4, 3, 2).Bytes()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(mlp)
	for _, test := range []string{"test_lstm_defaults", "test_quantizelinear", "test_matmulinteger", "test_gemm_default_no_bias", "test_constant"} {
		data, err := os.ReadFile(filepath.Join(nodeTestData, test, "model.onnx"))
		if err != nil {
			f.Fatalf("%v (libonnx-testdata is required: run `make deps-test`)", err)
		}
		f.Add(data)
	}
	f.Add([]byte{})
	f.Add([]byte("PK\x03\x04"))
	f.Add([]byte{0x08, 0x07, 0x3a, 0x00})
	f.Fuzz(func(t *testing.T, data []byte) {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		m, err := onnx.Parse(data)
		if err != nil {
			if !errors.Is(err, onnx.ErrNotONNX) && !errors.Is(err, onnx.ErrTooLarge) {
				t.Fatalf("Parse error %v wraps neither ErrNotONNX nor ErrTooLarge", err)
			}
			return
		}
		_ = onnx.Describe(m).String()
		_ = onnx.Check(m)
		g := m.GetGraph()
		for _, tp := range g.GetInitializer() {
			_, _ = onnx.ToTensor(tp)
		}
		for _, nd := range g.GetNode() {
			for _, a := range nd.GetAttribute() {
				if a.GetT() != nil {
					_, _ = onnx.ToTensor(a.GetT())
				}
			}
		}
		runtime.ReadMemStats(&after)
		if used := after.TotalAlloc - before.TotalAlloc; used > 512*uint64(len(data))+1<<20 {
			t.Fatalf("%d input bytes made Parse, Describe and ToTensor allocate %d bytes", len(data), used)
		}
		_ = onnx.SortTopological(g)
		out, err := onnx.Marshal(m)
		if err != nil {
			t.Fatalf("Marshal of a parsed model: %v", err)
		}
		again, err := onnx.Parse(out)
		if err != nil {
			t.Fatalf("Parse of a re-serialized model: %v", err)
		}
		out2, err := onnx.Marshal(again)
		if err != nil || !bytes.Equal(out, out2) {
			t.Fatalf("re-serialization is not stable (err %v)", err)
		}
	})
}

// FuzzParseTensor does the same for the TensorProto files of the backend
// test data and for ToTensor.
//
//	go test ./onnx -run '^$' -fuzz FuzzParseTensor -fuzztime 1m
func FuzzParseTensor(f *testing.F) {
	for _, p := range []string{
		"test_gemm_default_no_bias/test_data_set_0/input_0.pb",
		"test_quantizelinear/test_data_set_0/input_1.pb",
		"test_matmulinteger/test_data_set_0/output_0.pb",
		"test_cast_FLOAT_to_STRING/test_data_set_0/output_0.pb",
		"test_gather_0/test_data_set_0/input_1.pb",
	} {
		data, err := os.ReadFile(filepath.Join(nodeTestData, p))
		if err != nil {
			f.Fatalf("%v (libonnx-testdata is required: run `make deps-test`)", err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		tp, err := onnx.ParseTensor(data)
		if err != nil {
			return
		}
		x, err := onnx.ToTensor(tp)
		runtime.ReadMemStats(&after)
		if used := after.TotalAlloc - before.TotalAlloc; used > 64*uint64(len(data))+1<<20 {
			t.Fatalf("%d input bytes made ParseTensor and ToTensor allocate %d bytes", len(data), used)
		}
		if err != nil {
			return
		}
		back, err := onnx.FromTensor(tp.GetName(), x)
		if err != nil {
			t.Fatalf("FromTensor of a decoded tensor: %v", err)
		}
		y, err := onnx.ToTensor(back)
		if err != nil || !y.Shape().Equal(x.Shape()) || y.DType() != x.DType() || !sameData(x.Raw(), y.Raw()) {
			t.Fatalf("re-encoding changed the tensor (err %v)", err)
		}
	})
}
