package infer

import (
	"context"
	"errors"
	"math"
	"testing"

	"github.com/signalforge/signalforge/tensor"
)

func TestTensorBytes(t *testing.T) {
	for _, c := range []struct {
		name  string
		io    IOInfo
		batch int
		want  int64
	}{
		{"batch axis", IOInfo{DType: tensor.Float32, Shape: tensor.Shape{-1, 100000000, 4}, BatchAxis: 0}, 32, 32 * 100000000 * 4 * 4},
		{"other dynamic dims count 1", IOInfo{DType: tensor.Int64, Shape: tensor.Shape{-1, -1, 3}, BatchAxis: 0}, 2, 2 * 3 * 8},
		{"fixed batch", IOInfo{DType: tensor.Uint8, Shape: tensor.Shape{1, 10}, BatchAxis: -1}, 32, 10},
		{"undeclared rank", IOInfo{DType: tensor.Float32}, 32, 0},
		{"zero dim", IOInfo{DType: tensor.Float32, Shape: tensor.Shape{-1, 0, math.MaxInt64}, BatchAxis: 0}, 32, 0},
		{"unknown dtype counts 8", IOInfo{Shape: tensor.Shape{5}, BatchAxis: -1}, 1, 40},
		{"saturates", IOInfo{DType: tensor.Float32, Shape: tensor.Shape{-1, math.MaxInt64 / 2, 4}, BatchAxis: 0}, 32, math.MaxInt64},
	} {
		if got := TensorBytes(c.io, c.batch); got != c.want {
			t.Errorf("%s: TensorBytes = %d, want %d", c.name, got, c.want)
		}
	}
}

// TestWarmupRefusesHugeInputs: a model declaring [batch, 100000000, 4]
// would need 51.2 GB at batch 32; Warmup refuses before allocating, with
// a message naming the input, its shape, the bytes and the limit.
func TestWarmupRefusesHugeInputs(t *testing.T) {
	sess := tabular("a,b,c,d")
	sess.in.Shape, sess.in.DimNames = tensor.Shape{-1, 100000000, 4}, []string{"batch", "", ""}
	err := Warmup(context.Background(), sess, []int{1, 32}, 0)
	var me *MemoryError
	if !errors.As(err, &me) || !errors.Is(err, ErrWarmupMemory) {
		t.Fatalf("Warmup = %v, want a *MemoryError", err)
	}
	want := `input "x" declared [batch,100000000,4] needs 1600000000 bytes (1.5 GiB) at warm-up batch 1 (1600000004 bytes (1.5 GiB) for all inputs and outputs), more than the 1073741824 bytes (1.0 GiB) allowed`
	if err.Error() != want {
		t.Errorf("error:\n got %s\nwant %s", err, want)
	}
	if len(sess.runs) != 0 {
		t.Errorf("warm-up ran %v before refusing", sess.runs)
	}
	// At a larger limit batch 1 fits and batch 32 does not.
	err = Warmup(context.Background(), sess, []int{1, 32}, 2<<30)
	if !errors.As(err, &me) || me.Batch != 32 || me.Bytes != 51200000000 || me.Limit != 2<<30 {
		t.Fatalf("Warmup with 2 GiB = %v (%+v)", err, me)
	}
	// A negative limit turns the check off.
	small := tabular("a")
	if err := Warmup(context.Background(), small, []int{1, 32}, -1); err != nil {
		t.Fatal(err)
	}
	// Outputs count too.
	out := tabular("a")
	out.out.Shape = tensor.Shape{-1, 1 << 30}
	if err := Warmup(context.Background(), out, []int{1}, 0); !errors.As(err, &me) || me.Kind != "output" || me.Name != "y" {
		t.Fatalf("Warmup with a huge output = %v", err)
	}
}
