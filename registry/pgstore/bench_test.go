package pgstore_test

import (
	"context"
	"testing"

	"github.com/signalforge/signalforge/internal/testpg"
	"github.com/signalforge/signalforge/registry"
)

// benchStores opens a registry on each store to compare: the file store in
// a temporary folder, and PostgreSQL on a cluster of its own with its
// durable defaults (fsync on: both stores fsync every commit).
func benchStores(b *testing.B, run func(b *testing.B, r *registry.Registry)) {
	b.Run("file", func(b *testing.B) {
		r, err := registry.Open(context.Background(), registry.Config{Dir: b.TempDir(), PollInterval: -1})
		if err != nil {
			b.Fatal(err)
		}
		defer r.Close()
		run(b, r)
	})
	b.Run("postgres", func(b *testing.B) {
		srv := testpg.StartDurable(b)
		run(b, openReg(b, open(b, srv.NewDatabase(b))))
	})
}

// BenchmarkRegister: one registration (artifact stored, version and audit
// event committed) of a small model.
func BenchmarkRegister(b *testing.B) {
	ctx := context.Background()
	art := onnxModel(b, 1)
	benchStores(b, func(b *testing.B, r *registry.Registry) {
		for b.Loop() {
			if _, err := r.Register(ctx, registry.RegisterRequest{Name: "m", ONNX: art}); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkSetTraffic: one traffic change on a model with 10 production
// versions.
func BenchmarkSetTraffic(b *testing.B) {
	ctx := context.Background()
	art := onnxModel(b, 1)
	benchStores(b, func(b *testing.B, r *registry.Registry) {
		for range 10 {
			v, err := r.Register(ctx, registry.RegisterRequest{Name: "m", ONNX: art})
			if err != nil {
				b.Fatal(err)
			}
			if _, err := r.Promote(ctx, v.Ref(), 10); err != nil {
				b.Fatal(err)
			}
		}
		pct := []float64{20, 30}
		i := 0
		for b.Loop() {
			if _, err := r.SetTraffic(ctx, ref(b, "m:v1"), pct[i%2]); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
}
