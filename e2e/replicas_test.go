package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/signalforge/signalforge/api"
	"github.com/signalforge/signalforge/internal/demo"
	"github.com/signalforge/signalforge/internal/testpg"
	"github.com/signalforge/signalforge/registry/pgstore"
)

// replica starts `signalforge serve` on the PostgreSQL registry at url, with
// an artifact cache of its own (as on its own machine) and the admin
// endpoints open on loopback, and waits until it is ready.
func replica(t *testing.T, url string) *proc {
	t.Helper()
	dir := t.TempDir()
	addr := freeAddr(t)
	p := &proc{url: "http://" + addr, dir: dir, logs: &lockedBuf{}, done: make(chan error, 1)}
	p.cmd = exec.Command(binPath, "serve", "--addr", addr, "--registry", url, "--no-cache", "--admin-open-loopback")
	p.cmd.Dir = dir
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	p.cmd.Env = append(os.Environ(), "SIGNALFORGE_ROOT="+repoRoot(t), "XDG_CACHE_HOME="+dir)
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("server %s log:\n%s", p.url, p.logs.String())
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(p.url + "/v2/health/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return p
			}
		}
		select {
		case err := <-p.done:
			t.Fatalf("server exited early: %v\n%s", err, p.logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("server not ready after 60s\n%s", p.logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// splitPct is the share (in %) of model's traffic the server's router gives
// version now (admin stats), or -1 if it cannot be read.
func splitPct(hc *http.Client, p *proc, model, version string) float64 {
	resp, err := hc.Get(p.url + "/v1/admin/models/" + model + "/stats")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	var st struct {
		Split map[string]float64 `json:"split_pct"`
	}
	if resp.StatusCode != 200 || json.NewDecoder(resp.Body).Decode(&st) != nil {
		return -1
	}
	return st.Split[version]
}

func metric(t *testing.T, p *proc, name string) string {
	t.Helper()
	resp, err := http.Get(p.url + "/metrics")
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
	t.Fatalf("%s/metrics lacks %s", p.url, name)
	return ""
}

// TestReplicasFollowPostgresRegistry: three `signalforge serve` processes
// on one PostgreSQL database, each under load; the CLI (another process)
// changes the split 20 times. Every change reaches every server — through
// LISTEN/NOTIFY, measured from the change's commit to the server's router
// applying it — and no request fails. Then PostgreSQL is killed and
// restarted under load: no prediction fails, every server reports the
// registry down meanwhile, and the servers follow the next change.
func TestReplicasFollowPostgresRegistry(t *testing.T) {
	ctx := context.Background()
	pg := testpg.Start(t)
	url := pg.NewDatabase(t)
	servers := []*proc{replica(t, url)} // seeds the demo models
	servers = append(servers, replica(t, url), replica(t, url))
	store, err := pgstore.Open(ctx, pgstore.Config{URL: url, CacheDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()

	// 4 closed-loop callers per server.
	stop := make(chan struct{})
	var total, failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for _, p := range servers {
		for w := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c := &api.Client{BaseURL: p.url, HTTP: &http.Client{Transport: &http.Transport{}}}
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					_, err := c.Predict(ctx, demo.ModelName, &api.PredictRequest{RequestID: fmt.Sprintf("w%d-%d", w, i), Features: features(i), NoCache: true})
					total.Add(1)
					if err != nil {
						failed.Add(1)
						firstErr.CompareAndSwap(nil, p.url+": "+err.Error())
					}
				}
			}()
		}
	}
	stopLoad := func() {
		if stop != nil {
			close(stop)
			wg.Wait()
			stop = nil
		}
	}
	defer stopLoad()

	cliEnv := append(os.Environ(), "SIGNALFORGE_ROOT="+repoRoot(t), "SIGNALFORGE_REGISTRY="+url, "XDG_CACHE_HOME="+t.TempDir())
	// change sets v2.0's traffic with the CLI and returns, per server, how
	// long after the commit its router applied it.
	change := func(pct float64) []time.Duration {
		t.Helper()
		seq, err := store.Seq(ctx)
		if err != nil {
			t.Fatal(err)
		}
		seen := make([]time.Time, len(servers))
		var pw sync.WaitGroup
		for i, p := range servers {
			pw.Add(1)
			go func() {
				defer pw.Done()
				hc := &http.Client{Transport: &http.Transport{}}
				deadline := time.Now().Add(10 * time.Second)
				for time.Now().Before(deadline) {
					if math.Abs(splitPct(hc, p, demo.ModelName, "v2.0")-pct) < 1e-6 {
						seen[i] = time.Now()
						return
					}
					time.Sleep(2 * time.Millisecond)
				}
			}()
		}
		cmd := exec.Command(binPath, "models", "traffic", demo.ModelName+":v2.0", fmt.Sprint(pct))
		cmd.Env = cliEnv
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("signalforge models traffic %s:v2.0 %v: %v\n%s", demo.ModelName, pct, err, out)
		}
		pw.Wait()
		evs, err := store.Events(ctx, demo.ModelName, seq)
		if err != nil || len(evs) != 1 {
			t.Fatalf("events after %d: %v, %v; want the one change", seq, evs, err)
		}
		var lat []time.Duration
		for i, at := range seen {
			if d := at.Sub(evs[0].Time); at.IsZero() || d > 5*time.Second {
				t.Fatalf("server %s did not apply v2.0=%v%% within 5 s of the commit", servers[i].url, pct)
			}
			lat = append(lat, at.Sub(evs[0].Time))
		}
		return lat
	}

	var lat []time.Duration
	const changes = 20
	for i := range changes {
		lat = append(lat, change(float64(21+i))...)
	}
	slices.Sort(lat)
	q := func(p float64) time.Duration { return lat[min(len(lat)-1, int(math.Ceil(p*float64(len(lat))))-1)] }
	t.Logf("propagation commit → router on 3 servers, %d changes by the CLI (%d samples): p50 %v, p90 %v, p99 %v, max %v",
		changes, len(lat), q(0.5), q(0.9), q(0.99), lat[len(lat)-1])

	// PostgreSQL dies under load and comes back.
	pg.Kill()
	killed := time.Now()
	deadline := killed.Add(10 * time.Second)
	for _, p := range servers {
		for metric(t, p, "signalforge_registry_up") != "0" {
			if time.Now().After(deadline) {
				t.Fatalf("%s: signalforge_registry_up still %s 10 s after the database died", p.url, metric(t, p, "signalforge_registry_up"))
			}
			time.Sleep(10 * time.Millisecond)
		}
		resp, err := http.Get(p.url + "/v2/health/ready")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("%s: /v2/health/ready = %d with the database down; want 200", p.url, resp.StatusCode)
		}
	}
	time.Sleep(time.Until(killed.Add(time.Second)))
	pg.Restart(t)
	after := change(60)
	for _, p := range servers {
		deadline := time.Now().Add(10 * time.Second)
		for metric(t, p, "signalforge_registry_up") != "1" {
			if time.Now().After(deadline) {
				t.Fatalf("%s: signalforge_registry_up not back to 1 after the restart", p.url)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	stopLoad()
	if n := failed.Load(); n > 0 {
		t.Fatalf("%d of %d predictions failed; first: %v", n, total.Load(), firstErr.Load())
	}
	slices.Sort(after)
	t.Logf("%d predictions, 0 failed, across %d changes and a PostgreSQL kill+restart; first change after the restart reached the servers in %v–%v",
		total.Load(), changes+1, after[0], after[len(after)-1])
	for _, p := range servers {
		if n := strings.Count(p.logs.String(), "reading changes failed"); n != 1 {
			t.Errorf("%s logged the registry outage %d times; want once:\n%s", p.url, n, p.logs.String())
		}
	}
}
