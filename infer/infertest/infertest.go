// Package infertest is the conformance suite every infer.Engine must pass.
//
// Run checks two things. Engine behaviour: loading from bytes and files, IO
// metadata with the batch axis, correct results against a Go reference,
// concurrent Run, cancellation before and during a run, Close twice, and
// typed errors for bad inputs. And numerical conformance: the ONNX backend
// node tests that Debian's libonnx-testdata ships, for every operator this
// product relies on, compared with tolerances. The node tests prove the
// engine's tensor conversion and IO wiring (inputs in the right order,
// outputs of the right dtype and shape), not ONNX Runtime's kernels.
//
//	func TestConformance(t *testing.T) {
//		eng, err := ort.New(ort.Config{})
//		if err != nil { t.Fatal(err) }
//		defer eng.Close()
//		infertest.Run(t, eng)
//	}
//
// A missing test data folder fails the suite: it never skips silently.
package infertest

import (
	"testing"

	"github.com/signalforge/signalforge/infer"
)

// DefaultDataDir is where Debian's libonnx-testdata installs the ONNX
// backend test data (`make test` installs the package).
const DefaultDataDir = "/usr/share/libonnx-testdata/data"

// Config adjusts the suite. The zero value runs everything.
type Config struct {
	// DataDir holds the ONNX backend test data (node/, pytorch-converted/).
	// If empty, DefaultDataDir.
	DataDir string
	// Unsupported lists backend tests (by folder name, "test_lstm_batchwise")
	// that the engine is known not to implement, with the reason. They are
	// skipped, counted and logged; a listed test that does not exist fails
	// the suite, so the list cannot rot.
	Unsupported map[string]string
}

// Run runs the whole suite against eng with the default Config.
func Run(t *testing.T, eng infer.Engine) { RunConfig(t, eng, Config{}) }

// RunConfig runs the whole suite against eng.
func RunConfig(t *testing.T, eng infer.Engine, cfg Config) {
	if cfg.DataDir == "" {
		cfg.DataDir = DefaultDataDir
	}
	t.Run("Behaviour", func(t *testing.T) { runBehaviour(t, eng) })
	t.Run("NodeTests", func(t *testing.T) { runNodeTests(t, eng, cfg) })
}
