package registry_test

import (
	"context"
	"testing"

	"github.com/signalforge/signalforge/registry"
)

// BenchmarkRegister: one durable registration (ONNX inspection, artifact
// write + fsync, audit append + fsync, state rename + fsync).
func BenchmarkRegister(b *testing.B) {
	ctx := context.Background()
	r := openReg(b, b.TempDir())
	art := onnxModel(b, 1, feats...)
	for b.Loop() {
		if _, err := r.Register(ctx, registry.RegisterRequest{Name: "m", ONNX: art}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSetTraffic: one durable traffic change on a model with 10
// versions.
func BenchmarkSetTraffic(b *testing.B) {
	ctx := context.Background()
	r := openReg(b, b.TempDir())
	art := onnxModel(b, 1, feats...)
	for range 10 {
		v, _ := r.Register(ctx, registry.RegisterRequest{Name: "m", ONNX: art})
		if _, err := r.Promote(ctx, v.Ref(), 10); err != nil {
			b.Fatal(err)
		}
	}
	pct := []float64{20, 30}
	i := 0
	for b.Loop() {
		if _, err := r.SetTraffic(ctx, ref("m:v1"), pct[i%2]); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkProduction: reading what serves (state cached until it changes).
func BenchmarkProduction(b *testing.B) {
	ctx := context.Background()
	r := openReg(b, b.TempDir())
	art := onnxModel(b, 1, feats...)
	for range 10 {
		v, _ := r.Register(ctx, registry.RegisterRequest{Name: "m", ONNX: art})
		r.Promote(ctx, v.Ref(), 10)
	}
	for b.Loop() {
		if vs, err := r.Production(ctx); err != nil || len(vs) != 10 {
			b.Fatal(len(vs), err)
		}
	}
}

// BenchmarkSeq: the cost of one Watch poll for changes by other processes.
func BenchmarkSeq(b *testing.B) {
	ctx := context.Background()
	r := openReg(b, b.TempDir())
	r.Register(ctx, registry.RegisterRequest{Name: "m", ONNX: onnxModel(b, 1, feats...)})
	for b.Loop() {
		if _, err := r.Seq(ctx); err != nil {
			b.Fatal(err)
		}
	}
}
