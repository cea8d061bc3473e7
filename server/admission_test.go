package server

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/signalforge/signalforge/api"
	"github.com/signalforge/signalforge/infer"
	"github.com/signalforge/signalforge/infer/ort"
	"github.com/signalforge/signalforge/internal/demo"
	"github.com/signalforge/signalforge/onnx"
	"github.com/signalforge/signalforge/onnx/onnxtest"
	"github.com/signalforge/signalforge/registry"
	"github.com/signalforge/signalforge/registry/registrytest"
)

// hugeInputModel is onnxtest.HugeInput: an input declared [batch, rows, 4].
func hugeInputModel(t *testing.T, rows int64) []byte {
	t.Helper()
	data, err := onnxtest.HugeInput(rows)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func get(t *testing.T, url string) (int, []byte) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// mustServeDemo checks the server still answers its demo model.
func mustServeDemo(t *testing.T, ts *testServer) {
	t.Helper()
	c := &api.Client{BaseURL: ts.URL}
	resp, err := c.Predict(context.Background(), demo.ModelName, &api.PredictRequest{Features: demoFeatures(3)})
	if err != nil || len(resp.Predictions) != 1 {
		t.Fatalf("the demo model stopped serving: %+v, %v", resp, err)
	}
	select {
	case err := <-ts.done:
		t.Fatalf("the server stopped: %v", err)
	default:
	}
}

// TestRegisterHugeInputRefusedWhileServing (D2): registering a model whose
// input is declared [batch, 100000000, 4] is refused with the reason —
// by another process's registry with the CLI's validator, and by an admin
// upload to the server — while the server following that registry stays
// up and keeps serving its other models. Nothing is registered.
func TestRegisterHugeInputRefusedWhileServing(t *testing.T) {
	ts := startServer(t, testOpts{noCache: true, token: "admin-secret"})
	ctx := context.Background()
	huge := hugeInputModel(t, 100000000)

	// The CLI: its own engine and registry handle on the same folder.
	eng, err := ort.New(ort.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	cli, err := registry.Open(ctx, registry.Config{Dir: ts.dir, Validator: registry.EngineValidator(eng)})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	_, err = cli.Register(ctx, registry.RegisterRequest{Name: "huge", ONNX: huge, Status: registry.StatusProduction, Traffic: 100})
	if !errors.Is(err, infer.ErrWarmupMemory) || !errors.Is(err, registry.ErrInvalidArtifact) {
		t.Fatalf("Register = %v, want a warm-up memory refusal", err)
	}
	for _, want := range []string{`input "x" declared [batch,100000000,4]`, "1600000000 bytes", "warm-up batch 1", "1073741824 bytes"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("refusal %q does not say %q", err, want)
		}
	}
	t.Logf("CLI registration refused: %v", err)

	// The admin upload.
	req, _ := http.NewRequest("POST", ts.URL+"/v1/admin/models/huge/versions?status=production&traffic_pct=100", strings.NewReader(string(huge)))
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("Authorization", "Bearer admin-secret")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), `input \"x\" declared [batch,100000000,4]`) {
		t.Fatalf("admin upload: %d %s", resp.StatusCode, body)
	}

	if _, err := ts.reg.Versions(ctx, "huge"); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("huge is in the registry: %v", err)
	}
	mustServeDemo(t, ts)
	if code, b := get(t, ts.URL+"/v2/health/ready"); code != http.StatusOK {
		t.Errorf("ready = %d %s", code, b)
	}
}

// writeUnchecked commits a production version at 100% straight through a
// second FileStore on the server's folder, as a registry with no admission
// check (an older version of SignalForge, a hand edit) would have.
func writeUnchecked(t *testing.T, dir, name string, artifact []byte, features []string) {
	t.Helper()
	registrytest.WriteUnchecked(t, dir, registry.Ref{Name: name, Version: "v1"}, registry.StatusProduction, 100, artifact, features)
}

// TestUnloadableVersionsMarkedFailed (D2, D3 on the server side): versions
// that are in the registry but cannot load — one declaring a 51 GB warm-up
// (the old server allocated it and died, on every restart), one whose
// weights are external data at a relative path that does not exist beside
// the stored artifact (the old server answered 404 with readiness green),
// and one whose artifact is not a model — never take the server down: the
// other models keep serving, each bad version is "failed" with its error
// in /v1/models, in metrics and in predict's 503, and readiness is false
// while a model with production traffic has no loadable version.
func TestUnloadableVersionsMarkedFailed(t *testing.T) {
	ts := startServer(t, testOpts{noCache: true})

	writeUnchecked(t, ts.dir, "huge", hugeInputModel(t, 100000000), []string{"a", "b", "c", "d"})
	ext := onnxtest.MustMLP(1, 2, 1)
	blob, err := onnxtest.Externalize(ext.Model, "weights.bin")
	if err != nil {
		t.Fatal(err)
	}
	// Beside the test, as it was beside the registering CLI: the stored
	// artifact is elsewhere, so the server does not find it.
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "weights.bin"), blob, 0o644); err != nil {
		t.Fatal(err)
	}
	extBytes, _ := onnx.Marshal(ext.Model)
	writeUnchecked(t, ts.dir, "ext", extBytes, []string{"f0", "f1"})
	writeUnchecked(t, ts.dir, "garbage", []byte("this is not an ONNX model"), []string{"a"})

	type listing struct {
		Models []struct {
			Name     string `json:"name"`
			Versions []struct {
				Version   string `json:"version"`
				State     string `json:"state"`
				LoadError string `json:"load_error"`
				Loaded    bool   `json:"loaded"`
			} `json:"versions"`
		} `json:"models"`
	}
	states := func() map[string]string {
		_, b := get(t, ts.URL+"/v1/models")
		var l listing
		if err := json.Unmarshal(b, &l); err != nil {
			t.Fatalf("/v1/models: %v: %s", err, b)
		}
		out := map[string]string{}
		for _, m := range l.Models {
			for _, v := range m.Versions {
				out[m.Name+":"+v.Version] = v.State + " " + v.LoadError
			}
		}
		return out
	}
	waitFor(t, func() bool {
		s := states()
		return strings.HasPrefix(s["huge:v1"], "failed") && strings.HasPrefix(s["ext:v1"], "failed") && strings.HasPrefix(s["garbage:v1"], "failed")
	})
	s := states()
	for ref, want := range map[string]string{
		"huge:v1":                `input "x" declared [batch,100000000,4] needs 1600000000 bytes`,
		"ext:v1":                 "weights.bin",
		"garbage:v1":             "ort:",
		demo.ModelName + ":v1.0": "loaded",
	} {
		if !strings.Contains(s[ref], want) {
			t.Errorf("/v1/models %s = %q, want it to contain %q", ref, s[ref], want)
		}
	}
	t.Logf("/v1/models states: %q", s)
	_, b := get(t, ts.URL+"/v1/models/ext")
	if !strings.Contains(string(b), `"state":"failed"`) {
		t.Errorf("/v1/models/ext = %s", b)
	}

	mustServeDemo(t, ts)

	code, b := get(t, ts.URL+"/v2/health/ready")
	if code != http.StatusServiceUnavailable || !strings.Contains(string(b), `"model":"ext"`) || !strings.Contains(string(b), `"model":"huge"`) {
		t.Errorf("/v2/health/ready = %d %s", code, b)
	}
	if code, b := get(t, ts.URL+"/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz = %d %s", code, b)
	}
	if code, b := get(t, ts.URL+"/v2/models/ext/ready"); code != http.StatusServiceUnavailable || !strings.Contains(string(b), `"ready":false`) {
		t.Errorf("/v2/models/ext/ready = %d %s", code, b)
	}
	if code, b := get(t, ts.URL+"/v2/models/"+demo.ModelName+"/ready"); code != http.StatusOK {
		t.Errorf("/v2/models/%s/ready = %d %s", demo.ModelName, code, b)
	}
	code, b, _ = post(t, ts.URL+"/v1/models/ext/predict", `{"features":{"f0":1,"f1":2}}`)
	if code != http.StatusServiceUnavailable || !strings.Contains(string(b), "v1 failed to load") {
		t.Errorf("predict on ext = %d %s", code, b)
	}
	code, b, _ = post(t, ts.URL+"/v1/models/huge/predict", `{"version":"v1","features":{"a":1,"b":1,"c":1,"d":1}}`)
	if code != http.StatusServiceUnavailable || !strings.Contains(string(b), "failed to load") {
		t.Errorf("pinned predict on huge = %d %s", code, b)
	}

	_, b = get(t, ts.URL+"/metrics")
	for _, want := range []string{
		`signalforge_model_version_failed{model="ext",version="v1"} 1`,
		`signalforge_model_version_failed{model="huge",version="v1"} 1`,
		`signalforge_model_load_failures_total{model="garbage",version="v1"}`,
		"signalforge_ready 0",
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	// Archiving the bad versions (with allow_empty) makes the server ready
	// again; it never stopped.
	for _, name := range []string{"huge", "ext", "garbage"} {
		if _, err := ts.reg.Archive(context.Background(), registry.Ref{Name: name, Version: "v1"}, true, registry.AllowEmpty()); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, func() bool { code, _ := get(t, ts.URL+"/v2/health/ready"); return code == http.StatusOK })
	mustServeDemo(t, ts)
}
