package registry_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/signalforge/signalforge/onnx/onnxtest"
	"github.com/signalforge/signalforge/registry"
)

// The seed's ModelRegistry journey: register → promote at 5% → 50% →
// list production → archive, with the audit log answering who served what.
func Example() {
	ctx := registry.WithActor(context.Background(), "alice")
	dir, err := os.MkdirTemp("", "registry-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	// ModelRegistry("models/"). The CLI and the server also set
	// Config.Validator to registry.EngineValidator(ortEngine), so that every
	// artifact is loaded in ONNX Runtime before it is accepted.
	reg, err := registry.Open(ctx, registry.Config{Dir: dir})
	if err != nil {
		log.Fatal(err)
	}
	defer reg.Close()
	model := func(seed uint64) []byte {
		m, err := onnxtest.NewMLP(onnxtest.MLPConfig{Sizes: []int{2, 8, 1}, Seed: seed, Features: []string{"rsi_14", "macd"}})
		if err != nil {
			log.Fatal(err)
		}
		b, err := m.Bytes()
		if err != nil {
			log.Fatal(err)
		}
		return b
	}

	// register(model, metrics, tags) → model id
	v1, err := reg.Register(ctx, registry.RegisterRequest{
		Name: "lstm_model", ONNX: model(1),
		Metrics: map[string]float64{"val_mae": 0.024}, Tags: map[string]string{"universe": "sp500"},
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(v1.Ref(), v1.Status, v1.Features, filepath.Base(v1.Artifact.Path) == v1.Artifact.SHA256+".onnx")
	if _, err := reg.Promote(ctx, v1.Ref(), 100); err != nil {
		log.Fatal(err)
	}

	v2, err := reg.Register(ctx, registry.RegisterRequest{
		Name: "lstm_model", ONNX: model(2),
		Metrics: map[string]float64{"val_mae": 0.019}, Lineage: registry.Lineage{Parent: v1.Version},
	})
	if err != nil {
		log.Fatal(err)
	}
	// promote_to_production(model_id, traffic_percentage=0.05)
	split, err := reg.Promote(ctx, v2.Ref(), 5)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("canary:", split)
	// set_traffic_percentage(model_id, 0.5)
	if _, err := reg.SetTraffic(ctx, v2.Ref(), 50); err != nil {
		log.Fatal(err)
	}
	// get_production_models()
	prod, err := reg.Production(ctx)
	if err != nil {
		log.Fatal(err)
	}
	for _, v := range prod {
		fmt.Printf("production: %s %s%%\n", v.Ref(), registry.FormatPercent(v.Traffic))
	}
	// archive_model(model_id): v1 still serves 50%, so move its traffic
	// first (or pass force).
	if _, err := reg.Archive(ctx, v1.Ref(), false); err != nil {
		fmt.Println("refused:", err)
	}
	if _, err := reg.SetTraffic(ctx, v2.Ref(), 100); err != nil {
		log.Fatal(err)
	}
	if _, err := reg.Archive(ctx, v1.Ref(), false); err != nil {
		log.Fatal(err)
	}

	// What served what share, and who changed it.
	history, err := reg.History(ctx, "lstm_model")
	if err != nil {
		log.Fatal(err)
	}
	for _, e := range history {
		fmt.Printf("#%d %s %s %s → %s\n", e.Seq, e.Actor, e.Action, e.Version, e.SplitAfter)
	}
	// Output:
	// lstm_model:v1 staging [rsi_14 macd] true
	// canary: v1=95% v2=5%
	// production: lstm_model:v1 50%
	// production: lstm_model:v2 50%
	// refused: registry: lstm_model:v1: cannot go from production to archived: it serves 50% of traffic; move its traffic to other versions first, or force
	// #1 alice register v1 → (none)
	// #2 alice promote v1 → v1=100%
	// #3 alice register v2 → v1=100%
	// #4 alice promote v2 → v1=95% v2=5%
	// #5 alice set-traffic v2 → v1=50% v2=50%
	// #6 alice set-traffic v2 → v1=0% v2=100%
	// #7 alice archive v1 → v2=100%
}

// Migrate copies a registry (here a folder) into another store (here one
// in memory), audit log and artifacts included; a second run copies
// nothing.
func ExampleMigrate() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "registry-migrate-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	src, err := registry.OpenFileStore(dir)
	if err != nil {
		log.Fatal(err)
	}
	defer src.Close()
	reg, err := registry.Open(ctx, registry.Config{Store: src})
	if err != nil {
		log.Fatal(err)
	}
	defer reg.Close()
	m, err := onnxtest.NewMLP(onnxtest.MLPConfig{Sizes: []int{2, 1}, Seed: 1, Features: []string{"rsi_14", "macd"}})
	if err != nil {
		log.Fatal(err)
	}
	b, err := m.Bytes()
	if err != nil {
		log.Fatal(err)
	}
	if _, err := reg.Register(ctx, registry.RegisterRequest{Name: "lstm_model", ONNX: b, Status: registry.StatusProduction, Traffic: 100}); err != nil {
		log.Fatal(err)
	}

	dst := registry.NewMemStore()
	defer dst.Close()
	for range 2 {
		rep, err := registry.Migrate(ctx, src, dst, registry.MigrateOptions{})
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%d versions, %d events, %d artifact(s), %d bytes copied, already migrated: %v, verified: %v\n",
			rep.Versions, rep.Events, len(rep.Artifacts), rep.BytesCopied, rep.AlreadyMigrated, rep.Verified)
	}
	// Output:
	// 1 versions, 1 events, 1 artifact(s), 226 bytes copied, already migrated: false, verified: true
	// 1 versions, 1 events, 1 artifact(s), 0 bytes copied, already migrated: true, verified: true
}

// Replicas sharing a store elect the one that acts for all of them; only
// the leader acts, tagging its actions with its epoch.
func ExampleElector() {
	store := registry.NewMemStore() // every replica opens the same shared store
	defer store.Close()
	changed := make(chan registry.Leadership, 1)
	e, err := registry.NewElector(registry.ElectorConfig{
		Leaser:   store,
		Holder:   "replica-1",
		OnChange: func(l registry.Leadership) { changed <- l },
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer e.Close() // releases the lease: another replica takes over at once
	l := <-changed
	fmt.Println("leader:", l.Leader, "epoch:", l.Epoch)
	// Output: leader: true epoch: 1
}
