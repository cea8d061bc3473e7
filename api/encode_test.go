package api

import (
	"encoding/json"
	"math"
	"testing"
)

func FuzzAppendPredictResponse(f *testing.F) {
	f.Add("req_1", "forecast_mlp", "v1.0", float32(-1.8592885), float32(1e-7), 3.045, true)
	f.Add("a\"b\\c<d>&\u2028\x01\xff", "m", "v", float32(1e25), float32(0), 1e-9, false)
	f.Fuzz(func(t *testing.T, id, model, version string, a, b float32, ms float64, cached bool) {
		if math.IsNaN(float64(a)) || math.IsInf(float64(a), 0) || math.IsNaN(float64(b)) || math.IsInf(float64(b), 0) || math.IsNaN(ms) || math.IsInf(ms, 0) {
			return
		}
		r := &PredictResponse{RequestID: id, Model: model, Version: version, Predictions: [][]float32{{a, b}, {b}}, Cached: cached, TotalMS: ms, InferenceMS: ms / 2}
		want, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		got := AppendPredictResponse(nil, r)
		if string(got) != string(want)+"\n" {
			t.Fatalf("hand-written %s\nencoding/json %s", got, want)
		}
	})
}
