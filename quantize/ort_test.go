package quantize_test

import (
	"testing"

	"github.com/signalforge/signalforge/infer"
	"github.com/signalforge/signalforge/infer/ort"
)

// newEngine returns the ONNX Runtime engine or fails the test loudly: ONNX
// Runtime is a required component (make test installs it). The quantize
// package itself takes any infer.Engine and has no cgo.
func newEngine(tb testing.TB) infer.Engine {
	tb.Helper()
	eng, err := ort.New(ort.Config{})
	if err != nil {
		tb.Fatalf("ONNX Runtime: %v (run scripts/deps.sh test)", err)
	}
	tb.Cleanup(func() { eng.Close() })
	return eng
}
