package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"

	"github.com/signalforge/signalforge/api"
)

// Example sends the seed's prediction request with the Go client. The
// stand-in server here echoes what a SignalForge server answers.
func Example() {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req api.PredictRequest
		json.NewDecoder(r.Body).Decode(&req)
		json.NewEncoder(w).Encode(api.PredictResponse{
			RequestID: req.RequestID, Model: "lstm_model", Version: "v2.0",
			Predictions: [][]float32{{0.0123}},
		})
	}))
	defer srv.Close()

	c := &api.Client{BaseURL: srv.URL}
	resp, err := c.Predict(context.Background(), "lstm_model", &api.PredictRequest{
		RequestID: "req_123", Ticker: "AAPL", Horizon: 5,
		Features: api.Features{"rsi_14": api.Scalar(65.0), "macd": api.Scalar(0.5)},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(resp.RequestID, resp.Model, resp.Version, resp.Predictions, resp.Cached)
	// Output: req_123 lstm_model v2.0 [[0.0123]] false
}
