package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/signalforge/signalforge/internal/demo"
	"github.com/signalforge/signalforge/onnx"
	"github.com/signalforge/signalforge/server"
)

// fakeServer is an honest stand-in for a server from the client's point of
// view: it records each request and answers with a canned status and body.
type fakeServer struct {
	*httptest.Server
	status int
	answer string
	delay  chan struct{} // if set, the handler waits on it (or the client leaving)

	mu  sync.Mutex
	got []fakeRequest // guarded by mu
}

type fakeRequest struct {
	method, path, contentType string
	body                      map[string]any
}

func newFakeServer(t *testing.T, status int, answer string) *fakeServer {
	t.Helper()
	f := &fakeServer{status: status, answer: answer}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		var body map[string]any
		if err := json.Unmarshal(b, &body); err != nil {
			t.Errorf("client sent a body that is not a JSON object: %q", b)
		}
		f.mu.Lock()
		f.got = append(f.got, fakeRequest{r.Method, r.URL.EscapedPath(), r.Header.Get("Content-Type"), body})
		f.mu.Unlock()
		if f.delay != nil {
			select {
			case <-f.delay:
			case <-r.Context().Done():
				return
			}
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(f.status)
		io.WriteString(w, f.answer)
	}))
	t.Cleanup(f.Close)
	return f
}

func (f *fakeServer) requests() []fakeRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]fakeRequest(nil), f.got...)
}

// predictRun runs `signalforge predict args...` with SIGNALFORGE_SERVER set
// to server (if not empty) and stdin as given.
func predictRun(t *testing.T, server string, stdin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	e := &env{stdout: &out, stderr: &errb, stdin: strings.NewReader(stdin), getenv: func(k string) string {
		if k == predictEnvServer {
			return server
		}
		return ""
	}}
	code = run(context.Background(), e, append([]string{"predict"}, args...))
	return code, out.String(), errb.String()
}

// jsonEqual reports whether got (decoded JSON) equals the JSON text want.
func jsonEqual(t *testing.T, got any, want string) bool {
	t.Helper()
	var w any
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatalf("bad want JSON %s: %v", want, err)
	}
	gb, _ := json.Marshal(got)
	wb, _ := json.Marshal(w)
	return bytes.Equal(gb, wb)
}

const answerOne = `{"request_id":"req_123","model":"demo_mlp","version":"v2.0","predictions":[[0.25,-1.5]],"cached":true,"total_ms":1.25,"inference_ms":0.5}`

func TestPredictNativeRequestAndTable(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		path     string
		body     string
		wantOuts []string
	}{
		{
			name: "scalar features with routing fields",
			args: []string{"--model", "demo_mlp", "--request-id", "req_123", "--ticker", "AAPL", "--horizon", "5", "-f", "rsi_14=65", "-f", "macd=0.5"},
			path: "/v1/models/demo_mlp/predict",
			body: `{"request_id":"req_123","ticker":"AAPL","horizon":5,"features":{"rsi_14":65,"macd":0.5}}`,
		},
		{
			name: "pinned as NAME:VERSION, no cache",
			args: []string{"--model", "demo_mlp:v2.0", "-f", "rsi_14=65", "--no-cache"},
			path: "/v1/models/demo_mlp/predict",
			body: `{"version":"v2.0","no_cache":true,"features":{"rsi_14":65}}`,
		},
		{
			name: "pinned with --version, sequences",
			args: []string{"--model", "lstm_model", "--version", "v1", "-f", "rsi_14=61, 63,65", "--feature", "macd=[0.5]"},
			path: "/v1/models/lstm_model/predict",
			body: `{"version":"v1","features":{"rsi_14":[61,63,65],"macd":[0.5]}}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newFakeServer(t, 200, answerOne)
			code, out, errs := predictRun(t, srv.URL, "", tt.args...)
			if code != 0 {
				t.Fatalf("exit %d, stderr: %s", code, errs)
			}
			reqs := srv.requests()
			if len(reqs) != 1 {
				t.Fatalf("%d requests, want 1", len(reqs))
			}
			r := reqs[0]
			if r.method != "POST" || r.path != tt.path || r.contentType != "application/json" {
				t.Errorf("request %s %s (%s), want POST %s (application/json)", r.method, r.path, r.contentType, tt.path)
			}
			if !jsonEqual(t, r.body, tt.body) {
				got, _ := json.Marshal(r.body)
				t.Errorf("body %s\nwant %s", got, tt.body)
			}
			for _, want := range []string{"model       demo_mlp\n", "version     v2.0\n", "request id  req_123\n", "cached      true\n", "server 1.25ms, inference 0.5ms", "prediction  0.25  -1.5\n", "latency     round trip "} {
				if !strings.Contains(out, want) {
					t.Errorf("output misses %q:\n%s", want, out)
				}
			}
		})
	}
}

func TestPredictSeveralRowsTable(t *testing.T) {
	srv := newFakeServer(t, 200, `{"model":"m","version":"v1","predictions":[[1],[2.5]],"cached":false,"total_ms":3}`)
	dir := t.TempDir()
	file := filepath.Join(dir, "rows.json")
	if err := os.WriteFile(file, []byte(`[{"rsi_14": 65, "macd": 0.5}, {"rsi_14": 30, "macd": -0.2}]`), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errs := predictRun(t, srv.URL, "", "--model", "m", "--json", file, "--request-id", "r9")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	if r := srv.requests()[0]; !jsonEqual(t, r.body, `{"request_id":"r9","instances":[{"rsi_14":65,"macd":0.5},{"rsi_14":30,"macd":-0.2}]}`) {
		t.Errorf("body %v", r.body)
	}
	for _, want := range []string{"cached       false", "predictions  2 rows", "  row 0      1\n", "  row 1      2.5\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("output misses %q:\n%s", want, out)
		}
	}
}

func TestPredictJSONFromStdinWithOverrides(t *testing.T) {
	srv := newFakeServer(t, 200, answerOne)
	stdin := `{"request_id":"old","ticker":"MSFT","horizon":1,"timeout_ms":250,"features":{"rsi_14":"NaN"}}`
	code, _, errs := predictRun(t, srv.URL, stdin, "--model", "demo_mlp", "--json", "-", "--request-id", "new", "--horizon", "5")
	if code == 0 {
		// "NaN" decodes to NaN, which JSON cannot carry: the client must say so, not send garbage.
		t.Fatalf("a NaN feature was sent; stderr %s", errs)
	}
	if len(srv.requests()) != 0 {
		t.Fatalf("a request was sent for an unsendable body")
	}
	stdin = `{"request_id":"old","ticker":"MSFT","horizon":1,"timeout_ms":250,"features":{"rsi_14":65}}`
	code, _, errs = predictRun(t, srv.URL, stdin, "--model", "demo_mlp", "--json", "-", "--request-id", "new", "--horizon", "5")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	if r := srv.requests()[0]; !jsonEqual(t, r.body, `{"request_id":"new","ticker":"MSFT","horizon":5,"timeout_ms":250,"features":{"rsi_14":65}}`) {
		t.Errorf("body %v", r.body)
	}
}

func TestPredictOutputJSONIsTheRawAnswer(t *testing.T) {
	srv := newFakeServer(t, 200, answerOne)
	code, out, errs := predictRun(t, srv.URL, "", "--model", "demo_mlp", "-f", "x=1", "--output", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	var got, want bytes.Buffer
	json.Compact(&got, []byte(out))
	json.Compact(&want, []byte(answerOne))
	if got.String() != want.String() {
		t.Fatalf("output %s\nwant the server's answer %s", out, answerOne)
	}
}

func TestPredictV2(t *testing.T) {
	answer := `{"model_name":"demo_mlp","model_version":"v1.0","id":"r1","outputs":[{"name":"output","shape":[1,2],"datatype":"FP32","data":[0.5, 1.5]}]}`
	tests := []struct {
		name  string
		args  []string
		stdin string
		path  string
		body  string
	}{
		{
			name: "flag input, default shape",
			args: []string{"--v2", "--model", "demo_mlp", "--request-id", "r1", "-f", "input=65,0.5"},
			path: "/v2/models/demo_mlp/infer",
			body: `{"id":"r1","inputs":[{"name":"input","shape":[1,2],"datatype":"FP32","data":[65,0.5]}]}`,
		},
		{
			name: "pinned version and shape",
			args: []string{"--v2", "--model", "lstm:v2", "--shape", "1,3,2", "-f", "input=1,2,3,4,5,6"},
			path: "/v2/models/lstm/versions/v2/infer",
			body: `{"inputs":[{"name":"input","shape":[1,3,2],"datatype":"FP32","data":[1,2,3,4,5,6]}]}`,
		},
		{
			name:  "json body",
			args:  []string{"--v2", "--model", "demo_mlp", "--json", "-"},
			stdin: `{"inputs":[{"name":"input","shape":[2,1],"datatype":"FP32","data":[[1],[2]]}]}`,
			path:  "/v2/models/demo_mlp/infer",
			body:  `{"inputs":[{"name":"input","shape":[2,1],"datatype":"FP32","data":[[1],[2]]}]}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newFakeServer(t, 200, answer)
			code, out, errs := predictRun(t, srv.URL, tt.stdin, tt.args...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errs)
			}
			r := srv.requests()[0]
			if r.path != tt.path {
				t.Errorf("path %s, want %s", r.path, tt.path)
			}
			if !jsonEqual(t, r.body, tt.body) {
				got, _ := json.Marshal(r.body)
				t.Errorf("body %s\nwant %s", got, tt.body)
			}
			for _, want := range []string{"model          demo_mlp\n", "version        v1.0\n", "id             r1\n", "output output  FP32 [1 2] [0.5,1.5]\n"} {
				if !strings.Contains(out, want) {
					t.Errorf("output misses %q:\n%s", want, out)
				}
			}
		})
	}
}

func TestPredictRendersServerErrors(t *testing.T) {
	tests := []struct {
		status int
		answer string
		args   []string
		want   string
	}{
		{400, `{"error":{"code":"invalid_input","message":"feature \"macd\" is missing"}}`, nil,
			`signalforge predict: HTTP 400 invalid_input: feature "macd" is missing`},
		{404, `{"error":{"code":"not_found","message":"model \"nope\" is not registered"}}`, nil,
			`HTTP 404 not_found: model "nope" is not registered`},
		{429, `{"error":{"code":"queue_full","message":"queue of demo_mlp:v1.0 is full"}}`, nil,
			`HTTP 429 queue_full: queue of demo_mlp:v1.0 is full (the server is at capacity; retry shortly)`},
		{503, `{"error":{"code":"unavailable","message":"not ready"}}`, nil,
			`HTTP 503 unavailable: not ready (the server is not ready yet or is shutting down)`},
		{400, `{"error":"input \"x\": shape [1 2] needs 2 values, data has 3"}`, []string{"--v2"},
			`HTTP 400 bad_request: input "x": shape [1 2] needs 2 values, data has 3`},
		{502, `upstream broke`, nil, `HTTP 502 bad_gateway: upstream broke`},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			srv := newFakeServer(t, tt.status, tt.answer)
			args := append([]string{"--model", "m", "-f", "x=1"}, tt.args...)
			code, out, errs := predictRun(t, srv.URL, "", args...)
			if code != 1 || !strings.Contains(errs, tt.want) || out != "" {
				t.Fatalf("exit %d, stdout %q, stderr %q; want exit 1 and stderr containing %q", code, out, errs, tt.want)
			}
		})
	}
}

func TestPredictTransportErrors(t *testing.T) {
	// Nothing listens on a port we just closed.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := "http://" + ln.Addr().String()
	ln.Close()
	code, _, errs := predictRun(t, "", "", "--server", addr, "--model", "m", "-f", "x=1")
	if code != 1 || !strings.Contains(errs, "cannot reach the server at "+addr) || !strings.Contains(errs, "$SIGNALFORGE_SERVER") {
		t.Fatalf("exit %d, stderr %q", code, errs)
	}

	srv := newFakeServer(t, 200, answerOne)
	srv.delay = make(chan struct{})
	defer close(srv.delay)
	start := time.Now()
	code, _, errs = predictRun(t, srv.URL, "", "--model", "m", "-f", "x=1", "--timeout", "100ms")
	if code != 1 || !strings.Contains(errs, "within 100ms (--timeout)") {
		t.Fatalf("exit %d, stderr %q", code, errs)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("timeout of 100ms took %v", took)
	}
}

func TestPredictUsesServerFromEnvAndFlag(t *testing.T) {
	envSrv := newFakeServer(t, 200, answerOne)
	flagSrv := newFakeServer(t, 200, answerOne)
	if code, _, errs := predictRun(t, envSrv.URL, "", "--model", "m", "-f", "x=1"); code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	if code, _, errs := predictRun(t, envSrv.URL, "", "--server", flagSrv.URL+"/", "--model", "m", "-f", "x=1"); code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	if len(envSrv.requests()) != 1 || len(flagSrv.requests()) != 1 {
		t.Fatalf("env server got %d, flag server got %d; want 1 each", len(envSrv.requests()), len(flagSrv.requests()))
	}
}

func TestPredictCommandLineMistakes(t *testing.T) {
	srv := newFakeServer(t, 200, answerOne)
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.json")
	os.WriteFile(bad, []byte(`{"features":{"x":1},"tickr":"AAPL"}`), 0o644)
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"-f", "x=1"}, "--model is required"},
		{[]string{"--model", "m"}, "no input: give features with -f NAME=VALUE or a body with --json FILE|-"},
		{[]string{"--model", "m", "-f", "x"}, `"x": want NAME=VALUE`},
		{[]string{"--model", "m", "-f", "x=abc"}, `feature "x": "abc" is not a number`},
		{[]string{"--model", "m", "-f", "x=1,b,3"}, `feature "x": time step 1: "b" is not a number`},
		{[]string{"--model", "m", "-f", "x=NaN"}, `feature "x": NaN cannot be sent as a JSON number`},
		{[]string{"--model", "m", "-f", "x=1", "-f", "x=2"}, `feature "x" given twice`},
		{[]string{"--model", "m", "-f", "x=1", "--json", bad}, "not both"},
		{[]string{"--model", "m", "--json", bad}, `unknown field "tickr"`},
		{[]string{"--model", "m", "--json", filepath.Join(dir, "missing.json")}, "--json: open"},
		{[]string{"--model", "m:v1", "--version", "v2", "-f", "x=1"}, `pins version "v1" but --version says "v2"`},
		{[]string{"--model", "../etc", "-f", "x=1"}, `model name "../etc" is not valid`},
		{[]string{"--model", "m", "-f", "x=1", "--v2", "--ticker", "AAPL"}, "--ticker is for the native API"},
		{[]string{"--model", "m", "-f", "x=1", "--shape", "1,1"}, "--shape is for OIP v2 inputs; add --v2"},
		{[]string{"--model", "m", "-f", "x=1,2,3", "--v2", "--shape", "2,2"}, "--shape 2,2 holds 4 values, -f gives 3"},
		{[]string{"--model", "m", "-f", "x=1", "--output", "yaml"}, `--output "yaml": want table or json`},
		{[]string{"--model", "m", "-f", "x=1", "--server", "127.0.0.1:8080"}, `--server "127.0.0.1:8080": want a URL like`},
		{[]string{"--model", "m", "-f", "x=1", "extra"}, `unexpected argument "extra"`},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			code, _, errs := predictRun(t, srv.URL, "", tt.args...)
			if code != 2 || !strings.Contains(errs, tt.want) {
				t.Fatalf("exit %d, stderr %q; want exit 2 and %q", code, errs, tt.want)
			}
		})
	}
	if n := len(srv.requests()); n != 0 {
		t.Fatalf("%d requests sent for command-line mistakes, want none", n)
	}
}

func TestPredictHelp(t *testing.T) {
	code, _, errs := predictRun(t, "", "", "-h")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{"Usage: signalforge predict", "Examples, against the demo model", "--model forecast_mlp", "-f rsi_14=65 -f macd=0.5", "--json rows.json", "--v2", "$SIGNALFORGE_SERVER", "-timeout"} {
		if !strings.Contains(errs, want) {
			t.Errorf("help misses %q:\n%s", want, errs)
		}
	}
}

// exampleCmd is one command line of predictExamples, lexed like a POSIX
// shell would: stages of a pipeline, and an output redirection.
type exampleCmd struct {
	text   string     // as written, for messages
	stages [][]string // words of each pipeline stage
	outTo  string     // "> FILE" of the last stage, if any
}

// predictExampleCmds extracts the command lines from predictExamples: lines
// indented by two spaces that start with signalforge or echo, with their
// continuations (a trailing backslash or pipe, or an open quote).
func predictExampleCmds(t *testing.T) []exampleCmd {
	t.Helper()
	var cmds []exampleCmd
	var buf string
	open := func(s string) bool { // an unterminated quote or continuation
		inSingle, inDouble := false, false
		for i := 0; i < len(s); i++ {
			switch c := s[i]; {
			case c == '\'' && !inDouble:
				inSingle = !inSingle
			case c == '"' && !inSingle:
				inDouble = !inDouble
			case c == '\\' && !inSingle:
				i++
			}
		}
		tail := strings.TrimRight(s, " ")
		return inSingle || inDouble || strings.HasSuffix(tail, "\\") || strings.HasSuffix(tail, "|")
	}
	for line := range strings.SplitSeq(predictExamples, "\n") {
		if buf == "" {
			w := strings.TrimPrefix(line, "  ")
			if w == line || !(strings.HasPrefix(w, "signalforge ") || strings.HasPrefix(w, "echo ")) {
				continue
			}
			buf = w
		} else {
			buf += "\n" + line
		}
		if !open(buf) {
			cmds = append(cmds, lexExample(t, buf))
			buf = ""
		}
	}
	if buf != "" {
		t.Fatalf("unterminated example:\n%s", buf)
	}
	return cmds
}

// lexExample splits a command line into words: single quotes are literal,
// double quotes too (the examples need no escapes in them), backslash-newline
// joins lines, and unquoted | and > are operators.
func lexExample(t *testing.T, s string) exampleCmd {
	t.Helper()
	c := exampleCmd{text: s}
	var words []string
	var w strings.Builder
	inWord, redirect := false, false
	flush := func() {
		if !inWord {
			return
		}
		if redirect {
			c.outTo, redirect = w.String(), false
		} else {
			words = append(words, w.String())
		}
		w.Reset()
		inWord = false
	}
	for i := 0; i < len(s); i++ {
		switch ch := s[i]; ch {
		case ' ', '\t', '\n':
			flush()
		case '\\':
			i++
			if i < len(s) && s[i] != '\n' {
				w.WriteByte(s[i])
				inWord = true
			}
		case '\'', '"':
			j := strings.IndexByte(s[i+1:], ch)
			w.WriteString(s[i+1 : i+1+j])
			inWord = true
			i += j + 1
		case '|':
			flush()
			c.stages = append(c.stages, words)
			words = nil
		case '>':
			flush()
			redirect = true
		default:
			w.WriteByte(ch)
			inWord = true
		}
	}
	flush()
	c.stages = append(c.stages, words)
	return c
}

// predictInvocation is a `signalforge predict` stage, parsed with the
// command's own flag parsing rules.
type predictInvocation struct {
	v2             bool
	model, version string
	features       []string   // -f names, in order
	values         [][]string // -f values
	jsonPath       string
}

func parseExample(t *testing.T, c exampleCmd) (inv *predictInvocation, stdin string) {
	t.Helper()
	last := c.stages[len(c.stages)-1]
	if len(c.stages) > 2 || (len(c.stages) == 2 && c.stages[0][0] != "echo") {
		t.Fatalf("example %q: only `echo ... | signalforge ...` pipelines are checked", c.text)
	}
	if len(c.stages) == 2 {
		stdin = strings.Join(c.stages[0][1:], " ")
	}
	if last[0] == "echo" {
		return nil, ""
	}
	if len(last) < 2 || last[0] != "signalforge" || last[1] != "predict" {
		t.Fatalf("example %q is not `signalforge predict`", c.text)
	}
	inv = &predictInvocation{}
	args := last[2:]
	for i := 0; i < len(args); i++ {
		val := func() string {
			if i+1 >= len(args) {
				t.Fatalf("example %q: %s has no value", c.text, args[i])
			}
			i++
			return args[i]
		}
		switch args[i] {
		case "--v2":
			inv.v2 = true
		case "--model":
			inv.model, inv.version, _ = strings.Cut(val(), ":")
		case "--version":
			inv.version = val()
		case "-f", "--feature":
			name, v, _ := strings.Cut(val(), "=")
			inv.features = append(inv.features, name)
			inv.values = append(inv.values, strings.Split(v, ","))
		case "--json":
			inv.jsonPath = val()
		case "--request-id", "--ticker", "--horizon", "--output", "-o", "--shape":
			val()
		default:
			t.Fatalf("example %q: flag %q is not known to this test; teach it", c.text, args[i])
		}
	}
	return inv, stdin
}

// demoInputName reads the demo model's input name from the ONNX graph that
// signalforge serve registers.
func demoInputName(t *testing.T) string {
	t.Helper()
	b, err := demo.MLP(1, demo.Features, len(demo.Features), 32, 16, 1)
	if err != nil {
		t.Fatal(err)
	}
	m, err := onnx.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	in := m.GetGraph().GetInput()
	if len(in) != 1 {
		t.Fatalf("demo model has %d inputs, the examples assume one", len(in))
	}
	return in[0].GetName()
}

// TestPredictExamplesMatchTheDemoModel checks, without a server, that the
// help text's examples name the demo model, its versions, its features
// (all of them, since the server needs every one) and its v2 input.
func TestPredictExamplesMatchTheDemoModel(t *testing.T) {
	input := demoInputName(t)
	header := fmt.Sprintf("one input %s\nof %d features: %s.", input, len(demo.Features), strings.Join(demo.Features, " "))
	if !strings.Contains(predictExamples, header) || !strings.Contains(predictExamples, demo.ModelName+", versions v1.0 and v2.0 at 80/20") {
		t.Errorf("the examples' introduction does not describe the demo model; want it to contain %q", header)
	}
	seqHeader := fmt.Sprintf("sequence model %s (v1.0) reads %d time steps\nof %d features: %s.", demo.SeqModelName, demo.SeqLen, len(demo.SeqFeatures), strings.Join(demo.SeqFeatures, " "))
	if !strings.Contains(predictExamples, seqHeader) {
		t.Errorf("the examples' introduction does not describe the demo sequence model; want it to contain %q", seqHeader)
	}
	wantFeatures := slices.Sorted(slices.Values(demo.Features))
	wantSeqFeatures := slices.Sorted(slices.Values(demo.SeqFeatures))
	checkRow := func(c exampleCmd, row map[string]any) {
		if got := slices.Sorted(maps.Keys(row)); !slices.Equal(got, wantFeatures) {
			t.Errorf("example %q: a JSON row has features %v, the demo model wants %v", c.text, got, wantFeatures)
		}
	}
	cmds := predictExampleCmds(t)
	predicts, seqPredicts := 0, 0
	for _, c := range cmds {
		inv, stdin := parseExample(t, c)
		body := stdin
		if inv == nil { // echo JSON > FILE
			body = strings.Join(c.stages[0][1:], " ")
		}
		if body != "" {
			var v any
			if err := json.Unmarshal([]byte(body), &v); err != nil {
				t.Errorf("example %q: not JSON: %v", c.text, err)
				continue
			}
			switch v := v.(type) {
			case []any:
				for _, r := range v {
					row, _ := r.(map[string]any)
					checkRow(c, row)
				}
			case map[string]any:
				if f, ok := v["features"].(map[string]any); ok {
					checkRow(c, f)
				} else if ins, ok := v["inputs"].([]any); ok {
					for _, in := range ins {
						in, _ := in.(map[string]any)
						if in["name"] != input {
							t.Errorf("example %q: v2 input %v, the demo model's is %q", c.text, in["name"], input)
						}
					}
				} else {
					t.Errorf("example %q: JSON body with neither features nor inputs", c.text)
				}
			}
		}
		if inv == nil {
			continue
		}
		predicts++
		if inv.model == demo.SeqModelName {
			seqPredicts++
			// Every feature, each a series of exactly SeqLen steps.
			if got := slices.Sorted(slices.Values(inv.features)); inv.v2 || inv.jsonPath != "" || !slices.Equal(got, wantSeqFeatures) {
				t.Errorf("example %q: features %v, the demo sequence model wants -f for each of %v", c.text, got, wantSeqFeatures)
			}
			for i, v := range inv.values {
				if len(v) != demo.SeqLen {
					t.Errorf("example %q: %s has %d time steps, the demo sequence model takes %d", c.text, inv.features[i], len(v), demo.SeqLen)
				}
			}
			if inv.version != "" && inv.version != "v1.0" {
				t.Errorf("example %q: version %q, the demo sequence model has v1.0", c.text, inv.version)
			}
			continue
		}
		if inv.model != demo.ModelName {
			t.Errorf("example %q: model %q, the demo models are %q and %q", c.text, inv.model, demo.ModelName, demo.SeqModelName)
		}
		if inv.version != "" && inv.version != "v1.0" && inv.version != "v2.0" {
			t.Errorf("example %q: version %q, the demo has v1.0 and v2.0", c.text, inv.version)
		}
		switch {
		case inv.jsonPath != "":
		case inv.v2:
			for i, name := range inv.features {
				if name != input || len(inv.values[i])%len(demo.Features) != 0 {
					t.Errorf("example %q: v2 input %s with %d values; the demo's is %s, %d values a row", c.text, name, len(inv.values[i]), input, len(demo.Features))
				}
			}
		default:
			if got := slices.Sorted(slices.Values(inv.features)); !slices.Equal(got, wantFeatures) {
				t.Errorf("example %q: features %v, the demo model wants %v", c.text, got, wantFeatures)
			}
		}
	}
	if predicts < 6 {
		t.Errorf("found %d signalforge predict examples, want at least 6 (is the extraction broken?)", predicts)
	}
	if seqPredicts == 0 {
		t.Errorf("no example predicts with the demo sequence model %s", demo.SeqModelName)
	}
}

// TestPredictExamplesRunAgainstTheDemoServer pastes every example into a
// real server: ONNX Runtime, a fresh registry with the demo model, as
// `make run` serves it.
func TestPredictExamplesRunAgainstTheDemoServer(t *testing.T) {
	base := serveDemo(t, server.Config{})

	t.Chdir(t.TempDir()) // the examples write rows.json in the working directory
	ran := map[string]int{}
	for _, c := range predictExampleCmds(t) {
		inv, stdin := parseExample(t, c)
		if inv == nil {
			if c.outTo == "" {
				t.Fatalf("example %q: echo without a pipe or a redirection", c.text)
			}
			if err := os.WriteFile(c.outTo, []byte(strings.Join(c.stages[0][1:], " ")+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		args := c.stages[len(c.stages)-1][2:]
		code, out, stderr := predictRun(t, base, stdin, args...)
		if code != 0 {
			t.Errorf("example %q: exit %d, stderr:\n%s", c.text, code, stderr)
			continue
		}
		if !strings.Contains(out, inv.model) || (inv.version != "" && !strings.Contains(out, inv.version)) {
			t.Errorf("example %q: the answer does not name %s %s:\n%s", c.text, inv.model, inv.version, out)
		}
		ran[inv.model]++
	}
	if ran[demo.ModelName] == 0 || ran[demo.SeqModelName] == 0 {
		t.Errorf("examples run per model: %v; want both demo models", ran)
	}
}
