package onnx

// onnx.pb.go is generated from the onnx.proto that Debian's libonnx-dev
// ships (ONNX 1.12). Regenerate with `go generate ./onnx`; the output must
// not change (CI checks it byte-for-byte).
//go:generate sh -c "protoc -I/usr/include --plugin=protoc-gen-go=$(go tool -n protoc-gen-go) --go_out=. --go_opt=paths=source_relative --go_opt=Monnx/onnx.proto=github.com/signalforge/signalforge/onnx onnx/onnx.proto && mv onnx/onnx.pb.go onnx.pb.go && rmdir onnx"
