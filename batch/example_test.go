package batch_test

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/signalforge/signalforge/batch"
	"github.com/signalforge/signalforge/tensor"
)

// The seed's usage:
//
//	predictor = BatchPredictor(model, batch_size=32, window_ms=50)
//	predictor.start()
//	result = predictor.predict(features)
//	stats = predictor.get_stats()  # avg_batch_size, avg_batch_time_ms
//
// In Go the model is any RunFunc; in the server it is an infer.Session's
// Run. Here a tiny linear model scores rows of (rsi_14, macd).
func Example() {
	model := func(ctx context.Context, in []tensor.Tensor) ([]tensor.Tensor, error) {
		x := in[0].Float32s()
		rows := in[0].Len()
		y := make([]float32, rows)
		for i := range rows {
			y[i] = 0.01*x[2*i] + x[2*i+1] // 0.01·rsi_14 + macd
		}
		return []tensor.Tensor{tensor.Must(tensor.Shape{int64(rows), 1}, y)}, nil
	}
	b, err := batch.New(batch.Config{MaxBatchSize: 32, Window: 50 * time.Millisecond}, model)
	if err != nil {
		panic(err)
	}

	// 32 concurrent callers, one row each: the first finds the model idle
	// and runs at once; the others arrive while it runs and share the
	// next batches.
	var wg sync.WaitGroup
	scores := make([]float32, 32)
	for i := range 32 {
		wg.Go(func() {
			features := tensor.Must(tensor.Shape{1, 2}, []float32{65, 0.5 * float32(i)})
			out, err := b.Predict(context.Background(), []tensor.Tensor{features})
			if err != nil {
				panic(err)
			}
			scores[i] = out[0].Float32s()[0]
		})
	}
	wg.Wait()
	fmt.Printf("request 0: %.2f, request 3: %.2f\n", scores[0], scores[3])

	if err := b.Close(context.Background()); err != nil {
		panic(err)
	}
	st := b.Stats()
	fmt.Printf("requests %d, rows %d, batches of at most %d rows\n", st.Requests, st.Rows, len(st.BatchSizes)-1)
	// st.AvgBatchSize and st.BatchTime.Avg are the seed's avg_batch_size
	// and avg_batch_time_ms; how the 32 rows split into batches depends on
	// how the callers were scheduled.

	// Output:
	// request 0: 0.65, request 3: 2.15
	// requests 32, rows 32, batches of at most 32 rows
}
