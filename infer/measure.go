package infer

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/signalforge/signalforge/tensor"
)

// MeasureConfig configures Measure. The zero value measures for a second.
type MeasureConfig struct {
	// Duration is how long to keep calling Run. If zero, 1s.
	Duration time.Duration
	// MinCalls is the least number of measured calls, even past Duration.
	// If zero, 10.
	MinCalls int
	// Warmup is the number of unmeasured calls first. If zero, 10.
	Warmup int
	// Concurrency is the number of goroutines calling Run at once, each
	// timing its own calls (MinCalls applies to each). If zero, 1.
	Concurrency int
}

// Timing summarises repeated Run calls on one set of inputs.
type Timing struct {
	Batch       int           `json:"batch"`
	Concurrency int           `json:"concurrency"`
	Calls       int           `json:"calls"`
	Elapsed     time.Duration `json:"elapsed_ns"`
	Min         time.Duration `json:"min_ns"`
	Median      time.Duration `json:"median_ns"`
	P99         time.Duration `json:"p99_ns"`
	Mean        time.Duration `json:"mean_ns"`
	// SamplesPerSec is rows per second of wall time: Batch × Calls / Elapsed.
	SamplesPerSec float64 `json:"samples_per_sec"`
}

// Measure calls sess.Run(ctx, inputs) repeatedly from cfg.Concurrency
// goroutines and times each call. batch is the row count reported (the
// inputs' batch size). The first error stops the measurement.
func Measure(ctx context.Context, sess Session, inputs []tensor.Tensor, batch int, cfg MeasureConfig) (Timing, error) {
	if cfg.Duration <= 0 {
		cfg.Duration = time.Second
	}
	if cfg.MinCalls <= 0 {
		cfg.MinCalls = 10
	}
	if cfg.Warmup <= 0 {
		cfg.Warmup = 10
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 1
	}
	for range cfg.Warmup {
		if _, err := sess.Run(ctx, inputs); err != nil {
			return Timing{}, err
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	per := make([][]time.Duration, cfg.Concurrency)
	errs := make([]error, cfg.Concurrency)
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(cfg.Duration)
	for g := range cfg.Concurrency {
		wg.Go(func() {
			for {
				t0 := time.Now()
				if len(per[g]) >= cfg.MinCalls && !t0.Before(deadline) {
					return
				}
				if _, err := sess.Run(ctx, inputs); err != nil {
					errs[g] = err
					cancel()
					return
				}
				per[g] = append(per[g], time.Since(t0))
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	// The first real failure matters; the other goroutines then fail
	// with context.Canceled from the cancel above.
	var first error
	for _, e := range errs {
		if e != nil && (first == nil || errors.Is(first, context.Canceled) && !errors.Is(e, context.Canceled)) {
			first = e
		}
	}
	if first != nil {
		return Timing{}, first
	}
	times := slices.Concat(per...)
	var sum time.Duration
	for _, d := range times {
		sum += d
	}
	slices.Sort(times)
	n := len(times)
	return Timing{
		Batch:         batch,
		Concurrency:   cfg.Concurrency,
		Calls:         n,
		Elapsed:       elapsed,
		Min:           times[0],
		Median:        times[n/2],
		P99:           times[min(n-1, n*99/100)],
		Mean:          sum / time.Duration(n),
		SamplesPerSec: float64(batch*n) / elapsed.Seconds(),
	}, nil
}

// RandomInputs returns inputs for one run at the given batch size (shapes
// as WarmupInputs makes them), float32 values uniform in [-1, 1) from seed,
// other types zero.
func RandomInputs(inputs []IOInfo, batch int, seed uint64) ([]tensor.Tensor, error) {
	if batch <= 0 {
		return nil, fmt.Errorf("infer: batch size %d: must be positive", batch)
	}
	in, err := WarmupInputs(inputs, batch)
	if err != nil {
		return nil, err
	}
	rng := rand.New(rand.NewPCG(seed, 0x5f0e))
	for _, t := range in {
		data := t.Float32s()
		for i := range data {
			data[i] = float32(2*rng.Float64() - 1)
		}
	}
	return in, nil
}
