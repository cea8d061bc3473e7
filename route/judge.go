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
// The error-rate test is a one-sided two-proportion z-test with pooled
// variance (H0: canary rate ≤ baseline rate). We chose it because it is
// closed-form, cheap enough to run every interval on every model, and its
// inputs — two counts per side — are exactly what the sliding window
// keeps. Its normal approximation needs a few expected errors per side;
// the MinSamples guard and a strict Alpha cover that. Because Autopilot
// looks at the same canary again every interval, the default Alpha is
// 0.001: over 50 looks the chance of a false rollback of an equal canary
// stays under 5% (Bonferroni). A sequential test (mSPRT) would allow
// unlimited peeking exactly, at the price of a mixing prior nobody here
// could tune; the Beta-Binomial posterior needs numeric integration.
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
	// Z and PValue are the one-sided two-proportion test's statistic and
	// p-value (PValue 1 when not computed).
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

	// One-sided two-proportion z-test, pooled variance.
	p := (xc + xb) / (nc + nb)
	if se := math.Sqrt(p * (1 - p) * (1/nc + 1/nb)); se > 0 {
		v.Z = v.RateDiff / se
		v.PValue = 0.5 * math.Erfc(v.Z/math.Sqrt2)
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

// Judge compares model:canary with model:baseline over the sliding window.
func (r *Router) Judge(model, canary, baseline string, j Judge) Verdict {
	c, _ := r.VersionStats(model, canary)
	b, _ := r.VersionStats(model, baseline)
	return j.Compare(c.Window, b.Window)
}
