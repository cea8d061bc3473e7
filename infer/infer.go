// Package infer defines the inference engine interfaces that the rest of
// SignalForge Serve is written against, plus the named-feature Predictor that
// turns rows of named market features (rsi_14, macd, …) into model inputs.
//
// Engines live in sub-packages (infer/ort for ONNX Runtime); this package has
// no cgo. Every engine must pass the conformance suite in infer/infertest.
//
//	eng, _ := ort.New(ort.Config{})
//	sess, _ := eng.LoadFile(ctx, "model.onnx", infer.Options{WarmupBatchSizes: []int{1, 32}})
//	p, _ := infer.NewPredictor(sess, infer.PredictorConfig{})
//	preds, err := p.Predict(ctx, []infer.Row{{"rsi_14": {65}, "macd": {0.5}}})
//	var fe *infer.FeatureError
//	if errors.As(err, &fe) { … } // fe.Code "missing_feature", message "row 0: missing feature: macd"
//
// Besides the interfaces: CheckInputs (engine-independent input checks with
// one clear message), Warmup, BatchAxis (which axis of an IO is the dynamic
// batch axis), and Measure/RandomInputs, the timing loop of `signalforge
// bench`.
package infer

import (
	"context"
	"errors"

	"github.com/signalforge/signalforge/tensor"
)

// FeaturesMetadataKey is the ONNX metadata_props key under which a model
// lists its ordered feature names, comma-separated.
const FeaturesMetadataKey = "signalforge.features"

// Engine loads models into sessions.
type Engine interface {
	// Name identifies the engine ("onnxruntime").
	Name() string
	// LoadFile loads a model from a file.
	LoadFile(ctx context.Context, path string, opts Options) (Session, error)
	// LoadBytes loads a model from its serialized bytes.
	LoadBytes(ctx context.Context, model []byte, opts Options) (Session, error)
	// Close releases the engine, closing any session still open (after
	// their running calls return). It is safe to call more than once.
	Close() error
}

// Session is one loaded model. Run is safe for concurrent use.
type Session interface {
	// Inputs describes the model inputs in the order Run expects them.
	Inputs() []IOInfo
	// Outputs describes the model outputs in the order Run returns them.
	Outputs() []IOInfo
	// Metadata returns the model's custom metadata (ONNX metadata_props).
	Metadata() map[string]string
	// Run executes the model. A cancelled or expired ctx stops a running
	// inference and Run returns ctx.Err().
	Run(ctx context.Context, inputs []tensor.Tensor) ([]tensor.Tensor, error)
	// Close frees the session. It is safe to call more than once.
	Close() error
}

// IOInfo describes one model input or output.
type IOInfo struct {
	Name  string
	DType tensor.DType
	// Shape has -1 for a dynamic dimension. It is nil when the model does
	// not declare the rank (a scalar has an empty, non-nil Shape).
	Shape tensor.Shape
	// DimNames holds the symbolic name of each dimension ("" if none).
	DimNames []string
	// BatchAxis is the index of the dynamic batch axis, or -1 if the
	// model has a fixed batch size. SignalForge models use axis 0; see
	// the BatchAxis function for how engines pick it.
	BatchAxis int
}

// GraphOptLevel selects the engine's graph optimizations.
type GraphOptLevel int

// Graph optimization levels. The zero value means "all", the fastest.
const (
	OptAll GraphOptLevel = iota
	OptDisabled
	OptBasic
	OptExtended
)

// Options configure a session. The zero value is a good default.
type Options struct {
	// IntraOpThreads is the number of threads one Run may use. If zero, 1:
	// on small models concurrent single-threaded runs beat multi-threaded
	// ones (measured on 2 cores).
	IntraOpThreads int
	// InterOpThreads is the number of threads for parallel graph branches.
	// If zero, 1.
	InterOpThreads int
	// GraphOptimization is the optimization level. If zero, OptAll.
	GraphOptimization GraphOptLevel
	// OptimizedModelPath, if set, is where the engine writes the model
	// after graph optimization (to inspect fusions).
	OptimizedModelPath string
	// WarmupBatchSizes lists batch sizes to run once with zero inputs at load
	// time, so the first real request does not pay for lazy initialisation.
	// Empty means no warm-up. A failing warm-up fails the load. See Warmup.
	WarmupBatchSizes []int
	// MaxWarmupBytes caps the memory of the input and output tensors of one
	// warm-up run, as the model declares them; a model that needs more
	// fails to load with a *MemoryError (see CheckWarmupMemory). If zero,
	// DefaultMaxWarmupBytes (1 GiB); negative means no limit.
	MaxWarmupBytes int64
}

// Errors shared by engines.
var (
	// ErrClosed is returned by Run on a closed session.
	ErrClosed = errors.New("infer: session closed")
	// ErrInput is wrapped by errors about the caller's input tensors.
	ErrInput = errors.New("infer: invalid input")
)
