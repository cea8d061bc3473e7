package infer

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/signalforge/signalforge/tensor"
)

func TestBatchAxis(t *testing.T) {
	for _, c := range []struct {
		shape tensor.Shape
		names []string
		want  int
	}{
		{tensor.Shape{-1, 100}, []string{"batch", ""}, 0},
		{tensor.Shape{-1, 100}, []string{"", ""}, 0},
		{tensor.Shape{-1, 100}, nil, 0},
		{tensor.Shape{1, 100}, []string{"", ""}, -1},
		{tensor.Shape{-1, -1, 16}, []string{"seq", "batch_size", ""}, 1},
		{tensor.Shape{-1, -1, 16}, []string{"T", "N", ""}, 1},
		{tensor.Shape{}, nil, -1},
		{nil, nil, -1},
	} {
		if got := BatchAxis(c.shape, c.names); got != c.want {
			t.Errorf("BatchAxis(%v, %q) = %d, want %d", c.shape, c.names, got, c.want)
		}
	}
}

func TestCheckInputs(t *testing.T) {
	want := []IOInfo{{Name: "x", DType: tensor.Float32, Shape: tensor.Shape{-1, 3}, DimNames: []string{"batch", ""}}}
	for _, c := range []struct {
		name string
		in   []tensor.Tensor
		msg  string
	}{
		{"ok", []tensor.Tensor{tensor.Must(tensor.Shape{2, 3}, make([]float32, 6))}, ""},
		{"count", nil, "infer: invalid input: model takes 1 input(s) (x), got 0"},
		{"zero tensor", []tensor.Tensor{{}}, `infer: invalid input: input "x" is not a valid tensor`},
		{"dtype", []tensor.Tensor{tensor.Must(tensor.Shape{1, 3}, make([]int64, 3))}, `infer: invalid input: input "x" must be float32, got int64`},
		{"width", []tensor.Tensor{tensor.Must(tensor.Shape{1, 4}, make([]float32, 4))}, `infer: invalid input: input "x" must have shape [batch,3], got [1,4]`},
		{"rank", []tensor.Tensor{tensor.Must(tensor.Shape{3}, make([]float32, 3))}, `infer: invalid input: input "x" must have shape [batch,3], got [3]`},
	} {
		err := CheckInputs(want, c.in)
		if c.msg == "" {
			if err != nil {
				t.Errorf("%s: %v", c.name, err)
			}
			continue
		}
		if err == nil || err.Error() != c.msg || !errors.Is(err, ErrInput) {
			t.Errorf("%s: CheckInputs = %v\nwant ErrInput with: %s", c.name, err, c.msg)
		}
	}
}

func TestWarmup(t *testing.T) {
	sess := sequence("a,b", -1)
	if err := Warmup(context.Background(), sess, []int{1, 8, 8, 32}, 0); err != nil {
		t.Fatal(err)
	}
	want := []tensor.Shape{{1, 1, 2}, {8, 1, 2}, {32, 1, 2}}
	if !slices.EqualFunc(sess.runs, want, tensor.Shape.Equal) {
		t.Errorf("warm-up ran %v, want %v", sess.runs, want)
	}
	if err := Warmup(context.Background(), sess, []int{4, 0}, 0); err == nil || err.Error() != "infer: warm-up batch size 0: must be positive" {
		t.Errorf("Warmup with size 0 = %v", err)
	}

	fixed := tabular("a,b")
	fixed.in.Shape, fixed.in.BatchAxis = tensor.Shape{1, 2}, -1
	if err := Warmup(context.Background(), fixed, []int{16}, 0); err != nil {
		t.Fatal(err)
	}
	if len(fixed.runs) != 1 || !fixed.runs[0].Equal(tensor.Shape{1, 2}) {
		t.Errorf("fixed-batch warm-up ran %v, want [[1,2]]", fixed.runs)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Warmup(ctx, tabular("a"), []int{1}, 0); !errors.Is(err, context.Canceled) {
		t.Errorf("Warmup with cancelled ctx = %v, want context.Canceled", err)
	}
}
