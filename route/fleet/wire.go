package fleet

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/signalforge/signalforge/route"
)

// wireSnapshot is a Snapshot as JSON: times in Unix nanoseconds,
// histograms sparse (most of the buckets are empty).
type wireSnapshot struct {
	Model    string                  `json:"model"`
	Replica  string                  `json:"replica"`
	Started  int64                   `json:"started"`
	At       int64                   `json:"at"`
	Versions map[string]wireCounters `json:"versions"`
}

type wireCounters struct {
	Requests   int64 `json:"requests"`
	Errors     int64 `json:"errors"`
	NonFinite  int64 `json:"non_finite"`
	LatencySum int64 `json:"latency_sum_ns"`
	MinLatency int64 `json:"min_latency_ns"`
	MaxLatency int64 `json:"max_latency_ns"`
	// Hist is [bucket, count] for each non-empty bucket, in order.
	Hist [][2]uint64 `json:"hist"`
}

// Encode returns s as the JSON a Store keeps (times in Unix nanoseconds,
// histograms sparse), after checking it as Publish does: a snapshot that
// must not be stored is an error wrapping ErrInvalid. It is for Store
// implementations outside this package; Decode reads it back.
func Encode(s Snapshot) ([]byte, error) {
	if err := s.validate(); err != nil {
		return nil, err
	}
	b, err := encode(s)
	if err != nil {
		return nil, fmt.Errorf("fleet: encoding %s from replica %s: %w", s.Model, s.Replica, err)
	}
	return b, nil
}

// Decode parses and checks what Encode wrote. Anything else (garbage, a
// snapshot with bad names or inconsistent counters) is an error wrapping
// ErrInvalid, never a panic: stores read what other processes wrote.
func Decode(b []byte) (Snapshot, error) { return decode(b) }

// CheckTTL reports a publish TTL every Store refuses (below 1ms).
func CheckTTL(ttl time.Duration) error { return validTTL(ttl) }

func encode(s Snapshot) ([]byte, error) {
	w := wireSnapshot{Model: s.Model, Replica: s.Replica, Started: s.Started.UnixNano(), At: s.At.UnixNano(),
		Versions: make(map[string]wireCounters, len(s.Versions))}
	for v, c := range s.Versions {
		wc := wireCounters{Requests: c.Requests, Errors: c.Errors, NonFinite: c.NonFinite,
			LatencySum: int64(c.LatencySum), MinLatency: int64(c.MinLatency), MaxLatency: int64(c.MaxLatency)}
		for i, n := range c.Hist {
			if n > 0 {
				wc.Hist = append(wc.Hist, [2]uint64{uint64(i), n})
			}
		}
		w.Versions[v] = wc
	}
	return json.Marshal(w)
}

// decode parses and validates a stored snapshot; garbage is an error
// wrapping ErrInvalid, never a panic.
func decode(b []byte) (Snapshot, error) {
	var w wireSnapshot
	if err := json.Unmarshal(b, &w); err != nil {
		return Snapshot{}, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	s := Snapshot{Model: w.Model, Replica: w.Replica, Started: time.Unix(0, w.Started), At: time.Unix(0, w.At),
		Versions: make(map[string]route.Counters, len(w.Versions))}
	for v, wc := range w.Versions {
		c := route.Counters{Requests: wc.Requests, Errors: wc.Errors, NonFinite: wc.NonFinite,
			LatencySum: time.Duration(wc.LatencySum), MinLatency: time.Duration(wc.MinLatency), MaxLatency: time.Duration(wc.MaxLatency)}
		if len(wc.Hist) > 0 {
			c.Hist = make([]uint64, route.HistBuckets)
			for _, b := range wc.Hist {
				if b[0] >= route.HistBuckets {
					return Snapshot{}, fmt.Errorf("%w: %s:%s from replica %s: histogram bucket %d ≥ %d",
						ErrInvalid, w.Model, v, w.Replica, b[0], route.HistBuckets)
				}
				c.Hist[b[0]] += b[1]
			}
		}
		s.Versions[v] = c
	}
	if err := s.validate(); err != nil {
		return Snapshot{}, err
	}
	return s, nil
}
