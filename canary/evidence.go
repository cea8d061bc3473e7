package canary

import (
	"cmp"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/signalforge/signalforge/registry"
	"github.com/signalforge/signalforge/route"
	"github.com/signalforge/signalforge/route/fleet"
)

// mark is the evidence mark a plan stores (registry.CanaryPlan.Mark): each
// replica's cumulative counters of the canary and the baseline when the
// current step began. As JSON:
//
//	{"replica-a": {"started": "…", "versions": {"v2": {"requests": 10, "errors": 1, …, "hist": [[37, 10]]}}}}
//
// Histograms are sparse ([bucket, count] for each non-empty bucket), which
// keeps the mark of a few hundred replicas within registry.MaxCanaryMark.
type mark map[string]markReplica

type markReplica struct {
	Started  time.Time               `json:"started"`
	Versions map[string]markCounters `json:"versions"`
}

type markCounters struct {
	Requests   int64         `json:"requests"`
	Errors     int64         `json:"errors"`
	NonFinite  int64         `json:"non_finite"`
	LatencySum time.Duration `json:"latency_sum_ns"`
	MinLatency time.Duration `json:"min_latency_ns"`
	MaxLatency time.Duration `json:"max_latency_ns"`
	Hist       [][2]uint64   `json:"hist,omitempty"`
}

func toMark(c route.Counters) markCounters {
	m := markCounters{Requests: c.Requests, Errors: c.Errors, NonFinite: c.NonFinite,
		LatencySum: c.LatencySum, MinLatency: c.MinLatency, MaxLatency: c.MaxLatency}
	for i, n := range c.Hist {
		if n > 0 {
			m.Hist = append(m.Hist, [2]uint64{uint64(i), n})
		}
	}
	return m
}

// counters returns the counters m encodes, or false if its histogram does
// not fit route's buckets.
func (m markCounters) counters() (route.Counters, bool) {
	c := route.Counters{Requests: m.Requests, Errors: m.Errors, NonFinite: m.NonFinite,
		LatencySum: m.LatencySum, MinLatency: m.MinLatency, MaxLatency: m.MaxLatency}
	if m.Requests == 0 && len(m.Hist) == 0 {
		return c, true
	}
	c.Hist = make([]uint64, route.HistBuckets)
	var n uint64
	for _, b := range m.Hist {
		if b[0] >= route.HistBuckets {
			return route.Counters{}, false
		}
		c.Hist[b[0]] += b[1]
		n += b[1]
	}
	return c, n == uint64(m.Requests) && m.Requests >= 0
}

// newMark records the counters of versions in f.
func newMark(f fleet.Fleet, versions ...string) mark {
	m := mark{}
	for _, s := range f.Replicas {
		r := markReplica{Started: s.Started, Versions: map[string]markCounters{}}
		for _, v := range versions {
			if c, ok := s.Versions[v]; ok {
				r.Versions[v] = toMark(c)
			}
		}
		m[s.Replica] = r
	}
	return m
}

func (m mark) encode() (json.RawMessage, error) {
	b, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	if len(b) > registry.MaxCanaryMark {
		return nil, fmt.Errorf("canary: the evidence mark of %d replicas takes %d bytes, more than the registry's %d", len(m), len(b), registry.MaxCanaryMark)
	}
	return b, nil
}

// decodeMark reads a stored mark; an empty one is an empty mark (every
// replica counts from zero).
func decodeMark(raw json.RawMessage) (mark, error) {
	m := mark{}
	if len(raw) == 0 {
		return m, nil
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("canary: unreadable evidence mark: %w", err)
	}
	for id, r := range m {
		for v, c := range r.Versions {
			if _, ok := c.counters(); !ok {
				return nil, fmt.Errorf("canary: evidence mark: replica %s, version %s: histogram does not match the counters", id, v)
			}
		}
	}
	return m, nil
}

// evidence is what the fleet served of a canary and its baseline since a
// mark, in total and per replica.
type evidence struct {
	canary, baseline route.Counters
	replicas         []registry.ReplicaEvidence
}

// since returns the evidence of f since m: per replica, its counters now
// minus the mark's. A replica absent from the mark, or whose Started
// differs from the mark's, or any of whose counters went down (it
// restarted), counts from zero; a replica in the mark but not in f (gone,
// or stale) adds nothing. Evidence is never negative.
func since(f fleet.Fleet, m mark, canary, baseline string) evidence {
	var ev evidence
	for _, s := range f.Replicas {
		prev, seen := m[s.Replica]
		if seen && !prev.Started.Equal(s.Started) {
			seen = false
		}
		var d [2]route.Counters
		for i, v := range []string{canary, baseline} {
			cur := s.Versions[v]
			if !seen {
				d[i] = cur
				continue
			}
			before, _ := prev.Versions[v].counters()
			x, ok := fleet.Sub(cur, before)
			if !ok { // a counter went down: a new process
				seen = false
				break
			}
			d[i] = x
		}
		if !seen {
			d = [2]route.Counters{s.Versions[canary], s.Versions[baseline]}
		}
		ev.canary, ev.baseline = fleet.Add(ev.canary, d[0]), fleet.Add(ev.baseline, d[1])
		ev.replicas = append(ev.replicas, registry.ReplicaEvidence{
			Replica: s.Replica, Canary: side(d[0]), Baseline: side(d[1]), Age: max(0, f.At.Sub(s.At)),
		})
	}
	slices.SortFunc(ev.replicas, func(a, b registry.ReplicaEvidence) int { return cmp.Compare(a.Replica, b.Replica) })
	return ev
}

// side summarizes counters as a verdict records them.
func side(c route.Counters) registry.VerdictSide {
	return registry.VerdictSide{Requests: c.Requests, Errors: c.Errors, NonFinite: c.NonFinite,
		P99Ms: float64(c.Metrics().P99) / float64(time.Millisecond)}
}

// judgeOf maps a plan's judge settings to route's judge.
func judgeOf(j registry.CanaryJudge) (route.Judge, error) {
	rj := route.Judge{MinSamples: j.MinSamples, MaxP99Ratio: j.MaxP99Ratio, MaxErrorRatePct: j.MaxErrorRatePct,
		Margin: j.MarginPct / 100}
	if err := rj.Validate(); err != nil {
		return route.Judge{}, fmt.Errorf("canary: judge settings %+v: %w", j, err)
	}
	return rj, nil
}

// verdict judges ev with j at time at.
func verdict(j route.Judge, ev evidence, at time.Time) registry.CanaryVerdict {
	v := j.Compare(ev.canary.Metrics(), ev.baseline.Metrics())
	return registry.CanaryVerdict{
		Decision: v.Decision.String(), Reason: v.Reason,
		Canary: side(ev.canary), Baseline: side(ev.baseline),
		PValue: v.PValue, UpperBound: v.UpperBound, P99Ratio: v.P99Ratio,
		Replicas: ev.replicas, At: at.UTC(),
	}
}
