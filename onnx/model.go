package onnx

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"google.golang.org/protobuf/proto"
)

// MaxModelSize is the largest serialized model Parse and Load accept:
// protobuf's 2 GiB message limit. Models with bigger weights keep them as
// external data, which this package does not load.
const MaxModelSize = 2<<30 - 1

// Errors returned when reading models. They are wrapped with detail.
var (
	ErrNotONNX  = errors.New("onnx: not an ONNX model")
	ErrTooLarge = errors.New("onnx: model too large")
)

// Parse decodes a serialized ONNX model. Input that is not an ONNX model
// (not protobuf, or protobuf without an ir_version and a graph) gives an
// error wrapping ErrNotONNX; a few common mix-ups (a PyTorch .pt archive,
// JSON) are named. Parse does not run Check: models from other tools are
// accepted as they are.
func Parse(data []byte) (*ModelProto, error) {
	if len(data) > MaxModelSize {
		return nil, fmt.Errorf("%w: %d bytes, the limit is %d", ErrTooLarge, len(data), MaxModelSize)
	}
	if len(data) == 0 {
		return nil, fmt.Errorf("%w: empty input", ErrNotONNX)
	}
	if hint := sniff(data); hint != "" {
		return nil, fmt.Errorf("%w: %s", ErrNotONNX, hint)
	}
	m := new(ModelProto)
	if err := proto.Unmarshal(data, m); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNotONNX, err)
	}
	switch {
	case m.IrVersion == nil:
		return nil, fmt.Errorf("%w: no ir_version field", ErrNotONNX)
	case m.GetIrVersion() <= 0:
		return nil, fmt.Errorf("%w: ir_version %d", ErrNotONNX, m.GetIrVersion())
	case m.Graph == nil:
		return nil, fmt.Errorf("%w: no graph", ErrNotONNX)
	}
	return m, nil
}

// sniff recognizes inputs people mistake for ONNX files.
func sniff(data []byte) string {
	switch {
	case bytes.HasPrefix(data, []byte("PK\x03\x04")):
		return "input is a zip archive (a PyTorch .pt file? convert it to ONNX first)"
	case len(data) > 1 && data[0] == 0x80 && data[1] >= 2 && data[1] <= 5:
		return "input is a Python pickle (a PyTorch checkpoint? convert it to ONNX first)"
	case bytes.HasPrefix(bytes.TrimLeft(data, " \t\r\n"), []byte("{")):
		return "input looks like JSON"
	}
	return ""
}

// Read reads a model from r, refusing more than limit bytes (if limit is
// zero or above MaxModelSize, MaxModelSize). It suits uploads: a client
// cannot make it buffer more than limit bytes.
func Read(r io.Reader, limit int64) (*ModelProto, error) {
	if limit <= 0 || limit > MaxModelSize {
		limit = MaxModelSize
	}
	data, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, fmt.Errorf("onnx: read model: %w", err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%w: more than %d bytes", ErrTooLarge, limit)
	}
	return Parse(data)
}

// Load reads and parses the model file at path.
func Load(path string) (*ModelProto, error) {
	b, err := ReadFileLimited(path, MaxModelSize)
	if err != nil {
		return nil, fmt.Errorf("onnx: %w", err)
	}
	m, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return m, nil
}

// Marshal serializes m. The output is deterministic for a given model
// (map-free message, fields in order), so saving the same model twice
// gives identical bytes and identical checksums.
func Marshal(m *ModelProto) ([]byte, error) {
	data, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("onnx: marshal: %w", err)
	}
	if len(data) > MaxModelSize {
		return nil, fmt.Errorf("%w: %d bytes, the limit is %d", ErrTooLarge, len(data), MaxModelSize)
	}
	return data, nil
}

// Save writes m to path atomically: to a temporary file in the same
// directory, synced, then renamed over path. Readers never see a partial
// model, and a failed Save leaves an existing file untouched. The file
// mode is 0644.
func Save(path string, m *ModelProto) error {
	data, err := Marshal(m)
	if err != nil {
		return err
	}
	return WriteFileAtomic(path, data)
}

// WriteFileAtomic writes data to path through a synced temporary file in
// the same directory and a rename, with mode 0644.
func WriteFileAtomic(path string, data []byte) (err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("onnx: save: %w", err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if _, err = f.Write(data); err != nil {
		return fmt.Errorf("onnx: save %s: %w", path, err)
	}
	if err = f.Chmod(0o644); err != nil {
		return fmt.Errorf("onnx: save %s: %w", path, err)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("onnx: save %s: %w", path, err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("onnx: save %s: %w", path, err)
	}
	if err = os.Rename(tmp, path); err != nil {
		return fmt.Errorf("onnx: save %s: %w", path, err)
	}
	return nil
}
