package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/signalforge/signalforge/api"
)

// predictEnvServer names the environment variable with the default server.
const predictEnvServer = "SIGNALFORGE_SERVER"

// predictDefaultServer is where `signalforge serve` listens by default.
const predictDefaultServer = "http://127.0.0.1:8080"

// predictNameRE is DESIGN.md §5's model/version name rule; checked here so
// that a typo gets a local message instead of a strange URL.
var predictNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// predictExamples is the help text's examples. Each must work when pasted
// into a shell while `make run` serves the demo model (internal/demo):
// TestPredictExamples* run every command line here against that server and
// check the names against demo.ModelName and demo.Features.
const predictExamples = `Examples, against the demo models that ` + "`make run`" + ` (signalforge serve) registers in
an empty registry: forecast_mlp, versions v1.0 and v2.0 at 80/20, one input x
of 8 features: rsi_14 macd macd_signal bb_width volume_z ret_1d ret_5d atr_14.
Beside it, the sequence model forecast_lstm (v1.0) reads 16 time steps
of 4 features: rsi_14 macd volume_z ret_1d.

  # one row (the split picks the version, sticky by request id)
  signalforge predict --model forecast_mlp --request-id req_123 --ticker AAPL --horizon 5 \
      -f rsi_14=65 -f macd=0.5 -f macd_signal=0.4 -f bb_width=0.08 \
      -f volume_z=1.3 -f ret_1d=0.004 -f ret_5d=0.012 -f atr_14=2.1

  # pin a version (either form); print the server's raw JSON answer
  signalforge predict --model forecast_mlp:v2.0 --output json \
      -f rsi_14=65 -f macd=0.5 -f macd_signal=0.4 -f bb_width=0.08 \
      -f volume_z=1.3 -f ret_1d=0.004 -f ret_5d=0.012 -f atr_14=2.1
  signalforge predict --model forecast_mlp --version v1.0 \
      -f rsi_14=30 -f macd=-0.2 -f macd_signal=-0.1 -f bb_width=0.06 \
      -f volume_z=-0.4 -f ret_1d=-0.02 -f ret_5d=-0.05 -f atr_14=1.7

  # several rows from a file, or a whole request body from stdin (--json -)
  echo '[{"rsi_14": 65, "macd": 0.5, "macd_signal": 0.4, "bb_width": 0.08, "volume_z": 1.3, "ret_1d": 0.004, "ret_5d": 0.012, "atr_14": 2.1},
         {"rsi_14": 30, "macd": -0.2, "macd_signal": -0.1, "bb_width": 0.06, "volume_z": -0.4, "ret_1d": -0.02, "ret_5d": -0.05, "atr_14": 1.7}]' > rows.json
  signalforge predict --model forecast_mlp --json rows.json
  echo '{"request_id": "r1", "ticker": "AAPL", "horizon": 5, "features": {"rsi_14": 65, "macd": 0.5,
         "macd_signal": 0.4, "bb_width": 0.08, "volume_z": 1.3, "ret_1d": 0.004, "ret_5d": 0.012, "atr_14": 2.1}}' |
      signalforge predict --model forecast_mlp --json -

  # a sequence model takes each feature as a comma-separated series of time
  # steps in time order, as many as the model's sequence length (16 here)
  signalforge predict --model forecast_lstm --ticker AAPL \
      -f rsi_14=48,50,52,51,53,55,57,56,58,60,61,63,62,64,65,66 \
      -f macd=0.1,0.12,0.15,0.14,0.18,0.2,0.23,0.22,0.26,0.3,0.32,0.35,0.34,0.38,0.41,0.43 \
      -f volume_z=0.2,-0.1,0.4,0.3,0.8,1.1,0.6,0.2,0.9,1.4,1,0.7,0.5,1.2,1.3,0.9 \
      -f ret_1d=0.001,0.003,0.004,-0.002,0.005,0.006,0.004,-0.001,0.007,0.008,0.003,0.005,-0.002,0.006,0.004,0.003

  # Open Inference Protocol v2: -f NAME=VALUES is one FP32 input tensor, of
  # shape [1, number of values] unless --shape says otherwise
  signalforge predict --v2 --model forecast_mlp -f x=65,0.5,0.4,0.08,1.3,0.004,0.012,2.1
  signalforge predict --v2 --model forecast_mlp:v2.0 --shape 2,8 \
      -f x=65,0.5,0.4,0.08,1.3,0.004,0.012,2.1,30,-0.2,-0.1,0.06,-0.4,-0.02,-0.05,1.7
  echo '{"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": [65, 0.5, 0.4, 0.08, 1.3, 0.004, 0.012, 2.1]}]}' |
      signalforge predict --v2 --model forecast_mlp --json -

The server is --server, else $` + predictEnvServer + `, else ` + predictDefaultServer + `.
An error answer is printed with its HTTP status, code and message, and the
command exits 1 (2 for a mistake in the command line itself).
`

// predictCmd holds predict's flags.
type predictCmd struct {
	server    string
	model     string
	version   string
	requestID string
	ticker    string
	horizon   int
	features  []predictFeature
	jsonPath  string
	v2        bool
	shape     string
	datatype  string
	noCache   bool
	timeout   time.Duration
	output    string
	set       map[string]bool // flags given on the command line
}

// predictFeature is one -f NAME=VALUE, parsed.
type predictFeature struct {
	name  string
	value api.Value
}

// cmdPredict sends one prediction (native JSON API, or OIP v2 with --v2) to
// a running server with api.Client and prints the answer.
//
// Decisions: --json bodies are decoded strictly (unknown fields are refused
// here, naming them) and the command-line flags that were given override
// their fields, so a saved request can be replayed with another request id;
// to send arbitrary bytes, use curl. NaN and ±Inf cannot be written as
// JSON numbers, so -f refuses them; a --json file can carry the strings
// "NaN"/"Infinity" to exercise the server's validation. --timeout is the
// client's deadline for the whole call; the server's own deadline is its
// default or a timeout_ms field in a --json body.
func cmdPredict(ctx context.Context, e *env, args []string) error {
	pc := &predictCmd{set: map[string]bool{}}
	fs := newFlagSet(e, "predict", "--model NAME[:VERSION] (-f NAME=VALUE... | --json FILE|-) [flags]")
	fs.Usage = func() {
		fmt.Fprintf(e.stderr, "Usage: signalforge predict --model NAME[:VERSION] (-f NAME=VALUE... | --json FILE|-) [flags]\n\n")
		fmt.Fprintf(e.stderr, "Send a prediction to a running `signalforge serve` and print the answer.\n\n%s\nFlags:\n", predictExamples)
		fs.PrintDefaults()
	}
	server := e.getenv(predictEnvServer)
	if server == "" {
		server = predictDefaultServer
	}
	fs.StringVar(&pc.server, "server", server, "server base `URL` ($"+predictEnvServer+" sets the default)")
	fs.StringVar(&pc.model, "model", "", "model `NAME`, or NAME:VERSION to pin a version (required)")
	fs.StringVar(&pc.version, "version", "", "pin this model `VERSION`, bypassing the traffic split")
	fs.StringVar(&pc.requestID, "request-id", "", "request `ID`; routing is sticky by it (the server assigns one if empty)")
	fs.StringVar(&pc.ticker, "ticker", "", "`TICKER` symbol, e.g. AAPL (native API; part of the cache key)")
	fs.IntVar(&pc.horizon, "horizon", 0, "forecast horizon in `STEPS` (native API; part of the cache key)")
	addFeature := func(s string) error {
		f, err := parsePredictFeature(s)
		if err != nil {
			return err
		}
		for _, g := range pc.features {
			if g.name == f.name {
				return fmt.Errorf("feature %q given twice", f.name)
			}
		}
		pc.features = append(pc.features, f)
		return nil
	}
	fs.Func("f", "a feature `NAME=VALUE`, repeatable; VALUE is a number, or a series 1,2,3 (or [1]) for a sequence model", addFeature)
	fs.Func("feature", "same as -f", addFeature)
	fs.StringVar(&pc.jsonPath, "json", "", "read the request from `FILE` (- for stdin): an array of feature rows, or a whole request body")
	fs.BoolVar(&pc.v2, "v2", false, "use the Open Inference Protocol v2 infer endpoint instead of the native API")
	fs.StringVar(&pc.shape, "shape", "", "with --v2 and one -f: the input tensor's `SHAPE`, e.g. 1,32,16 (default [1, number of values])")
	fs.StringVar(&pc.datatype, "datatype", "FP32", "with --v2 and -f: the input tensor's OIP v2 `DATATYPE`")
	fs.BoolVar(&pc.noCache, "no-cache", false, "ask the server to skip its prediction cache (native API)")
	fs.DurationVar(&pc.timeout, "timeout", 30*time.Second, "give up on the server after this `DURATION`")
	fs.StringVar(&pc.output, "output", "table", "`FORMAT`: table, or json for the server's raw answer")
	fs.StringVar(&pc.output, "o", "table", "same as --output")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	fs.Visit(func(f *flag.Flag) { pc.set[f.Name] = true })
	if fs.NArg() > 0 {
		return predictUsage(e, "unexpected argument %q (features go in -f NAME=VALUE, the model in --model)", fs.Arg(0))
	}
	if err := pc.check(); err != nil {
		return predictUsage(e, "%v", err)
	}

	var body any
	var path string
	var err error
	if pc.v2 {
		body, err = pc.inferRequest(e)
		path = "/v2/models/" + url.PathEscape(pc.model)
		if pc.version != "" {
			path += "/versions/" + url.PathEscape(pc.version)
		}
		path += "/infer"
	} else {
		body, err = pc.predictRequest(e)
		path = "/v1/models/" + url.PathEscape(pc.model) + "/predict"
	}
	if err != nil {
		return predictUsage(e, "%v", err)
	}

	ctx, cancel := context.WithTimeout(ctx, pc.timeout)
	defer cancel()
	c := &api.Client{BaseURL: pc.server, HTTP: &http.Client{}}
	var raw json.RawMessage
	start := time.Now()
	err = c.Do(ctx, http.MethodPost, path, body, &raw)
	rtt := time.Since(start)
	if err != nil {
		return pc.explain(ctx, err)
	}
	if pc.output == "json" {
		var buf bytes.Buffer
		if json.Indent(&buf, raw, "", "  ") != nil {
			buf.Reset()
			buf.Write(raw)
		}
		buf.WriteByte('\n')
		_, err := e.stdout.Write(buf.Bytes())
		return err
	}
	if pc.v2 {
		var resp api.InferResponse
		if err := json.Unmarshal(raw, &resp); err != nil {
			return fmt.Errorf("the server's answer is not an OIP v2 infer response: %w", err)
		}
		return printInfer(e.stdout, &resp, rtt)
	}
	var resp api.PredictResponse
	if err := json.Unmarshal(raw, &resp); err != nil {
		return fmt.Errorf("the server's answer is not a prediction: %w", err)
	}
	return printPredict(e.stdout, &resp, rtt)
}

// predictUsage prints a command-line mistake and returns errUsage (exit 2).
func predictUsage(e *env, format string, args ...any) error {
	fmt.Fprintf(e.stderr, "signalforge predict: %s\nRun `signalforge predict -h` for flags and examples.\n", fmt.Sprintf(format, args...))
	return errUsage
}

// check validates flag combinations and splits NAME:VERSION.
func (pc *predictCmd) check() error {
	if pc.model == "" {
		return errors.New("--model is required")
	}
	if name, ver, ok := strings.Cut(pc.model, ":"); ok {
		if pc.version != "" && pc.version != ver {
			return fmt.Errorf("--model %s pins version %q but --version says %q", pc.model, ver, pc.version)
		}
		pc.model, pc.version = name, ver
	}
	if !predictNameRE.MatchString(pc.model) {
		return fmt.Errorf("model name %q is not valid (letters, digits, '.', '_', '-'; at most 128)", pc.model)
	}
	if pc.version != "" && !predictNameRE.MatchString(pc.version) {
		return fmt.Errorf("version %q is not valid (letters, digits, '.', '_', '-'; at most 128)", pc.version)
	}
	if pc.output != "table" && pc.output != "json" {
		return fmt.Errorf("--output %q: want table or json", pc.output)
	}
	if pc.timeout <= 0 {
		return fmt.Errorf("--timeout %v must be positive", pc.timeout)
	}
	if u, err := url.Parse(pc.server); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("--server %q: want a URL like %s", pc.server, predictDefaultServer)
	}
	switch {
	case pc.jsonPath != "" && len(pc.features) > 0:
		return errors.New("give features with -f or a body with --json, not both")
	case pc.jsonPath == "" && len(pc.features) == 0:
		return errors.New("no input: give features with -f NAME=VALUE or a body with --json FILE|-")
	}
	if pc.v2 {
		for _, f := range []string{"ticker", "horizon", "no-cache"} {
			if pc.set[f] {
				return fmt.Errorf("--%s is for the native API; OIP v2 (--v2) has no such field", f)
			}
		}
		if pc.shape != "" && len(pc.features) != 1 {
			return errors.New("--shape needs exactly one -f input")
		}
	} else {
		for _, f := range []string{"shape", "datatype"} {
			if pc.set[f] {
				return fmt.Errorf("--%s is for OIP v2 inputs; add --v2", f)
			}
		}
	}
	return nil
}

// parsePredictFeature parses NAME=VALUE: a number, a comma-separated
// series, or a bracketed series.
func parsePredictFeature(s string) (predictFeature, error) {
	name, val, ok := strings.Cut(s, "=")
	name = strings.TrimSpace(name)
	if !ok || name == "" {
		return predictFeature{}, fmt.Errorf("%q: want NAME=VALUE, e.g. rsi_14=65 or rsi_14=61,63,65", s)
	}
	val = strings.TrimSpace(val)
	seq := strings.HasPrefix(val, "[") && strings.HasSuffix(val, "]")
	if seq {
		val = strings.TrimSpace(val[1 : len(val)-1])
	}
	parts := strings.Split(val, ",")
	seq = seq || len(parts) > 1
	vals := make([]float64, len(parts))
	for i, p := range parts {
		p = strings.TrimSpace(p)
		v, err := strconv.ParseFloat(p, 64)
		if err != nil {
			if seq {
				return predictFeature{}, fmt.Errorf("feature %q: time step %d: %q is not a number", name, i, p)
			}
			return predictFeature{}, fmt.Errorf("feature %q: %q is not a number", name, p)
		}
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return predictFeature{}, fmt.Errorf("feature %q: %s cannot be sent as a JSON number (a --json body can carry the string %q)", name, p, "NaN")
		}
		vals[i] = v
	}
	if seq {
		return predictFeature{name, api.Sequence(vals...)}, nil
	}
	return predictFeature{name, api.Scalar(vals[0])}, nil
}

// readJSON reads --json's file or stdin.
func (pc *predictCmd) readJSON(e *env) ([]byte, error) {
	var b []byte
	var err error
	if pc.jsonPath == "-" {
		if e.stdin == nil {
			return nil, errors.New("--json -: no standard input")
		}
		b, err = io.ReadAll(e.stdin)
	} else {
		b, err = os.ReadFile(pc.jsonPath)
	}
	if err != nil {
		return nil, fmt.Errorf("--json: %w", err)
	}
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return nil, fmt.Errorf("--json %s: empty", pc.jsonPath)
	}
	return b, nil
}

// decodeStrict decodes one JSON value into v, refusing unknown fields and
// trailing data.
func decodeStrict(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("unexpected data after the JSON value")
	}
	return nil
}

// predictRequest builds the native request from -f or --json, then
// applies the flags that were given.
func (pc *predictCmd) predictRequest(e *env) (*api.PredictRequest, error) {
	req := &api.PredictRequest{}
	if pc.jsonPath != "" {
		b, err := pc.readJSON(e)
		if err != nil {
			return nil, err
		}
		if b[0] == '[' {
			if err := decodeStrict(b, &req.Instances); err != nil {
				return nil, fmt.Errorf("--json %s: want an array of feature rows: %w", pc.jsonPath, err)
			}
		} else if err := decodeStrict(b, req); err != nil {
			return nil, fmt.Errorf("--json %s: not a prediction request: %w", pc.jsonPath, err)
		}
	} else {
		req.Features = make(api.Features, len(pc.features))
		for _, f := range pc.features {
			req.Features[f.name] = f.value
		}
	}
	if pc.set["request-id"] {
		req.RequestID = pc.requestID
	}
	if pc.set["ticker"] {
		req.Ticker = pc.ticker
	}
	if pc.set["horizon"] {
		req.Horizon = pc.horizon
	}
	if pc.version != "" {
		req.Version = pc.version
	}
	if pc.noCache {
		req.NoCache = true
	}
	return req, nil
}

// inferRequest builds the OIP v2 request from -f or --json.
func (pc *predictCmd) inferRequest(e *env) (*api.InferRequest, error) {
	req := &api.InferRequest{}
	if pc.jsonPath != "" {
		b, err := pc.readJSON(e)
		if err != nil {
			return nil, err
		}
		if err := decodeStrict(b, req); err != nil {
			return nil, fmt.Errorf("--json %s: not an OIP v2 infer request: %w", pc.jsonPath, err)
		}
	} else {
		for _, f := range pc.features {
			shape := []int64{1, int64(len(f.value.Values))}
			if pc.shape != "" {
				var err error
				if shape, err = parseShape(pc.shape, len(f.value.Values)); err != nil {
					return nil, err
				}
			}
			data, err := json.Marshal(f.value.Values)
			if err != nil {
				return nil, err
			}
			req.Inputs = append(req.Inputs, api.InferTensor{Name: f.name, Shape: shape, Datatype: pc.datatype, Data: data})
		}
	}
	if pc.set["request-id"] {
		req.ID = pc.requestID
	}
	return req, nil
}

// parseShape parses "1,32,16" and checks it holds n values.
func parseShape(s string, n int) ([]int64, error) {
	var shape []int64
	total := int64(1)
	for p := range strings.SplitSeq(s, ",") {
		d, err := strconv.ParseInt(strings.TrimSpace(p), 10, 64)
		if err != nil || d < 0 {
			return nil, fmt.Errorf("--shape %q: want non-negative integers like 1,32,16", s)
		}
		shape = append(shape, d)
		total *= d
	}
	if total != int64(n) {
		return nil, fmt.Errorf("--shape %s holds %d values, -f gives %d", s, total, n)
	}
	return shape, nil
}

// explain turns a failed call into a message that says what to do.
func (pc *predictCmd) explain(ctx context.Context, err error) error {
	var ae *api.Error
	if errors.As(err, &ae) {
		code := ae.Code
		if code == "" {
			code = strings.ToLower(strings.ReplaceAll(http.StatusText(ae.Status), " ", "_"))
		}
		msg := fmt.Sprintf("HTTP %d %s: %s", ae.Status, code, ae.Message)
		switch ae.Status {
		case http.StatusTooManyRequests:
			msg += " (the server is at capacity; retry shortly)"
		case http.StatusServiceUnavailable:
			msg += " (the server is not ready yet or is shutting down)"
		}
		return errors.New(msg)
	}
	if errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil {
		return fmt.Errorf("no answer from %s within %v (--timeout)", pc.server, pc.timeout)
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return fmt.Errorf("cannot reach the server at %s: %v (is `signalforge serve` running? set --server or $%s)", pc.server, op.Err, predictEnvServer)
	}
	return err
}

// printPredict renders a native answer as a small table.
func printPredict(w io.Writer, r *api.PredictResponse, rtt time.Duration) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "model\t%s\n", r.Model)
	fmt.Fprintf(tw, "version\t%s\n", r.Version)
	if r.RequestID != "" {
		fmt.Fprintf(tw, "request id\t%s\n", r.RequestID)
	}
	fmt.Fprintf(tw, "cached\t%v\n", r.Cached)
	lat := "round trip " + fmtMS(rtt)
	if r.TotalMS > 0 {
		lat += fmt.Sprintf(", server %.3gms", r.TotalMS)
	}
	if r.InferenceMS > 0 {
		lat += fmt.Sprintf(", inference %.3gms", r.InferenceMS)
	}
	fmt.Fprintf(tw, "latency\t%s\n", lat)
	if len(r.Predictions) == 1 {
		fmt.Fprintf(tw, "prediction\t%s\n", fmtRow(r.Predictions[0]))
	} else {
		fmt.Fprintf(tw, "predictions\t%d rows\n", len(r.Predictions))
		for i, row := range r.Predictions {
			fmt.Fprintf(tw, "  row %d\t%s\n", i, fmtRow(row))
		}
	}
	return tw.Flush()
}

// printInfer renders an OIP v2 answer.
func printInfer(w io.Writer, r *api.InferResponse, rtt time.Duration) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "model\t%s\n", r.ModelName)
	if r.ModelVersion != "" {
		fmt.Fprintf(tw, "version\t%s\n", r.ModelVersion)
	}
	if r.ID != "" {
		fmt.Fprintf(tw, "id\t%s\n", r.ID)
	}
	for _, k := range slices.Sorted(maps.Keys(r.Parameters)) {
		fmt.Fprintf(tw, "%s\t%v\n", k, r.Parameters[k])
	}
	fmt.Fprintf(tw, "latency\tround trip %s\n", fmtMS(rtt))
	for _, o := range r.Outputs {
		var data bytes.Buffer
		if json.Compact(&data, o.Data) != nil {
			data.Reset()
			data.Write(o.Data)
		}
		fmt.Fprintf(tw, "output %s\t%s %v %s\n", o.Name, o.Datatype, o.Shape, data.String())
	}
	return tw.Flush()
}

func fmtRow(row []float32) string {
	parts := make([]string, len(row))
	for i, v := range row {
		parts[i] = strconv.FormatFloat(float64(v), 'g', -1, 32)
	}
	return strings.Join(parts, "  ")
}

func fmtMS(d time.Duration) string {
	return strconv.FormatFloat(float64(d.Microseconds())/1000, 'f', 2, 64) + "ms"
}
