package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/signalforge/signalforge/onnx/onnxtest"
)

func benchRun(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	e := &env{stdout: &out, stderr: &errb, getenv: os.Getenv}
	code = run(context.Background(), e, append([]string{"bench"}, args...))
	return code, out.String(), errb.String()
}

func TestBenchDemoTable(t *testing.T) {
	code, out, stderr := benchRun(t, "--duration", "20ms", "--batch", "1,8")
	if code != 0 {
		t.Fatalf("exit %d, stderr:\n%s", code, stderr)
	}
	for _, want := range []string{"demo MLP 100-50-10", "x float32 [batch,100]", "ONNX Runtime 1.30.0", "median µs", "p99 µs", "samples/s"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	// One table row per batch size, starting with the batch.
	rows := 0
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 6 && (f[0] == "1" || f[0] == "8") {
			rows++
		}
	}
	if rows != 2 {
		t.Errorf("%d result rows, want 2:\n%s", rows, out)
	}
}

func TestBenchModelJSON(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.onnx")
	if err := onnxtest.MustMLP(2, 6, 4, 1).Save(path); err != nil {
		t.Fatal(err)
	}
	code, out, stderr := benchRun(t, "--duration", "20ms", "--batch", "2,3", "--threads", "2", "--concurrency", "2", "--json", path)
	if code != 0 {
		t.Fatalf("exit %d, stderr:\n%s", code, stderr)
	}
	var rep benchReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out)
	}
	if rep.Model != path || rep.IntraOpThreads != 2 || rep.Concurrency != 2 || len(rep.Results) != 2 {
		t.Fatalf("report %+v", rep)
	}
	for i, r := range rep.Results {
		if r.Batch != []int{2, 3}[i] || r.Concurrency != 2 || r.Calls < 20 || r.Median <= 0 || r.P99 < r.Median || r.SamplesPerSec <= 0 {
			t.Errorf("result %d = %+v", i, r)
		}
	}
}

func TestBenchUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"--batch", "0"},
		{"--batch", "1,x"},
		{"--threads", "0"},
		{"--concurrency", "0"},
		{"--demo", "model.onnx"},
		{"a.onnx", "b.onnx"},
	} {
		if code, _, _ := benchRun(t, args...); code != 2 {
			t.Errorf("bench %q: exit %d, want 2", args, code)
		}
	}
	if code, _, stderr := benchRun(t, filepath.Join(t.TempDir(), "missing.onnx")); code != 1 || !strings.Contains(stderr, "missing.onnx") {
		t.Errorf("bench missing.onnx: exit %d, stderr %q", code, stderr)
	}
}

func TestThousands(t *testing.T) {
	for n, want := range map[int64]string{0: "0", 999: "999", 1000: "1,000", 1234567: "1,234,567"} {
		if got := thousands(n); got != want {
			t.Errorf("thousands(%d) = %q, want %q", n, got, want)
		}
	}
}
