package ort

import (
	"context"
	"errors"
	"testing"

	"github.com/signalforge/signalforge/infer"
	"github.com/signalforge/signalforge/onnx/onnxtest"
	"github.com/signalforge/signalforge/tensor"
)

// TestPredictorWithONNXRuntime runs named-feature rows through a real
// session and compares with the MLP's Go reference forward pass.
func TestPredictorWithONNXRuntime(t *testing.T) {
	eng := testEngine(t)
	features := []string{"rsi_14", "macd", "volume"}
	m, err := onnxtest.NewMLP(onnxtest.MLPConfig{Sizes: []int{3, 8, 2}, Seed: 1, Features: features})
	if err != nil {
		t.Fatal(err)
	}
	data, err := m.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	sess, err := eng.LoadBytes(ctx, data, infer.Options{WarmupBatchSizes: []int{1, 2}})
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	p, err := infer.NewPredictor(sess, infer.PredictorConfig{})
	if err != nil {
		t.Fatal(err)
	}
	rows := []infer.Row{
		{"rsi_14": {0.65}, "macd": {0.5}, "volume": {0.1}},
		{"volume": {0.9}, "macd": {-0.2}, "rsi_14": {0.30}},
	}
	preds, err := p.Predict(ctx, rows)
	if err != nil {
		t.Fatal(err)
	}
	x := tensor.Must(tensor.Shape{2, 3}, []float32{0.65, 0.5, 0.1, 0.30, -0.2, 0.9})
	want, err := m.Forward(x)
	if err != nil {
		t.Fatal(err)
	}
	w := want.Float32s()
	for r := range 2 {
		for j := range 2 {
			if d := preds[r][j] - w[r*2+j]; d > 1e-5 || d < -1e-5 {
				t.Errorf("row %d output %d = %v, want %v", r, j, preds[r][j], w[r*2+j])
			}
		}
	}
	_, err = p.Predict(ctx, []infer.Row{{"rsi_14": {1}}})
	if !errors.Is(err, infer.ErrInput) || err.Error() != "row 0: missing features: macd, volume" {
		t.Errorf("Predict with missing features = %v", err)
	}
}
