package infer

import (
	"context"
	"errors"
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
