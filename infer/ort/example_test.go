package ort_test

import (
	"context"
	"fmt"
	"log"

	"github.com/signalforge/signalforge/infer"
	"github.com/signalforge/signalforge/infer/ort"
	"github.com/signalforge/signalforge/onnx/onnxtest"
)

// A model with named features, served the way the seed's ONNXPredictor
// was: rows of named features in, one prediction per row out.
func Example() {
	// A 3-feature MLP whose metadata names its features.
	m, err := onnxtest.NewMLP(onnxtest.MLPConfig{Sizes: []int{3, 8, 2}, Seed: 1, Features: []string{"rsi_14", "macd", "volume"}})
	if err != nil {
		log.Fatal(err)
	}
	model, err := m.Bytes()
	if err != nil {
		log.Fatal(err)
	}

	eng, err := ort.New(ort.Config{})
	if err != nil {
		log.Fatal(err) // says where it looked and how to install ONNX Runtime
	}
	defer eng.Close()
	ctx := context.Background()
	sess, err := eng.LoadBytes(ctx, model, infer.Options{WarmupBatchSizes: []int{1, 8}})
	if err != nil {
		log.Fatal(err)
	}
	defer sess.Close()

	p, err := infer.NewPredictor(sess, infer.PredictorConfig{})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("features:", p.Features())
	preds, err := p.Predict(ctx, []infer.Row{
		{"rsi_14": {0.65}, "macd": {0.5}, "volume": {0.1}},
		{"rsi_14": {0.30}, "macd": {-0.2}, "volume": {0.9}},
	})
	if err != nil {
		log.Fatal(err)
	}
	for _, row := range preds {
		fmt.Printf("%.3f\n", row)
	}
	_, err = p.Predict(ctx, []infer.Row{{"rsi14": {0.65}, "volume": {0.1}}})
	fmt.Println(err)
	// Output:
	// features: [rsi_14 macd volume]
	// [0.142 -0.408]
	// [0.214 -0.284]
	// row 0: missing features: rsi_14, macd; unknown feature: rsi14
}
