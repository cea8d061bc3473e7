package onnx

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"google.golang.org/protobuf/proto"

	"github.com/signalforge/signalforge/tensor"
)

// ParseTensor decodes a serialized TensorProto (the format of the ONNX
// backend test files input_0.pb, output_0.pb, ...).
func ParseTensor(data []byte) (*TensorProto, error) {
	if len(data) > MaxModelSize {
		return nil, fmt.Errorf("%w: tensor of %d bytes", ErrTooLarge, len(data))
	}
	tp := new(TensorProto)
	if err := proto.Unmarshal(data, tp); err != nil {
		return nil, fmt.Errorf("onnx: not a TensorProto: %w", err)
	}
	if tp.DataType == nil {
		return nil, errors.New("onnx: not a TensorProto: no data_type")
	}
	return tp, nil
}

// NamedTensor is a tensor with the name it has in a model or test file.
type NamedTensor struct {
	Name   string
	Tensor tensor.Tensor
}

// LoadTensor reads a TensorProto file and converts it with ToTensor.
func LoadTensor(path string) (NamedTensor, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return NamedTensor{}, fmt.Errorf("onnx: %w", err)
	}
	tp, err := ParseTensor(data)
	if err != nil {
		return NamedTensor{}, fmt.Errorf("%s: %w", path, err)
	}
	t, err := ToTensor(tp)
	if err != nil {
		return NamedTensor{}, fmt.Errorf("%s: %w", path, err)
	}
	return NamedTensor{Name: tp.GetName(), Tensor: t}, nil
}

// LoadTestDataSet reads an ONNX backend test data set, a directory such as
// /usr/share/libonnx-testdata/data/node/test_gemm_default/test_data_set_0
// holding input_0.pb, input_1.pb, ... and output_0.pb, ... in numeric
// order. Names may be empty in older files; then the position in the
// model's input or output list is what counts.
func LoadTestDataSet(dir string) (inputs, outputs []NamedTensor, err error) {
	read := func(prefix string) ([]NamedTensor, error) {
		var out []NamedTensor
		for i := 0; ; i++ {
			path := filepath.Join(dir, fmt.Sprintf("%s_%d.pb", prefix, i))
			if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
				return out, nil
			}
			nt, err := LoadTensor(path)
			if err != nil {
				return nil, err
			}
			out = append(out, nt)
		}
	}
	if inputs, err = read("input"); err != nil {
		return nil, nil, err
	}
	if outputs, err = read("output"); err != nil {
		return nil, nil, err
	}
	if len(inputs) == 0 && len(outputs) == 0 {
		return nil, nil, fmt.Errorf("onnx: %s: no input_N.pb or output_N.pb files", dir)
	}
	return inputs, outputs, nil
}
