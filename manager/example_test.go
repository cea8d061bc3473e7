package manager_test

import (
	"context"
	"fmt"
	"os"

	"github.com/signalforge/signalforge/infer/ort"
	"github.com/signalforge/signalforge/internal/demo"
	"github.com/signalforge/signalforge/manager"
	"github.com/signalforge/signalforge/registry"
)

// Example loads a registry's serving versions, lists them, holds one for
// a request, and closes them all.
func Example() {
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	dir, _ := os.MkdirTemp("", "signalforge-manager-example")
	defer os.RemoveAll(dir)
	eng, err := ort.New(ort.Config{})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer eng.Close()
	reg, _ := registry.Open(ctx, registry.Config{Dir: dir, Validator: registry.EngineValidator(eng)})
	defer reg.Close()
	demo.Seed(ctx, reg) // forecast_mlp v1.0 and v2.0 at 80/20, forecast_lstm v1.0

	m, err := manager.New(manager.Config{Registry: reg, Engine: eng})
	if err != nil {
		fmt.Println(err)
		return
	}
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	<-m.Loaded()
	for ref := range m.Current().All() {
		fmt.Println("loaded", ref)
	}
	if v, ok := m.Acquire("forecast_mlp", "v1.0"); ok {
		fmt.Println("features:", len(v.Predictor().Features()))
		v.Release()
	}
	stop()
	fmt.Println("run:", <-done)
	fmt.Println("close:", m.Close(context.Background()))
	// Output:
	// loaded forecast_lstm:v1.0
	// loaded forecast_mlp:v1.0
	// loaded forecast_mlp:v2.0
	// features: 8
	// run: <nil>
	// close: <nil>
}
