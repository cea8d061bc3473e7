package canary

import (
	"context"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/signalforge/signalforge/onnx/onnxtest"
	"github.com/signalforge/signalforge/registry"
	"github.com/signalforge/signalforge/route"
	"github.com/signalforge/signalforge/route/fleet"
)

// clock is a manual clock for the pilot's hold times and the registry's
// event times.
type clock struct {
	mu sync.Mutex // guards t
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 12, 4, 18, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// flag is a Leader a test switches.
type flag struct{ atomic.Bool }

func (f *flag) IsLeader() bool { return f.Load() }

func leading() *flag {
	f := &flag{}
	f.Store(true)
	return f
}

// stores are the registry stores the pilot is tested on.
var stores = []string{"memory", "folder"}

// newRegistry opens a registry on kind ("memory" or "folder") with model
// m: v1 production 100%, v2 staging.
func newRegistry(t *testing.T, kind string, clk *clock) *registry.Registry {
	t.Helper()
	ctx := context.Background()
	cfg := registry.Config{PollInterval: -1, Now: clk.Now}
	switch kind {
	case "memory":
		cfg.Store = registry.NewMemStore()
	case "folder":
		cfg.Dir = t.TempDir()
	default:
		t.Fatalf("unknown store %q", kind)
	}
	r, err := registry.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	for i := range 2 {
		m, err := onnxtest.NewMLP(onnxtest.MLPConfig{Sizes: []int{2, 1}, Seed: uint64(i + 1)})
		if err != nil {
			t.Fatal(err)
		}
		b, err := m.Bytes()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := r.Register(ctx, registry.RegisterRequest{Name: "m", ONNX: b}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r.Promote(ctx, registry.Ref{Name: "m", Version: "v1"}, 100); err != nil {
		t.Fatal(err)
	}
	return r
}

// replica is a fake serving replica: cumulative counters it publishes to
// the shared fleet store.
type replica struct {
	id       string
	started  time.Time
	versions map[string]route.Counters
}

func newReplica(id string) *replica {
	return &replica{id: id, started: time.Now().Add(-time.Hour), versions: map[string]route.Counters{}}
}

// serve counts n requests of version v, errs of them failed, each taking
// lat.
func (r *replica) serve(v string, n, errs int64, lat time.Duration) {
	c := r.versions[v]
	if c.Requests == 0 {
		c.Hist = make([]uint64, route.HistBuckets)
		c.MinLatency, c.MaxLatency = lat, lat
	}
	c.Hist = slices.Clone(c.Hist) // snapshots taken before keep theirs
	c.Requests += n
	c.Errors += errs
	c.LatencySum += time.Duration(n) * lat
	c.MinLatency, c.MaxLatency = min(c.MinLatency, lat), max(c.MaxLatency, lat)
	c.Hist[route.HistBucket(lat)] += uint64(n)
	r.versions[v] = c
}

// restart starts the replica's process again: a new start time, counters
// from zero.
func (r *replica) restart() {
	r.started = time.Now()
	r.versions = map[string]route.Counters{}
}

func (r *replica) publish(t *testing.T, store fleet.Store) {
	t.Helper()
	vs := map[string]route.Counters{}
	for v, c := range r.versions {
		vs[v] = c
	}
	s := fleet.Snapshot{Model: "m", Replica: r.id, Started: r.started, At: time.Now(), Versions: vs}
	if err := store.Publish(context.Background(), time.Hour, s); err != nil {
		t.Fatal(err)
	}
}

// world is a registry, a fleet of fake replicas and a clock.
type world struct {
	t        *testing.T
	clk      *clock
	reg      *registry.Registry
	store    *fleet.Memory
	col      *fleet.Collector
	replicas []*replica
}

func newWorld(t *testing.T, kind string, replicas ...string) *world {
	t.Helper()
	clk := newClock()
	w := &world{t: t, clk: clk, reg: newRegistry(t, kind, clk), store: fleet.NewMemory()}
	col, err := fleet.NewCollector(w.store, fleet.CollectorConfig{StaleAfter: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	w.col = col
	for _, id := range replicas {
		w.replicas = append(w.replicas, newReplica(id))
	}
	return w
}

// serve has every replica serve, then publish.
func (w *world) serve(v string, n, errs int64, lat time.Duration) {
	for _, r := range w.replicas {
		r.serve(v, n, errs, lat)
	}
	w.publish()
}

func (w *world) publish() {
	for _, r := range w.replicas {
		r.publish(w.t, w.store)
	}
}

// pilot returns a Pilot whose loop never ticks by itself (the test calls
// pass), with evidence ev (w's collector if nil).
func (w *world) pilot(leader Leader, ev Evidence) *Pilot {
	w.t.Helper()
	if ev == nil {
		ev = w.col
	}
	p, err := New(Config{Registry: w.reg, Evidence: ev, Leader: leader, Tick: time.Hour, Now: w.clk.Now})
	if err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(func() { p.Close() })
	return p
}

func (w *world) start(p registry.CanaryPlan) registry.CanaryPlan {
	w.t.Helper()
	if p.Canary == "" {
		p.Canary, p.Baseline = "v2", "v1"
	}
	got, err := w.reg.StartCanary(registry.WithActor(context.Background(), "alice"), "m", p)
	if err != nil {
		w.t.Fatal(err)
	}
	return got
}

func (w *world) plan() registry.CanaryPlan {
	w.t.Helper()
	p, err := w.reg.Canary(context.Background(), "m")
	if err != nil {
		w.t.Fatal(err)
	}
	return p
}

func (w *world) split() registry.Split {
	w.t.Helper()
	s, err := w.reg.Split(context.Background(), "m")
	if err != nil {
		w.t.Fatal(err)
	}
	return s
}

// actions counts the model's audit events by action.
func (w *world) actions() map[registry.Action]int {
	w.t.Helper()
	evs, err := w.reg.History(context.Background(), "m")
	if err != nil {
		w.t.Fatal(err)
	}
	n := map[registry.Action]int{}
	for _, e := range evs {
		n[e.Action]++
		if e.Action.IsCanary() && e.Action != registry.ActionCanaryStart && e.Actor != "autopilot" && e.Actor != "alice" {
			w.t.Errorf("event %d (%s) by %q", e.Seq, e.Action, e.Actor)
		}
	}
	return n
}

// hookEvidence runs before ahead of every Collect.
type hookEvidence struct {
	Evidence
	before func()
}

func (h hookEvidence) Collect(ctx context.Context, model string) (fleet.Fleet, error) {
	if h.before != nil {
		h.before()
	}
	return h.Evidence.Collect(ctx, model)
}

// fleetOf sums the replicas' counters as a Collector would.
func fleetOf(rs ...*replica) fleet.Fleet {
	var snaps []fleet.Snapshot
	for _, r := range rs {
		snaps = append(snaps, fleet.Snapshot{Model: "m", Replica: r.id, Started: r.started, At: time.Now(), Versions: maps.Clone(r.versions)})
	}
	return fleet.Sum("m", snaps, time.Now(), time.Hour)
}
