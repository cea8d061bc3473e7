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
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/signalforge/signalforge/internal/loadgen"
)

// loadtestExamples is the help text's examples; each works against the
// server `make run` starts.
const loadtestExamples = `Examples, against the demo models that ` + "`make run`" + ` (signalforge serve) registers:

  # a concurrency sweep on the native API with generated requests
  signalforge loadtest --model forecast_mlp

  # OIP v2, a wider sweep, 5s a step, JSON out and a chart
  signalforge loadtest --model forecast_mlp --api v2 --concurrency 1,2,4,8,16,32,64,128 \
      --duration 5s --format json --svg loadtest.svg

  # a fixed offered load (open loop): 500 requests a second, at most 256 in flight
  signalforge loadtest --model forecast_mlp --rate 500 --duration 30s

  # several offered rates, one step each
  signalforge loadtest --model forecast_mlp --rate 100,200,400,800

  # replay recorded request bodies (JSON or JSON Lines), pinned to v2.0
  signalforge loadtest --model forecast_mlp:v2.0 --body requests.jsonl

Generated requests carry random feature values (the features and, for a
sequence model, the time steps come from GET /v1/models/NAME and
GET /v2/models/NAME), so they miss the server's prediction cache: the
numbers are the model's, not the cache's. Recorded bodies are sent as
they are, in turn; repeated bodies may be answered from the cache.

The batch size and queue wait columns come from the server's /metrics
(signalforge_batch_rows_total / signalforge_batches_total and
signalforge_queue_wait_seconds, read before and after each step, for the
model and version under test): "-" when the server ran no batch in the
step or does not export the metric. They count all of the server's
traffic to the model, not only this command's.

Load goes to this machine only (127.0.0.1, [::1] or localhost): the
command refuses any other server. The server is --server, else
$` + predictEnvServer + `, else ` + predictDefaultServer + `.
`

// loadtestDefaultInFlight is the most requests in flight in a --rate
// step when --concurrency is not given.
const loadtestDefaultInFlight = 256

// loadtestMaxConcurrency caps --concurrency: every worker holds a
// connection, and past a few thousand on one machine the client, not the
// server, is measured.
const loadtestMaxConcurrency = 4096

// loadtestCmd holds loadtest's flags.
type loadtestCmd struct {
	server      string
	model       string
	version     string
	api         string
	concurrency string
	rate        string
	duration    time.Duration
	warmup      time.Duration
	timeout     time.Duration
	bodyPath    string
	rows        int
	format      string
	svgPath     string
	quiet       bool
	set         map[string]bool // flags given on the command line

	steps []loadStep // from --concurrency or --rate
}

// loadStep is one step of the sweep: a closed loop at conc requests in
// flight, or (rate > 0) an open loop at rate requests a second with at
// most conc in flight.
type loadStep struct {
	conc int
	rate float64
}

func (s loadStep) String() string {
	if s.rate > 0 {
		return "rate " + fmtRate(s.rate) + "/s"
	}
	return "concurrency " + strconv.Itoa(s.conc)
}

// cmdLoadtest measures a running server under load, step by step, the way
// Triton's perf_analyzer does: throughput, latency percentiles, errors,
// and what the server's batchers did, read from its /metrics.
func cmdLoadtest(ctx context.Context, e *env, args []string) error {
	lc := &loadtestCmd{set: map[string]bool{}}
	const synopsis = "--model NAME[:VERSION] [--concurrency N,N,... | --rate R,R,...] [--body FILE] [flags]"
	fs := newFlagSet(e, "loadtest", synopsis)
	fs.Usage = func() {
		fmt.Fprintf(e.stderr, "Usage: signalforge loadtest %s\n\n", synopsis)
		fmt.Fprintf(e.stderr, "Load a running `signalforge serve` step by step and report, per step, the requests a\nsecond, the latency percentiles, the errors by kind, and the server's mean batch size and\nqueue wait.\n\n%s\nFlags:\n", loadtestExamples)
		fs.PrintDefaults()
	}
	server := e.getenv(predictEnvServer)
	if server == "" {
		server = predictDefaultServer
	}
	fs.StringVar(&lc.server, "server", server, "server base `URL`, on this machine ($"+predictEnvServer+" sets the default)")
	fs.StringVar(&lc.model, "model", "", "model `NAME`, or NAME:VERSION to pin a version (required)")
	fs.StringVar(&lc.api, "api", "native", "`API`: native (POST /v1/models/NAME/predict) or v2 (Open Inference Protocol, POST /v2/models/NAME/infer)")
	fs.StringVar(&lc.concurrency, "concurrency", "1,4,16,64", "the sweep: requests in flight, one step each (`N,N,...`); with --rate, one number: the most in flight (default 256)")
	fs.StringVar(&lc.rate, "rate", "", "offered load in requests a second (`R,R,...`), one open-loop step each, instead of a concurrency sweep")
	fs.DurationVar(&lc.duration, "duration", 10*time.Second, "measuring time per step")
	fs.DurationVar(&lc.warmup, "warmup", time.Second, "unmeasured load before each step (0 for none)")
	fs.DurationVar(&lc.timeout, "timeout", 10*time.Second, "per-request deadline; a request past it counts as a timeout error")
	fs.StringVar(&lc.bodyPath, "body", "", "send the request bodies in `FILE`, in turn: one JSON request, a JSON array of requests, or JSON Lines (default: generated)")
	fs.IntVar(&lc.rows, "rows", 1, "rows (instances) per generated request")
	fs.StringVar(&lc.format, "format", "table", "`FORMAT` of the report: table or json")
	fs.StringVar(&lc.svgPath, "svg", "", "also draw throughput and p99 latency per step as an SVG chart in `FILE`")
	fs.BoolVar(&lc.quiet, "quiet", false, "no progress line on stderr")
	// A flag mistake is one line and a pointer to -h, not the whole help:
	// the flag package writes its message to the output, then calls Usage.
	help := fs.Usage
	var parseOut bytes.Buffer
	fs.SetOutput(&parseOut)
	fs.Usage = func() {}
	if err := parseFlags(fs, args); err != nil {
		fs.SetOutput(e.stderr)
		if errors.Is(err, flag.ErrHelp) {
			help()
			return err
		}
		msg, _, _ := strings.Cut(strings.TrimSpace(parseOut.String()), "\n")
		return loadtestUsage(e, "%s", msg)
	}
	fs.SetOutput(e.stderr)
	fs.Visit(func(f *flag.Flag) { lc.set[f.Name] = true })
	if fs.NArg() > 0 {
		return loadtestUsage(e, "unexpected argument %q (the model goes in --model)", fs.Arg(0))
	}
	if err := lc.check(); err != nil {
		return loadtestUsage(e, "%v", err)
	}
	if err := loadgen.CheckLoopback(ctx, lc.server); err != nil {
		if errors.Is(err, loadgen.ErrNotLoopback) {
			return loadtestUsage(e, "--server %s: load tests go to this machine only (127.0.0.1, [::1] or localhost)", lc.server)
		}
		return loadtestUsage(e, "--server %s: %v", lc.server, err)
	}
	var file *fileBodies
	if lc.bodyPath != "" {
		var err error
		if file, err = readLoadBodies(lc.bodyPath, lc.api, lc.version); err != nil {
			return loadtestUsage(e, "%v", err)
		}
	}

	hc := &http.Client{Transport: loadgen.NewTransport(2), Timeout: 10 * time.Second}
	defer hc.CloseIdleConnections()
	target, err := lc.describe(ctx, hc)
	if err != nil {
		return err
	}
	var bodies bodySource
	if file != nil {
		bodies = file
	} else {
		if bodies, err = target.generator(lc.api, lc.rows); err != nil {
			return err
		}
	}

	rep := loadtestReport{
		Server: lc.server, Model: lc.model, Version: lc.version, API: lc.api, Bodies: bodies.describe(),
		Mode: "concurrency", DurationS: lc.duration.Seconds(), WarmupS: lc.warmup.Seconds(),
	}
	if lc.rate != "" {
		rep.Mode = "rate"
	}
	prog := newProgress(e, lc.quiet)
	var offset int64 // request numbers already used, so generated bodies never repeat
	for i, st := range lc.steps {
		cfg := loadgen.Config{
			URL:         lc.server + lc.path(),
			Concurrency: st.conc,
			Rate:        st.rate,
			Timeout:     lc.timeout,
			Check:       lc.checkAnswer,
		}
		label := fmt.Sprintf("%s (%d/%d)", st, i+1, len(lc.steps))
		if lc.warmup > 0 {
			prog.line("loadtest: %s: warming up for %v", label, lc.warmup)
			base := offset
			cfg.Body = func(seq int64) []byte { return bodies.body(base + seq) }
			cfg.Duration = lc.warmup
			if _, err := loadgen.Run(ctx, cfg); err != nil {
				return lc.interrupted(ctx, e, &rep, err)
			}
			offset += 1 << 32
		}
		before, mErr := scrapeServer(ctx, hc, lc.server, lc.model, lc.version)
		base := offset
		cfg.Body = func(seq int64) []byte { return bodies.body(base + seq) }
		cfg.Duration = lc.duration
		cfg.Progress = func(p loadgen.Progress) {
			rps := 0.0
			if p.Elapsed > 0 {
				rps = float64(p.Requests) / p.Elapsed.Seconds()
			}
			prog.update("loadtest: %s: %v/%v, %s requests, %s req/s, %d errors", label,
				min(p.Elapsed, lc.duration).Truncate(time.Second), lc.duration, thousands(p.Requests), fmtRate(rps), p.Failures)
		}
		cfg.ProgressEvery = prog.every
		res, err := loadgen.Run(ctx, cfg)
		if err != nil {
			return lc.interrupted(ctx, e, &rep, err)
		}
		offset += 1 << 32
		after, mErr2 := scrapeServer(ctx, hc, lc.server, lc.model, lc.version)
		step := newLoadtestStep(res, st)
		if mErr == nil && mErr2 == nil {
			step.serverSide(before, after)
		} else if i == 0 {
			fmt.Fprintf(e.stderr, "signalforge loadtest: warning: cannot read the server's /metrics (%v); batch size and queue wait are not shown\n", errors.Join(mErr, mErr2))
		}
		prog.line("loadtest: %s: %s requests in %v, %s req/s, %d errors", label, thousands(res.Requests),
			res.Elapsed.Round(10*time.Millisecond), fmtRate(res.RPS), res.Failures)
		rep.Steps = append(rep.Steps, step)
	}
	if err := lc.output(e, &rep); err != nil {
		return err
	}
	for _, s := range rep.Steps {
		if s.Requests > 0 && s.Errors == s.Requests {
			sample := ""
			for _, m := range slices.Sorted(maps.Keys(s.ErrorSamples)) {
				sample = m
				break
			}
			return fmt.Errorf("every request failed at %s, e.g. %s", s.label(), sample)
		}
	}
	return nil
}

// loadtestUsage prints a command-line mistake and returns errUsage (exit 2).
func loadtestUsage(e *env, format string, args ...any) error {
	fmt.Fprintf(e.stderr, "signalforge loadtest: %s\nRun `signalforge loadtest -h` for flags and examples.\n", fmt.Sprintf(format, args...))
	return errUsage
}

// check validates the flags, splits NAME:VERSION and builds the steps.
func (lc *loadtestCmd) check() error {
	if lc.model == "" {
		return errors.New("--model is required")
	}
	if name, ver, ok := strings.Cut(lc.model, ":"); ok {
		lc.model, lc.version = name, ver
	}
	if !predictNameRE.MatchString(lc.model) {
		return fmt.Errorf("model name %q is not valid (letters, digits, '.', '_', '-'; at most 128)", lc.model)
	}
	if lc.version != "" && !predictNameRE.MatchString(lc.version) {
		return fmt.Errorf("version %q is not valid (letters, digits, '.', '_', '-'; at most 128)", lc.version)
	}
	if lc.api != "native" && lc.api != "v2" {
		return fmt.Errorf("--api %q: want native or v2", lc.api)
	}
	if lc.format != "table" && lc.format != "json" {
		return fmt.Errorf("--format %q: want table or json", lc.format)
	}
	if lc.duration <= 0 || lc.timeout <= 0 || lc.warmup < 0 {
		return errors.New("--duration and --timeout must be positive, --warmup not negative")
	}
	if lc.rows < 1 {
		return fmt.Errorf("--rows %d must be at least 1", lc.rows)
	}
	if lc.bodyPath != "" && lc.set["rows"] {
		return errors.New("--rows shapes generated requests; a --body file's requests are sent as they are")
	}
	u, err := url.Parse(lc.server)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") {
		return fmt.Errorf("--server %q: want a base URL like %s", lc.server, predictDefaultServer)
	}
	lc.server = strings.TrimRight(lc.server, "/")
	concs, err := parseCounts(lc.concurrency)
	if err != nil {
		return fmt.Errorf("--concurrency: %v", err)
	}
	if lc.rate == "" {
		for _, c := range concs {
			lc.steps = append(lc.steps, loadStep{conc: c})
		}
		return nil
	}
	rates, err := parseRates(lc.rate)
	if err != nil {
		return fmt.Errorf("--rate: %v", err)
	}
	inFlight := loadtestDefaultInFlight
	if lc.set["concurrency"] {
		if len(concs) != 1 {
			return errors.New("with --rate, --concurrency is one number: the most requests in flight")
		}
		inFlight = concs[0]
	}
	for _, r := range rates {
		lc.steps = append(lc.steps, loadStep{conc: inFlight, rate: r})
	}
	return nil
}

// parseCounts parses "1,4,16,64": positive, at most loadtestMaxConcurrency.
func parseCounts(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > loadtestMaxConcurrency {
			return nil, fmt.Errorf("%q is not a number of requests in flight from 1 to %d", f, loadtestMaxConcurrency)
		}
		out = append(out, n)
	}
	return out, nil
}

// parseRates parses "100,200.5,400" or "500/s": positive requests a second.
func parseRates(s string) ([]float64, error) {
	var out []float64
	for f := range strings.SplitSeq(s, ",") {
		t := strings.TrimSuffix(strings.TrimSpace(f), "/s")
		r, err := strconv.ParseFloat(t, 64)
		if err != nil || !(r > 0) || math.IsInf(r, 0) || r > 1e6 {
			return nil, fmt.Errorf("%q is not a rate in requests a second (above 0, at most 1000000)", f)
		}
		out = append(out, r)
	}
	return out, nil
}

// path is the endpoint the load goes to.
func (lc *loadtestCmd) path() string {
	if lc.api == "v2" {
		p := "/v2/models/" + url.PathEscape(lc.model)
		if lc.version != "" {
			p += "/versions/" + url.PathEscape(lc.version)
		}
		return p + "/infer"
	}
	return "/v1/models/" + url.PathEscape(lc.model) + "/predict"
}

// checkAnswer refuses a 2xx answer that is not a prediction. It looks for
// the answer's one required field rather than decoding it, so the client
// spends its CPU on sending load.
func (lc *loadtestCmd) checkAnswer(_ int, body []byte) error {
	field := `"predictions"`
	if lc.api == "v2" {
		field = `"outputs"`
	}
	if !bytes.Contains(body, []byte(field)) {
		return fmt.Errorf("answer without %s: %s", field, snippet(body))
	}
	return nil
}

func snippet(b []byte) string {
	b = bytes.TrimSpace(b)
	if len(b) > 120 {
		return string(b[:120]) + "…"
	}
	return string(b)
}

// interrupted prints the steps measured so far and says why the run
// ended early.
func (lc *loadtestCmd) interrupted(ctx context.Context, e *env, rep *loadtestReport, err error) error {
	if ctx.Err() == nil {
		return err
	}
	if len(rep.Steps) > 0 {
		if oerr := lc.output(e, rep); oerr != nil {
			return oerr
		}
	}
	return fmt.Errorf("interrupted after %d of %d steps", len(rep.Steps), len(lc.steps))
}

// output writes the report in --format, and the chart if --svg.
func (lc *loadtestCmd) output(e *env, rep *loadtestReport) error {
	if lc.svgPath != "" {
		if err := writeLoadChart(lc.svgPath, rep); err != nil {
			return fmt.Errorf("--svg: %w", err)
		}
	}
	if lc.format == "json" {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	return printLoadtest(e.stdout, rep)
}

// loadtestReport is the outcome of a run; --format json prints it.
type loadtestReport struct {
	Server  string `json:"server"`
	Model   string `json:"model"`
	Version string `json:"version,omitempty"`
	API     string `json:"api"`
	// Bodies says where the requests came from.
	Bodies string `json:"bodies"`
	// Mode is "concurrency" (closed loop) or "rate" (open loop).
	Mode      string         `json:"mode"`
	DurationS float64        `json:"duration_s"`
	WarmupS   float64        `json:"warmup_s"`
	Steps     []loadtestStep `json:"steps"`
}

// loadtestStep is one step's numbers. Latencies are in milliseconds.
type loadtestStep struct {
	// Concurrency is the requests in flight (closed loop), or the most in
	// flight (open loop).
	Concurrency int `json:"concurrency"`
	// Rate is the offered requests a second of an open-loop step.
	Rate     float64 `json:"rate,omitempty"`
	Requests int64   `json:"requests"`
	ElapsedS float64 `json:"elapsed_s"`
	RPS      float64 `json:"rps"`
	P50MS    float64 `json:"p50_ms"`
	P90MS    float64 `json:"p90_ms"`
	P99MS    float64 `json:"p99_ms"`
	MaxMS    float64 `json:"max_ms"`
	Errors   int64   `json:"errors"`
	// ErrorKinds counts the errors by kind: http_NNN (an answer with that
	// status), timeout, connection (no answer), bad_answer (a 2xx that is
	// not a prediction).
	ErrorKinds map[string]int64 `json:"error_kinds,omitempty"`
	// ErrorSamples holds up to ten distinct error messages with counts.
	ErrorSamples map[string]int64 `json:"error_samples,omitempty"`
	// ServerBatches and ServerBatchRows are the deltas of the server's
	// signalforge_batches_total and signalforge_batch_rows_total over the
	// step; MeanBatchSize is their ratio, null when the server ran no
	// batch or its /metrics could not be read.
	ServerBatches   *float64 `json:"server_batches"`
	ServerBatchRows *float64 `json:"server_batch_rows"`
	MeanBatchSize   *float64 `json:"mean_batch_size"`
	// QueueWaitMS is the mean time a request waited in the server's batch
	// queue during the step (signalforge_queue_wait_seconds), null when
	// the server does not export it or queued nothing.
	QueueWaitMS *float64 `json:"queue_wait_mean_ms"`
}

func (s loadtestStep) label() string {
	return loadStep{conc: s.Concurrency, rate: s.Rate}.String()
}

func newLoadtestStep(res loadgen.Result, st loadStep) loadtestStep {
	ms := func(d time.Duration) float64 { return math.Round(float64(d)/1e3) / 1e3 }
	s := loadtestStep{
		Concurrency: st.conc, Rate: st.rate, Requests: res.Requests,
		ElapsedS: math.Round(res.Elapsed.Seconds()*1e3) / 1e3, RPS: math.Round(res.RPS*10) / 10,
		P50MS: ms(res.P50), P90MS: ms(res.P90), P99MS: ms(res.P99), MaxMS: ms(res.Max),
		Errors: res.Failures,
	}
	kinds := map[string]int64{}
	for code, n := range res.Status {
		if code/100 != 2 {
			kinds["http_"+strconv.Itoa(code)] += n
		}
	}
	if res.Timeouts > 0 {
		kinds["timeout"] = res.Timeouts
	}
	if n := res.TransportErrors - res.Timeouts; n > 0 {
		kinds["connection"] = n
	}
	if res.CheckFailures > 0 {
		kinds["bad_answer"] = res.CheckFailures
	}
	if len(kinds) > 0 {
		s.ErrorKinds = kinds
		s.ErrorSamples = res.ErrorSamples
	}
	return s
}

// serverSide fills in the server's numbers from two /metrics readings.
func (s *loadtestStep) serverSide(before, after serverMetrics) {
	batches, rows := after.batches-before.batches, after.rows-before.rows
	if !after.hasBatches || batches < 0 || rows < 0 {
		return // absent, or the server restarted in between
	}
	s.ServerBatches, s.ServerBatchRows = &batches, &rows
	if batches > 0 {
		m := math.Round(rows/batches*100) / 100
		s.MeanBatchSize = &m
	}
	if after.hasQueueWait && before.hasQueueWait {
		n, sum := after.queueWaitCount-before.queueWaitCount, after.queueWaitSum-before.queueWaitSum
		if n > 0 && sum >= 0 {
			w := math.Round(sum/n*1e6) / 1e3
			s.QueueWaitMS = &w
		}
	}
}

// printLoadtest renders the report as a table.
func printLoadtest(w io.Writer, r *loadtestReport) error {
	model := r.Model
	if r.Version != "" {
		model += ":" + r.Version
	}
	api := "native API"
	if r.API == "v2" {
		api = "Open Inference Protocol v2"
	}
	loop := "closed loop"
	if r.Mode == "rate" {
		loop = "open loop at a fixed rate, latency counted from each request's slot"
	}
	warm := ""
	if r.WarmupS > 0 {
		warm = fmt.Sprintf(" after %v of warm-up", time.Duration(r.WarmupS*float64(time.Second)))
	}
	fmt.Fprintf(w, "server  %s, model %s, %s\nbodies  %s\nsteps   %v each%s; %s\n\n", r.Server, model, api, r.Bodies,
		time.Duration(r.DurationS*float64(time.Second)), warm, loop)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	first := "concurrency"
	if r.Mode == "rate" {
		first = "offered req/s\tin flight ≤"
	}
	fmt.Fprintf(tw, "%s\trequests\treq/s\tp50 ms\tp90 ms\tp99 ms\tbatch size\tqueue wait ms\terrors\t\n", first)
	opt := func(v *float64, prec int) string {
		if v == nil {
			return "-"
		}
		return strconv.FormatFloat(*v, 'f', prec, 64)
	}
	for _, s := range r.Steps {
		lead := strconv.Itoa(s.Concurrency)
		if r.Mode == "rate" {
			lead = fmtRate(s.Rate) + "\t" + lead
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%.2f\t%.2f\t%.2f\t%s\t%s\t%s\t\n", lead, thousands(s.Requests), fmtRate(s.RPS),
			s.P50MS, s.P90MS, s.P99MS, opt(s.MeanBatchSize, 2), opt(s.QueueWaitMS, 3), fmtErrors(s))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, s := range r.Steps {
		if len(s.ErrorSamples) == 0 {
			continue
		}
		fmt.Fprintf(w, "\nerrors at %s:\n", s.label())
		for _, m := range slices.Sorted(maps.Keys(s.ErrorSamples)) {
			fmt.Fprintf(w, "  %s× %s\n", thousands(s.ErrorSamples[m]), m)
		}
	}
	return nil
}

// fmtErrors is "0", or the count and its kinds: "12 (http_429 10, timeout 2)".
func fmtErrors(s loadtestStep) string {
	if s.Errors == 0 {
		return "0"
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(s.ErrorKinds)) {
		parts = append(parts, k+" "+thousands(s.ErrorKinds[k]))
	}
	return thousands(s.Errors) + " (" + strings.Join(parts, ", ") + ")"
}

// fmtRate formats requests a second: 1234.5 → 1,234; 12.34 → 12.3.
func fmtRate(r float64) string {
	if r >= 100 {
		return thousands(int64(math.Round(r)))
	}
	return strings.TrimSuffix(strconv.FormatFloat(r, 'f', 1, 64), ".0")
}

// progress writes the progress line to stderr: redrawn in place on a
// terminal, a line every few seconds otherwise, nothing with --quiet.
type progress struct {
	w     io.Writer
	tty   bool
	quiet bool
	every time.Duration // how often loadgen reports
	// ticks counts reports since the last line, on a non-terminal.
	ticks int
}

func newProgress(e *env, quiet bool) *progress {
	p := &progress{w: e.stderr, quiet: quiet, every: time.Second}
	if f, ok := e.stderr.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			p.tty, p.every = true, 500*time.Millisecond
		}
	}
	return p
}

// update shows the state of a step in progress. loadgen calls it from one
// goroutine at a time.
func (p *progress) update(format string, args ...any) {
	if p.quiet {
		return
	}
	if p.tty {
		fmt.Fprintf(p.w, "\r"+format+"\x1b[K", args...)
		return
	}
	if p.ticks++; p.ticks%5 == 0 {
		fmt.Fprintf(p.w, format+"\n", args...)
	}
}

// line prints a line that stays: a step's start or end.
func (p *progress) line(format string, args ...any) {
	if p.quiet {
		return
	}
	p.ticks = 0
	if p.tty {
		fmt.Fprintf(p.w, "\r"+format+"\x1b[K\n", args...)
		return
	}
	fmt.Fprintf(p.w, format+"\n", args...)
}
