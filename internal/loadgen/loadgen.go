// Package loadgen is an HTTP load generator for benchmarking SignalForge
// Serve on this machine. By default it is closed-loop: Concurrency workers,
// each with its own keep-alive connection, send a request, wait for the
// answer, and send the next, until a request count or a duration is
// reached. With Rate set it is open-loop: requests start on a fixed
// schedule, Rate a second, whatever the server's pace, with at most
// Concurrency in flight. It records every request's latency in a
// log-linear histogram and counts answers by status.
//
//	res, err := loadgen.Run(ctx, loadgen.Config{
//		URL:         "http://127.0.0.1:8080/v1/models/mlp/predict",
//		Concurrency: 64,
//		Duration:    10 * time.Second,
//		Body: func(seq int64) []byte {
//			return fmt.Appendf(nil, `{"request_id":"r%d","features":{"x":%d}}`, seq, seq%100)
//		},
//	})
//	fmt.Println(res) // 64 conns: 210000 requests in 10s, 21000 req/s, p50 2.9ms ...
//
// Progress, if set, is called about once a second during the run with
// the counts so far, for a live status line.
//
// Ceiling measures, in the same run, what a trivial net/http handler on
// 127.0.0.1 sustains with the same load: the loopback HTTP ceiling of the
// machine, against which a server's numbers are meaningful.
//
// Load goes to loopback only, by design: our workplace forbids load tests
// against other hosts. Run refuses a URL whose host is not a loopback
// address, and the dialer refuses any connection whose peer is not loopback
// (so a name that resolves elsewhere, or a redirect, cannot get around it;
// redirects are not followed at all).
package loadgen

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// ErrNotLoopback is returned (wrapped) for a target that is not on this
// machine's loopback interface.
var ErrNotLoopback = errors.New("loadgen: target is not a loopback address (load generation is loopback-only by policy)")

// Config describes one run. Requests and Duration bound it; at least one
// must be set, and the run stops at whichever comes first.
type Config struct {
	// URL is the target, http://127.0.0.1:PORT/..., http://[::1]:PORT/... or
	// http://localhost:PORT/... (localhost must resolve to loopback only).
	URL string
	// Method is the HTTP method. If empty, POST when Body is set, else GET.
	Method string
	// Header is sent with every request. If Body is set and Header has no
	// Content-Type, "application/json" is sent.
	Header http.Header
	// Body returns the body of request number seq (0, 1, 2, … across all
	// workers), so callers can vary request ids or features. It is called
	// concurrently from the workers and must be safe for that. If nil,
	// requests have no body.
	Body func(seq int64) []byte
	// Check, if set, inspects each answer; an error counts the request as
	// failed (under Result.CheckFailures). It is called concurrently. Without
	// Check any 2xx is a success.
	Check func(status int, body []byte) error

	// Concurrency is the number of workers (and connections). If zero, 64.
	Concurrency int
	// Requests is the total number of requests to send. If zero, no count
	// limit (Duration must be set).
	Requests int64
	// Duration bounds the run: no request starts after it; requests in
	// flight then are finished and counted. If zero, no time limit
	// (Requests must be set).
	Duration time.Duration
	// Timeout bounds each request. If zero, 10s.
	Timeout time.Duration

	// Rate, if positive, makes the run open-loop: request number seq is
	// due at seq/Rate seconds after the start, and starts then if one of
	// the Concurrency workers is free, or as soon as one is. Its latency
	// is counted from when it was due, not from when it started, so a
	// server that falls behind is charged for the requests it kept
	// waiting (no coordinated omission). If zero, the run is closed-loop.
	Rate float64

	// Progress, if set, is called every ProgressEvery during the run, from
	// one goroutine of Run's, never after Run returns.
	Progress func(Progress)
	// ProgressEvery is the interval between Progress calls. If zero, 1s.
	ProgressEvery time.Duration
}

// Progress is a run's counts so far.
type Progress struct {
	// Requests and Failures count the requests completed so far, as
	// Result does.
	Requests, Failures int64
	// Elapsed is the time since the run started.
	Elapsed time.Duration
}

// Result is the outcome of a run.
type Result struct {
	Concurrency int
	// Rate is Config.Rate: the requests a second offered, or 0 for a
	// closed-loop run.
	Rate float64
	// Requests is the number of requests that completed (answered, failed
	// or timed out), excluding those cut off by the caller cancelling ctx.
	Requests int64
	// Elapsed is from the first request's start to the last one's end.
	Elapsed time.Duration
	// RPS is Requests / Elapsed.
	RPS float64
	// Status counts answers by HTTP status code.
	Status map[int]int64
	// Failures counts requests that did not succeed: non-2xx answers,
	// transport errors (including per-request timeouts) and failed checks.
	Failures int64
	// TransportErrors counts requests that got no HTTP answer.
	TransportErrors int64
	// Timeouts counts the transport errors that were Config.Timeout
	// running out.
	Timeouts int64
	// CheckFailures counts 2xx answers that Config.Check refused.
	CheckFailures int64
	// ErrorSamples holds up to ten distinct error messages with counts.
	ErrorSamples map[string]int64
	// Latency has the latency of every request that got an answer (any
	// status). Transport errors are not in it.
	Latency *Histogram
	// P50, P90, P99 and Max summarize Latency.
	P50, P90, P99, Max time.Duration
}

// String is a one-line summary, e.g.
// "64 conns: 10000 requests in 1.2s, 8333 req/s, p50 7.1ms p90 9ms p99 12ms max 20ms, 0 failed".
func (r Result) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d conns: %d requests in %v, %.0f req/s, p50 %v p90 %v p99 %v max %v, %d failed",
		r.Concurrency, r.Requests, r.Elapsed.Round(time.Millisecond), r.RPS,
		roundDur(r.P50), roundDur(r.P90), roundDur(r.P99), roundDur(r.Max), r.Failures)
	if r.Failures > 0 {
		codes := slices.Sorted(maps.Keys(r.Status))
		var parts []string
		for _, c := range codes {
			if c/100 != 2 {
				parts = append(parts, fmt.Sprintf("%d×%d", r.Status[c], c))
			}
		}
		if r.TransportErrors > 0 {
			parts = append(parts, fmt.Sprintf("%d transport errors", r.TransportErrors))
		}
		if r.CheckFailures > 0 {
			parts = append(parts, fmt.Sprintf("%d failed checks", r.CheckFailures))
		}
		fmt.Fprintf(&b, " (%s)", strings.Join(parts, ", "))
	}
	return b.String()
}

func roundDur(d time.Duration) time.Duration {
	switch {
	case d >= 100*time.Millisecond:
		return d.Round(time.Millisecond)
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond)
	default:
		return d.Round(time.Microsecond)
	}
}

// CheckLoopback returns an error wrapping ErrNotLoopback unless rawURL is
// an http(s) URL whose host is a loopback IP, or "localhost" resolving to
// loopback addresses only.
func CheckLoopback(ctx context.Context, rawURL string) error {
	u, err := url.Parse(rawURL)
	if err != nil {
		return fmt.Errorf("loadgen: bad URL %q: %w", rawURL, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("loadgen: URL %q: scheme must be http or https", rawURL)
	}
	host := u.Hostname()
	if host == "" {
		return fmt.Errorf("loadgen: URL %q has no host", rawURL)
	}
	if ip := net.ParseIP(host); ip != nil {
		if !ip.IsLoopback() {
			return fmt.Errorf("%w: %s", ErrNotLoopback, host)
		}
		return nil
	}
	if !strings.EqualFold(host, "localhost") {
		return fmt.Errorf("%w: %s (use 127.0.0.1, [::1] or localhost)", ErrNotLoopback, host)
	}
	ips, err := net.DefaultResolver.LookupIPAddr(ctx, host)
	if err != nil {
		return fmt.Errorf("loadgen: resolving %s: %w", host, err)
	}
	for _, ip := range ips {
		if !ip.IP.IsLoopback() {
			return fmt.Errorf("%w: %s resolves to %s", ErrNotLoopback, host, ip.IP)
		}
	}
	return nil
}

// loopbackDial dials like net.Dialer but refuses a peer that is not a
// loopback address, whatever name led to it.
func loopbackDial(d *net.Dialer) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		if err := checkPeer(c); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	}
}

// checkPeer refuses a connection whose remote end is not a loopback address.
func checkPeer(c net.Conn) error {
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); !ok || !ta.IP.IsLoopback() {
		return fmt.Errorf("%w: connected to %v", ErrNotLoopback, c.RemoteAddr())
	}
	return nil
}

// NewTransport returns an http.Transport for n concurrent workers against
// one loopback host: up to n idle keep-alive connections kept, at most n
// open, no compression, and a dialer that refuses non-loopback peers.
func NewTransport(n int) *http.Transport {
	return &http.Transport{
		DialContext:         loopbackDial(&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}),
		MaxIdleConns:        n,
		MaxIdleConnsPerHost: n,
		MaxConnsPerHost:     n,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
		ForceAttemptHTTP2:   false,
	}
}

func (c *Config) validate() error {
	if c.Concurrency == 0 {
		c.Concurrency = 64
	}
	if c.Concurrency < 0 {
		return fmt.Errorf("loadgen: Concurrency %d is negative", c.Concurrency)
	}
	if c.Requests < 0 || c.Duration < 0 || c.Timeout < 0 || c.ProgressEvery < 0 {
		return errors.New("loadgen: Requests, Duration, Timeout and ProgressEvery must not be negative")
	}
	if c.Rate < 0 || math.IsNaN(c.Rate) || math.IsInf(c.Rate, 0) {
		return fmt.Errorf("loadgen: Rate %v is not a finite, non-negative number", c.Rate)
	}
	if c.ProgressEvery == 0 {
		c.ProgressEvery = time.Second
	}
	if c.Requests == 0 && c.Duration == 0 {
		return errors.New("loadgen: set Requests or Duration (or both); an unbounded run is refused")
	}
	if c.Timeout == 0 {
		c.Timeout = 10 * time.Second
	}
	if c.Method == "" {
		c.Method = http.MethodGet
		if c.Body != nil {
			c.Method = http.MethodPost
		}
	}
	return nil
}

// worker is one worker's private tallies, merged after the run.
type worker struct {
	hist      Histogram
	status    map[int]int64
	done      int64
	failures  int64
	transport int64
	timeouts  int64
	checks    int64
	errs      map[string]int64
	buf       bytes.Buffer
	live      *counters
	// reported is how much of done and failures live already has.
	reportedDone, reportedFailures int64
}

// tally brings the live counters up to date with the worker's own.
func (w *worker) tally() {
	w.live.done.Add(w.done - w.reportedDone)
	w.live.failures.Add(w.failures - w.reportedFailures)
	w.reportedDone, w.reportedFailures = w.done, w.failures
}

func (w *worker) noteErr(msg string) {
	if _, ok := w.errs[msg]; ok || len(w.errs) < 10 {
		w.errs[msg]++
	}
}

// Run sends load as cfg describes and returns what it measured. It returns
// an error only for a bad Config or a non-loopback target; failed requests
// are counted in the Result. Cancelling ctx stops the run early: requests
// in flight are abandoned and not counted, and Run returns what was
// measured so far together with ctx's error.
func Run(ctx context.Context, cfg Config) (Result, error) {
	if err := cfg.validate(); err != nil {
		return Result{}, err
	}
	if err := CheckLoopback(ctx, cfg.URL); err != nil {
		return Result{}, err
	}
	tr := NewTransport(cfg.Concurrency)
	defer tr.CloseIdleConnections()
	hc := &http.Client{
		Transport: tr,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}

	var (
		issued  atomic.Int64
		stopped atomic.Bool
		live    counters
	)
	workers := make([]*worker, cfg.Concurrency)
	var wg sync.WaitGroup
	start := time.Now()
	// stop ends the sleeps of open-loop workers waiting for their turn.
	stop := make(chan struct{})
	if cfg.Duration > 0 {
		t := time.AfterFunc(cfg.Duration, func() { stopped.Store(true); close(stop) })
		defer t.Stop()
	}
	for i := range workers {
		w := &worker{status: make(map[int]int64), errs: make(map[string]int64), live: &live}
		workers[i] = w
		wg.Go(func() {
			for !stopped.Load() && ctx.Err() == nil {
				seq := issued.Add(1) - 1
				if cfg.Requests > 0 && seq >= cfg.Requests {
					return
				}
				due := start
				if cfg.Rate > 0 {
					due = start.Add(time.Duration(float64(seq) / cfg.Rate * float64(time.Second)))
					if cfg.Duration > 0 && due.Sub(start) >= cfg.Duration {
						return
					}
					if !sleepUntil(ctx, stop, due) {
						return
					}
				}
				w.one(ctx, hc, &cfg, seq, due)
			}
		})
	}
	progressDone := make(chan struct{})
	if cfg.Progress != nil {
		finished := make(chan struct{})
		go func() {
			defer close(progressDone)
			tk := time.NewTicker(cfg.ProgressEvery)
			defer tk.Stop()
			for {
				select {
				case <-finished:
					return
				case <-ctx.Done():
					return
				case <-tk.C:
					cfg.Progress(Progress{Requests: live.done.Load(), Failures: live.failures.Load(), Elapsed: time.Since(start)})
				}
			}
		}()
		defer func() { close(finished); <-progressDone }()
	}
	wg.Wait()
	elapsed := time.Since(start)

	res := Result{
		Concurrency:  cfg.Concurrency,
		Rate:         cfg.Rate,
		Elapsed:      elapsed,
		Status:       make(map[int]int64),
		ErrorSamples: make(map[string]int64),
		Latency:      new(Histogram),
	}
	for _, w := range workers {
		res.Latency.Merge(&w.hist)
		res.Requests += w.done
		res.Failures += w.failures
		res.TransportErrors += w.transport
		res.Timeouts += w.timeouts
		res.CheckFailures += w.checks
		for c, n := range w.status {
			res.Status[c] += n
		}
		for m, n := range w.errs {
			if _, ok := res.ErrorSamples[m]; ok || len(res.ErrorSamples) < 10 {
				res.ErrorSamples[m] += n
			}
		}
	}
	if elapsed > 0 {
		res.RPS = float64(res.Requests) / elapsed.Seconds()
	}
	res.P50 = res.Latency.Quantile(0.50)
	res.P90 = res.Latency.Quantile(0.90)
	res.P99 = res.Latency.Quantile(0.99)
	res.Max = res.Latency.Max()
	return res, ctx.Err()
}

// counters are the live totals Progress reports, shared by the workers.
type counters struct {
	done, failures atomic.Int64
}

// sleepUntil waits until t, and reports false if ctx or stop ended the
// wait first.
func sleepUntil(ctx context.Context, stop <-chan struct{}, t time.Time) bool {
	d := time.Until(t)
	if d <= 0 {
		return true
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return true
	case <-ctx.Done():
		return false
	case <-stop:
		return false
	}
}

// one sends request seq and records its outcome, unless ctx was cancelled
// under it (then it is not counted). Its latency counts from due, when it
// was due to start (now, in a closed loop; its slot in the schedule, in
// an open one).
func (w *worker) one(ctx context.Context, hc *http.Client, cfg *Config, seq int64, due time.Time) {
	defer w.tally()
	var body io.Reader
	if cfg.Body != nil {
		body = bytes.NewReader(cfg.Body(seq))
	}
	rctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, cfg.Method, cfg.URL, body)
	if err != nil {
		// The URL was checked; only a bad Method gets here.
		w.done++
		w.failures++
		w.transport++
		w.noteErr(err.Error())
		return
	}
	for k, v := range cfg.Header {
		req.Header[k] = v
	}
	if cfg.Body != nil && req.Header.Get("Content-Type") == "" {
		req.Header.Set("Content-Type", "application/json")
	}
	t0 := time.Now()
	if cfg.Rate > 0 {
		t0 = due
	}
	resp, err := hc.Do(req)
	if err == nil {
		w.buf.Reset()
		_, err = w.buf.ReadFrom(resp.Body)
		resp.Body.Close()
	}
	lat := time.Since(t0)
	if ctx.Err() != nil {
		return // the caller stopped the run; this request is not a result
	}
	w.done++
	if err != nil {
		w.failures++
		w.transport++
		if errors.Is(err, context.DeadlineExceeded) || rctx.Err() != nil {
			w.timeouts++
		}
		w.noteErr(err.Error())
		return
	}
	w.hist.Record(lat)
	w.status[resp.StatusCode]++
	if resp.StatusCode/100 != 2 {
		w.failures++
		w.noteErr(fmt.Sprintf("HTTP %d: %s", resp.StatusCode, snippet(w.buf.Bytes())))
		return
	}
	if cfg.Check != nil {
		if err := cfg.Check(resp.StatusCode, w.buf.Bytes()); err != nil {
			w.failures++
			w.checks++
			w.noteErr("check: " + err.Error())
		}
	}
}

func snippet(b []byte) string {
	b = bytes.TrimSpace(b)
	if len(b) > 120 {
		return string(b[:120]) + "…"
	}
	return string(b)
}
