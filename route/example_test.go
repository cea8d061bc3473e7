package route_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/signalforge/signalforge/route"
)

// The seed's ModelRouter journey: set_traffic_split, route_request,
// record_request, should_rollback, get_version_stats.
func Example() {
	r, err := route.New(route.Config{})
	if err != nil {
		panic(err)
	}
	// With a registry attached, the server runs r.Follow(ctx, src) instead
	// and the registry's traffic percentages become the split.
	_ = r.AddVersions("lstm_model", "v1.0", "v2.0")
	if err := r.SetSplit("lstm_model", route.Split{"v1.0": 0.8, "v2.0": 0.2}); err != nil {
		panic(err)
	}

	v, _ := r.Route("lstm_model", "req_123")
	fmt.Println("req_123 →", v)
	again, _ := r.Route("lstm_model", "req_123")
	fmt.Println("sticky:", again == v)

	// record_request: 200 requests per version; v2.0 fails 1 in 10.
	for i := range 200 {
		r.Record("lstm_model", "v1.0", 12*time.Millisecond, nil)
		var err error
		if i%10 == 0 {
			err = errors.New("inference failed")
		}
		r.Record("lstm_model", "v2.0", 15*time.Millisecond, err)
	}

	fmt.Println("rollback v2.0 at 5%:", r.ShouldRollback("lstm_model", "v2.0", 5.0))
	fmt.Println("rollback v1.0 at 5%:", r.ShouldRollback("lstm_model", "v1.0", 5.0))

	st, _ := r.VersionStats("lstm_model", "v2.0")
	fmt.Printf("v2.0: weight %.1f, %d requests, error_rate_pct %.1f, avg_latency %v\n",
		st.Weight, st.Total.Count, st.Total.ErrorRatePct, st.Total.AvgLatency)

	// The judge compares the canary with its baseline, with statistics.
	verdict := r.Judge("lstm_model", "v2.0", "v1.0", route.Judge{})
	fmt.Println("judge:", verdict.Decision)
	// Output:
	// req_123 → v2.0
	// sticky: true
	// rollback v2.0 at 5%: true
	// rollback v1.0 at 5%: false
	// v2.0: weight 0.2, 200 requests, error_rate_pct 10.0, avg_latency 15ms
	// judge: rollback
}

// An automated canary: start at 5%, step up after healthy intervals, roll
// back on a rollback verdict. OnAction is where the server writes the new
// traffic and an audit entry to the registry.
func ExampleAutopilot() {
	r, _ := route.New(route.Config{})
	_ = r.Apply("lstm_model", route.Split{"v1.0": 1, "v2.0": 0})

	ap, _ := route.NewAutopilot(r, route.AutopilotConfig{
		OnAction: func(ctx context.Context, a route.Action) error {
			fmt.Printf("%s %s: %s weight %.2f\n", a.Kind, a.Model, a.Canary, a.To[a.Canary])
			return nil // registry.SetTraffic + audit log, when attached
		},
	})
	defer ap.Close()

	err := ap.Start(context.Background(), route.Plan{
		Model: "lstm_model", Canary: "v2.0", Baseline: "v1.0",
		Rollback: true, StepUp: true, Interval: time.Minute,
	})
	fmt.Println("started:", err == nil)
	// Output:
	// step-up lstm_model: v2.0 weight 0.05
	// started: true
}

// Shadow mode: mirror traffic to v3.0, never return its answers, compare.
func ExampleShadow() {
	sh, _ := route.NewShadow(route.ShadowConfig[[]float32]{
		Model: "lstm_model", Version: "v3.0", Rate: 1,
		Run: func(ctx context.Context, features []float32) ([]float32, error) {
			return []float32{features[0] * 1.1}, nil // the shadow model
		},
	})
	primary := []float32{0.5} // the primary's answer, already returned to the client
	sh.Offer("req_123", []float32{0.5}, primary, 3*time.Millisecond)
	for sh.Stats().Compared == 0 { // the shadow runs in the background
		time.Sleep(time.Millisecond)
	}
	sh.Close()
	st := sh.Stats()
	fmt.Printf("compared %d: mean abs diff %.2f, direction agreement %.0f%%\n",
		st.Compared, st.MeanAbsDiff, st.DirectionAgreementPct)
	// Output:
	// compared 1: mean abs diff 0.05, direction agreement 100%
}

// registryFeed stands in for the server's adapter over the registry's
// Watch: it sends the current traffic first, then every change.
type registryFeed []route.SplitUpdate

func (f registryFeed) Watch(ctx context.Context) (<-chan route.SplitUpdate, error) {
	ch := make(chan route.SplitUpdate)
	go func() {
		defer close(ch)
		for _, u := range f {
			select {
			case ch <- u:
			case <-ctx.Done():
				return
			}
		}
	}()
	return ch, nil
}

// With a registry attached, the router follows its traffic percentages.
func ExampleRouter_Follow() {
	r, _ := route.New(route.Config{})
	feed := registryFeed{
		{Model: "lstm_model", Split: route.Split{"v1.0": 1}},
		// registry: promote v2.0 with 20% traffic (percentages / 100)
		{Model: "lstm_model", Split: route.Split{"v1.0": 0.8, "v2.0": 0.2}},
	}
	// In the server: go r.Follow(ctx, feed) for the process's lifetime.
	if err := r.Follow(context.Background(), feed); err != nil {
		panic(err)
	}
	s, _ := r.Split("lstm_model")
	fmt.Println(s["v1.0"], s["v2.0"])
	// Output:
	// 0.8 0.2
}
