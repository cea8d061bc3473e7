package manager

import (
	"context"
	"sync"

	"github.com/signalforge/signalforge/batch"
	"github.com/signalforge/signalforge/infer"
	"github.com/signalforge/signalforge/registry"
)

// Version is one loaded model version: a warmed session behind a batcher.
// Requests hold it between Manager.Acquire and Release; a version that
// stops serving is closed only when its last holder releases it, so a hot
// swap fails no request.
type Version struct {
	ref     registry.Ref
	sha256  string // the artifact loaded
	sess    infer.Session
	pred    *infer.Predictor // nil if the model is not a named-feature model
	predErr error            // why pred is nil
	// sortedFeatures are pred's feature names sorted, so that cache keys
	// of complete rows skip a sort per request.
	sortedFeatures []string
	batcher        *batch.Batcher

	mu      sync.Mutex // guards refs, retired
	refs    int
	retired bool
	idle    chan struct{} // closed when retired and refs reach 0
}

// Ref names the version.
func (v *Version) Ref() registry.Ref { return v.ref }

// Session is the version's ONNX Runtime session. Run it directly only for
// work that must not queue behind requests (the batcher is the usual way).
func (v *Version) Session() infer.Session { return v.sess }

// Batcher batches the version's requests into session runs.
func (v *Version) Batcher() *batch.Batcher { return v.batcher }

// Predictor encodes named features for the version and decodes its
// answers; it is nil if the model does not take named features
// (PredictorErr says why), and then only raw tensors reach it.
func (v *Version) Predictor() *infer.Predictor { return v.pred }

// PredictorErr is why Predictor is nil, or nil.
func (v *Version) PredictorErr() error { return v.predErr }

// SortedFeatures are the Predictor's feature names in sorted order (nil
// without a Predictor). The slice is shared: do not modify it.
func (v *Version) SortedFeatures() []string { return v.sortedFeatures }

// acquire takes a reference; it fails once the version is retired.
func (v *Version) acquire() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.retired {
		return false
	}
	v.refs++
	return true
}

// Release gives back what Manager.Acquire took. Call it once per
// successful Acquire, when the request no longer uses the version.
func (v *Version) Release() {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.refs--
	if v.retired && v.refs == 0 {
		close(v.idle)
	}
}

// retire stops new references, waits for the current ones (or ctx), then
// drains the batcher and closes the session.
func (v *Version) retire(ctx context.Context) error {
	v.mu.Lock()
	if !v.retired {
		v.retired = true
		if v.refs == 0 {
			close(v.idle)
		}
	}
	v.mu.Unlock()
	select {
	case <-v.idle:
	case <-ctx.Done():
	}
	err := v.batcher.Close(ctx)
	if cerr := v.sess.Close(); err == nil {
		err = cerr
	}
	return err
}
