package loadgen

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// seqServer answers with the status that status(seq) picks, where seq is
// the request body (a decimal number), and records every seq it saw.
type seqServer struct {
	*httptest.Server
	mu    sync.Mutex
	seen  map[int64]int // guarded by mu
	conns atomic.Int64
}

func newSeqServer(t *testing.T, status func(seq int64) int) *seqServer {
	t.Helper()
	s := &seqServer{seen: make(map[int64]int)}
	s.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		seq, err := strconv.ParseInt(string(b), 10, 64)
		if err != nil {
			http.Error(w, "body is not a number", http.StatusTeapot)
			return
		}
		if ct := r.Header.Get("Content-Type"); ct != "application/json" {
			http.Error(w, "content type "+ct, http.StatusTeapot)
			return
		}
		s.mu.Lock()
		s.seen[seq]++
		s.mu.Unlock()
		code := status(seq)
		w.WriteHeader(code)
		fmt.Fprintf(w, `{"seq":%d}`, seq)
	}))
	s.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			s.conns.Add(1)
		}
	}
	s.Start()
	t.Cleanup(s.Close)
	return s
}

// seenCopy returns a copy of seen.
func (s *seqServer) seenCopy() map[int64]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.seen)
}

func seqBody(seq int64) []byte { return strconv.AppendInt(nil, seq, 10) }

func TestRunCountsEveryRequestOnce(t *testing.T) {
	s := newSeqServer(t, func(int64) int { return http.StatusOK })
	res, err := Run(t.Context(), Config{URL: s.URL + "/p", Concurrency: 8, Requests: 1000, Body: seqBody})
	if err != nil {
		t.Fatal(err)
	}
	if res.Requests != 1000 || res.Status[200] != 1000 || res.Failures != 0 || res.Latency.Count() != 1000 {
		t.Fatalf("result %+v: want 1000 requests, all 200", res)
	}
	seen := s.seenCopy()
	if len(seen) != 1000 {
		t.Fatalf("server saw %d distinct seqs, want 1000", len(seen))
	}
	for seq := range int64(1000) {
		if seen[seq] != 1 {
			t.Fatalf("seq %d seen %d times, want once", seq, seen[seq])
		}
	}
	// Keep-alive: each worker reuses its connection.
	if c := s.conns.Load(); c > 8 {
		t.Fatalf("%d connections for 8 workers: keep-alive is not reused", c)
	}
	if res.RPS <= 0 || res.P50 <= 0 || res.P50 > res.P99 || res.P99 > res.Max {
		t.Fatalf("summary rps %v p50 %v p99 %v max %v is inconsistent", res.RPS, res.P50, res.P99, res.Max)
	}
}

func TestRunStatusAccounting(t *testing.T) {
	codes := []int{200, 404, 429, 503, 201}
	s := newSeqServer(t, func(seq int64) int { return codes[seq%int64(len(codes))] })
	res, err := Run(t.Context(), Config{URL: s.URL, Concurrency: 4, Requests: 500, Body: seqBody})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range codes {
		if res.Status[c] != 100 {
			t.Errorf("status %d counted %d times, want 100", c, res.Status[c])
		}
	}
	if res.Failures != 300 || res.TransportErrors != 0 || res.Requests != 500 {
		t.Errorf("failures %d transport %d requests %d, want 300, 0, 500", res.Failures, res.TransportErrors, res.Requests)
	}
	if n := res.Latency.Count(); n != 500 {
		t.Errorf("latency has %d values, want 500 (every answered request)", n)
	}
	var samples404 int64
	for msg, n := range res.ErrorSamples {
		if strings.HasPrefix(msg, "HTTP 404: {\"seq\":") {
			samples404 += n
		}
	}
	if samples404 == 0 {
		t.Errorf("error samples %v have no HTTP 404 with its body", res.ErrorSamples)
	}
	if len(res.ErrorSamples) > 10 {
		t.Errorf("%d error samples, want at most 10", len(res.ErrorSamples))
	}
	line := res.String()
	for _, want := range []string{"4 conns: 500 requests", "300 failed", "100×404", "100×429", "100×503"} {
		if !strings.Contains(line, want) {
			t.Errorf("String() = %q, missing %q", line, want)
		}
	}
}

func TestRunTimeoutsAndChecks(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		seq, _ := strconv.Atoi(string(b))
		if seq%10 == 0 {
			select { // hang past the client's timeout
			case <-r.Context().Done():
			case <-release:
			}
			return
		}
		fmt.Fprintf(w, `{"cached":%v}`, seq%10 == 1)
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) })
	res, err := Run(t.Context(), Config{
		URL: srv.URL, Concurrency: 4, Requests: 100, Timeout: 50 * time.Millisecond, Body: seqBody,
		Check: func(status int, body []byte) error {
			if !strings.Contains(string(body), `"cached":true`) {
				return errors.New("not cached")
			}
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Timeouts != 10 {
		t.Errorf("timeouts %d, want the 10 transport errors (all timeouts)", res.Timeouts)
	}
	if res.TransportErrors != 10 || res.CheckFailures != 80 || res.Failures != 90 || res.Status[200] != 90 || res.Latency.Count() != 90 {
		t.Fatalf("transport %d checks %d failures %d 200s %d latencies %d, want 10, 80, 90, 90, 90",
			res.TransportErrors, res.CheckFailures, res.Failures, res.Status[200], res.Latency.Count())
	}
	if res.ErrorSamples["check: not cached"] != 80 {
		t.Fatalf("error samples %v: want 80 × check: not cached", res.ErrorSamples)
	}
}

func TestRunOpenLoopFollowsTheSchedule(t *testing.T) {
	s := newSeqServer(t, func(int64) int { return http.StatusOK })
	// Requests 0..4 are due at 0, 10, 20, 30 and 40ms: the run cannot end
	// before the last is due, whatever the machine's speed.
	res, err := Run(t.Context(), Config{URL: s.URL, Concurrency: 2, Requests: 5, Rate: 100, Body: seqBody})
	if err != nil {
		t.Fatal(err)
	}
	if res.Requests != 5 || len(s.seenCopy()) != 5 || res.Failures != 0 || res.Rate != 100 {
		t.Fatalf("requests %d, server saw %d, failures %d, rate %v; want 5, 5, 0, 100", res.Requests, len(s.seenCopy()), res.Failures, res.Rate)
	}
	if res.Elapsed < 40*time.Millisecond {
		t.Fatalf("elapsed %v: the last request is due at 40ms", res.Elapsed)
	}

	// With a duration, no request is due at or after it: at most
	// Rate × Duration are sent.
	res, err = Run(t.Context(), Config{URL: s.URL, Concurrency: 4, Duration: 200 * time.Millisecond, Rate: 50, Body: seqBody})
	if err != nil {
		t.Fatal(err)
	}
	if res.Requests < 1 || res.Requests > 10 {
		t.Fatalf("%d requests at 50/s for 200ms; want 1 to 10", res.Requests)
	}
}

func TestRunOpenLoopChargesTheWait(t *testing.T) {
	// One worker, a server taking 20ms a request, requests due every 1ms:
	// request 4 is due at 4ms but cannot start before 80ms, and its
	// latency counts from when it was due.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(20 * time.Millisecond)
		io.WriteString(w, "{}")
	}))
	t.Cleanup(srv.Close)
	res, err := Run(t.Context(), Config{URL: srv.URL, Concurrency: 1, Requests: 5, Rate: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if res.Requests != 5 || res.Max < 96*time.Millisecond {
		t.Fatalf("requests %d, max latency %v; want 5 and at least 100ms - 4ms", res.Requests, res.Max)
	}
}

func TestRunProgress(t *testing.T) {
	s := newSeqServer(t, func(seq int64) int {
		if seq%2 == 0 {
			return http.StatusTooManyRequests
		}
		return http.StatusOK
	})
	var (
		mu       sync.Mutex
		reports  []Progress
		returned bool
	)
	res, err := Run(t.Context(), Config{URL: s.URL, Concurrency: 2, Duration: 300 * time.Millisecond, Body: seqBody,
		ProgressEvery: 10 * time.Millisecond,
		Progress: func(p Progress) {
			mu.Lock()
			defer mu.Unlock()
			if returned {
				t.Error("Progress called after Run returned")
			}
			reports = append(reports, p)
		}})
	mu.Lock()
	returned = true
	got := append([]Progress(nil), reports...)
	mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) == 0 {
		t.Fatal("Progress never called in a 300ms run reporting every 10ms")
	}
	for i, p := range got {
		if p.Requests > res.Requests || p.Failures > p.Requests || (i > 0 && (p.Requests < got[i-1].Requests || p.Elapsed < got[i-1].Elapsed)) {
			t.Fatalf("report %d %+v (previous %+v, final %d requests): counts must only grow, up to the result", i, p, got[max(i-1, 0)], res.Requests)
		}
	}
	time.Sleep(50 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	if len(reports) != len(got) {
		t.Fatalf("%d reports after Run returned", len(reports)-len(got))
	}
}

func TestRunStopsOnDuration(t *testing.T) {
	var served atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(20 * time.Millisecond) // in flight at the deadline, on purpose
		served.Add(1)
		io.WriteString(w, "{}")
	}))
	t.Cleanup(srv.Close)
	const d = 300 * time.Millisecond
	start := time.Now()
	res, err := Run(t.Context(), Config{URL: srv.URL, Concurrency: 4, Duration: d})
	took := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	if took < d || took > d+2*time.Second {
		t.Fatalf("run took %v, want about %v", took, d)
	}
	// Requests in flight at the deadline are finished and counted.
	if res.Requests == 0 || res.Requests != served.Load() || res.Failures != 0 || res.Status[200] != res.Requests {
		t.Fatalf("requests %d, served %d, failures %d: want all served requests counted as 200", res.Requests, served.Load(), res.Failures)
	}
	if res.Elapsed < d {
		t.Fatalf("elapsed %v < duration %v", res.Elapsed, d)
	}
}

func TestRunStopsOnCountBeforeDuration(t *testing.T) {
	s := newSeqServer(t, func(int64) int { return http.StatusOK })
	start := time.Now()
	res, err := Run(t.Context(), Config{URL: s.URL, Concurrency: 3, Requests: 50, Duration: time.Minute, Body: seqBody})
	if err != nil {
		t.Fatal(err)
	}
	if res.Requests != 50 || len(s.seenCopy()) != 50 {
		t.Fatalf("requests %d, server saw %d, want 50", res.Requests, len(s.seenCopy()))
	}
	if took := time.Since(start); took > 30*time.Second {
		t.Fatalf("run took %v: did not stop at the count", took)
	}
}

func TestRunCancelAbandonsInFlight(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
	}))
	t.Cleanup(srv.Close)
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	res, err := Run(ctx, Config{URL: srv.URL, Concurrency: 4, Duration: time.Minute})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want the context's error", err)
	}
	if res.Requests != 0 || res.Failures != 0 {
		t.Fatalf("requests %d failures %d: abandoned requests must not be counted", res.Requests, res.Failures)
	}
}

func TestRunRefusesNonLoopback(t *testing.T) {
	for _, u := range []string{
		"http://10.0.0.1:8080/v1/models/m/predict",
		"http://192.168.1.10/",
		"http://[2001:db8::1]:8080/",
		"http://example.com/",
		"http://0.0.0.0:8080/",
	} {
		_, err := Run(t.Context(), Config{URL: u, Requests: 1})
		if !errors.Is(err, ErrNotLoopback) {
			t.Errorf("Run(%s) err = %v, want ErrNotLoopback", u, err)
		}
	}
	for _, u := range []string{"ftp://127.0.0.1/", "http:///nohost", "://bad"} {
		if _, err := Run(t.Context(), Config{URL: u, Requests: 1}); err == nil {
			t.Errorf("Run(%s) succeeded, want an error", u)
		}
	}
}

func TestLoopbackTargetsAccepted(t *testing.T) {
	for _, u := range []string{"http://127.0.0.1:1/", "http://127.3.2.1/", "http://[::1]:8080/", "http://localhost:8080/"} {
		if err := CheckLoopback(t.Context(), u); err != nil {
			t.Errorf("CheckLoopback(%s) = %v, want nil", u, err)
		}
	}
	// And a run by name works end to end.
	s := newSeqServer(t, func(int64) int { return http.StatusOK })
	_, port, _ := net.SplitHostPort(s.Listener.Addr().String())
	res, err := Run(t.Context(), Config{URL: "http://localhost:" + port + "/", Concurrency: 1, Requests: 3, Body: seqBody})
	if err != nil || res.Status[200] != 3 {
		t.Fatalf("run via localhost: %v, %+v", err, res.Status)
	}
}

// fakeConn is a net.Conn with a chosen remote address.
type fakeConn struct {
	net.Conn
	remote net.Addr
}

func (c fakeConn) RemoteAddr() net.Addr { return c.remote }

func TestDialerRefusesNonLoopbackPeer(t *testing.T) {
	for _, tc := range []struct {
		addr net.Addr
		ok   bool
	}{
		{&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 80}, true},
		{&net.TCPAddr{IP: net.IPv6loopback, Port: 80}, true},
		{&net.TCPAddr{IP: net.IPv4(10, 1, 2, 3), Port: 80}, false},
		{&net.UnixAddr{Name: "/tmp/x", Net: "unix"}, false},
	} {
		err := checkPeer(fakeConn{remote: tc.addr})
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrNotLoopback)) {
			t.Errorf("checkPeer(%v) = %v, want ok=%v", tc.addr, err, tc.ok)
		}
	}
}

func TestConfigValidation(t *testing.T) {
	for name, cfg := range map[string]Config{
		"unbounded":            {URL: "http://127.0.0.1:1/"},
		"negative concurrency": {URL: "http://127.0.0.1:1/", Requests: 1, Concurrency: -1},
		"negative duration":    {URL: "http://127.0.0.1:1/", Duration: -time.Second},
		"negative rate":        {URL: "http://127.0.0.1:1/", Requests: 1, Rate: -1},
		"NaN rate":             {URL: "http://127.0.0.1:1/", Requests: 1, Rate: math.NaN()},
		"negative progress":    {URL: "http://127.0.0.1:1/", Requests: 1, ProgressEvery: -time.Second},
	} {
		if _, err := Run(t.Context(), cfg); err == nil {
			t.Errorf("%s: Run succeeded, want an error", name)
		}
	}
	var c Config
	c.Requests = 1
	if err := c.validate(); err != nil || c.Concurrency != 64 || c.Timeout != 10*time.Second || c.Method != http.MethodGet {
		t.Fatalf("defaults: %v %+v", err, c)
	}
	c = Config{Requests: 1, Body: seqBody}
	if err := c.validate(); err != nil || c.Method != http.MethodPost {
		t.Fatalf("method with a body = %q (%v), want POST", c.Method, err)
	}
}

func TestCeiling(t *testing.T) {
	cs, err := StartCeiling()
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Post(cs.URL+"/anything", "application/json", strings.NewReader(`{"x":1}`))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != CeilingBody || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("ceiling answered %d %q %q", resp.StatusCode, resp.Header.Get("Content-Type"), b)
	}
	if err := cs.Close(); err != nil {
		t.Fatal(err)
	}
	if err := cs.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}

	res, err := Ceiling(t.Context(), Config{Concurrency: 16, Requests: 2000, Body: seqBody})
	if err != nil {
		t.Fatal(err)
	}
	if res.Requests != 2000 || res.Status[200] != 2000 || res.Failures != 0 || res.RPS <= 0 {
		t.Fatalf("ceiling run: %v", res)
	}
}

// BenchmarkCeiling64 measures this machine's loopback HTTP ceiling with 64
// keep-alive connections (b.N requests), the reference for server
// benchmarks: go test -run '^$' -bench Ceiling64 -benchtime 200000x ./internal/loadgen/
func BenchmarkCeiling64(b *testing.B) {
	body := []byte(`{"request_id":"r","features":{"rsi_14":65.0,"macd":0.5}}`)
	res, err := Ceiling(b.Context(), Config{
		Concurrency: 64,
		Requests:    int64(b.N),
		Body:        func(int64) []byte { return body },
	})
	if err != nil {
		b.Fatal(err)
	}
	if res.Failures != 0 {
		b.Fatalf("ceiling run failed: %v", res)
	}
	b.ReportMetric(res.RPS, "req/s")
	b.ReportMetric(float64(res.P50.Microseconds()), "p50-µs")
	b.ReportMetric(float64(res.P99.Microseconds()), "p99-µs")
}
