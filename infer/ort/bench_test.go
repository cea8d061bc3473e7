package ort

import (
	"context"
	"slices"
	"testing"
	"time"

	ortgo "github.com/yalue/onnxruntime_go"

	"github.com/signalforge/signalforge/infer"
	"github.com/signalforge/signalforge/onnx/onnxtest"
	"github.com/signalforge/signalforge/tensor"
)

// The Must-show comparison: Session.Run against the cheapest raw binding
// call on the same model (100-50-10 MLP, batch 1, one intra-op thread).
// The raw call reuses input and output tensors created once, so the
// difference is everything Session.Run adds: input checks, wrapping Go
// memory as ONNX Runtime values, allocating the output, the close lock and
// (with a cancellable ctx) the terminate hook. Run with
//
//	go test ./infer/ort -run '^$' -bench 'MLP100' -benchmem -count 5

func benchMLP(b *testing.B, batch int) (*Engine, *onnxtest.MLP, []byte, tensor.Tensor) {
	b.Helper()
	eng, err := New(Config{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { eng.Close() })
	m := onnxtest.MustMLP(1, 100, 50, 10)
	data, err := m.Bytes()
	if err != nil {
		b.Fatal(err)
	}
	return eng, m, data, m.RandomInput(batch, 7)
}

// rawSession is the baseline: the binding's DynamicAdvancedSession with
// input and output values made once.
type rawSession struct {
	sess      *ortgo.DynamicAdvancedSession
	ins, outs []ortgo.Value
}

func newRaw(b *testing.B, data []byte, x tensor.Tensor) *rawSession {
	b.Helper()
	so, err := ortgo.NewSessionOptions()
	if err != nil {
		b.Fatal(err)
	}
	defer so.Destroy()
	so.SetIntraOpNumThreads(1)
	so.SetInterOpNumThreads(1)
	sess, err := ortgo.NewDynamicAdvancedSessionWithONNXData(data, []string{"x"}, []string{"y"}, so)
	if err != nil {
		b.Fatal(err)
	}
	in, err := ortgo.NewTensor(ortgo.Shape(x.Shape().Clone()), x.Float32s())
	if err != nil {
		b.Fatal(err)
	}
	out, err := ortgo.NewEmptyTensor[float32](ortgo.NewShape(x.Shape()[0], 10))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { in.Destroy(); out.Destroy(); sess.Destroy() })
	return &rawSession{sess: sess, ins: []ortgo.Value{in}, outs: []ortgo.Value{out}}
}

func (r *rawSession) run(b *testing.B) {
	if err := r.sess.Run(r.ins, r.outs); err != nil {
		b.Fatal(err)
	}
}

// runCancellable is the raw call with the same cancellation support as
// Session.Run under a cancellable ctx: a RunOptions terminated by
// context.AfterFunc.
func (r *rawSession) runCancellable(b *testing.B, ctx context.Context, ro *ortgo.RunOptions) {
	stop := context.AfterFunc(ctx, func() { ro.Terminate() })
	err := r.sess.RunWithOptions(r.ins, r.outs, ro)
	stop()
	if err != nil {
		b.Fatal(err)
	}
}

func BenchmarkMLP100Raw(b *testing.B) {
	_, _, data, x := benchMLP(b, 1)
	raw := newRaw(b, data, x)
	b.ReportAllocs()
	for b.Loop() {
		raw.run(b)
	}
}

func benchSession(b *testing.B, ctx context.Context) {
	eng, _, data, x := benchMLP(b, 1)
	sess, err := eng.LoadBytes(context.Background(), data, infer.Options{WarmupBatchSizes: []int{1}})
	if err != nil {
		b.Fatal(err)
	}
	defer sess.Close()
	in := []tensor.Tensor{x}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := sess.Run(ctx, in); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMLP100Session is Session.Run with a ctx that cannot be
// cancelled (no terminate hook needed).
func BenchmarkMLP100Session(b *testing.B) { benchSession(b, context.Background()) }

// BenchmarkMLP100SessionCancellable is Session.Run with a cancellable ctx,
// as the server passes: it pays for the terminate hook.
func BenchmarkMLP100SessionCancellable(b *testing.B) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	benchSession(b, ctx)
}

// BenchmarkMLP100Overhead measures the ratio on a busy machine: it
// alternates blocks of calls on the same model and reports the median time
// per call of each, so load spikes hit all sides alike:
//
//   - raw: the bare binding call (no cancellation);
//   - raw-cancellable: the bare call plus the cancellation hook Session.Run
//     uses (RunOptions + context.AfterFunc);
//   - session: Session.Run with a cancellable ctx, as the server calls it;
//   - session-bgctx: Session.Run with context.Background().
//
// ratio = session/raw, ratio-bgctx = session-bgctx/raw,
// ratio-vs-raw-cancellable = session/raw-cancellable.
func BenchmarkMLP100Overhead(b *testing.B) {
	for _, batch := range []int{1, 8} {
		b.Run(map[int]string{1: "batch=1", 8: "batch=8"}[batch], func(b *testing.B) {
			eng, _, data, x := benchMLP(b, batch)
			raw := newRaw(b, data, x)
			sess, err := eng.LoadBytes(context.Background(), data, infer.Options{WarmupBatchSizes: []int{batch}})
			if err != nil {
				b.Fatal(err)
			}
			defer sess.Close()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			in := []tensor.Tensor{x}
			ro, err := ortgo.NewRunOptions()
			if err != nil {
				b.Fatal(err)
			}
			defer ro.Destroy()
			const block = 64
			var rawNs, rawCancelNs, sessNs, bgNs []float64
			for b.Loop() {
				tc := time.Now()
				for range block {
					raw.runCancellable(b, ctx, ro)
				}
				t0 := time.Now()
				for range block {
					raw.run(b)
				}
				t1 := time.Now()
				for range block {
					if _, err := sess.Run(ctx, in); err != nil {
						b.Fatal(err)
					}
				}
				t2 := time.Now()
				for range block {
					if _, err := sess.Run(context.Background(), in); err != nil {
						b.Fatal(err)
					}
				}
				t3 := time.Now()
				rawCancelNs = append(rawCancelNs, float64(t0.Sub(tc))/block)
				rawNs = append(rawNs, float64(t1.Sub(t0))/block)
				sessNs = append(sessNs, float64(t2.Sub(t1))/block)
				bgNs = append(bgNs, float64(t3.Sub(t2))/block)
			}
			r, rc, s, bg := median(rawNs), median(rawCancelNs), median(sessNs), median(bgNs)
			b.ReportMetric(r, "raw-ns/call")
			b.ReportMetric(rc, "raw-cancellable-ns/call")
			b.ReportMetric(s/rc, "ratio-vs-raw-cancellable")
			b.ReportMetric(s, "session-ns/call")
			b.ReportMetric(bg, "session-bgctx-ns/call")
			b.ReportMetric(s/r, "ratio")
			b.ReportMetric(bg/r, "ratio-bgctx")
		})
	}
}

func median(v []float64) float64 {
	slices.Sort(v)
	return v[len(v)/2]
}
