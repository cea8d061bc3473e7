package route

import (
	"fmt"
	"math"
	"time"
)

// Decision is a Judge's verdict.
type Decision int

// Decisions. The zero value is Inconclusive: with too little evidence the
// safe answer is "keep watching", neither promote nor roll back.
const (
	Inconclusive Decision = iota
	Healthy
	Rollback
)

// MarshalText makes a Decision read as its name in JSON.
func (d Decision) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

func (d Decision) String() string {
	switch d {
	case Healthy:
		return "healthy"
	case Rollback:
		return "rollback"
	default:
		return "inconclusive"
	}
}

// Judge compares a canary's metrics with its baseline's. The zero value
// uses the defaults documented on each field.
//
// The error-rate test is Fisher's exact test, one-sided (H0: the canary's
// error rate is not higher than the baseline's). We chose it over the
// two-proportion z-test after measuring the z-test here: its normal
// approximation is badly wrong at canary traffic levels — 2 errors in 20
// against a 1.25% baseline gives z = 3.39 (p = 0.00035, "roll back") while
// the exact conditional probability is 0.03 — and false rollbacks at low
// traffic are exactly what users of Flagger-style thresholds complain
// about. Fisher's test is exact at any count, needs only the two pairs of
// counts the sliding window keeps, and its tail is summed with a
// recurrence in microseconds. (The pooled z statistic is still reported
// for readers used to it.) Because Autopilot looks at the same canary
// again every interval, the default Alpha is 0.001: over 50 looks the
// chance of a false rollback of an equal canary stays under 5%
// (Bonferroni). A sequential test (mSPRT) would allow unlimited peeking
// exactly, at the price of a mixing prior nobody here could tune.
//
// "Healthy" needs more than "not significantly worse": the canary must be
// shown non-inferior. The one-sided upper confidence bound (level
// 1-HealthyAlpha) of canary rate − baseline rate, computed with the
// Agresti–Caffo adjustment (one success and one failure added per side,
// which keeps its coverage honest at small counts and zero errors), must
// be below Margin. Anything between the two is Inconclusive.
//
// Latency: when both sides have MinSamples requests and the canary's p99
// exceeds MaxP99Ratio times the baseline's (and by more than
// LatencySlack), the verdict is Rollback.
type Judge struct {
	// MinSamples is the fewest windowed requests each side needs before
	// any verdict but Inconclusive. If zero, 200.
	MinSamples int
	// Alpha is the one-sided significance level for "the canary's error
	// rate is higher". If zero, 0.001.
	Alpha float64
	// HealthyAlpha is one minus the confidence of the non-inferiority
	// bound. If zero, 0.05.
	HealthyAlpha float64
	// Margin is the largest error-rate excess (a fraction: 0.005 is half
	// a percentage point) still called healthy. If zero, 0.005.
	Margin float64
	// MaxP99Ratio is the largest canary/baseline p99 ratio tolerated. If
	// zero, 1.5; negative disables the latency check.
	MaxP99Ratio float64
	// LatencySlack is an absolute p99 excess always tolerated, so that
	// microsecond jitter on fast models is not a regression. If zero, none.
	LatencySlack time.Duration
	// MaxErrorRatePct, if positive, also rolls back a canary whose own
	// error rate exceeds it (the seed's threshold) once MinSamples exist.
	MaxErrorRatePct float64
}

func (j Judge) withDefaults() Judge {
	if j.MinSamples == 0 {
		j.MinSamples = 200
	}
	if j.Alpha == 0 {
		j.Alpha = 0.001
	}
	if j.HealthyAlpha == 0 {
		j.HealthyAlpha = 0.05
	}
	if j.Margin == 0 {
		j.Margin = 0.005
	}
	if j.MaxP99Ratio == 0 {
		j.MaxP99Ratio = 1.5
	}
	return j
}

// Validate reports a Judge whose fields are out of range.
func (j Judge) Validate() error {
	j = j.withDefaults()
	switch {
	case j.MinSamples < 1:
		return fmt.Errorf("route: judge MinSamples %d < 1", j.MinSamples)
	case !(j.Alpha > 0 && j.Alpha < 0.5):
		return fmt.Errorf("route: judge Alpha %v not in (0, 0.5)", j.Alpha)
	case !(j.HealthyAlpha > 0 && j.HealthyAlpha < 0.5):
		return fmt.Errorf("route: judge HealthyAlpha %v not in (0, 0.5)", j.HealthyAlpha)
	case !(j.Margin > 0 && j.Margin < 1):
		return fmt.Errorf("route: judge Margin %v not in (0, 1)", j.Margin)
	case math.IsNaN(j.MaxP99Ratio) || (j.MaxP99Ratio > 0 && j.MaxP99Ratio < 1):
		return fmt.Errorf("route: judge MaxP99Ratio %v < 1", j.MaxP99Ratio)
	}
	return nil
}

// Verdict is a Judge's decision with the numbers behind it.
type Verdict struct {
	Decision Decision
	Reason   string

	Canary, Baseline Metrics
	// RateDiff is canary error rate − baseline error rate (fractions).
	RateDiff float64
	// PValue is the one-sided Fisher exact test's p-value (1 when not
	// computed); Z is the pooled two-proportion z statistic, for reference.
	Z, PValue float64
	// UpperBound is the Agresti–Caffo upper confidence bound on RateDiff.
	UpperBound float64
	// P99Ratio is canary p99 / baseline p99 (0 when not computed).
	P99Ratio float64
}

func (v Verdict) String() string {
	return fmt.Sprintf("%s: %s (canary %d/%d, baseline %d/%d, z=%.2f p=%.2g upper=%.4f p99 ratio=%.2f)",
		v.Decision, v.Reason, v.Canary.Errors, v.Canary.Count, v.Baseline.Errors, v.Baseline.Count,
		v.Z, v.PValue, v.UpperBound, v.P99Ratio)
}

// normQuantile returns z with P(Z > z) = p for a standard normal Z.
func normQuantile(p float64) float64 {
	return -math.Sqrt2 * math.Erfinv(2*p-1)
}

// Compare judges a canary against its baseline.
func (j Judge) Compare(canary, baseline Metrics) Verdict {
	j = j.withDefaults()
	v := Verdict{Canary: canary, Baseline: baseline, PValue: 1}
	nc, nb := float64(canary.Count), float64(baseline.Count)
	if canary.Count < int64(j.MinSamples) || baseline.Count < int64(j.MinSamples) {
		v.Reason = fmt.Sprintf("not enough samples: canary %d, baseline %d, need %d each",
			canary.Count, baseline.Count, j.MinSamples)
		return v
	}
	xc, xb := float64(canary.Errors), float64(baseline.Errors)
	pc, pb := xc/nc, xb/nb
	v.RateDiff = pc - pb

	v.PValue = fisherGreater(canary.Errors, canary.Count, baseline.Errors, baseline.Count)
	p := (xc + xb) / (nc + nb)
	if se := math.Sqrt(p * (1 - p) * (1/nc + 1/nb)); se > 0 {
		v.Z = v.RateDiff / se
	}
	// Agresti–Caffo upper bound on the difference.
	ac, ab := (xc+1)/(nc+2), (xb+1)/(nb+2)
	seAC := math.Sqrt(ac*(1-ac)/(nc+2) + ab*(1-ab)/(nb+2))
	v.UpperBound = ac - ab + normQuantile(j.HealthyAlpha)*seAC

	if baseline.P99 > 0 {
		v.P99Ratio = float64(canary.P99) / float64(baseline.P99)
	}

	switch {
	case v.PValue < j.Alpha:
		v.Decision = Rollback
		v.Reason = fmt.Sprintf("error rate %.2f%% vs baseline %.2f%% (p=%.2g < %g)",
			100*pc, 100*pb, v.PValue, j.Alpha)
		return v
	case j.MaxErrorRatePct > 0 && canary.ErrorRatePct > j.MaxErrorRatePct:
		v.Decision = Rollback
		v.Reason = fmt.Sprintf("error rate %.2f%% above threshold %.2f%%", canary.ErrorRatePct, j.MaxErrorRatePct)
		return v
	case j.MaxP99Ratio > 0 && baseline.P99 > 0 && v.P99Ratio > j.MaxP99Ratio &&
		canary.P99-baseline.P99 > j.LatencySlack:
		v.Decision = Rollback
		v.Reason = fmt.Sprintf("p99 latency %v is %.2f× baseline %v (max %.2f×)",
			canary.P99, v.P99Ratio, baseline.P99, j.MaxP99Ratio)
		return v
	case v.UpperBound < j.Margin:
		v.Decision = Healthy
		v.Reason = fmt.Sprintf("error rate %.2f%% vs baseline %.2f%%, excess ≤ %.2f pp at %g%% confidence (margin %.2f pp)",
			100*pc, 100*pb, 100*v.UpperBound, 100*(1-j.HealthyAlpha), 100*j.Margin)
		return v
	default:
		v.Reason = fmt.Sprintf("error rate %.2f%% vs baseline %.2f%%: not significantly worse, not yet within margin (upper bound %.2f pp > %.2f pp)",
			100*pc, 100*pb, 100*v.UpperBound, 100*j.Margin)
		return v
	}
}

// fisherGreater is the one-sided Fisher exact test: the probability, with
// the margins fixed, that the canary gets at least xc of the xc+xb errors
// when both versions fail alike. X is hypergeometric (N = nc+nb requests,
// K = xc+xb errors, nc drawn); the tail is summed from P(X = xc) upwards
// with p(k+1)/p(k) = (K-k)(nc-k) / ((k+1)(N-K-nc+k+1)).
func fisherGreater(xc, nc, xb, nb int64) float64 {
	n, k, draw := nc+nb, xc+xb, nc
	if xc <= 0 || k == 0 {
		return 1
	}
	lo, hi := max(0, draw-(n-k)), min(k, draw)
	logChoose := func(a, b int64) float64 {
		x, _ := math.Lgamma(float64(a + 1))
		y, _ := math.Lgamma(float64(b + 1))
		z, _ := math.Lgamma(float64(a - b + 1))
		return x - y - z
	}
	prob := func(x int64) float64 {
		return math.Exp(logChoose(k, x) + logChoose(n-k, draw-x) - logChoose(n, draw))
	}
	// Sum the tail that lies away from the mode, where terms shrink
	// monotonically: the upper tail from xc when xc is above the mean,
	// else 1 − the lower tail from xc−1 (so an underflowing first term is
	// harmless either way).
	if float64(xc) > float64(k)*float64(draw)/float64(n) {
		term := prob(xc)
		sum := term
		for i := xc; i < hi && term > sum*1e-17; i++ {
			term *= float64(k-i) * float64(draw-i) / (float64(i+1) * float64(n-k-draw+i+1))
			sum += term
		}
		return min(sum, 1)
	}
	if xc-1 < lo {
		return 1
	}
	term := prob(xc - 1)
	sum := term
	for i := xc - 1; i > lo && term > sum*1e-17; i-- {
		term *= float64(i) * float64(n-k-draw+i) / (float64(k-i+1) * float64(draw-i+1))
		sum += term
	}
	return max(0, 1-sum)
}

// Judge compares model:canary with model:baseline over the sliding window.
func (r *Router) Judge(model, canary, baseline string, j Judge) Verdict {
	c, _ := r.VersionStats(model, canary)
	b, _ := r.VersionStats(model, baseline)
	return j.Compare(c.Window, b.Window)
}
