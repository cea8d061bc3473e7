package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/signalforge/signalforge/api"
	"github.com/signalforge/signalforge/internal/demo"
	"github.com/signalforge/signalforge/internal/testpg"
	"github.com/signalforge/signalforge/registry"
	"github.com/signalforge/signalforge/registry/pgstore"
)

// openPG opens a PostgreSQL store on url with a cache folder of t's own.
func openPG(t *testing.T, url string) *pgstore.Store {
	t.Helper()
	s, err := pgstore.Open(context.Background(), pgstore.Config{URL: url, CacheDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// metricValue returns the value of an unlabelled metric in /metrics.
func metricValue(t *testing.T, url, name string) string {
	t.Helper()
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return v
		}
	}
	t.Fatalf("/metrics lacks %s", name)
	return ""
}

func readyStatus(t *testing.T, url string) int {
	t.Helper()
	resp, err := http.Get(url + "/v2/health/ready")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestServerRidesOutPostgresOutage: a server on a PostgreSQL registry whose
// database is killed keeps answering every prediction from what it loaded,
// stays ready, and says the registry is down (signalforge_registry_up 0).
// When the database is back, a change made through another store (another
// replica's CLI) reaches it without a restart, and registry_up is 1 again.
// The registry polls only every minute, so only the listener brings the change
// within the wait.
func TestServerRidesOutPostgresOutage(t *testing.T) {
	ctx := context.Background()
	pg := testpg.Start(t)
	url := pg.NewDatabase(t)
	ts := startServer(t, testOpts{noCache: true, store: openPG(t, url), poll: time.Minute})
	if v := metricValue(t, ts.URL, "signalforge_registry_up"); v != "1" {
		t.Fatalf("signalforge_registry_up = %s with the database up; want 1", v)
	}
	before, _ := ts.srv.router.Split(demo.ModelName)

	pg.Kill()
	waitFor(t, func() bool { return metricValue(t, ts.URL, "signalforge_registry_up") == "0" })
	stop := make(chan struct{})
	total, fails, wait := load(t, ts.URL, 4, false, stop)
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		if code := readyStatus(t, ts.URL); code != 200 {
			t.Errorf("/v2/health/ready = %d with the database down; want 200", code)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	close(stop)
	wait()
	if len(*fails) > 0 {
		t.Fatalf("%d of %d predictions failed with the database down; first: %s", len(*fails), total.Load(), (*fails)[0])
	}
	if total.Load() < 20 {
		t.Fatalf("only %d predictions ran", total.Load())
	}
	if after, _ := ts.srv.router.Split(demo.ModelName); !maps.Equal(after, before) {
		t.Fatalf("split with the database down = %v; want the last one read, %v", after, before)
	}
	// A model this server never loaded cannot be looked up: 503, not 404.
	code, body, _ := post(t, ts.URL+"/v1/models/unknown/predict", `{"features":{"a":1}}`)
	if code != http.StatusServiceUnavailable || !strings.Contains(string(body), "registry cannot be read") {
		t.Fatalf("an unknown model with the database down: %d %s; want 503 naming the registry", code, body)
	}
	t.Logf("database down: %d predictions, 0 failed; ready 200; registry_up 0", total.Load())

	pg.Restart(t)
	other := openPG(t, url)
	reg, err := registry.Open(ctx, registry.Config{Store: other, PollInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	if _, err := reg.SetTraffic(ctx, registry.Ref{Name: demo.ModelName, Version: "v2.0"}, 50); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { s, _ := ts.srv.router.Split(demo.ModelName); return s["v2.0"] > 0.49 && s["v2.0"] < 0.51 })
	waitFor(t, func() bool { return metricValue(t, ts.URL, "signalforge_registry_up") == "1" })
	c := &api.Client{BaseURL: ts.URL}
	for i := range 10 {
		if _, err := c.Predict(ctx, demo.ModelName, &api.PredictRequest{RequestID: fmt.Sprint(i), Features: demoFeatures(i)}); err != nil {
			t.Fatalf("predict after the outage: %v", err)
		}
	}
}

// flakyStore is a registry store whose Models fails while down is set, as
// a database that went away between a change's notification and the
// server's read of the new state would.
type flakyStore struct {
	registry.Store
	down atomic.Bool
}

func (f *flakyStore) Models(ctx context.Context) ([]registry.Model, error) {
	if f.down.Load() {
		return nil, errors.New("flaky: registry unreachable")
	}
	return f.Store.Models(ctx)
}

// TestServerCatchesUpAfterFailedReconcile: a change whose event arrived
// while the registry could not be read is applied once the registry
// answers again, without another change to trigger it.
func TestServerCatchesUpAfterFailedReconcile(t *testing.T) {
	ctx := context.Background()
	fs, err := registry.OpenFileStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fs.Close() })
	store := &flakyStore{Store: fs}
	ts := startServer(t, testOpts{noCache: true, store: store, poll: time.Minute})
	store.down.Store(true)
	if _, err := ts.reg.SetTraffic(ctx, registry.Ref{Name: demo.ModelName, Version: "v2.0"}, 50); err != nil {
		t.Fatal(err)
	}
	// The event is delivered at once (a local change); the reconcile it
	// triggers fails.
	seq, err := fs.Seq(ctx)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return ts.reg.Stats().Seq >= seq })
	time.Sleep(300 * time.Millisecond)
	if s, _ := ts.srv.router.Split(demo.ModelName); s["v2.0"] > 0.21 {
		t.Fatalf("split %v applied while the registry could not be read", s)
	}
	store.down.Store(false)
	waitFor(t, func() bool { s, _ := ts.srv.router.Split(demo.ModelName); return s["v2.0"] > 0.49 && s["v2.0"] < 0.51 })
}
