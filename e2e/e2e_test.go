// Package e2e tests the built signalforge binary end to end: it builds
// the command, starts `signalforge serve` as its own process on a free
// loopback port, and talks to it over real HTTP and through the CLI.
package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/signalforge/signalforge/api"
	"github.com/signalforge/signalforge/internal/demo"
)

var binPath string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "signalforge-e2e")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binPath = filepath.Join(dir, "signalforge")
	out, err := exec.Command("go", "build", "-o", binPath, "../cmd/signalforge").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "building signalforge: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type proc struct {
	cmd  *exec.Cmd
	url  string
	dir  string
	logs *lockedBuf
	done chan error
}

type lockedBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// serve starts `signalforge serve` on a fresh registry and waits until it
// is ready.
func serve(t *testing.T, args ...string) *proc {
	t.Helper()
	dir := t.TempDir()
	addr := freeAddr(t)
	p := &proc{url: "http://" + addr, dir: dir, logs: &lockedBuf{}, done: make(chan error, 1)}
	p.cmd = exec.Command(binPath, append([]string{"serve", "--addr", addr, "--registry", filepath.Join(dir, "models")}, args...)...)
	p.cmd.Dir = dir
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	p.cmd.Env = append(os.Environ(), "SIGNALFORGE_ROOT="+repoRoot(t))
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("server log:\n%s", p.logs.String())
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(p.url + "/v2/health/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return p
			}
		}
		select {
		case err := <-p.done:
			t.Fatalf("server exited early: %v\n%s", err, p.logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("server not ready after 60s\n%s", p.logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func repoRoot(t *testing.T) string {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Dir(wd)
}

// cli runs the signalforge binary and returns its combined output.
func cli(t *testing.T, p *proc, args ...string) string {
	t.Helper()
	cmd := exec.Command(binPath, args...)
	cmd.Dir = p.dir
	cmd.Env = append(os.Environ(), "SIGNALFORGE_ROOT="+repoRoot(t), "SIGNALFORGE_REGISTRY="+filepath.Join(p.dir, "models"), "SIGNALFORGE_SERVER="+p.url)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("signalforge %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func features(seed int) api.Features {
	f := api.Features{}
	for i, name := range demo.Features {
		f[name] = api.Scalar(float64(seed%89)/7 + float64(i))
	}
	return f
}

func TestServeEndToEnd(t *testing.T) {
	p := serve(t)
	ctx := context.Background()
	c := &api.Client{BaseURL: p.url}

	// Native single and batch prediction; a repeat is a cache hit.
	one := &api.PredictRequest{RequestID: "req_123", Ticker: "AAPL", Horizon: 5, Features: features(1)}
	r1, err := c.Predict(ctx, demo.ModelName, one)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := c.Predict(ctx, demo.ModelName, one)
	if err != nil {
		t.Fatal(err)
	}
	if r1.Cached || !r2.Cached || r1.Predictions[0][0] != r2.Predictions[0][0] {
		t.Fatalf("repeat: first %+v, second %+v", r1, r2)
	}
	rb, err := c.Predict(ctx, demo.ModelName, &api.PredictRequest{Instances: []api.Features{features(1), features(2)}, Version: r1.Version})
	if err != nil {
		t.Fatal(err)
	}
	if len(rb.Predictions) != 2 || rb.Predictions[0][0] != r1.Predictions[0][0] {
		t.Fatalf("batch %+v vs single %+v", rb, r1)
	}

	// OIP v2 metadata and infer.
	resp, err := http.Get(p.url + "/v2/models/" + demo.ModelName)
	if err != nil {
		t.Fatal(err)
	}
	var md api.ModelMetadata
	json.NewDecoder(resp.Body).Decode(&md)
	resp.Body.Close()
	if len(md.Inputs) != 1 || md.Inputs[0].Shape[1] != int64(len(demo.Features)) {
		t.Fatalf("metadata %+v", md)
	}
	data := make([]float64, len(demo.Features))
	for i, name := range demo.Features {
		data[i] = features(1)[name].Values[0]
	}
	raw, _ := json.Marshal(data)
	ir, err := c.Infer(ctx, demo.ModelName, r1.Version, &api.InferRequest{Inputs: []api.InferTensor{{Name: "x", Shape: []int64{1, int64(len(data))}, Datatype: "FP32", Data: raw}}})
	if err != nil {
		t.Fatal(err)
	}
	var outs []float32
	json.Unmarshal(ir.Outputs[0].Data, &outs)
	if len(outs) != 1 || outs[0] != r1.Predictions[0][0] {
		t.Fatalf("v2 %v vs native %v", outs, r1.Predictions)
	}

	// The split is observed over many request ids.
	counts := map[string]int{}
	for i := range 500 {
		r, err := c.Predict(ctx, demo.ModelName, &api.PredictRequest{RequestID: fmt.Sprintf("id-%d", i), Features: features(i), NoCache: true})
		if err != nil {
			t.Fatal(err)
		}
		counts[r.Version]++
	}
	if counts["v2.0"] < 60 || counts["v2.0"] > 140 {
		t.Fatalf("v2.0 served %d of 500 (want ~100 at 80/20): %v", counts["v2.0"], counts)
	}

	// The predict CLI talks to the same server.
	out := cli(t, p, "predict", "--model", demo.ModelName, "--request-id", "req_123", "--ticker", "AAPL", "--horizon", "5",
		"-f", "rsi_14=1", "-f", "macd=2", "-f", "macd_signal=3", "-f", "bb_width=4", "-f", "volume_z=5", "-f", "ret_1d=6", "-f", "ret_5d=7", "-f", "atr_14=8")
	if !strings.Contains(out, demo.ModelName) {
		t.Fatalf("predict CLI output:\n%s", out)
	}
}

// TestCLIChangesReachRunningServer changes the registry with the models CLI
// (another process) while the server runs under load: the new version is
// loaded and served, a rollback goes back, and no request fails.
func TestCLIChangesReachRunningServer(t *testing.T) {
	p := serve(t)
	art, err := demo.MLP(42, demo.Features, len(demo.Features), 16, 1)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(p.dir, "v3.onnx")
	if err := os.WriteFile(path, art, 0o644); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var total, failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	seen := sync.Map{}
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &api.Client{BaseURL: p.url}
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				r, err := c.Predict(context.Background(), demo.ModelName, &api.PredictRequest{RequestID: fmt.Sprintf("w%d-%d", w, i), Features: features(i), NoCache: true})
				total.Add(1)
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				seen.Store(r.Version, true)
			}
		}()
	}
	cli(t, p, "models", "register", "--name", demo.ModelName, "--version", "v3.0", path)
	cli(t, p, "models", "promote", "--traffic", "50", demo.ModelName+":v3.0")
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, ok := seen.Load("v3.0"); ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("v3.0 never served after the CLI promoted it")
		}
		time.Sleep(20 * time.Millisecond)
	}
	cli(t, p, "models", "traffic", "--rollback", demo.ModelName)
	time.Sleep(500 * time.Millisecond)
	close(stop)
	wg.Wait()
	if n := failed.Load(); n > 0 {
		t.Fatalf("%d of %d requests failed; first: %v", n, total.Load(), firstErr.Load())
	}
	hist := cli(t, p, "models", "history", demo.ModelName)
	if !strings.Contains(hist, "v3.0") {
		t.Fatalf("history lacks v3.0:\n%s", hist)
	}
	t.Logf("%d requests, 0 failed, across a CLI register, promote and rollback", total.Load())
}

// TestSIGTERMCompletesInFlight sends SIGTERM under load: every request the
// server accepted is answered, and the process exits 0.
func TestSIGTERMCompletesInFlight(t *testing.T) {
	p := serve(t, "--no-cache")
	var ok, serverErr atomic.Int64
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			hc := &http.Client{Transport: &http.Transport{}}
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				body, _ := json.Marshal(api.PredictRequest{RequestID: fmt.Sprintf("%d-%d", w, i), Features: features(i)})
				resp, err := hc.Post(p.url+"/v1/models/"+demo.ModelName+"/predict", "application/json", strings.NewReader(string(body)))
				if err != nil {
					continue // not accepted: the listener is closed
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == 200 {
					ok.Add(1)
				} else if resp.StatusCode >= 500 {
					serverErr.Add(1)
				}
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	var exitErr error
	select {
	case exitErr = <-p.done:
	case <-time.After(30 * time.Second):
		t.Fatal("server did not exit within 30s of SIGTERM")
	}
	close(stop)
	wg.Wait()
	if exitErr != nil {
		t.Fatalf("server exit: %v\n%s", exitErr, p.logs.String())
	}
	if serverErr.Load() > 0 {
		t.Fatalf("%d accepted requests got a 5xx during shutdown", serverErr.Load())
	}
	if ok.Load() == 0 {
		t.Fatal("no request succeeded before SIGTERM")
	}
	logs := p.logs.String()
	for _, want := range []string{"shutting down", "shut down"} {
		if !strings.Contains(logs, want) {
			t.Fatalf("log lacks %q:\n%s", want, logs)
		}
	}
	sc := bufio.NewScanner(strings.NewReader(logs))
	for sc.Scan() {
		if strings.Contains(sc.Text(), "level=ERROR") {
			t.Fatalf("error logged during shutdown: %s", sc.Text())
		}
	}
	t.Logf("%d requests answered 200 before and during shutdown, 0 server errors", ok.Load())
}
