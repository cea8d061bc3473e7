package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/signalforge/signalforge/api"
	"github.com/signalforge/signalforge/internal/demo"
)

// slowClient sends a request's headers and then its body one byte every
// 50ms (a slowloris body), until stop is called or the connection breaks.
type slowClient struct {
	conn net.Conn
	br   *bufio.Reader
	stop chan struct{}
	done chan struct{}
}

func startSlowClient(t *testing.T, url, method, path string, header string) *slowClient {
	t.Helper()
	addr := strings.TrimPrefix(url, "http://")
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	const bodyLen = 100000
	fmt.Fprintf(conn, "%s %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n{", method, path, addr, bodyLen, header)
	c := &slowClient{conn: conn, br: bufio.NewReader(conn), stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(c.done)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for range bodyLen - 2 {
			select {
			case <-c.stop:
				return
			case <-tick.C:
			}
			if _, err := conn.Write([]byte(" ")); err != nil {
				return // the server closed the connection
			}
		}
	}()
	t.Cleanup(c.close)
	return c
}

func (c *slowClient) close() {
	select {
	case <-c.stop:
	default:
		close(c.stop)
	}
	<-c.done
}

// response reads the server's answer (failing after limit).
func (c *slowClient) response(t *testing.T, limit time.Duration) (int, string) {
	t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(limit))
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		t.Fatalf("no answer within %v: %v", limit, err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, string(b)
}

// closedWithin reports whether the server closed the connection before
// limit passed (while the client kept sending).
func (c *slowClient) closedWithin(limit time.Duration) bool {
	c.conn.SetReadDeadline(time.Now().Add(limit))
	_, err := io.Copy(io.Discard, c.br) // returns at EOF or on a reset
	var ne net.Error
	return !(errors.As(err, &ne) && ne.Timeout())
}

func shortTimeouts(c *Config) {
	c.Timeouts = Timeouts{Probe: 300 * time.Millisecond, Body: 300 * time.Millisecond}
}

// TestSlowBodyOnProbeIsCutOff: an unauthenticated route without a body
// (health) must not let a client hold its connection by trickling a body.
func TestSlowBodyOnProbeIsCutOff(t *testing.T) {
	ts := startServer(t, testOpts{noCache: true, mutate: shortTimeouts})
	for _, path := range []string{"/healthz", "/v2/health/ready", "/no/such/path"} {
		c := startSlowClient(t, ts.URL, "GET", path, "")
		if !c.closedWithin(10 * time.Second) {
			t.Errorf("GET %s with a trickling body: connection still open after 10s (probe timeout 300ms)", path)
		}
		c.close()
	}
}

// TestSlowBodyOnAdminGets408: admin routes bound their bodies too, before
// and after the token check.
func TestSlowBodyOnAdminGets408(t *testing.T) {
	for _, header := range []string{"", "Authorization: Bearer s3cret\r\n"} {
		ts := startServer(t, testOpts{noCache: true, token: "s3cret", mutate: shortTimeouts})
		c := startSlowClient(t, ts.URL, "PUT", "/v1/admin/models/forecast_mlp/split", header)
		code, body := c.response(t, 10*time.Second)
		if header == "" {
			if code != http.StatusUnauthorized {
				t.Fatalf("without a token: %d %s", code, body)
			}
		} else if code != http.StatusRequestTimeout || !strings.Contains(body, "request body not received within 300ms") {
			t.Fatalf("slow admin body: %d %s, want 408", code, body)
		}
		if !c.closedWithin(10 * time.Second) {
			t.Fatal("connection still open after the answer")
		}
	}
}

// TestSlowPredictBody408: a body that misses the body timeout is a 408
// with a message that names the budget and no socket address.
func TestSlowPredictBody408(t *testing.T) {
	ts := startServer(t, testOpts{noCache: true, mutate: shortTimeouts})
	for _, path := range []string{"/v1/models/forecast_mlp/predict", "/v2/models/forecast_mlp/infer"} {
		c := startSlowClient(t, ts.URL, "POST", path, "")
		code, body := c.response(t, 10*time.Second)
		if code != http.StatusRequestTimeout || !strings.Contains(body, "request body not received within 300ms") ||
			strings.Contains(body, "127.0.0.1") || strings.Contains(body, "tcp") {
			t.Fatalf("%s: %d %s", path, code, body)
		}
	}
}

// TestShutdownWithSlowClient: a client still sending when SIGTERM comes
// is cut off when the shutdown budget runs out; Serve returns nil.
func TestShutdownWithSlowClient(t *testing.T) {
	ts := startServer(t, testOpts{noCache: true, mutate: func(c *Config) {
		c.ShutdownTimeout = time.Second
		c.Timeouts = Timeouts{Probe: time.Hour, Body: time.Hour} // only the shutdown budget can end it
	}})
	// net/http reads (discards) a small unread body before it answers, so
	// this request stays active for as long as the client trickles.
	c := startSlowClient(t, ts.URL, "GET", "/healthz", "")
	time.Sleep(200 * time.Millisecond) // let the request arrive (not an assertion)
	ts.cancel()
	ts.cancel = nil
	select {
	case err := <-ts.done:
		if err != nil {
			t.Fatalf("Serve after shutdown with a slow client: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Serve did not return 30s after shutdown began (budget 1s)")
	}
	if !c.closedWithin(5 * time.Second) {
		t.Fatal("the slow client's connection is still open after shutdown")
	}
}

// TestAdminClosedByDefault: no token and not opened → 403 that says how
// to open it; opened without a token → allowed on loopback only.
func TestAdminClosedByDefault(t *testing.T) {
	ts := startServer(t, testOpts{noCache: true})
	err := (&api.Client{BaseURL: ts.URL}).Do(context.Background(), "GET", "/v1/admin/cache/stats", nil, nil)
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Status != http.StatusForbidden || !strings.Contains(ae.Message, "--admin-token") ||
		!strings.Contains(ae.Message, "--admin-open-loopback") {
		t.Fatalf("admin without a token: %v", err)
	}
	req, _ := http.NewRequest("POST", ts.URL+"/v1/admin/models/forecast_mlp/versions?version=v9", strings.NewReader("x"))
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("upload without a token: %d", resp.StatusCode)
	}

	open := startServer(t, testOpts{noCache: true, adminOpen: true})
	if err := (&api.Client{BaseURL: open.URL}).Do(context.Background(), "GET", "/v1/admin/cache/stats", nil, nil); err != nil {
		t.Fatalf("admin opened for loopback: %v", err)
	}
}

// fakeListener is a listener that claims a non-loopback address.
type fakeListener struct{ net.Listener }

func (fakeListener) Addr() net.Addr { return &net.TCPAddr{IP: net.ParseIP("10.1.2.3"), Port: 8080} }

func TestAdminOpenRefusesNonLoopback(t *testing.T) {
	ts := startServer(t, testOpts{noCache: true})
	cfg := ts.srv.cfg
	cfg.AdminOpenLoopback, cfg.AdminToken = true, ""
	cfg.Metrics, cfg.Gatherer = nil, nil
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	err = srv.ListenAndServe(context.Background(), "0.0.0.0:0")
	if err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Fatalf("ListenAndServe on 0.0.0.0 with open admin: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	srv2, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv2.Serve(context.Background(), fakeListener{ln}); err == nil || !strings.Contains(err.Error(), "10.1.2.3:8080") {
		t.Fatalf("Serve on a non-loopback listener with open admin: %v", err)
	}
	// With a token, any address is fine: the check passes.
	cfg.AdminToken = "t"
	srv3, _ := New(cfg)
	if err := srv3.checkAdminAddr("0.0.0.0:8080"); err != nil {
		t.Fatal(err)
	}
}

// TestRegisterByPath: onnx_path only inside the import folder; outside,
// through an escaping symlink, existing or not, the answer is the same.
func TestRegisterByPath(t *testing.T) {
	art, err := demo.MLP(7, demo.Features, 8, 16, 1)
	if err != nil {
		t.Fatal(err)
	}
	importDir, outside := t.TempDir(), t.TempDir()
	for _, p := range []string{filepath.Join(importDir, "ok.onnx"), filepath.Join(outside, "secret.onnx")} {
		if err := os.WriteFile(p, art, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(filepath.Join(outside, "secret.onnx"), filepath.Join(importDir, "escape.onnx")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(outside, "missing.onnx"), filepath.Join(importDir, "escape-missing.onnx")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(importDir, "dirlink")); err != nil {
		t.Fatal(err)
	}
	register := func(ts *testServer, version, path string) (int, string) {
		body := mustJSON(t, map[string]any{"version": version, "onnx_path": path, "features": demo.Features})
		code, b, _ := post(t, ts.URL+"/v1/admin/models/forecast_mlp/versions", body)
		var eb api.ErrorBody
		json.Unmarshal(b, &eb)
		return code, eb.Error.Message
	}

	off := startServer(t, testOpts{noCache: true, adminOpen: true})
	if code, msg := register(off, "v5", filepath.Join(outside, "secret.onnx")); code != 403 || !strings.Contains(msg, "--import-dir") {
		t.Fatalf("register-by-path without an import folder: %d %s", code, msg)
	}

	ts := startServer(t, testOpts{noCache: true, adminOpen: true, mutate: func(c *Config) { c.ImportDir = importDir }})
	// Every refusal words the same, apart from the path it quotes.
	var first string
	for _, p := range []string{
		filepath.Join(outside, "secret.onnx"),  // exists, outside
		filepath.Join(outside, "missing.onnx"), // does not exist, outside
		"../" + filepath.Base(outside) + "/secret.onnx",
		"escape.onnx",         // a symlink inside, to a file outside
		"escape-missing.onnx", // a symlink inside, to nothing
		"dirlink/secret.onnx", // through a symlinked folder
		"/etc/passwd",
		"missing.onnx",
	} {
		code, msg := register(ts, "v5", p)
		if code != 403 {
			t.Fatalf("onnx_path %q: %d %s, want 403", p, code, msg)
		}
		msg = strings.Replace(msg, strconv.Quote(p), "PATH", 1)
		if first == "" {
			first = msg
		} else if msg != first {
			t.Fatalf("onnx_path %q: message %q differs from %q (it must not reveal what exists)", p, msg, first)
		}
	}
	if code, msg := register(ts, "v5", "ok.onnx"); code != 201 {
		t.Fatalf("a model inside the import folder: %d %s", code, msg)
	}
	// The import folder configured through a symbolic link: absolute paths
	// under either spelling are inside.
	link := filepath.Join(t.TempDir(), "in")
	if err := os.Symlink(importDir, link); err != nil {
		t.Fatal(err)
	}
	viaLink := startServer(t, testOpts{noCache: true, adminOpen: true, mutate: func(c *Config) { c.ImportDir = link }})
	for i, p := range []string{filepath.Join(link, "ok.onnx"), filepath.Join(importDir, "ok.onnx")} {
		if code, msg := register(viaLink, fmt.Sprintf("v6.%d", i), p); code != 201 {
			t.Fatalf("onnx_path %q with import folder %q: %d %s", p, link, code, msg)
		}
	}
	if code, _ := register(viaLink, "v6.9", filepath.Join(link, "escape.onnx")); code != 403 {
		t.Fatalf("escaping symlink via a linked import folder: %d", code)
	}
}

// TestUploadConcurrencyBound: uploads beyond MaxUploads get 429 with
// Retry-After instead of adding to memory.
func TestUploadConcurrencyBound(t *testing.T) {
	ts := startServer(t, testOpts{noCache: true, token: "s3cret", mutate: func(c *Config) { c.MaxUploads = 1 }})
	auth := "Authorization: Bearer s3cret\r\n"
	// The first upload holds its slot while its body trickles in.
	addr := strings.TrimPrefix(ts.URL, "http://")
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /v1/admin/models/forecast_mlp/versions?version=v7 HTTP/1.1\r\nHost: %s\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000\r\n%s\r\nxx", addr, auth)
	waitFor(t, func() bool { return len(ts.srv.uploads) == 1 })
	req, _ := http.NewRequest("POST", ts.URL+"/v1/admin/models/forecast_mlp/versions?version=v8", bytes.NewReader([]byte("onnx")))
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("Authorization", "Bearer s3cret")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" || !strings.Contains(string(b), "already in progress") {
		t.Fatalf("second upload: %d %q %s", resp.StatusCode, resp.Header.Get("Retry-After"), b)
	}
	conn.Close()
	waitFor(t, func() bool { return len(ts.srv.uploads) == 0 })
}

// TestHugeTimeoutCapped: timeout_ms far beyond max_timeout (1e13, max
// int64) is capped, not overflowed into a deadline in the past.
func TestHugeTimeoutCapped(t *testing.T) {
	ts := startServer(t, testOpts{noCache: true})
	full := mustJSON(t, demoFeatures(1))
	for _, ms := range []string{"10000000000000", "9223372036854775807", "1e13", "9.3e18"} {
		code, body, _ := post(t, ts.URL+"/v2/models/forecast_mlp/infer",
			`{"parameters":{"timeout_ms":`+ms+`},"inputs":[{"name":"x","shape":[1,8],"datatype":"FP32","data":[1,2,3,4,5,6,7,8]}]}`)
		if code != 200 {
			t.Errorf("v2 timeout_ms %s: %d %s", ms, code, body)
		}
		if strings.ContainsAny(ms, "e.") {
			continue // the native API takes whole numbers only
		}
		code, body, _ = post(t, ts.URL+"/v1/models/forecast_mlp/predict", `{"timeout_ms":`+ms+`,"features":`+full+`}`)
		if code != 200 {
			t.Errorf("native timeout_ms %s: %d %s", ms, code, body)
		}
	}
	for ms, want := range map[int]time.Duration{1: time.Millisecond, 1e13: 30 * time.Second, 1<<63 - 1: 30 * time.Second, 0: 2 * time.Second} {
		if got, err := ts.srv.requestTimeout(ms); err != nil || got != want {
			t.Errorf("requestTimeout(%d) = %v, %v; want %v", ms, got, err, want)
		}
	}
}

// TestDuplicateKeysAndV2TimeoutType: repeated keys are refused naming the
// key, and a v2 timeout_ms string is called a string.
func TestDuplicateKeysAndV2TimeoutType(t *testing.T) {
	ts := startServer(t, testOpts{adminOpen: true})
	full := mustJSON(t, demoFeatures(1))
	row := strings.TrimSuffix(full, "}")
	input := `{"name":"x","shape":[1,8],"datatype":"FP32","data":[1,2,3,4,5,6,7,8]}`
	tests := []struct{ path, body, want string }{
		{"/v1/models/forecast_mlp/predict", `{"ticker":"AAPL","ticker":"MSFT","features":` + full + `}`, `duplicate key "ticker" in the request object`},
		{"/v1/models/forecast_mlp/predict", `{"horizon":1,"Horizon":5,"features":` + full + `}`, `duplicate key "Horizon"`},
		{"/v1/models/forecast_mlp/predict", `{"features":` + row + `,"macd":7}}`, `duplicate key "macd" in features`},
		{"/v1/models/forecast_mlp/predict", `{"instances":[` + full + `,` + row + `,"rsi_14":1}]}`, `duplicate key "rsi_14" in instances[1]`},
		{"/v2/models/forecast_mlp/infer", `{"inputs":[` + input + `],"inputs":[]}`, `duplicate key "inputs"`},
		{"/v2/models/forecast_mlp/infer", `{"parameters":{"timeout_ms":5,"timeout_ms":1},"inputs":[` + input + `]}`, `duplicate key "timeout_ms" in parameters`},
		{"/v2/models/forecast_mlp/infer", `{"inputs":[{"name":"x","name":"y","shape":[1,8],"datatype":"FP32","data":[1,2,3,4,5,6,7,8]}]}`, `duplicate key "name" in inputs[0]`},
		{"/v2/models/forecast_mlp/infer", `{"parameters":{"timeout_ms":"5"},"inputs":[` + input + `]}`, `got the string "5"`},
		{"/v1/admin/cache/invalidate", `{"model":"a","model":"b"}`, `duplicate key "model"`},
	}
	for _, tt := range tests {
		code, body, _ := post(t, ts.URL+tt.path, tt.body)
		if code != 400 || !strings.Contains(errMessage(body), tt.want) {
			t.Errorf("%s %s: %d %s, want 400 with %q", tt.path, tt.body, code, body, tt.want)
		}
	}
}

// errMessage returns the message of a native or OIP v2 error body.
func errMessage(b []byte) string {
	var native api.ErrorBody
	if json.Unmarshal(b, &native) == nil && native.Error.Message != "" {
		return native.Error.Message
	}
	var v2 api.V2Error
	json.Unmarshal(b, &v2)
	return v2.Error
}
