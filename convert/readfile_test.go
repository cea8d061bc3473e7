package convert_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/signalforge/signalforge/convert"
	"github.com/signalforge/signalforge/onnx"
)

// Inputs that are not regular PyTorch files are refused before anything is
// read: /dev/zero used to be read by ConvertFile until the process was
// OOM-killed, and a FIFO would block every reader, PyTorch included.
func TestRefusesNonRegularFiles(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "model.pt")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty.pt")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	// A Python that would fail the test if it were ever started.
	bridge := &convert.Bridge{Python: "/bin/false"}
	ctx := context.Background()
	for _, c := range []struct{ path, want string }{
		{"/dev/zero", "/dev/zero: not a regular file"},
		{fifo, fifo + ": not a regular file"},
		{dir, dir + ": is a directory"},
		{empty, empty + ": is empty"},
	} {
		check := func(what string, err error) {
			t.Helper()
			if !errors.Is(err, onnx.ErrFileRefused) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("%s(%s): error %v; want %q matching onnx.ErrFileRefused", what, c.path, err, c.want)
			}
		}
		_, err := convert.ConvertFile(c.path, convert.Options{})
		check("ConvertFile", err)
		_, err = convert.LoadFile(c.path, convert.LoadOptions{})
		check("LoadFile", err)
		_, err = bridge.Reference(ctx, c.path, nil, [][]convert.RefTensor{{{Shape: []int64{1, 1}, Data: []float64{0}}}})
		check("Bridge.Reference", err)
		_, err = bridge.Export(ctx, c.path, []int64{1, 1}, 0, convert.Options{})
		check("Bridge.Export", err)
		_, err = convert.ReadSpecFile(c.path)
		check("ReadSpecFile", err)
		_, err = convert.ReadReferenceFile(c.path)
		check("ReadReferenceFile", err)
	}
}

// A zero sequence length used to reach PyTorch as a zero-sized axis and come
// back as its RuntimeError.
func TestBenchInputsValidates(t *testing.T) {
	for _, c := range []struct {
		name    string
		shape   []int64
		batches []int
		seqLen  int
		want    string
	}{
		{"zero seq-len", []int64{-1, -1, 4}, []int{1}, 0, "sequence length 0"},
		{"negative seq-len", []int64{-1, -1, 4}, []int{1}, -3, "sequence length -3"},
		{"zero batch", []int64{-1, 4}, []int{0}, 8, "batch size 0"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := convert.BenchInputs("input", c.shape, 0, c.batches, c.seqLen)
			checkContains(t, err, []string{c.want, "want at least 1"})
		})
	}
	// seq-len does not matter without a dynamic non-batch axis.
	cases, err := convert.BenchInputs("input", []int64{-1, 4}, 0, []int{2}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := cases[0].Inputs[0].Shape; len(got) != 2 || got[0] != 2 || got[1] != 4 {
		t.Errorf("shape %v, want [2 4]", got)
	}
}
