package tensor_test

import (
	"fmt"

	"github.com/signalforge/signalforge/tensor"
)

// A batcher joins the rows of several requests into one batch, runs the
// model once, and splits the result back into per-request views without
// copying.
func Example() {
	req1 := tensor.Must(tensor.Shape{1, 2}, []float32{65, 0.5})
	req2 := tensor.Must(tensor.Shape{2, 2}, []float32{30, -0.2, 70, 1.1})

	batch, err := tensor.Concat([]tensor.Tensor{req1, req2})
	if err != nil {
		panic(err)
	}
	fmt.Println("batch", batch.Shape(), batch.Float32s())

	parts, err := tensor.Split(batch, []int{req1.Len(), req2.Len()})
	if err != nil {
		panic(err)
	}
	for i, p := range parts {
		fmt.Println("request", i+1, p.Shape(), p.Float32s())
	}

	_, err = tensor.Concat([]tensor.Tensor{req1, tensor.Must(tensor.Shape{1, 3}, []float32{1, 2, 3})})
	fmt.Println(err)
	// Output:
	// batch [3,2] [65 0.5 30 -0.2 70 1.1]
	// request 1 [1,2] [65 0.5]
	// request 2 [2,2] [30 -0.2 70 1.1]
	// tensor: shape mismatch: part 1 has shape [1,3], part 0 has [1,2] (all axes but the first must agree)
}
