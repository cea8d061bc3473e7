package infer

import "fmt"

// Encoding rows of named features for a sequence model ([N,T,F]): each
// feature is an array of time steps, oldest first.
func ExamplePredictor_Encode() {
	// Any Session works; this one stands for an LSTM over 3 time steps of
	// two features whose metadata says "rsi_14,macd".
	sess := sequence("rsi_14,macd", 3)
	p, err := NewPredictor(sess, PredictorConfig{})
	if err != nil {
		panic(err)
	}
	x, err := p.Encode([]Row{{"rsi_14": {61, 63, 65}, "macd": {0.1, 0.3, 0.5}}})
	fmt.Println(x.Shape(), x.Float32s(), err)

	_, err = p.Encode([]Row{{"rsi_14": {61, 63}, "macd": {0.1, 0.3, 0.5}}})
	fmt.Println(err)
	// Output:
	// [1,3,2] [61 0.1 63 0.3 65 0.5] <nil>
	// row 0: feature "rsi_14" has 2 time steps, want 3
}
