// Package manager keeps the model versions a server serves loaded: it
// follows the registry, loads and warms every production version (and,
// with Config.ServeStaging, every staging one) in ONNX Runtime behind a
// dynamic batcher, swaps versions without failing a request when the
// registry changes, drains and closes the versions that stop serving, and
// marks failed the versions it cannot load while the others keep serving.
//
// It knows nothing of HTTP: a server acquires a loaded version per request
// and reads the current snapshot, the failures and the stats.
//
//	m, _ := manager.New(manager.Config{Registry: reg, Engine: eng})
//	go m.Run(ctx) // until ctx is done (or Close)
//	<-m.Loaded()  // the first load is done
//	if v, ok := m.Acquire("forecast_mlp", "v1.0"); ok {
//		out, err := v.Batcher().Predict(ctx, inputs)
//		v.Release()
//		...
//	}
//	err := m.Close(shutdownCtx) // drains and closes every version
//
// A change in the registry (a registration, promotion, split or archive,
// also from another process) is applied in an order that fails no request:
// new versions are loaded and warmed and published beside the old ones;
// Config.OnChange runs (a server points its router at the new split
// there); the versions no longer served leave the snapshot; each is
// drained and closed once the last request holding it releases it.
//
// A version that cannot load (a corrupt artifact, missing external
// weights, a warm-up over the memory budget, a child check's refusal) is
// reported by Failure and Unservable and retried every
// Config.ReconcileRetry, unless retrying the same artifact cannot help.
package manager
