package server

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/signalforge/signalforge/api"
	"github.com/signalforge/signalforge/internal/demo"
	"github.com/signalforge/signalforge/registry"
)

// BenchmarkPredictHandler measures the native predict handler without the
// network, on a 100-feature MLP: the server's own cost per request.
func BenchmarkPredictHandler(b *testing.B) {
	ts := startServer(&testing.T{}, testOpts{})
	names := registerMLP100(b, ts)
	f := api.Features{}
	for i, n := range names {
		f[n] = api.Scalar(float64(i) / 7)
	}
	h := ts.srv.Handler()
	for _, bc := range []struct {
		name    string
		noCache bool
	}{{"cache-hit", false}, {"cache-off", true}} {
		body, _ := json.Marshal(api.PredictRequest{RequestID: "r", Ticker: "AAPL", Horizon: 1, Features: f, NoCache: bc.noCache})
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				req := httptest.NewRequest(http.MethodPost, "/v1/models/mlp100/predict", bytes.NewReader(body))
				w := httptest.NewRecorder()
				h.ServeHTTP(w, req)
				if w.Code != 200 {
					b.Fatalf("%d %s", w.Code, w.Body)
				}
			}
		})
	}
}

// registerMLP100 registers a 100-50-10 MLP over features f00…f99 as
// mlp100:v1 in production and waits until ts serves it.
func registerMLP100(b *testing.B, ts *testServer) []string {
	names := make([]string, 100)
	for i := range names {
		names[i] = fmt.Sprintf("f%02d", i)
	}
	art, err := demo.MLP(100, names, 100, 50, 10)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := ts.reg.Register(context.Background(), registry.RegisterRequest{Name: "mlp100", Version: "v1", ONNX: art, Status: registry.StatusProduction, Traffic: 100}); err != nil {
		b.Fatal(err)
	}
	for ts.srv.models.Current().Get("mlp100", "v1") == nil {
		time.Sleep(10 * time.Millisecond)
	}
	return names
}
