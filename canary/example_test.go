package canary_test

import (
	"context"
	"fmt"
	"time"

	"github.com/signalforge/signalforge/canary"
	"github.com/signalforge/signalforge/onnx/onnxtest"
	"github.com/signalforge/signalforge/registry"
	"github.com/signalforge/signalforge/route"
	"github.com/signalforge/signalforge/route/fleet"
)

// counters are n requests, errs of them failed, each taking 2ms.
func counters(n, errs int64) route.Counters {
	c := route.Counters{Requests: n, Errors: errs, LatencySum: time.Duration(n) * 2 * time.Millisecond,
		MinLatency: 2 * time.Millisecond, MaxLatency: 2 * time.Millisecond, Hist: make([]uint64, route.HistBuckets)}
	c.Hist[route.HistBucket(2*time.Millisecond)] = uint64(n)
	return c
}

// A plan started in the registry is taken up by the Pilot, which applies
// its first step; Judge then gives a verdict on the fleet's traffic since
// that step, summed over the replicas that published their counters.
func Example() {
	ctx := context.Background()
	reg, err := registry.Open(ctx, registry.Config{Store: registry.NewMemStore(), PollInterval: -1})
	if err != nil {
		panic(err)
	}
	defer reg.Close()
	for seed := range uint64(2) {
		m, _ := onnxtest.NewMLP(onnxtest.MLPConfig{Sizes: []int{2, 1}, Seed: seed})
		b, _ := m.Bytes()
		if _, err := reg.Register(ctx, registry.RegisterRequest{Name: "fraud", ONNX: b}); err != nil {
			panic(err)
		}
	}
	if _, err := reg.Promote(ctx, registry.Ref{Name: "fraud", Version: "v1"}, 100); err != nil {
		panic(err)
	}

	// Where the replicas publish their counters (Redis or a database in
	// a real fleet), and the Collector that sums them.
	store := fleet.NewMemory()
	col, _ := fleet.NewCollector(store, fleet.CollectorConfig{})
	started := time.Now()
	publish := func(replica string, canaryN, canaryErrs, baseN, baseErrs int64) {
		err := store.Publish(ctx, time.Minute, fleet.Snapshot{Model: "fraud", Replica: replica, Started: started, At: time.Now(),
			Versions: map[string]route.Counters{"v2": counters(canaryN, canaryErrs), "v1": counters(baseN, baseErrs)}})
		if err != nil {
			panic(err)
		}
	}
	publish("pod-a", 0, 0, 5000, 5)
	publish("pod-b", 0, 0, 5000, 5)

	if _, err := reg.StartCanary(ctx, "fraud", registry.CanaryPlan{Canary: "v2", Baseline: "v1",
		StepUp: true, Rollback: true, StepsPct: []float64{10, 50, 100}}); err != nil {
		panic(err)
	}
	p, err := canary.New(canary.Config{Registry: reg, Evidence: col, Tick: 10 * time.Millisecond})
	if err != nil {
		panic(err)
	}
	defer p.Close()
	for {
		if plan, _ := reg.Canary(ctx, "fraud"); plan.Step == 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	split, _ := reg.Split(ctx, "fraud")
	fmt.Println("first step:", split)

	// Since the step, each pod served the canary 200 times, 20 failed.
	publish("pod-a", 200, 20, 6800, 7)
	publish("pod-b", 200, 20, 6800, 7)
	v, err := p.Judge(ctx, "fraud", "v2", "v1", registry.CanaryJudge{MinSamples: 300})
	if err != nil {
		panic(err)
	}
	fmt.Printf("%s: canary %d/%d, baseline %d/%d, over %d replicas\n",
		v.Decision, v.Canary.Errors, v.Canary.Requests, v.Baseline.Errors, v.Baseline.Requests, len(v.Replicas))
	// Output:
	// first step: v1=90% v2=10%
	// rollback: canary 40/400, baseline 4/3600, over 2 replicas
}
