package batch

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/signalforge/signalforge/tensor"
)

// BenchmarkOverhead measures what the batcher itself costs per request,
// with a model that does nothing (returns its input): queueing, the owner
// goroutine, concatenation, the batch goroutine and splitting the outputs.
// The real-engine comparisons are in batch/batchbench.
func BenchmarkOverhead(b *testing.B) {
	identity := func(ctx context.Context, in []tensor.Tensor) ([]tensor.Tensor, error) { return in, nil }
	for _, callers := range []int{1, 64} {
		b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
			// One caller: MaxBatchSize 1, so the size trigger sends each
			// request at once and the timer plays no part.
			bt, err := New(Config{MaxBatchSize: min(callers, 32), Window: 100 * time.Microsecond, MaxInFlight: 2}, identity)
			if err != nil {
				b.Fatal(err)
			}
			defer bt.Close(context.Background())
			in := rowsOf(1, 16, 0)
			var next atomic.Int64
			var wg sync.WaitGroup
			b.ResetTimer()
			for range callers {
				wg.Go(func() {
					for next.Add(1) <= int64(b.N) {
						if _, err := bt.Predict(context.Background(), in); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			b.StopTimer()
			b.ReportMetric(bt.Stats().AvgBatchSize, "rows/batch")
		})
	}
}
