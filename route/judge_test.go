package route

import (
	"encoding/json"
	"errors"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

var errSynthetic = errors.New("synthetic failure")

// stream feeds a router with seeded synthetic traffic: ids are routed by
// the split, each version fails with its own probability and has its own
// latency distribution.
type stream struct {
	r       *Router
	rng     *rand.Rand
	model   string
	errRate map[string]float64
	latency map[string]time.Duration // median; log-normal spread
	n       map[string]int
	now     time.Time
}

func newStream(t testing.TB, seed uint64, split Split, errRate map[string]float64) *stream {
	r := newRouter(t, Config{Window: time.Hour})
	mustSplit(t, r, "lstm_model", split)
	return &stream{
		r: r, rng: rand.New(rand.NewPCG(seed, 42)), model: "lstm_model",
		errRate: errRate, latency: map[string]time.Duration{}, n: map[string]int{},
		now: time.Now(),
	}
}

// runUntil sends requests until version has received n of them.
func (s *stream) runUntil(version string, n int) {
	for s.n[version] < n {
		id := "req_" + string(rune('a'+s.rng.IntN(26))) + time.Duration(s.rng.Uint64()).String()
		v, err := s.r.Route(s.model, id)
		if err != nil {
			panic(err)
		}
		s.n[v]++
		var fail error
		if s.rng.Float64() < s.errRate[v] {
			fail = errSynthetic
		}
		med := s.latency[v]
		if med == 0 {
			med = 5 * time.Millisecond
		}
		lat := time.Duration(float64(med) * math.Exp(0.3*s.rng.NormFloat64()))
		s.r.RecordAt(s.model, v, s.now, lat, fail)
	}
}

func TestJudgeCompareNumbers(t *testing.T) {
	// Hand-computed (Python): pooled p = 90/5000, z = 0.04/sqrt(p(1-p)(1/1000+1/4000));
	// Agresti–Caffo bound with z(0.95) = 1.6449.
	v := Judge{}.Compare(
		Metrics{Count: 1000, Errors: 50, ErrorRatePct: 5},
		Metrics{Count: 4000, Errors: 40, ErrorRatePct: 1},
	)
	if math.Abs(v.Z-8.509675283634703) > 1e-9 || math.Abs(v.UpperBound-0.05237051185328596) > 1e-9 {
		t.Fatalf("z = %v, upper = %v", v.Z, v.UpperBound)
	}
	if v.Decision != Rollback || math.Abs(v.RateDiff-0.04) > 1e-12 || v.PValue > 1e-9 {
		t.Fatalf("verdict = %v", v)
	}
}

func TestFisherExact(t *testing.T) {
	// Reference values: the hypergeometric tail summed exactly with
	// Python's math.comb (integers, no floating point until the division).
	tests := []struct {
		xc, nc, xb, nb int64
		want           float64
	}{
		// Lady tasting tea: [[3,1],[1,3]] → 17/70.
		{3, 4, 1, 4, 17.0 / 70},
		// [[1,9],[11,3]]: P(X≥1) = 1 - C(12,10)/C(24,10).
		{1, 10, 11, 14, 1 - 1.0/29716},
		{2, 20, 25, 2000, 0.02819373793059421},
		{7, 250, 4, 1043, 0.001515395011943564},
		{50, 1000, 40, 4000, 5.83159158144365e-14},
		{120, 10000, 400, 40000, 0.0455946362858581},
		// Canary at or below the baseline's rate: the lower-tail branch.
		{1, 10000, 5000, 10000, 1.0},
		{5, 100, 5, 100, 0.626235124935476},
		{3, 400, 20, 1000, 0.9787151613862064},
		{30, 50, 10, 60, 2.4940792353174876e-06},
		// No errors on the canary: nothing to test.
		{0, 100, 5, 100, 1},
	}
	for _, tt := range tests {
		got := fisherGreater(tt.xc, tt.nc, tt.xb, tt.nb)
		if math.Abs(got-tt.want) > 1e-9*max(1, tt.want) && math.Abs(got/tt.want-1) > 1e-6 {
			t.Errorf("fisherGreater(%d/%d vs %d/%d) = %.8f, want %.8f", tt.xc, tt.nc, tt.xb, tt.nb, got, tt.want)
		}
	}
}

func TestJudgeSmallSampleIsInconclusive(t *testing.T) {
	s := newStream(t, 1, Split{"v1.0": 0.8, "v2.0": 0.2}, map[string]float64{"v1.0": 0.01})
	s.runUntil("v1.0", 2000)
	// The canary's 20 requests with 2 errors, recorded by hand.
	for i := range 20 {
		var err error
		if i < 2 {
			err = errSynthetic
		}
		s.r.Record("lstm_model", "canary", 5*time.Millisecond, err)
	}
	v := s.r.Judge("lstm_model", "canary", "v1.0", Judge{})
	t.Logf("2 errors in 20 vs baseline: %v", v)
	if v.Decision != Inconclusive || !strings.Contains(v.Reason, "not enough samples") {
		t.Fatalf("verdict = %v", v)
	}
	// Even with the guard lowered to 20, 2/20 against 1.25% is not
	// significant at the default alpha (exact p ≈ 0.03; the z-test's normal
	// approximation would say p = 0.00035 and roll back).
	v = s.r.Judge("lstm_model", "canary", "v1.0", Judge{MinSamples: 20})
	t.Logf("2 errors in 20, MinSamples 20: %v", v)
	if v.Decision != Inconclusive {
		t.Fatalf("verdict with MinSamples 20 = %v", v)
	}
}

func TestJudgeRollsBackWorseCanary(t *testing.T) {
	// 5% canary errors against a 1% baseline, 80/20 traffic. Look every
	// 50 canary requests, as the autopilot would, and note when the
	// verdict becomes Rollback. It must never call the canary healthy.
	var firstRollback []int
	for seed := range uint64(20) {
		s := newStream(t, 100+seed, Split{"v1.0": 0.8, "v2.0": 0.2}, map[string]float64{"v1.0": 0.01, "v2.0": 0.05})
		first := -1
		for n := 50; n <= 2000; n += 50 {
			s.runUntil("v2.0", n)
			v := s.r.Judge("lstm_model", "v2.0", "v1.0", Judge{})
			if v.Decision == Healthy {
				t.Fatalf("seed %d: 5%% canary judged healthy at n=%d: %v", seed, n, v)
			}
			if n < 200 && v.Decision != Inconclusive {
				t.Fatalf("seed %d: verdict before MinSamples: %v", seed, v)
			}
			if v.Decision == Rollback {
				first = n
				if seed == 0 {
					t.Logf("seed 0 first rollback at n=%d: %v", n, v)
				}
				break
			}
		}
		if first < 0 {
			t.Fatalf("seed %d: no rollback after 2000 canary requests", seed)
		}
		firstRollback = append(firstRollback, first)
	}
	t.Logf("5%% vs 1%%: canary requests before rollback over 20 seeds: %v", firstRollback)
	for _, n := range firstRollback {
		if n > 1000 {
			t.Errorf("rollback needed %d canary requests (> 1000)", n)
		}
	}
}

func TestJudgeEqualRatesHealthy(t *testing.T) {
	skipUnderRace(t)
	// Equal 1% rates. Every seed looks 20 times (every 250 canary
	// requests up to 5000): count false rollbacks and final verdicts.
	falseRollbacks, healthy := 0, 0
	for seed := range uint64(50) {
		s := newStream(t, 1000+seed, Split{"v1.0": 0.8, "v2.0": 0.2}, map[string]float64{"v1.0": 0.01, "v2.0": 0.01})
		var v Verdict
		for n := 250; n <= 5000; n += 250 {
			s.runUntil("v2.0", n)
			v = s.r.Judge("lstm_model", "v2.0", "v1.0", Judge{})
			if v.Decision == Rollback {
				falseRollbacks++
				t.Logf("seed %d: false rollback at n=%d: %v", seed, n, v)
				break
			}
		}
		if v.Decision == Healthy {
			healthy++
		}
		if seed == 0 {
			t.Logf("equal rates, seed 0 final: %v", v)
		}
	}
	t.Logf("equal 1%% rates over 50 seeds × 20 looks: %d false rollbacks, %d healthy at 5000 canary requests", falseRollbacks, healthy)
	if falseRollbacks > 1 {
		t.Errorf("%d false rollbacks in 50 seeded runs", falseRollbacks)
	}
	if healthy < 40 {
		t.Errorf("only %d of 50 equal canaries judged healthy at 5000 requests", healthy)
	}
}

func TestJudgeLatencyRegression(t *testing.T) {
	s := newStream(t, 7, Split{"v1.0": 0.8, "v2.0": 0.2}, map[string]float64{})
	s.latency["v1.0"] = 5 * time.Millisecond
	s.latency["v2.0"] = 10 * time.Millisecond
	s.runUntil("v2.0", 1000)
	v := s.r.Judge("lstm_model", "v2.0", "v1.0", Judge{})
	t.Logf("2× slower canary: %v", v)
	if v.Decision != Rollback || !strings.Contains(v.Reason, "p99") || v.P99Ratio < 1.8 {
		t.Fatalf("verdict = %v", v)
	}
	// A generous slack tolerates it (then zero errors on both sides with
	// 1000 requests is healthy).
	v = s.r.Judge("lstm_model", "v2.0", "v1.0", Judge{LatencySlack: time.Second})
	if v.Decision != Healthy {
		t.Fatalf("verdict with slack = %v", v)
	}
	if v = s.r.Judge("lstm_model", "v2.0", "v1.0", Judge{MaxP99Ratio: -1}); v.Decision != Healthy {
		t.Fatalf("verdict with latency check off = %v", v)
	}
}

func TestJudgeThresholdAndValidate(t *testing.T) {
	v := Judge{MaxErrorRatePct: 2}.Compare(
		Metrics{Count: 1000, Errors: 30, ErrorRatePct: 3},
		Metrics{Count: 1000, Errors: 25, ErrorRatePct: 2.5},
	)
	if v.Decision != Rollback || !strings.Contains(v.Reason, "threshold") {
		t.Fatalf("verdict = %v", v)
	}
	for _, j := range []Judge{{MinSamples: -1}, {Alpha: 0.7}, {Margin: 2}, {MaxP99Ratio: 0.5}, {HealthyAlpha: -1}} {
		if j.Validate() == nil {
			t.Errorf("%+v accepted", j)
		}
	}
	if err := (Judge{}).Validate(); err != nil {
		t.Fatal(err)
	}
	if Healthy.String() != "healthy" || Rollback.String() != "rollback" || Inconclusive.String() != "inconclusive" {
		t.Fatal("Decision strings")
	}
	b, err := json.Marshal(struct {
		D Decision
		K ActionKind
		S CanaryState
	}{Rollback, Promoted, RolledBackState})
	if err != nil || string(b) != `{"D":"rollback","K":"promoted","S":"rolled back"}` {
		t.Fatalf("JSON = %s, %v", b, err)
	}
}
