package main

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/signalforge/signalforge/infer/ort"
	"github.com/signalforge/signalforge/internal/demo"
	"github.com/signalforge/signalforge/registry"
	"github.com/signalforge/signalforge/server"
)

// startDemoServer serves the demo models as `make run` does, on a real
// ONNX Runtime, and returns the base URL.
func startDemoServer(t *testing.T) string { return serveDemo(t, server.Config{}) }

// serveDemo serves the demo models on a real ONNX Runtime with cfg (its
// Registry, Engine and Logger are filled in; staging versions are served)
// on a loopback port until the test ends, and returns the base URL once
// the server is ready.
func serveDemo(t *testing.T, cfg server.Config) string {
	t.Helper()
	ctx := t.Context()
	eng, err := ort.New(ort.Config{})
	if err != nil {
		t.Fatalf("ONNX Runtime is required (run `make deps`): %v", err)
	}
	t.Cleanup(func() { eng.Close() })
	reg, err := registry.Open(ctx, registry.Config{Dir: t.TempDir(), Validator: registry.EngineValidator(eng)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	if seeded, err := demo.Seed(ctx, reg); err != nil || !seeded {
		t.Fatalf("demo.Seed = %v, %v", seeded, err)
	}
	cfg.Registry, cfg.Engine, cfg.ServeStaging = reg, eng, true
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	srv, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(sctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	for deadline := time.Now().Add(30 * time.Second); !srv.Ready(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("server not ready after 30s")
		}
	}
	return "http://" + ln.Addr().String()
}

func loadtestRun(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	e := &env{stdout: &out, stderr: &errb, getenv: func(string) string { return "" }}
	code = run(context.Background(), e, append([]string{"loadtest"}, args...))
	return code, out.String(), errb.String()
}

func TestLoadtestAgainstTheDemoServer(t *testing.T) {
	base := startDemoServer(t)
	common := []string{"--server", base, "--duration", "1s", "--warmup", "0"}

	t.Run("table", func(t *testing.T) {
		code, out, stderr := loadtestRun(t, append(common, "--model", "forecast_mlp", "--concurrency", "1,4", "--warmup", "200ms")...)
		if code != 0 {
			t.Fatalf("exit %d, stderr:\n%s", code, stderr)
		}
		if !strings.Contains(stderr, "concurrency 1 (1/2)") || !strings.Contains(stderr, "concurrency 4 (2/2)") {
			t.Errorf("no progress lines on stderr:\n%s", stderr)
		}
		var rows [][]string
		for _, l := range strings.Split(out, "\n") {
			f := strings.Fields(l)
			if len(f) >= 9 && (f[0] == "1" || f[0] == "4") {
				rows = append(rows, f)
			}
		}
		if len(rows) != 2 || !strings.Contains(out, "batch size") {
			t.Fatalf("want a table with two steps:\n%s", out)
		}
		for _, r := range rows {
			// concurrency requests req/s p50 p90 p99 batch queue errors
			if r[2] == "0" || r[6] == "-" || r[6] == "0.00" || r[8] != "0" {
				t.Errorf("row %v: want non-zero req/s, a batch size from /metrics, no errors\n%s", r, out)
			}
		}
	})

	t.Run("json and svg", func(t *testing.T) {
		svg := filepath.Join(t.TempDir(), "lt.svg")
		code, out, stderr := loadtestRun(t, append(common, "--model", "forecast_mlp", "--concurrency", "1,2", "--format", "json", "--svg", svg, "--quiet")...)
		if code != 0 {
			t.Fatalf("exit %d, stderr:\n%s", code, stderr)
		}
		if stderr != "" {
			t.Errorf("--quiet, yet stderr:\n%s", stderr)
		}
		var rep loadtestReport
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			t.Fatalf("output is not JSON: %v\n%s", err, out)
		}
		if len(rep.Steps) != 2 || rep.Model != "forecast_mlp" || rep.API != "native" || rep.Mode != "concurrency" {
			t.Fatalf("report %+v", rep)
		}
		resp, err := http.Get(base + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		m, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		hasQW := bytes.Contains(m, []byte("signalforge_queue_wait_seconds"))
		for _, s := range rep.Steps {
			if s.RPS <= 0 || s.Requests == 0 || s.Errors != 0 || s.MeanBatchSize == nil || *s.MeanBatchSize < 1 {
				t.Errorf("step %+v: want requests, no errors, a mean batch size ≥ 1", s)
			}
			if s.ServerBatchRows == nil || *s.ServerBatchRows < float64(s.Requests) {
				t.Errorf("step at %d: %v batch rows for %d requests of 1 row (none cached)", s.Concurrency, s.ServerBatchRows, s.Requests)
			}
			if hasQW != (s.QueueWaitMS != nil) {
				t.Errorf("queue wait %v, server exports it: %v", s.QueueWaitMS, hasQW)
			}
		}
		b, err := os.ReadFile(svg)
		if err != nil {
			t.Fatal(err)
		}
		dec := xml.NewDecoder(bytes.NewReader(b))
		var root string
		texts := map[string]int{}
		paths := 0
		var inText bool
		for {
			tok, err := dec.Token()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("SVG is not XML: %v", err)
			}
			switch tk := tok.(type) {
			case xml.StartElement:
				if root == "" {
					root = tk.Name.Local
				}
				inText = tk.Name.Local == "text"
				if tk.Name.Local == "path" {
					paths++
				}
			case xml.CharData:
				if inText {
					texts[strings.TrimSpace(string(tk))]++
				}
			case xml.EndElement:
				inText = false
			}
		}
		if root != "svg" {
			t.Errorf("root element %q, want svg", root)
		}
		// Each series has its legend entry and its axis label.
		if texts[chartThroughput] < 2 || texts[chartP99] < 2 || paths < 4 {
			t.Errorf("SVG texts %v, %d paths: want both series, throughput and p99", texts, paths)
		}
	})

	t.Run("v2 sequence model", func(t *testing.T) {
		code, out, stderr := loadtestRun(t, append(common, "--model", "forecast_lstm", "--api", "v2", "--concurrency", "2", "--rows", "2", "--format", "json")...)
		if code != 0 {
			t.Fatalf("exit %d, stderr:\n%s", code, stderr)
		}
		var rep loadtestReport
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			t.Fatal(err)
		}
		if len(rep.Steps) != 1 || rep.Steps[0].RPS <= 0 || rep.Steps[0].Errors != 0 || !strings.Contains(rep.Bodies, "[2 16 4]") {
			t.Fatalf("report %+v", rep)
		}
	})

	t.Run("rate", func(t *testing.T) {
		code, out, stderr := loadtestRun(t, append(common, "--model", "forecast_mlp", "--rate", "50", "--format", "json")...)
		if code != 0 {
			t.Fatalf("exit %d, stderr:\n%s", code, stderr)
		}
		var rep loadtestReport
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			t.Fatal(err)
		}
		if rep.Mode != "rate" || len(rep.Steps) != 1 || rep.Steps[0].Rate != 50 || rep.Steps[0].Requests < 1 || rep.Steps[0].Requests > 50 {
			t.Fatalf("report %+v: want one step at 50/s, at most 50 requests in 1s", rep)
		}
	})

	t.Run("file bodies", func(t *testing.T) {
		// Every request pins v2.0 and has 3 rows, skipping the cache: all
		// of the step's batch rows are then v2.0's, 3 a request.
		file := filepath.Join(t.TempDir(), "req.jsonl")
		row := `{"rsi_14": 65, "macd": 0.5, "macd_signal": 0.4, "bb_width": 0.08, "volume_z": 1.3, "ret_1d": 0.004, "ret_5d": 0.012, "atr_14": 2.1}`
		line := `{"version": "v2.0", "no_cache": true, "instances": [` + row + "," + row + "," + row + "]}\n"
		if err := os.WriteFile(file, []byte(line+line), 0o644); err != nil {
			t.Fatal(err)
		}
		code, out, stderr := loadtestRun(t, append(common, "--model", "forecast_mlp:v2.0", "--concurrency", "2", "--body", file, "--format", "json")...)
		if code != 0 {
			t.Fatalf("exit %d, stderr:\n%s", code, stderr)
		}
		var rep loadtestReport
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			t.Fatal(err)
		}
		s := rep.Steps[0]
		if !strings.Contains(rep.Bodies, "2 requests") || s.Errors != 0 || s.ServerBatchRows == nil || *s.ServerBatchRows != float64(3*s.Requests) {
			t.Fatalf("bodies %q, step %+v rows %v: want 3 rows of v2.0 a request", rep.Bodies, s, s.ServerBatchRows)
		}
	})

	t.Run("every request refused", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "bad.json")
		if err := os.WriteFile(file, []byte(`{"features": {"rsi_14": 1}}`), 0o644); err != nil {
			t.Fatal(err)
		}
		code, out, stderr := loadtestRun(t, append(common, "--model", "forecast_mlp", "--concurrency", "1", "--body", file)...)
		if code != 1 || !strings.Contains(out, "http_400") || !strings.Contains(stderr, "every request failed at concurrency 1") {
			t.Fatalf("exit %d, stdout:\n%s\nstderr:\n%s", code, out, stderr)
		}
	})

	t.Run("unknown model", func(t *testing.T) {
		code, _, stderr := loadtestRun(t, append(common, "--model", "nope")...)
		if code != 1 || !strings.Contains(stderr, `model "nope" is not on the server`) {
			t.Fatalf("exit %d, stderr:\n%s", code, stderr)
		}
	})
}

func TestLoadtestUnreachableServer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	code, out, stderr := loadtestRun(t, "--server", "http://"+addr, "--model", "forecast_mlp")
	if code != 1 || out != "" || !strings.Contains(stderr, "cannot reach the server at http://"+addr) || strings.Count(stderr, "\n") != 1 {
		t.Fatalf("exit %d, stdout %q, stderr:\n%s", code, out, stderr)
	}
}

func TestLoadtestCommandLineMistakes(t *testing.T) {
	dir := t.TempDir()
	rows := filepath.Join(dir, "rows.json")
	if err := os.WriteFile(rows, []byte(`[{"rsi_14": 1}]`), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		args []string
		want string
	}{
		{[]string{}, "--model is required"},
		{[]string{"--model", "m", "--bogus"}, "flag provided but not defined: -bogus"},
		{[]string{"--model", "m", "--duration", "x"}, "-duration"},
		{[]string{"--model", "m", "--duration", "0s"}, "--duration"},
		{[]string{"--model", "m", "--concurrency", "0"}, "--concurrency"},
		{[]string{"--model", "m", "--concurrency", "1,a"}, "--concurrency"},
		{[]string{"--model", "m", "--rate", "-5"}, "--rate"},
		{[]string{"--model", "m", "--rate", "10", "--concurrency", "1,2"}, "with --rate, --concurrency is one number"},
		{[]string{"--model", "m", "--api", "grpc"}, "--api"},
		{[]string{"--model", "m", "--format", "xml"}, "--format"},
		{[]string{"--model", "m", "--rows", "0"}, "--rows"},
		{[]string{"--model", "bad name"}, "not valid"},
		{[]string{"--model", "m", "extra"}, "unexpected argument"},
		{[]string{"--model", "m", "--server", "http://10.1.2.3:8080"}, "this machine only"},
		{[]string{"--model", "m", "--server", "ftp://127.0.0.1"}, "--server"},
		{[]string{"--model", "m", "--body", filepath.Join(dir, "missing.json")}, "--body"},
		{[]string{"--model", "m", "--body", rows}, "an array here is a list of requests"},
	}
	for _, tt := range tests {
		code, out, stderr := loadtestRun(t, tt.args...)
		lines := strings.Split(strings.TrimSpace(stderr), "\n")
		if code != 2 || out != "" || len(lines) != 2 || !strings.HasPrefix(lines[0], "signalforge loadtest: ") ||
			!strings.Contains(lines[0], tt.want) || !strings.Contains(lines[1], "signalforge loadtest -h") {
			t.Errorf("%v: exit %d, stdout %q, stderr:\n%s\nwant exit 2 and one line naming %q", tt.args, code, out, stderr, tt.want)
		}
	}
}

func TestLoadtestHelp(t *testing.T) {
	code, _, stderr := loadtestRun(t, "-h")
	if code != 0 || !strings.Contains(stderr, "Examples") || !strings.Contains(stderr, "--concurrency") || !strings.Contains(stderr, "signalforge loadtest --model forecast_mlp") {
		t.Fatalf("exit %d, help:\n%s", code, stderr)
	}
}
