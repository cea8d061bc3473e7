// Package fleet adds up the request counters of every replica serving a
// model, so that a canary is judged on the whole fleet's traffic rather
// than on one replica's share of it.
//
// Each replica runs a Publisher that every Interval (default 2s) writes
// one Snapshot per model — its cumulative per-version counters from
// route.Router.Counters, stamped with the replica's id, its start time and
// the time — to a shared Store. The judge's side reads the Store with a
// Collector, which drops snapshots older than StaleAfter and sums the rest
// per version; a Tracker turns successive sums into deltas, which is how a
// judge's window over cumulative counters is built.
//
//	store := fleet.NewRedis(rdb, "signalforge")       // or NewDir, NewMemory, pgstore's Fleet()
//	pub, _ := fleet.NewPublisher(store, fleet.FromRouter(router), fleet.PublisherConfig{Replica: hostname})
//	defer pub.Close()
//
//	col, _ := fleet.NewCollector(store, fleet.CollectorConfig{})
//	var tr fleet.Tracker
//	f, _ := col.Collect(ctx, "lstm_model")   // f.Versions: fleet sums; f.Replicas: the breakdown
//	d := tr.Delta(f)                          // what the fleet served since the last Collect
//	verdict := judge.Compare(d["v2"].Metrics(), d["v1"].Metrics())
//
// Stores, all passing the conformance suite in fleettest:
//   - Redis: one key per model and replica with a TTL of a few intervals,
//     so a replica that disappears ages out even if nobody reads;
//   - Dir: one file per model and replica in a folder, replaced atomically,
//     for the replicas of one machine (beside a folder registry);
//   - PostgreSQL: registry/pgstore's Store.Fleet, a row per model and
//     replica upserted by Publish, expiring by the database's clock, for
//     replicas that share a PostgreSQL registry;
//   - Memory: one process that is the whole fleet.
//
// Encode and Decode are the JSON form the stores keep, for a Store
// written outside this package.
//
// Counters are cumulative per replica, so a lost or late publish loses
// nothing: the next one carries everything. A replica that restarts starts
// again from zero; the Tracker notices (a new Started time, or a counter
// that went down) and counts the new process's counters from zero, never
// as a negative delta.
package fleet

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/signalforge/signalforge/route"
)

// Snapshot is one replica's cumulative counters for one model.
type Snapshot struct {
	Model   string
	Replica string
	// Started is when the replica's counters began (its process start). A
	// different Started from the same Replica means it restarted.
	Started time.Time
	// At is when the counters were read.
	At time.Time
	// Versions are the counters per version.
	Versions map[string]route.Counters
}

// Store is where replicas leave their snapshots and the judge finds them.
// Implementations are safe for concurrent use.
type Store interface {
	// Publish stores snaps, each replacing the previous snapshot of its
	// (Model, Replica). A snapshot not replaced within ttl is gone.
	Publish(ctx context.Context, ttl time.Duration, snaps ...Snapshot) error
	// Snapshots returns the latest snapshot of every replica that
	// published model within its ttl, in no particular order.
	Snapshots(ctx context.Context, model string) ([]Snapshot, error)
}

// ErrInvalid reports a snapshot a Store refuses (bad name, negative or
// inconsistent counters).
var ErrInvalid = errors.New("fleet: invalid snapshot")

// validate reports a snapshot that must not be stored or summed.
func (s *Snapshot) validate() error {
	if !validName(s.Model) {
		return fmt.Errorf("%w: model name %q", ErrInvalid, s.Model)
	}
	if !validReplica(s.Replica) {
		return fmt.Errorf("%w: replica id %q for model %s", ErrInvalid, s.Replica, s.Model)
	}
	for v, c := range s.Versions {
		if !validName(v) {
			return fmt.Errorf("%w: version name %q of model %s from replica %s", ErrInvalid, v, s.Model, s.Replica)
		}
		if err := validCounters(c); err != nil {
			return fmt.Errorf("%w: %s:%s from replica %s: %v", ErrInvalid, s.Model, v, s.Replica, err)
		}
	}
	return nil
}

func validCounters(c route.Counters) error {
	switch {
	case c.Requests < 0 || c.Errors < 0 || c.NonFinite < 0 || c.LatencySum < 0:
		return errors.New("negative counter")
	case c.Errors > c.Requests || c.NonFinite > c.Errors:
		return fmt.Errorf("%d errors, %d non-finite of %d requests", c.Errors, c.NonFinite, c.Requests)
	case len(c.Hist) != 0 && len(c.Hist) != route.HistBuckets:
		return fmt.Errorf("histogram of %d buckets, want %d", len(c.Hist), route.HistBuckets)
	}
	var n uint64
	for _, b := range c.Hist {
		n += b
	}
	if n != uint64(c.Requests) {
		return fmt.Errorf("histogram holds %d requests, counters say %d", n, c.Requests)
	}
	return nil
}

func validName(s string) bool {
	if len(s) == 0 || len(s) > 128 {
		return false
	}
	for i, c := range []byte(s) {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case i > 0 && (c == '.' || c == '_' || c == '-'):
		default:
			return false
		}
	}
	return true
}

// validReplica accepts what validName does: host names and pod names fit.
func validReplica(s string) bool { return validName(s) }

// Add returns a + b (a histogram shorter than the other's is padded).
func Add(a, b route.Counters) route.Counters {
	if b.Requests == 0 {
		return a
	}
	if a.Requests == 0 {
		b.Hist = slices.Clone(b.Hist)
		return b
	}
	s := route.Counters{
		Requests: a.Requests + b.Requests, Errors: a.Errors + b.Errors, NonFinite: a.NonFinite + b.NonFinite,
		LatencySum: a.LatencySum + b.LatencySum,
		MinLatency: min(a.MinLatency, b.MinLatency), MaxLatency: max(a.MaxLatency, b.MaxLatency),
		Hist: slices.Clone(a.Hist),
	}
	if len(s.Hist) < len(b.Hist) {
		s.Hist = append(s.Hist, make([]uint64, len(b.Hist)-len(s.Hist))...)
	}
	for i, n := range b.Hist {
		s.Hist[i] += n
	}
	return s
}

// Sub returns cur − prev, or false when any counter of cur is below
// prev's (cur is not a later reading of the same counters). The extremes
// of a difference are unknown; they are narrowed to the bounds of its
// lowest and highest non-empty buckets.
func Sub(cur, prev route.Counters) (route.Counters, bool) {
	if prev.Requests == 0 {
		return cur, prev.Errors == 0 && prev.NonFinite == 0 && prev.LatencySum == 0
	}
	d := route.Counters{
		Requests: cur.Requests - prev.Requests, Errors: cur.Errors - prev.Errors,
		NonFinite: cur.NonFinite - prev.NonFinite, LatencySum: cur.LatencySum - prev.LatencySum,
	}
	if d.Requests < 0 || d.Errors < 0 || d.NonFinite < 0 || d.LatencySum < 0 || len(cur.Hist) != len(prev.Hist) {
		return route.Counters{}, false
	}
	if d.Requests == 0 {
		if d.Errors != 0 || d.NonFinite != 0 || d.LatencySum != 0 || !slices.Equal(cur.Hist, prev.Hist) {
			return route.Counters{}, false
		}
		return route.Counters{}, true
	}
	d.Hist = make([]uint64, len(cur.Hist))
	lo, hi := -1, -1
	for i := range cur.Hist {
		if cur.Hist[i] < prev.Hist[i] {
			return route.Counters{}, false
		}
		d.Hist[i] = cur.Hist[i] - prev.Hist[i]
		if d.Hist[i] > 0 {
			if lo < 0 {
				lo = i
			}
			hi = i
		}
	}
	if lo < 0 {
		return route.Counters{}, false // requests but an empty histogram
	}
	l, _ := route.HistBounds(lo)
	_, h := route.HistBounds(hi)
	d.MinLatency = max(cur.MinLatency, l)
	d.MaxLatency = min(cur.MaxLatency, h)
	return d, true
}

// Fleet is the sum of one model's fresh snapshots.
type Fleet struct {
	Model string
	// At is when the sum was taken.
	At time.Time
	// Versions are the fleet's cumulative counters per version.
	Versions map[string]route.Counters
	// Replicas are the snapshots summed, sorted by replica id: the
	// per-replica breakdown.
	Replicas []Snapshot
	// Stale are the replicas left out because their snapshot was older
	// than the collector's StaleAfter, sorted.
	Stale []string
}

// Sum adds up the snapshots of model taken within maxAge before now; the
// others are listed as Stale. Snapshots of other models are ignored. If a
// replica appears more than once, its latest snapshot counts.
func Sum(model string, snaps []Snapshot, now time.Time, maxAge time.Duration) Fleet {
	f := Fleet{Model: model, At: now, Versions: map[string]route.Counters{}}
	latest := map[string]Snapshot{}
	for _, s := range snaps {
		if s.Model != model {
			continue
		}
		if old, ok := latest[s.Replica]; !ok || s.At.After(old.At) {
			latest[s.Replica] = s
		}
	}
	for _, id := range slices.Sorted(maps.Keys(latest)) {
		s := latest[id]
		if now.Sub(s.At) > maxAge {
			f.Stale = append(f.Stale, id)
			continue
		}
		f.Replicas = append(f.Replicas, s)
		for v, c := range s.Versions {
			f.Versions[v] = Add(f.Versions[v], c)
		}
	}
	return f
}

// Tracker turns successive Fleet sums of one model into deltas: what the
// fleet served between two reads. The zero value is ready; a Tracker is
// owned by one goroutine (the judge's loop).
type Tracker struct {
	primed bool
	last   time.Time
	prev   map[string]Snapshot // by replica
}

// Delta returns, per version, what the fleet's replicas counted since the
// previous call (nothing on the first call, which only sets the baseline).
//
// Each replica is differenced against its own previous snapshot. A replica
// that restarted (another Started, or any counter lower than before)
// contributes its new counters whole: they were all counted after the
// previous read, which saw the old process. A replica seen for the first
// time contributes its counters whole if it started after the previous
// read, else (it was missed, or aged out and came back) it only sets its
// baseline. A delta is never negative.
func (t *Tracker) Delta(f Fleet) map[string]route.Counters {
	out := map[string]route.Counters{}
	next := make(map[string]Snapshot, len(f.Replicas))
	for _, s := range f.Replicas {
		next[s.Replica] = s
		prev, seen := t.prev[s.Replica]
		switch {
		case !t.primed:
			continue
		case !seen:
			if !s.Started.After(t.last) {
				continue
			}
			for v, c := range s.Versions {
				out[v] = Add(out[v], c)
			}
			continue
		}
		d, ok := replicaDelta(s, prev)
		if !ok {
			d = s.Versions // restarted
		}
		for v, c := range d {
			out[v] = Add(out[v], c)
		}
	}
	t.primed, t.last, t.prev = true, f.At, next
	return out
}

// replicaDelta is cur − prev per version, or false if cur is not a later
// reading of prev's counters (the replica restarted).
func replicaDelta(cur, prev Snapshot) (map[string]route.Counters, bool) {
	if !cur.Started.Equal(prev.Started) {
		return nil, false
	}
	for v := range prev.Versions {
		if _, ok := cur.Versions[v]; !ok && prev.Versions[v].Requests > 0 {
			return nil, false // a version's counters vanished: a new process
		}
	}
	d := make(map[string]route.Counters, len(cur.Versions))
	for v, c := range cur.Versions {
		dv, ok := Sub(c, prev.Versions[v])
		if !ok {
			return nil, false
		}
		d[v] = dv
	}
	return d, true
}
