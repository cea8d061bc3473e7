package convert_test

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/signalforge/signalforge/convert"
	"github.com/signalforge/signalforge/infer"
	"github.com/signalforge/signalforge/tensor"
)

// BenchmarkTorchVsORT is the seed's benchmark_comparison for the models of
// the issue: a 100-50-10 MLP, a 512-1024-1024-1 MLP and LSTM(16→64)+Linear
// over 32 steps, at batch 1 and 32, one thread on each side. ns/op is ONNX
// Runtime; torch-ns/op is PyTorch eager's median in the bridge process on
// the same input, and speedup their ratio. Same numbers as
// `signalforge convert -benchmark`.
func BenchmarkTorchVsORT(b *testing.B) {
	bridge := torchBridge(b)
	dir := b.TempDir()
	if out, err := exec.Command(convert.DefaultPython, "testdata/make_fixtures.py", "--bench", dir).CombinedOutput(); err != nil {
		b.Fatalf("make_fixtures.py --bench: %v\n%s", err, out)
	}
	eng := newEngine(b)
	ctx := context.Background()
	models := []struct{ name, spec string }{
		{"mlp_100_50_10", ""},
		{"mlp_512_1024_1024_1", ""},
		{"lstm_16_64", "lstm_16_64.spec.json"},
	}
	for _, m := range models {
		opts := convert.Options{}
		if m.spec != "" {
			spec, err := convert.ReadSpecFile(filepath.Join(dir, m.spec))
			if err != nil {
				b.Fatal(err)
			}
			opts.Spec = spec
		}
		path := filepath.Join(dir, m.name+".pt")
		res, err := convert.ConvertFile(path, opts)
		if err != nil {
			b.Fatal(err)
		}
		batches := []int{1, 32}
		rows, err := convert.Benchmark(ctx, eng, res, path, convert.BenchOptions{BatchSizes: batches, Bridge: bridge, Spec: opts.Spec})
		if err != nil {
			b.Fatal(err)
		}
		cases, err := convert.BenchInputs("input", res.InputShape, res.InputBatchAxis, batches, 32)
		if err != nil {
			b.Fatal(err)
		}
		sess, err := eng.LoadBytes(ctx, res.Bytes, infer.Options{IntraOpThreads: 1})
		if err != nil {
			b.Fatal(err)
		}
		for i, row := range rows {
			in := cases[i].Inputs[0]
			data := make([]float32, len(in.Data))
			for k, v := range in.Data {
				data[k] = float32(v)
			}
			x := tensor.Must(tensor.Shape(in.Shape), data)
			b.Run(fmt.Sprintf("%s/batch=%d", m.name, row.Batch), func(b *testing.B) {
				for b.Loop() {
					if _, err := sess.Run(ctx, []tensor.Tensor{x}); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(row.Torch.Nanoseconds()), "torch-ns/op")
				b.ReportMetric(row.Speedup, "speedup")
			})
		}
		sess.Close()
	}
}
