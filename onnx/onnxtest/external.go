package onnxtest

import (
	"fmt"
	"strconv"

	"github.com/signalforge/signalforge/onnx"
)

// Externalize moves the raw data of every initializer of m into one
// external data file, as onnx.save(..., save_as_external_data=True) does:
// each tensor gets data_location EXTERNAL and external_data entries
// location, offset and length. It returns the file's contents, to be
// written at location relative to the model (ONNX Runtime resolves it
// against the model file's folder, or the working directory when the
// model comes from memory).
func Externalize(m *onnx.ModelProto, location string) ([]byte, error) {
	var blob []byte
	ext := onnx.TensorProto_EXTERNAL
	for _, t := range m.GetGraph().GetInitializer() {
		if t.RawData == nil {
			return nil, fmt.Errorf("onnxtest: initializer %q has no raw_data to externalize", t.GetName())
		}
		entry := func(k, v string) *onnx.StringStringEntryProto {
			return &onnx.StringStringEntryProto{Key: &k, Value: &v}
		}
		t.ExternalData = []*onnx.StringStringEntryProto{
			entry("location", location),
			entry("offset", strconv.Itoa(len(blob))),
			entry("length", strconv.Itoa(len(t.RawData))),
		}
		blob = append(blob, t.RawData...)
		t.RawData = nil
		t.DataLocation = &ext
	}
	return blob, nil
}
