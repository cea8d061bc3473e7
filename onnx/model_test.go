package onnx_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/signalforge/signalforge/onnx"
	"github.com/signalforge/signalforge/onnx/onnxtest"
)

func TestSaveLoadRoundTrip(t *testing.T) {
	mlp := onnxtest.MustMLP(5, 10, 6, 3)
	path := filepath.Join(t.TempDir(), "m.onnx")
	if err := onnx.Save(path, mlp.Model); err != nil {
		t.Fatal(err)
	}
	got, err := onnx.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got, mlp.Model) {
		t.Error("loaded model differs from the saved one")
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o644 {
		t.Errorf("mode = %v, want 0644", st.Mode().Perm())
	}
	a, _ := onnx.Marshal(mlp.Model)
	b, _ := os.ReadFile(path)
	if !bytes.Equal(a, b) {
		t.Error("Save wrote different bytes than Marshal returns")
	}
}

func TestSaveIsAtomic(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "m.onnx")
	first := onnxtest.MustMLP(1, 4, 2).Model
	if err := onnx.Save(path, first); err != nil {
		t.Fatal(err)
	}
	// Overwriting replaces the file whole and leaves no temporary files.
	if err := onnx.Save(path, onnxtest.MustMLP(2, 4, 2).Model); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries after Save, want 1", len(entries))
	}
	// A failing Save (the target is a directory) leaves no temporary
	// file behind.
	if err := os.Mkdir(filepath.Join(dir, "sub.onnx"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := onnx.Save(filepath.Join(dir, "sub.onnx"), first); err == nil {
		t.Error("Save over a directory succeeded")
	}
	entries, _ = os.ReadDir(dir)
	if len(entries) != 2 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("after a failed Save the directory holds %v", names)
	}
	if err := onnx.Save(filepath.Join(dir, "missing", "m.onnx"), first); err == nil {
		t.Error("Save into a missing directory succeeded")
	}
}

func TestParseRejectsNonONNX(t *testing.T) {
	tensorFile, err := os.ReadFile(filepath.Join(nodeTestData, "test_gemm_default_no_bias", "test_data_set_0", "input_0.pb"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		data []byte
		want string
	}{
		{"empty", nil, "onnx: not an ONNX model: empty input"},
		{"zip", []byte("PK\x03\x04rest of a .pt file"), "onnx: not an ONNX model: input is a zip archive (a PyTorch .pt file? convert it to ONNX first)"},
		{"pickle", []byte("\x80\x02}q\x00."), "onnx: not an ONNX model: input is a Python pickle (a PyTorch checkpoint? convert it to ONNX first)"},
		{"json", []byte(` {"model": 1}`), "onnx: not an ONNX model: input looks like JSON"},
		{"garbage", []byte("\xff\xff\xff\xff"), "onnx: not an ONNX model: proto:"},
		{"valid proto without ir_version", []byte{0x12, 0x03, 'a', 'b', 'c'}, "onnx: not an ONNX model: no ir_version field"},
		{"ir_version only", []byte{0x08, 0x07}, "onnx: not an ONNX model: no graph"},
		{"a TensorProto file", tensorFile, "onnx: not an ONNX model"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := onnx.Parse(tc.data)
			if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
				t.Fatalf("error = %v, want prefix %q", err, tc.want)
			}
			if !errors.Is(err, onnx.ErrNotONNX) {
				t.Errorf("error does not wrap ErrNotONNX")
			}
		})
	}
}

func TestReadLimit(t *testing.T) {
	data, err := onnxtest.MustMLP(1, 10, 5).Bytes()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := onnx.Read(bytes.NewReader(data), int64(len(data))); err != nil {
		t.Errorf("Read at exactly the limit: %v", err)
	}
	_, err = onnx.Read(bytes.NewReader(data), int64(len(data)-1))
	if !errors.Is(err, onnx.ErrTooLarge) || !strings.Contains(err.Error(), "more than") {
		t.Errorf("Read over the limit: error = %v", err)
	}
}

func TestLoadErrors(t *testing.T) {
	_, err := onnx.Load(filepath.Join(t.TempDir(), "nope.onnx"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	path := filepath.Join(t.TempDir(), "model.pt")
	if err := os.WriteFile(path, []byte("PK\x03\x04..."), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = onnx.Load(path)
	if err == nil || !strings.HasPrefix(err.Error(), path+": onnx: not an ONNX model: input is a zip archive") {
		t.Errorf("zip file: error = %v", err)
	}
}

// Every model in the backend test data loads, survives Marshal/Parse
// unchanged, and describes without panicking.
func TestLoadBackendModels(t *testing.T) {
	paths, _ := filepath.Glob(filepath.Join(nodeTestData, "*", "model.onnx"))
	more, _ := filepath.Glob(filepath.Join(nodeTestData, "..", "pytorch-converted", "*", "model.onnx"))
	paths = append(paths, more...)
	if len(paths) < 500 {
		t.Fatalf("found %d backend test models; libonnx-testdata is required (run `make deps-test`)", len(paths))
	}
	for _, p := range paths {
		m, err := onnx.Load(p)
		if err != nil {
			t.Errorf("%s: %v", p, err)
			continue
		}
		data, err := onnx.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		again, err := onnx.Parse(data)
		if err != nil || !proto.Equal(m, again) {
			t.Errorf("%s: round trip failed: %v", p, err)
		}
		if info := onnx.Describe(m); info.Nodes == 0 || len(info.Outputs) == 0 {
			t.Errorf("%s: describe found %d nodes, %d outputs", p, info.Nodes, len(info.Outputs))
		}
	}
}
