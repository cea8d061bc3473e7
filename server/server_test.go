package server

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/signalforge/signalforge/api"
	"github.com/signalforge/signalforge/cache"
	"github.com/signalforge/signalforge/infer/ort"
	"github.com/signalforge/signalforge/internal/demo"
	"github.com/signalforge/signalforge/registry"
)

type testServer struct {
	URL    string
	srv    *Server
	reg    *registry.Registry
	dir    string
	cancel context.CancelFunc
	done   chan error
}

type testOpts struct {
	noCache    bool
	token      string
	adminOpen  bool // AdminOpenLoopback (the test server listens on 127.0.0.1)
	cacheStore cache.Store
	cacheCfg   cache.Config
	mutate     func(*Config)
	// store, if set, is the registry's store (else a FileStore in a
	// temporary folder); poll is then the registry's PollInterval.
	store registry.Store
	poll  time.Duration
	// dir, if set, is the registry folder (shared with another server).
	dir string
}

func startServer(t *testing.T, o testOpts) *testServer {
	t.Helper()
	ctx := context.Background()
	eng, err := ort.New(ort.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eng.Close() })
	dir := o.dir
	if dir == "" {
		dir = t.TempDir()
	}
	rcfg := registry.Config{Dir: dir, Validator: registry.EngineValidator(eng), PollInterval: 50 * time.Millisecond}
	if o.store != nil {
		rcfg.Store, rcfg.PollInterval = o.store, o.poll
	}
	reg, err := registry.Open(ctx, rcfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	if _, err := demo.Seed(ctx, reg); err != nil {
		t.Fatal(err)
	}
	var c *cache.Cache
	if !o.noCache {
		store := o.cacheStore
		if store == nil {
			ms, err := cache.NewMemory(cache.MemoryConfig{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ms.Close() })
			store = ms
		}
		if c, err = cache.New(store, o.cacheCfg); err != nil {
			t.Fatal(err)
		}
	}
	logw := io.Discard
	if testing.Verbose() {
		logw = os.Stderr
	}
	cfg := Config{Registry: reg, Engine: eng, Cache: c, AdminToken: o.token, AdminOpenLoopback: o.adminOpen, ServeStaging: true,
		MaxBodyBytes: 64 << 10, MaxRows: 64, ReconcileRetry: 100 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(logw, nil))}
	if o.mutate != nil {
		o.mutate(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithCancel(ctx)
	ts := &testServer{URL: "http://" + ln.Addr().String(), srv: srv, reg: reg, dir: dir, cancel: cancel, done: make(chan error, 1)}
	go func() { ts.done <- srv.Serve(sctx, ln) }()
	t.Cleanup(func() { ts.stop(t) })
	deadline := time.Now().Add(30 * time.Second)
	for !srv.Ready() {
		if time.Now().After(deadline) {
			t.Fatal("server not ready after 30s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return ts
}

func (ts *testServer) stop(t *testing.T) {
	if ts.cancel == nil {
		return
	}
	ts.cancel()
	ts.cancel = nil
	if err := <-ts.done; err != nil {
		t.Errorf("Serve returned %v", err)
	}
}

// demoFeatures returns a full demo feature row; seed varies the values.
func demoFeatures(seed int) api.Features {
	f := api.Features{}
	for i, name := range demo.Features {
		f[name] = api.Scalar(float64(seed%97)/10 + float64(i))
	}
	return f
}

func post(t testing.TB, url, body string) (int, []byte, http.Header) {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b, resp.Header
}

func mustJSON(t testing.TB, v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestPredictSingleAndCache(t *testing.T) {
	ts := startServer(t, testOpts{})
	c := &api.Client{BaseURL: ts.URL}
	ctx := context.Background()
	req := &api.PredictRequest{RequestID: "req_123", Ticker: "AAPL", Horizon: 5, Features: demoFeatures(1)}
	first, err := c.Predict(ctx, demo.ModelName, req)
	if err != nil {
		t.Fatal(err)
	}
	if first.Cached || len(first.Predictions) != 1 || len(first.Predictions[0]) != 1 {
		t.Fatalf("first answer %+v", first)
	}
	// The same features written differently (65 vs 65.0, other order) hit.
	raw := `{"request_id":"req_123","ticker":"AAPL","horizon":5,"features":{`
	var parts []string
	for i := len(demo.Features) - 1; i >= 0; i-- {
		name := demo.Features[i]
		parts = append(parts, fmt.Sprintf("%q:%s", name, strings.TrimSuffix(fmt.Sprintf("%.6f", req.Features[name].Values[0]), "0")))
	}
	code, body, _ := post(t, ts.URL+"/v1/models/forecast_mlp/predict", raw+strings.Join(parts, ",")+"}}")
	if code != 200 {
		t.Fatalf("status %d: %s", code, body)
	}
	var second api.PredictResponse
	if err := json.Unmarshal(body, &second); err != nil {
		t.Fatal(err)
	}
	if !second.Cached || second.Version != first.Version || second.Predictions[0][0] != first.Predictions[0][0] {
		t.Fatalf("second answer %+v, first %+v", second, first)
	}
	// Another horizon is another prediction.
	req.Horizon = 1
	third, err := c.Predict(ctx, demo.ModelName, req)
	if err != nil {
		t.Fatal(err)
	}
	if third.Cached {
		t.Fatal("horizon 1 answered from horizon 5's entry")
	}
}

func TestPredictInstancesAndPinnedVersion(t *testing.T) {
	ts := startServer(t, testOpts{noCache: true})
	c := &api.Client{BaseURL: ts.URL}
	rows := []api.Features{demoFeatures(1), demoFeatures(2), demoFeatures(1)}
	for _, v := range []string{"v1.0", "v2.0"} {
		resp, err := c.Predict(context.Background(), demo.ModelName, &api.PredictRequest{Instances: rows, Version: v})
		if err != nil {
			t.Fatal(err)
		}
		if resp.Version != v || len(resp.Predictions) != 3 {
			t.Fatalf("answer %+v", resp)
		}
		if resp.Predictions[0][0] != resp.Predictions[2][0] || resp.Predictions[0][0] == resp.Predictions[1][0] {
			t.Fatalf("rows 0 and 2 are equal inputs, row 1 differs: %v", resp.Predictions)
		}
	}
}

func TestSplitObservedOverRequestIDs(t *testing.T) {
	ts := startServer(t, testOpts{noCache: true})
	c := &api.Client{BaseURL: ts.URL}
	counts := map[string]int{}
	first := map[string]string{}
	const n = 1000
	for i := range n {
		id := fmt.Sprintf("user-%d", i)
		resp, err := c.Predict(context.Background(), demo.ModelName, &api.PredictRequest{RequestID: id, Features: demoFeatures(i)})
		if err != nil {
			t.Fatal(err)
		}
		counts[resp.Version]++
		first[id] = resp.Version
	}
	// 80/20 over 1000 ids: the binomial sd is ~12.6 requests; allow 4 sd.
	if got := counts["v2.0"]; got < 200-50 || got > 200+50 {
		t.Fatalf("v2.0 got %d of %d requests, want about 200 (split 80/20): %v", got, n, counts)
	}
	// Sticky: the same ids route the same way again.
	for i := 0; i < n; i += 37 {
		id := fmt.Sprintf("user-%d", i)
		resp, err := c.Predict(context.Background(), demo.ModelName, &api.PredictRequest{RequestID: id, Features: demoFeatures(i)})
		if err != nil {
			t.Fatal(err)
		}
		if resp.Version != first[id] {
			t.Fatalf("%s moved from %s to %s with the split unchanged", id, first[id], resp.Version)
		}
	}
}

func TestBadInputs(t *testing.T) {
	ts := startServer(t, testOpts{})
	full := mustJSON(t, demoFeatures(3))
	// withFeature sets one feature (`"name":value`) of a full row.
	withFeature := func(extra string) string {
		f := demoFeatures(3)
		name, _, _ := strings.Cut(strings.Trim(extra, `"`), `"`)
		delete(f, name)
		return `{"features":` + strings.TrimSuffix(mustJSON(t, f), "}") + `,` + extra + `}}`
	}
	many := make([]api.Features, 65)
	for i := range many {
		many[i] = demoFeatures(i)
	}
	tests := []struct {
		name, path, body string
		status           int
		code, msg        string
	}{
		{"unknown model", "/v1/models/nope/predict", `{"features":{"a":1}}`, 404, "not_found", `model "nope" does not exist`},
		{"bad model name", "/v1/models/..%2Fx/predict", `{"features":{"a":1}}`, 404, "not_found", `model "../x" does not exist`},
		{"unknown version", "/v1/models/forecast_mlp/predict", `{"version":"v9","features":` + full + `}`, 404, "not_found", `model "forecast_mlp" has no version "v9"`},
		{"missing feature", "/v1/models/forecast_mlp/predict", `{"features":{"rsi_14":1}}`, 400, "missing_feature", "missing features: macd, macd_signal, bb_width, volume_z, ret_1d, ret_5d, atr_14"},
		{"unknown feature", "/v1/models/forecast_mlp/predict", withFeature(`"vwap":1`), 400, "unknown_feature", "unknown feature: vwap"},
		{"wrong type", "/v1/models/forecast_mlp/predict", withFeature(`"macd":"high"`), 400, "invalid_input", `feature "macd": invalid feature value: want a number, got the string "high"`},
		{"NaN", "/v1/models/forecast_mlp/predict", withFeature(`"macd":"NaN"`), 400, "invalid_value", `feature "macd" is NaN`},
		{"sequence for tabular", "/v1/models/forecast_mlp/predict", withFeature(`"macd":[1,2]`), 400, "sequence_length", "macd"},
		{"wrong sequence length", "/v1/models/forecast_lstm/predict", seqBody(15, ""), 400, "sequence_length", `feature "rsi_14" has 15 time steps, want 16`},
		{"NaN in a sequence", "/v1/models/forecast_lstm/predict", seqBody(16, `"NaN"`), 400, "invalid_value", `feature "macd" at time step 3 is NaN`},
		{"malformed JSON", "/v1/models/forecast_mlp/predict", `{"features":`, 400, "bad_request", "malformed JSON"},
		{"empty body", "/v1/models/forecast_mlp/predict", ``, 400, "bad_request", "empty request body"},
		{"unknown field", "/v1/models/forecast_mlp/predict", `{"featurez":{}}`, 400, "bad_request", `unknown field "featurez"`},
		{"no features", "/v1/models/forecast_mlp/predict", `{"ticker":"AAPL"}`, 400, "bad_request", "request has no features"},
		{"both", "/v1/models/forecast_mlp/predict", `{"features":` + full + `,"instances":[` + full + `]}`, 400, "bad_request", "not both"},
		{"too many rows", "/v1/models/forecast_mlp/predict", mustJSON(t, api.PredictRequest{Instances: many}), 400, "row_count", "too many rows: 65 instances, the limit is 64"},
		{"body too large", "/v1/models/forecast_mlp/predict", `{"features":{"a":` + strings.Repeat(" ", 70<<10) + `1}}`, 413, "too_large", "larger than the limit of 65536 bytes"},
		{"negative horizon", "/v1/models/forecast_mlp/predict", `{"horizon":-1,"features":` + full + `}`, 400, "bad_request", `"horizon": must not be negative`},
		{"bad ticker", "/v1/models/forecast_mlp/predict", `{"ticker":"A*","features":` + full + `}`, 400, "bad_request", `field "ticker": "A*" is not a ticker`},
		{"long request id", "/v1/models/forecast_mlp/predict", `{"request_id":"` + strings.Repeat("r", 200) + `","features":` + full + `}`, 400, "bad_request", "at most 128 bytes"},
		{"wrong field type", "/v1/models/forecast_mlp/predict", `{"horizon":"5","features":` + full + `}`, 400, "bad_request", `field "horizon"`},
		{"unknown endpoint", "/v1/nothing", `{}`, 404, "not_found", "no such endpoint"},
		{"array body", "/v1/models/forecast_mlp/predict", `[1,2]`, 400, "bad_request", "the request body must be a JSON object"},
		{"out of range", "/v1/models/forecast_mlp/predict", withFeature(`"macd":1e400`), 400, "invalid_input", "1e400 is out of range"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body, _ := post(t, ts.URL+tt.path, tt.body)
			if code != tt.status {
				t.Fatalf("status %d, want %d: %s", code, tt.status, body)
			}
			var eb api.ErrorBody
			if err := json.Unmarshal(body, &eb); err != nil {
				t.Fatalf("error body %q: %v", body, err)
			}
			if eb.Error.Code != tt.code || !strings.Contains(eb.Error.Message, tt.msg) {
				t.Fatalf("error %+v, want code %q and a message containing %q", eb.Error, tt.code, tt.msg)
			}
		})
	}
}

func TestV2(t *testing.T) {
	ts := startServer(t, testOpts{})
	get := func(path string) (int, string) {
		resp, err := http.Get(ts.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, p := range []string{"/v2/health/live", "/v2/health/ready", "/v2/models/forecast_mlp/ready", "/v2/models/forecast_mlp/versions/v1.0/ready"} {
		if code, body := get(p); code != 200 {
			t.Fatalf("GET %s = %d %s", p, code, body)
		}
	}
	code, body := get("/v2/models/forecast_mlp/versions/v1.0")
	var md api.ModelMetadata
	if err := json.Unmarshal([]byte(body), &md); code != 200 || err != nil {
		t.Fatalf("metadata %d %s %v", code, body, err)
	}
	if md.Name != "forecast_mlp" || md.Inputs[0].Name != "x" || md.Inputs[0].Datatype != "FP32" || md.Inputs[0].Shape[0] != -1 || md.Inputs[0].Shape[1] != 8 {
		t.Fatalf("metadata %+v", md)
	}
	c := &api.Client{BaseURL: ts.URL}
	data := make([]float32, 16)
	for i := range data {
		data[i] = float32(i) / 10
	}
	resp, err := c.Infer(context.Background(), "forecast_mlp", "v1.0", &api.InferRequest{ID: "abc", Inputs: []api.InferTensor{{Name: "x", Shape: []int64{2, 8}, Datatype: "FP32", Data: json.RawMessage(mustJSON(t, data))}}})
	if err != nil {
		t.Fatal(err)
	}
	if resp.ModelVersion != "v1.0" || resp.ID != "abc" || len(resp.Outputs) != 1 || resp.Outputs[0].Shape[0] != 2 {
		t.Fatalf("infer answer %+v", resp)
	}
	// The same rows through the native API give the same numbers.
	var outs []float32
	if err := json.Unmarshal(resp.Outputs[0].Data, &outs); err != nil {
		t.Fatal(err)
	}
	row := api.Features{}
	for i, name := range demo.Features {
		row[name] = api.Scalar(float64(data[8+i]))
	}
	nat, err := c.Predict(context.Background(), "forecast_mlp", &api.PredictRequest{Version: "v1.0", Features: row})
	if err != nil {
		t.Fatal(err)
	}
	if nat.Predictions[0][0] != outs[1] {
		t.Fatalf("native %v, v2 %v", nat.Predictions[0][0], outs[1])
	}
	bad := []struct{ body, msg string }{
		{`{"inputs":[{"name":"x","shape":[1,7],"datatype":"FP32","data":[1,2,3,4,5,6,7]}]}`, `input "x": shape [1 7], model forecast_mlp:v1.0 wants [-1 8]`},
		{`{"inputs":[{"name":"y","shape":[1,8],"datatype":"FP32","data":[1,2,3,4,5,6,7,8]}]}`, `missing input "x"`},
		{`{"inputs":[{"name":"x","shape":[1,8],"datatype":"INT64","data":[1,2,3,4,5,6,7,8]}]}`, `datatype INT64, model forecast_mlp:v1.0 wants FP32`},
		{`{"inputs":[{"name":"x","shape":[1,8],"datatype":"FP32","data":[1,2,3]}]}`, `needs 8 values, data has 3`},
		{`{"inputs":[]}`, `"inputs" is empty`},
	}
	for _, b := range bad {
		code, body, _ := post(t, ts.URL+"/v2/models/forecast_mlp/versions/v1.0/infer", b.body)
		var e api.V2Error
		if code != 400 || json.Unmarshal(body, &e) != nil || !strings.Contains(e.Error, b.msg) {
			t.Errorf("body %s: got %d %s, want 400 containing %q", b.body, code, body, b.msg)
		}
	}
	if code, body, _ := post(t, ts.URL+"/v2/models/nope/infer", `{"inputs":[]}`); code != 400 && code != 404 {
		t.Errorf("unknown model: %d %s", code, body)
	}
}

func TestAdminAuthAndLifecycle(t *testing.T) {
	ts := startServer(t, testOpts{token: "s3cret"})
	anon := &api.Client{BaseURL: ts.URL}
	admin := &api.Client{BaseURL: ts.URL, Token: "s3cret"}
	ctx := context.Background()
	err := anon.Do(ctx, "PUT", "/v1/admin/models/forecast_mlp/split", map[string]any{"split": map[string]float64{"v1.0": 50, "v2.0": 50}}, nil)
	if ae, ok := err.(*api.Error); !ok || ae.Status != 401 {
		t.Fatalf("unauthenticated split: %v", err)
	}
	var out map[string]any
	if err := admin.Do(ctx, "PUT", "/v1/admin/models/forecast_mlp/split", map[string]any{"split": map[string]float64{"v1.0": 60, "v2.0": 30}}, &out); err == nil {
		t.Fatal("a split totalling 90% was accepted")
	} else if ae := err.(*api.Error); ae.Status != 400 {
		t.Fatalf("bad split: %v", err)
	}
	// Upload a new version as raw bytes, promote it, and see it served.
	art, err := demo.MLP(7, demo.Features, 8, 16, 1)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("POST", ts.URL+"/v1/admin/models/forecast_mlp/versions?version=v3.0&features="+strings.Join(demo.Features, ","), bytes.NewReader(art))
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("Authorization", "Bearer s3cret")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 201 {
		t.Fatalf("register: %d", resp.StatusCode)
	}
	if err := admin.Do(ctx, "POST", "/v1/admin/models/forecast_mlp/versions/v3.0/promote", map[string]float64{"traffic_pct": 100}, &out); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		r, err := anon.Predict(ctx, "forecast_mlp", &api.PredictRequest{RequestID: "x", Features: demoFeatures(1)})
		return err == nil && r.Version == "v3.0"
	})
	// A corrupt upload is refused and changes nothing.
	req, _ = http.NewRequest("POST", ts.URL+"/v1/admin/models/forecast_mlp/versions?version=v4.0", strings.NewReader("not onnx"))
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("Authorization", "Bearer s3cret")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Fatalf("corrupt upload: %d", resp.StatusCode)
	}
	if _, err := ts.reg.Get(ctx, registry.Ref{Name: "forecast_mlp", Version: "v4.0"}); err == nil {
		t.Fatal("corrupt upload was registered")
	}
	var hist struct {
		Events []registry.Event `json:"events"`
	}
	if err := admin.Do(ctx, "GET", "/v1/admin/models/forecast_mlp/history", nil, &hist); err != nil {
		t.Fatal(err)
	}
	if n := len(hist.Events); n < 4 {
		t.Fatalf("history has %d events", n)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met after 20s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// load runs closed-loop predict callers until stop is closed and returns
// the number of requests and the failures.
func load(t *testing.T, url string, workers int, useCache bool, stop <-chan struct{}) (total *atomic.Int64, failures *[]string, wait func()) {
	total = new(atomic.Int64)
	var mu sync.Mutex
	var fails []string
	var wg sync.WaitGroup
	tr := &http.Transport{MaxIdleConnsPerHost: workers}
	hc := &http.Client{Transport: tr}
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &api.Client{BaseURL: url, HTTP: hc}
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				_, err := c.Predict(context.Background(), "forecast_mlp", &api.PredictRequest{RequestID: fmt.Sprintf("w%d-%d", w, i), Ticker: "AAPL", Features: demoFeatures(i), NoCache: !useCache})
				total.Add(1)
				if err != nil {
					mu.Lock()
					fails = append(fails, err.Error())
					mu.Unlock()
				}
			}
		}()
	}
	return total, &fails, func() { wg.Wait(); tr.CloseIdleConnections() }
}

func TestHotSwapUnderLoadFailsNoRequest(t *testing.T) {
	ts := startServer(t, testOpts{})
	ctx := context.Background()
	stop := make(chan struct{})
	total, fails, wait := load(t, ts.URL, 8, false, stop)
	art, err := demo.MLP(9, demo.Features, 8, 16, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ts.reg.Register(ctx, registry.RegisterRequest{Name: "forecast_mlp", Version: "v3.0", ONNX: art}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if _, err := ts.reg.Promote(ctx, registry.Ref{Name: "forecast_mlp", Version: "v3.0"}, 50); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	// Move all traffic to v3.0 and archive the old versions: their sessions
	// are drained and closed while requests keep flowing.
	if _, err := ts.reg.SetSplit(ctx, "forecast_mlp", registry.Split{"v3.0": 100}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	for _, v := range []string{"v1.0", "v2.0"} {
		if _, err := ts.reg.Archive(ctx, registry.Ref{Name: "forecast_mlp", Version: v}, false); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wait()
	if len(*fails) > 0 {
		t.Fatalf("%d of %d requests failed during the swap; first: %s", len(*fails), total.Load(), (*fails)[0])
	}
	if total.Load() < 50 {
		t.Fatalf("only %d requests ran", total.Load())
	}
	got := 0
	for range ts.srv.models.Current().Versions("forecast_mlp") {
		got++
	}
	if got != 1 {
		t.Fatalf("%d versions of forecast_mlp loaded after archiving, want 1", got)
	}
	t.Logf("%d requests, 0 failed, across register, promote, split and archive", total.Load())
}

func TestPromoteAndRollbackUnderLoad(t *testing.T) {
	ts := startServer(t, testOpts{})
	ctx := context.Background()
	stop := make(chan struct{})
	total, fails, wait := load(t, ts.URL, 8, false, stop)
	art, _ := demo.MLP(11, demo.Features, 8, 16, 1)
	if _, err := ts.reg.Register(ctx, registry.RegisterRequest{Name: "forecast_mlp", Version: "v3.0", ONNX: art}); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.reg.Promote(ctx, registry.Ref{Name: "forecast_mlp", Version: "v3.0"}, 5); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { s, _ := ts.srv.router.Split("forecast_mlp"); return s["v3.0"] > 0.04 })
	time.Sleep(200 * time.Millisecond)
	if _, err := ts.reg.Rollback(ctx, "forecast_mlp", 0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { s, _ := ts.srv.router.Split("forecast_mlp"); return s["v3.0"] == 0 })
	time.Sleep(200 * time.Millisecond)
	close(stop)
	wait()
	if len(*fails) > 0 {
		t.Fatalf("%d of %d requests failed; first: %s", len(*fails), total.Load(), (*fails)[0])
	}
	s, _ := ts.srv.router.Split("forecast_mlp")
	if s["v1.0"] < 0.79 || s["v1.0"] > 0.81 {
		t.Fatalf("split after rollback %v, want 80/20 again", s)
	}
}

func TestShutdownFinishesInFlight(t *testing.T) {
	ts := startServer(t, testOpts{noCache: true})
	stop := make(chan struct{})
	total, fails, wait := load(t, ts.URL, 16, false, stop)
	time.Sleep(300 * time.Millisecond)
	ts.stop(t) // graceful: in-flight requests complete
	close(stop)
	wait()
	// Requests sent after the listener closed fail to connect; none that
	// was accepted may fail with a server error.
	for _, f := range *fails {
		if strings.Contains(f, "server answered 5") {
			t.Fatalf("an accepted request failed during shutdown: %s", f)
		}
	}
	if total.Load() == 0 {
		t.Fatal("no requests ran")
	}
	if ts.srv.models.Current().Len() != 0 {
		t.Fatal("sessions still loaded after shutdown")
	}
}

func TestMetricsEndpoint(t *testing.T) {
	ts := startServer(t, testOpts{})
	ctx := context.Background()
	c := &api.Client{BaseURL: ts.URL}
	for i := range 3 {
		if _, err := c.Predict(ctx, "forecast_mlp", &api.PredictRequest{RequestID: "m", Features: demoFeatures(1)}); err != nil {
			t.Fatal(err, i)
		}
	}
	// Names that are not loaded never become label values.
	if _, err := c.Predict(ctx, "no_such_model_zz", &api.PredictRequest{RequestID: "m", Features: demoFeatures(1)}); err == nil {
		t.Fatal("predict on an unknown model succeeded")
	}
	if _, err := c.Predict(ctx, "forecast_mlp", &api.PredictRequest{RequestID: "m", Version: "v9.zz", Features: demoFeatures(1)}); err == nil {
		t.Fatal("predict on an unknown version succeeded")
	}
	if _, err := ts.reg.StartCanary(ctx, "forecast_mlp", registry.CanaryPlan{Canary: "v2.0", Baseline: "v1.0", Interval: time.Hour}); err != nil {
		t.Fatal(err)
	}
	var text string
	waitFor(t, func() bool {
		text = scrape(t, ts.URL)
		return strings.Contains(text, `signalforge_canary_state{baseline="v1.0",canary="v2.0",model="forecast_mlp",state="running"} 1`)
	})
	for _, want := range []string{
		"signalforge_requests_total{", "signalforge_cache_hits_total 2", "signalforge_batch_size_bucket", "signalforge_queue_depth_rows",
		`signalforge_version_requests_total{model="forecast_mlp",version="v`, `signalforge_version_nonfinite_total{model="forecast_mlp",version="v`,
		`signalforge_batch_exec_seconds_bucket{model="forecast_mlp",version="v`, `le="0.0001"`, `le="10"`,
		`signalforge_queue_wait_seconds_bucket{model="forecast_mlp",version="v`, `le="5e-06"`,
		`signalforge_compute_seconds_bucket{model="forecast_mlp",version="v`,
		`signalforge_canary_interval_seconds{model="forecast_mlp"} 3600`, `signalforge_canary_last_action_timestamp_seconds{model="forecast_mlp"} `,
		`signalforge_build_info{build_date="`, `go_version="` + runtime.Version() + `"`,
		"signalforge_ready 1", "go_goroutines", "process_resident_memory_bytes",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	// The latency histogram tells versions apart: the answered requests
	// count under the version that answered, the unknown model under
	// _unknown with no version.
	if !regexp.MustCompile(`signalforge_request_duration_seconds_count\{api="v1",cached="(true|false)",model="forecast_mlp",version="v[12]\.0"\} [1-9]`).MatchString(text) {
		t.Error("no request_duration_seconds series with the version that answered")
	}
	if !strings.Contains(text, `signalforge_request_duration_seconds_count{api="v1",cached="false",model="_unknown",version=""} 1`) {
		t.Error("the unknown model's request is not folded into model _unknown")
	}
	for _, leak := range []string{"no_such_model_zz", "v9.zz", "error_rate_pct", "_p99_"} {
		if strings.Contains(text, leak) {
			t.Errorf("/metrics has %q", leak)
		}
	}
	// GET /v2 reports the version build_info does.
	var md api.ServerMetadata
	if err := c.Do(ctx, "GET", "/v2", nil, &md); err != nil {
		t.Fatal(err)
	}
	if md.Version == "" || !strings.Contains(text, `version="`+md.Version+`"} 1`) {
		t.Errorf("GET /v2 version %q is not signalforge_build_info's", md.Version)
	}
}

func scrape(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestMethodNotAllowed(t *testing.T) {
	ts := startServer(t, testOpts{})
	resp, err := http.Get(ts.URL + "/v1/models/forecast_mlp/predict")
	if err != nil {
		t.Fatal(err)
	}
	var eb api.ErrorBody
	json.NewDecoder(resp.Body).Decode(&eb)
	resp.Body.Close()
	if resp.StatusCode != 405 || resp.Header.Get("Allow") == "" || eb.Error.Code != "method_not_allowed" {
		t.Fatalf("GET predict: %d Allow=%q %+v", resp.StatusCode, resp.Header.Get("Allow"), eb)
	}
	code, body, _ := post(t, ts.URL+"/v2/health/ready", "")
	if code != 405 || !strings.Contains(string(body), `"error"`) {
		t.Fatalf("POST ready: %d %s", code, body)
	}
}

// seqBody is a forecast_lstm request with n time steps per feature; bad,
// if set, replaces macd's fourth step.
func seqBody(n int, bad string) string {
	parts := []string{}
	for fi, name := range demo.SeqFeatures {
		steps := make([]string, n)
		for i := range steps {
			steps[i] = fmt.Sprint(float64(i+fi) / 10)
		}
		if bad != "" && name == "macd" {
			steps[3] = bad
		}
		parts = append(parts, fmt.Sprintf("%q:[%s]", name, strings.Join(steps, ",")))
	}
	return `{"features":{` + strings.Join(parts, ",") + `}}`
}

func TestPredictSequenceModel(t *testing.T) {
	ts := startServer(t, testOpts{})
	first, second := 0, 0
	for i, want := range []bool{false, true} {
		code, body, _ := post(t, ts.URL+"/v1/models/forecast_lstm/predict", seqBody(demo.SeqLen, ""))
		var r api.PredictResponse
		if code != 200 || json.Unmarshal(body, &r) != nil {
			t.Fatalf("%d %s", code, body)
		}
		if r.Cached != want || len(r.Predictions) != 1 || len(r.Predictions[0]) != 1 {
			t.Fatalf("request %d: %+v", i, r)
		}
		if i == 0 {
			first = int(r.Predictions[0][0] * 1e6)
		} else {
			second = int(r.Predictions[0][0] * 1e6)
		}
	}
	if first != second {
		t.Fatalf("cached answer %d differs from computed %d", second, first)
	}
}

func TestV2Lenience(t *testing.T) {
	ts := startServer(t, testOpts{})
	url := ts.URL + "/v2/models/forecast_mlp/versions/v1.0/infer"
	// Extension fields are ignored, as OIP v2 clients may send them.
	code, body, _ := post(t, url, `{"inputs":[{"name":"x","shape":[1,8],"datatype":"FP32","data":[1,2,3,4,5,6,7,8],"parameters":{"binary_data":false},"extra":1}],"outputs":[{"name":"y","parameters":{"binary_data":false}}],"foo":"bar"}`)
	if code != 200 {
		t.Fatalf("extension fields: %d %s", code, body)
	}
	code, body, _ = post(t, url, `{"inputs":[{"name":"x","datatype":"FP32","data":[1,2,3,4,5,6,7,8]}]}`)
	if code != 400 || !strings.Contains(string(body), `"shape\" is missing`) {
		t.Fatalf("missing shape: %d %s", code, body)
	}
	for _, h := range [][2]string{{"Content-Encoding", "gzip"}, {"Inference-Header-Content-Length", "40"}} {
		req, _ := http.NewRequest("POST", url, strings.NewReader(`{}`))
		req.Header.Set(h[0], h[1])
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 415 || !strings.Contains(string(b), "not supported") {
			t.Fatalf("%s: %d %s", h[0], resp.StatusCode, b)
		}
	}
}
