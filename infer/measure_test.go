package infer

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/signalforge/signalforge/tensor"
)

func TestMeasure(t *testing.T) {
	sess := tabular("a,b")
	in, err := RandomInputs(sess.Inputs(), 4, 1)
	if err != nil {
		t.Fatal(err)
	}
	if !in[0].Shape().Equal(tensor.Shape{4, 2}) {
		t.Fatalf("RandomInputs shape %v", in[0].Shape())
	}
	for _, v := range in[0].Float32s() {
		if v < -1 || v >= 1 || v == 0 {
			t.Fatalf("RandomInputs value %v outside [-1,1) or zero", v)
		}
	}
	tm, err := Measure(context.Background(), sess, in, 4, MeasureConfig{Duration: time.Millisecond, MinCalls: 20, Warmup: 3})
	if err != nil {
		t.Fatal(err)
	}
	if tm.Calls < 20 || len(sess.runs) != tm.Calls+3 {
		t.Errorf("Calls = %d, runs = %d; want >= 20 measured plus 3 warm-up", tm.Calls, len(sess.runs))
	}
	if tm.Batch != 4 || tm.Min > tm.Median || tm.Median > tm.P99 || tm.SamplesPerSec <= 0 {
		t.Errorf("Timing = %+v", tm)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Measure(ctx, sess, in, 4, MeasureConfig{}); !errors.Is(err, context.Canceled) {
		t.Errorf("Measure with cancelled ctx = %v", err)
	}
	if _, err := RandomInputs(sess.Inputs(), 0, 1); err == nil {
		t.Error("RandomInputs with batch 0 succeeded")
	}
}

// countingSession counts runs safely from many goroutines and fails the
// failAt-th one.
type countingSession struct {
	*fakeSession
	n      atomic.Int64
	failAt int64
}

func (c *countingSession) Run(ctx context.Context, in []tensor.Tensor) ([]tensor.Tensor, error) {
	if n := c.n.Add(1); c.failAt > 0 && n >= c.failAt {
		return nil, errors.New("boom")
	}
	return nil, ctx.Err()
}

func TestMeasureConcurrent(t *testing.T) {
	sess := &countingSession{fakeSession: tabular("a")}
	in, _ := RandomInputs(sess.Inputs(), 1, 1)
	tm, err := Measure(context.Background(), sess, in, 1, MeasureConfig{Duration: time.Millisecond, MinCalls: 5, Warmup: 2, Concurrency: 3})
	if err != nil {
		t.Fatal(err)
	}
	if tm.Concurrency != 3 || tm.Calls < 15 || int64(tm.Calls+2) != sess.n.Load() {
		t.Errorf("Timing %+v after %d runs; want 3 goroutines, >= 15 calls, plus 2 warm-up runs", tm, sess.n.Load())
	}
	failing := &countingSession{fakeSession: tabular("a"), failAt: 50}
	if _, err := Measure(context.Background(), failing, in, 1, MeasureConfig{Duration: time.Minute, Concurrency: 4}); err == nil || err.Error() != "boom" {
		t.Errorf("Measure with a failing run = %v, want boom", err)
	}
}
