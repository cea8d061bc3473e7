package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/signalforge/signalforge/api"
	"github.com/signalforge/signalforge/internal/testredis"
	"github.com/signalforge/signalforge/onnx"
	"github.com/signalforge/signalforge/onnx/onnxtest"
	"github.com/signalforge/signalforge/registry"
	"github.com/signalforge/signalforge/registry/pgstore"
	"github.com/signalforge/signalforge/tensor"
)

// The fleet canary drill: three `signalforge serve` processes share one
// registry and one fleet store; a load generator spreads requests over
// them as a load balancer would; the canary plans are started with the
// CLI, and the replicas' autopilot (one leader, elected on a lease) judges
// them on the fleet's summed counters.
//
// The versions' error rates are known because their models answer NaN for
// a known share of the inputs: y = sqrt(x0 − t) + w·x1 with x0 uniform in
// [0, 1) is NaN for a share t of the requests, which the server answers
// with a 422 (non_finite_output) and counts against the version.
const (
	fleetModel = "fleetcanary"
	// goodRate is the NaN share of the baseline v1 and of v3, badRate
	// that of v2: a canary failing 5% of its requests against a baseline
	// failing 1%.
	goodRate = 0.01
	badRate  = 0.05
	// marginPct is plan B's healthy margin (canary start --margin-pct):
	// at the judge's default half a percentage point, calling an equal
	// canary at 1% healthy takes thousands of requests a side, a step
	// every half minute here; at 3 pp a few hundred.
	marginPct = 3
	// fleetRate is the load generator's total request rate (per second)
	// and fleetWorkers its callers, spread evenly over the replicas.
	fleetRate    = 900
	fleetWorkers = 12
	// fleetMinSamples is the plans' min_samples: more canary requests than
	// one replica serves by the first verdicts, fewer than the fleet does.
	fleetMinSamples = 300
	// leaseTTL is the autopilot lease's time to live (serve --lease-ttl):
	// a killed leader's successor must take over within it (plus one
	// renewal, a third of it).
	leaseTTL = 3 * time.Second
	// planInterval is the plans' hold time between verdicts.
	planInterval = 2 * time.Second
)

// fleetSetup says what the replicas share.
type fleetSetup struct {
	// registry is a folder or a postgres:// URL.
	registry string
	// redis, if set, is the fleet store (serve --redis); else the
	// registry's own.
	redis string
	// cacheHome is the CLI's artifact cache folder (PostgreSQL registry).
	cacheHome string
}

// TestFleetCanaryPostgresRedis runs the drill on a PostgreSQL registry
// with the fleet's counters in Redis: replicas as on several machines.
func TestFleetCanaryPostgresRedis(t *testing.T) {
	if testing.Short() {
		t.Skip("fleet canary drill: three serve processes, PostgreSQL and Redis for about half a minute; skipped in -short mode")
	}
	rs := testredis.Start(t)
	runFleetDrill(t, fleetSetup{registry: pgDatabase(t), redis: rs.URL(), cacheHome: t.TempDir()})
}

// TestFleetCanaryPostgres runs the drill on a PostgreSQL registry that
// also holds the fleet's counters (no Redis).
func TestFleetCanaryPostgres(t *testing.T) {
	if testing.Short() {
		t.Skip("fleet canary drill: three serve processes and PostgreSQL for about half a minute; skipped in -short mode")
	}
	runFleetDrill(t, fleetSetup{registry: pgDatabase(t), cacheHome: t.TempDir()})
}

// TestFleetCanaryFolder runs the drill on one machine: a registry folder
// shared by the processes, whose fleet directory holds the counters (no
// Redis) and whose lease file elects the autopilot.
func TestFleetCanaryFolder(t *testing.T) {
	if testing.Short() {
		t.Skip("fleet canary drill: three serve processes on one registry folder for about half a minute; skipped in -short mode")
	}
	runFleetDrill(t, fleetSetup{registry: filepath.Join(t.TempDir(), "registry")})
}

// nanModel returns a model of features x0, x1 computing
// y = sqrt(x0 − t) + w·x1: NaN exactly when x0 < t.
func nanRateModel(t *testing.T, threshold, w float32) []byte {
	t.Helper()
	b := onnx.NewBuilder("nan_rate")
	x := b.Input(onnxtest.InputName, tensor.Float32, onnx.Dim(onnxtest.BatchDim), onnx.Dim(2))
	shifted := b.Node("Gemm", []string{x,
		b.Initializer("pick_x0", tensor.Must(tensor.Shape{1, 2}, []float32{1, 0})),
		b.Initializer("minus_t", tensor.Must(tensor.Shape{1}, []float32{-threshold}))}, onnx.Attr("transB", 1))
	root := b.Node("Sqrt", []string{shifted})
	lin := b.Node("Gemm", []string{x,
		b.Initializer("w_x1", tensor.Must(tensor.Shape{1, 2}, []float32{0, w})),
		b.Initializer("zero", tensor.Must(tensor.Shape{1}, []float32{0}))}, onnx.Attr("transB", 1))
	b.Node("Add", []string{root, lin}, onnx.Outputs(onnxtest.OutputName))
	b.Output(onnxtest.OutputName, tensor.Float32, onnx.Dim(onnxtest.BatchDim), onnx.Dim(1))
	b.SetMetadata(onnxtest.FeaturesKey, "x0,x1")
	m, err := b.Build()
	if err != nil {
		t.Fatal(err)
	}
	art, err := onnx.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return art
}

// fleetCLI runs `signalforge ARGS…` on the drill's registry and returns
// its output.
func fleetCLI(t *testing.T, s fleetSetup, args ...string) string {
	t.Helper()
	cmd := exec.Command(binPath, args...)
	cmd.Env = append(os.Environ(), "SIGNALFORGE_ROOT="+repoRoot(t), "SIGNALFORGE_REGISTRY="+s.registry, "USER=drill")
	if s.cacheHome != "" {
		cmd.Env = append(cmd.Env, "XDG_CACHE_HOME="+s.cacheHome)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("signalforge %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// fleetReplica is one `signalforge serve` process of the drill.
type fleetReplica struct {
	*proc
	id string
}

// startFleet starts one serve process per id, all at once, and waits
// until every one is ready.
func startFleet(t *testing.T, s fleetSetup, ids ...string) []*fleetReplica {
	t.Helper()
	var reps []*fleetReplica
	for _, id := range ids {
		dir := t.TempDir()
		addr := freeAddr(t)
		p := &proc{url: "http://" + addr, dir: dir, logs: &lockedBuf{}, done: make(chan error, 1)}
		args := []string{"serve", "--addr", addr, "--registry", s.registry, "--no-cache", "--no-demo", "--admin-open-loopback",
			"--replica", id, "--lease-ttl", leaseTTL.String(), "--fleet-interval", "500ms"}
		if s.redis != "" {
			args = append(args, "--redis", s.redis)
		}
		p.cmd = exec.Command(binPath, args...)
		p.cmd.Dir = dir
		p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
		// Each replica has an artifact cache of its own, as on its own machine.
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
				t.Logf("replica %s (%s) log:\n%s", id, p.url, p.logs.String())
			}
		})
		reps = append(reps, &fleetReplica{proc: p, id: id})
	}
	deadline := time.Now().Add(60 * time.Second)
	for _, r := range reps {
		for {
			resp, err := http.Get(r.url + "/v2/health/ready")
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == 200 {
					break
				}
			}
			select {
			case err := <-r.done:
				t.Fatalf("replica %s exited early: %v\n%s", r.id, err, r.logs.String())
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("replica %s not ready after 60s\n%s", r.id, r.logs.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return reps
}

// planView is what GET /v1/admin/models/{name}/canary answers: the
// registry's plan and who runs the autopilot.
type planView struct {
	Canary     string      `json:"canary"`
	Baseline   string      `json:"baseline"`
	State      string      `json:"state"`
	Step       int         `json:"step"`
	Revision   uint64      `json:"revision"`
	LastAction string      `json:"last_action"`
	Note       string      `json:"note"`
	Verdict    *verdictObj `json:"verdict"`
	Autopilot  struct {
		Leader      string `json:"leader"`
		ThisReplica string `json:"this_replica"`
		Leads       bool   `json:"leads"`
		Elected     bool   `json:"elected"`
	} `json:"autopilot"`
}

type verdictObj struct {
	Decision string    `json:"decision"`
	Reason   string    `json:"reason"`
	Canary   sideObj   `json:"canary"`
	Baseline sideObj   `json:"baseline"`
	PValue   float64   `json:"p_value"`
	At       time.Time `json:"at"`
	Replicas []struct {
		Replica  string  `json:"replica"`
		Canary   sideObj `json:"canary"`
		Baseline sideObj `json:"baseline"`
	} `json:"replicas"`
}

type sideObj struct {
	Requests  int64 `json:"requests"`
	Errors    int64 `json:"errors"`
	NonFinite int64 `json:"non_finite"`
}

// key is what every replica must agree on.
func (p planView) key() string {
	return fmt.Sprintf("%s/%s revision %d, %s, step %d", p.Canary, p.Baseline, p.Revision, p.State, p.Step)
}

func getPlan(hc *http.Client, r *fleetReplica) (planView, error) {
	var p planView
	resp, err := hc.Get(r.url + "/v1/admin/models/" + fleetModel + "/canary")
	if err != nil {
		return p, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return p, fmt.Errorf("GET %s canary: %d %s", r.id, resp.StatusCode, b)
	}
	return p, json.Unmarshal(b, &p)
}

// waitPlan polls replica r's plan until ok accepts it.
func waitPlan(t *testing.T, hc *http.Client, r *fleetReplica, within time.Duration, what string, ok func(planView) bool) planView {
	t.Helper()
	deadline := time.Now().Add(within)
	var last planView
	var lastErr error
	for time.Now().Before(deadline) {
		p, err := getPlan(hc, r)
		if err == nil && ok(p) {
			return p
		}
		last, lastErr = p, err
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("replica %s: no %s within %v; last plan %s (%s, verdict %+v), err %v", r.id, what, within, last.key(), last.Note, last.Verdict, lastErr)
	return last
}

// samePlan checks that every replica reports the same plan: they read
// one registry, so they agree within a moment of each change.
func samePlan(t *testing.T, hc *http.Client, reps []*fleetReplica) planView {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		var keys []string
		var first planView
		for i, r := range reps {
			p, err := getPlan(hc, r)
			if err != nil {
				t.Fatal(err)
			}
			if i == 0 {
				first = p
			}
			keys = append(keys, r.id+": "+p.key())
		}
		agree := true
		for _, k := range keys {
			_, rest, _ := strings.Cut(k, ": ")
			agree = agree && rest == first.key()
		}
		if agree {
			return first
		}
		if time.Now().After(deadline) {
			t.Fatalf("replicas disagree on the plan for 3s:\n%s", strings.Join(keys, "\n"))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// fleetObj is what GET /v1/admin/models/{name}/fleet answers: the
// fleet's per-version counters, summed and per replica.
type fleetObj struct {
	Versions map[string]sideObj `json:"versions"`
	Replicas []struct {
		Replica  string             `json:"replica"`
		Versions map[string]sideObj `json:"versions"`
	} `json:"replicas"`
}

func getFleet(t *testing.T, hc *http.Client, r *fleetReplica) fleetObj {
	t.Helper()
	resp, err := hc.Get(r.url + "/v1/admin/models/" + fleetModel + "/fleet")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var f fleetObj
	if resp.StatusCode != 200 || json.Unmarshal(b, &f) != nil {
		t.Fatalf("GET %s fleet: %d %s", r.id, resp.StatusCode, b)
	}
	return f
}

// waitSplit waits until every replica's router gives version pct% of the
// model's traffic.
func waitSplit(t *testing.T, hc *http.Client, reps []*fleetReplica, version string, pct float64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for _, r := range reps {
		for splitPct(hc, r.proc, fleetModel, version) != pct {
			if time.Now().After(deadline) {
				t.Fatalf("replica %s: %s does not get %v%% of the traffic within 10s (has %v)", r.id, version, pct, splitPct(hc, r.proc, fleetModel, version))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// fleetLoad spreads requests over the replicas at a steady rate, each
// caller on a home replica; a request that cannot reach its replica (a
// connection error, as a load balancer sees a dead backend) is retried
// once on the next one.
type fleetLoad struct {
	reps []*fleetReplica

	total, retried, other atomic.Int64
	firstOther            atomic.Value // string
	served, nan           map[string]*atomic.Int64
	// banned counts answers by banVersion to requests sent after banAt
	// (unix ns; 0: none yet).
	banVersion string
	banAt      atomic.Int64
	banned     atomic.Int64

	stop chan struct{}
	wg   sync.WaitGroup
}

var nanVersion = regexp.MustCompile(`model [^ :]+:([^ ]+) produced NaN`)

func startLoad(reps []*fleetReplica, versions []string, banVersion string) *fleetLoad {
	l := &fleetLoad{reps: reps, served: map[string]*atomic.Int64{}, nan: map[string]*atomic.Int64{},
		banVersion: banVersion, stop: make(chan struct{})}
	for _, v := range versions {
		l.served[v], l.nan[v] = new(atomic.Int64), new(atomic.Int64)
	}
	period := time.Second * fleetWorkers / fleetRate
	for w := range fleetWorkers {
		l.wg.Add(1)
		go l.worker(w, period)
	}
	return l
}

func (l *fleetLoad) worker(w int, period time.Duration) {
	defer l.wg.Done()
	home := w % len(l.reps)
	hc := &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second}
	rng := rand.New(rand.NewPCG(uint64(w), 0xf1ee7))
	next := time.Now().Add(time.Duration(w) * period / fleetWorkers)
	for i := 0; ; i++ {
		select {
		case <-l.stop:
			return
		case <-time.After(time.Until(next)):
		}
		next = next.Add(period)
		if late := time.Since(next); late > period {
			next = time.Now() // behind: no burst to catch up
		}
		body, _ := json.Marshal(api.PredictRequest{RequestID: fmt.Sprintf("w%d-%d", w, i), NoCache: true,
			Features: api.Features{"x0": api.Scalar(rng.Float64()), "x1": api.Scalar(rng.Float64())}})
		sent := time.Now()
		status, out, err := l.post(hc, home, body)
		if err != nil {
			l.retried.Add(1)
			status, out, err = l.post(hc, (home+1)%len(l.reps), body)
		}
		l.total.Add(1)
		l.record(sent, status, out, err)
	}
}

func (l *fleetLoad) post(hc *http.Client, i int, body []byte) (int, []byte, error) {
	resp, err := hc.Post(l.reps[i].url+"/v1/models/"+fleetModel+"/predict", "application/json", bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

func (l *fleetLoad) record(sent time.Time, status int, body []byte, err error) {
	fail := func(msg string) {
		l.other.Add(1)
		l.firstOther.CompareAndSwap(nil, msg)
	}
	if err != nil {
		fail("after a retry: " + err.Error())
		return
	}
	var version string
	switch status {
	case http.StatusOK:
		var r api.PredictResponse
		if err := json.Unmarshal(body, &r); err != nil || len(r.Predictions) != 1 {
			fail(fmt.Sprintf("200 %s", body))
			return
		}
		version = r.Version
		if l.served[version] == nil {
			fail(fmt.Sprintf("200 from version %q, not one of the drill's", version))
			return
		}
		l.served[version].Add(1)
	case http.StatusUnprocessableEntity:
		var e api.ErrorBody
		m := nanVersion.FindStringSubmatch(string(body))
		if json.Unmarshal(body, &e) != nil || e.Error.Code != "non_finite_output" || m == nil || l.nan[m[1]] == nil {
			fail(fmt.Sprintf("422 %s", body))
			return
		}
		version = m[1]
		l.nan[version].Add(1)
	default:
		fail(fmt.Sprintf("%d %s", status, body))
		return
	}
	if at := l.banAt.Load(); at != 0 && version == l.banVersion && sent.UnixNano() > at {
		l.banned.Add(1)
	}
}

// ban starts counting l.banVersion's answers to requests sent from now.
func (l *fleetLoad) ban() { l.banAt.Store(time.Now().UnixNano()) }

func (l *fleetLoad) close() {
	if l.stop != nil {
		close(l.stop)
		l.wg.Wait()
		l.stop = nil
	}
}

func (l *fleetLoad) counts() string {
	var parts []string
	for _, v := range slices.Sorted(maps.Keys(l.served)) {
		s, n := l.served[v].Load(), l.nan[v].Load()
		rate := 0.0
		if s+n > 0 {
			rate = 100 * float64(n) / float64(s+n)
		}
		parts = append(parts, fmt.Sprintf("%s: %d answered, %d NaN (%.2f%%)", v, s+n, n, rate))
	}
	return strings.Join(parts, "; ")
}

// openDrillRegistry opens the drill's registry in this process, to read
// its audit log.
func openDrillRegistry(t *testing.T, s fleetSetup) *registry.Registry {
	t.Helper()
	ctx := context.Background()
	cfg := registry.Config{Dir: s.registry}
	if strings.HasPrefix(s.registry, "postgres") {
		st, err := pgstore.Open(ctx, pgstore.Config{URL: s.registry, CacheDir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		cfg = registry.Config{Store: st}
	}
	r, err := registry.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// planEvents returns the model's canary events from the last canary-start
// on.
func planEvents(t *testing.T, r *registry.Registry) []registry.Event {
	t.Helper()
	evs, err := r.History(context.Background(), fleetModel)
	if err != nil {
		t.Fatal(err)
	}
	start := -1
	for i, e := range evs {
		if e.Action == registry.ActionCanaryStart {
			start = i
		}
	}
	if start < 0 {
		t.Fatal("no canary-start event in the history")
	}
	return evs[start:]
}

func countAction(evs []registry.Event, a registry.Action) int {
	n := 0
	for _, e := range evs {
		if e.Action == a {
			n++
		}
	}
	return n
}

// drill is one run of the fleet canary drill.
type drill struct {
	t    *testing.T
	s    fleetSetup
	reps []*fleetReplica
	reg  *registry.Registry // the drill's registry, read in this process
	hc   *http.Client
	load *fleetLoad
}

// runFleetDrill registers v1 (production, 1% NaN), v2 (5%) and v3
// (1%), starts replicas r1, r2 and r3 and the load, then runs
// rollbackOnFleetEvidence and promoteAcrossLeaderKill, and checks that no
// request failed but the injected NaN answers.
//
// The judge looks at an equal canary a few times (Fisher's test at
// alpha 0.001 each), so about one run in several hundred may roll plan B
// back by chance: the failure then says "ended rolled_back, not promoted"
// with the verdict's numbers.
func runFleetDrill(t *testing.T, s fleetSetup) {
	dir := t.TempDir()
	for _, m := range []struct {
		version string
		rate    float32
		w       float32
		args    []string
	}{
		{"v1", goodRate, 0.25, []string{"--status", "production", "--traffic", "100"}},
		{"v2", badRate, 0.5, nil},
		{"v3", goodRate, 0.75, nil},
	} {
		path := filepath.Join(dir, m.version+".onnx")
		if err := os.WriteFile(path, nanRateModel(t, m.rate, m.w), 0o644); err != nil {
			t.Fatal(err)
		}
		fleetCLI(t, s, append([]string{"models", "register", "--name", fleetModel, "--version", m.version, "--features", "x0,x1", "--max-batch", "32"}, append(m.args, path)...)...)
	}
	d := &drill{t: t, s: s, hc: &http.Client{Timeout: 5 * time.Second}}
	d.reps = startFleet(t, s, "r1", "r2", "r3")
	d.reg = openDrillRegistry(t, s)
	d.load = startLoad(d.reps, []string{"v1", "v2", "v3"}, "v2")
	defer d.load.close()
	began := time.Now()
	time.Sleep(time.Second)

	d.rollbackOnFleetEvidence()
	d.promoteAcrossLeaderKill()

	load := d.load
	load.close()
	elapsed := time.Since(began)
	t.Logf("load: %d requests in %v (%.0f/s) over 3 replicas, %d retried on another replica after a connection error; %s; %d other failures",
		load.total.Load(), elapsed.Round(10*time.Millisecond), float64(load.total.Load())/elapsed.Seconds(), load.retried.Load(), load.counts(), load.other.Load())
	if n := load.other.Load(); n > 0 {
		t.Errorf("%d requests failed other than with an injected NaN; first: %v", n, load.firstOther.Load())
	}
	if n := load.banned.Load(); n > 0 {
		t.Errorf("v2 answered %d requests sent after every replica applied its rollback", n)
	}
	if load.served["v2"].Load()+load.nan["v2"].Load() == 0 || load.nan["v1"].Load() == 0 {
		t.Errorf("the drill did not exercise the versions: %s", load.counts())
	}
}

// rollbackOnFleetEvidence: plan A tries v2 (5% NaN) against v1 (1%),
// steps 10, 50, 100, rollback on. Every replica reports the same plan;
// it is rolled back once, on a verdict whose evidence is the sum of all
// three replicas' (min_samples more than any one replica served); then v2
// gets no more traffic, and the fleet's counters of v2 are exactly what
// the clients saw.
func (d *drill) rollbackOnFleetEvidence() {
	t, s, hc, reps, load := d.t, d.s, d.hc, d.reps, d.load
	startA := time.Now()
	fleetCLI(t, s, "canary", "start", fleetModel, "--canary", "v2", "--baseline", "v1", "--steps", "10,50,100",
		"--interval", planInterval.String(), "--min-samples", fmt.Sprint(fleetMinSamples), "--max-p99-ratio", "-1")
	waitPlan(t, hc, reps[0], 10*time.Second, "first step of plan A", func(p planView) bool { return p.Canary == "v2" && p.Step >= 0 || p.State != "running" })
	first := samePlan(t, hc, reps)
	t.Logf("plan A on every replica: %s; autopilot leader %s", first.key(), first.Autopilot.Leader)
	if first.Autopilot.Leader == "" || !slices.ContainsFunc(reps, func(r *fleetReplica) bool { return r.id == first.Autopilot.Leader }) {
		t.Errorf("autopilot leader %q is not one of the replicas", first.Autopilot.Leader)
	}
	rolled := waitPlan(t, hc, reps[0], 40*time.Second, "rollback of plan A", func(p planView) bool { return p.Canary == "v2" && p.State != "running" })
	rollbackAfter := time.Since(startA)
	if rolled.State != "rolled_back" {
		t.Fatalf("plan A ended %s, not rolled_back: %s (%s)", rolled.State, rolled.key(), rolled.Note)
	}
	end := samePlan(t, hc, reps)
	waitSplit(t, hc, reps, "v2", 0)
	load.ban()
	v := rolled.Verdict
	if v == nil || v.Decision != "rollback" {
		t.Fatalf("plan A rolled back without a rollback verdict: %+v", v)
	}
	var sumC, sumB sideObj
	var maxC int64
	var ids []string
	for _, r := range v.Replicas {
		sumC.Requests += r.Canary.Requests
		sumC.Errors += r.Canary.Errors
		sumB.Requests += r.Baseline.Requests
		sumB.Errors += r.Baseline.Errors
		maxC = max(maxC, r.Canary.Requests)
		ids = append(ids, r.Replica)
	}
	slices.Sort(ids)
	t.Logf("plan A rolled back %v after the CLI started it (%s): %s; verdict canary %d requests / %d errors (sum of replicas %d / %d), baseline %d / %d (sum %d / %d), p=%.2g, replicas %v, largest replica share of the canary %d (min_samples %d)",
		rollbackAfter.Round(10*time.Millisecond), end.key(), v.Reason, v.Canary.Requests, v.Canary.Errors, sumC.Requests, sumC.Errors,
		v.Baseline.Requests, v.Baseline.Errors, sumB.Requests, sumB.Errors, v.PValue, ids, maxC, fleetMinSamples)
	if sumC.Requests != v.Canary.Requests || sumC.Errors != v.Canary.Errors || sumB.Requests != v.Baseline.Requests || sumB.Errors != v.Baseline.Errors {
		t.Errorf("the verdict's evidence is not the sum of its replicas: canary %+v vs sum %+v, baseline %+v vs sum %+v", v.Canary, sumC, v.Baseline, sumB)
	}
	if !slices.Equal(ids, []string{"r1", "r2", "r3"}) {
		t.Errorf("the verdict's breakdown has replicas %v, want r1, r2, r3", ids)
	}
	if v.Canary.NonFinite != v.Canary.Errors || v.Canary.Errors == 0 {
		t.Errorf("the verdict counts %d canary errors, %d of them NaN answers: want every error a NaN answer, and some", v.Canary.Errors, v.Canary.NonFinite)
	}
	if seen := load.served["v2"].Load() + load.nan["v2"].Load(); v.Canary.Requests > seen {
		t.Errorf("the verdict counts %d canary requests; the clients saw v2 answer %d", v.Canary.Requests, seen)
	}
	if v.Canary.Requests < fleetMinSamples || maxC >= fleetMinSamples {
		t.Errorf("verdict on %d canary requests, at most %d from one replica: want the fleet's sum ≥ min_samples %d and no single replica enough", v.Canary.Requests, maxC, fleetMinSamples)
	}
	evA := planEvents(t, d.reg)
	if n := countAction(evA, registry.ActionCanaryRollback); n != 1 {
		t.Errorf("plan A: %d canary-rollback events, want exactly 1", n)
	}
	time.Sleep(planInterval) // v2 must get nothing more

	// v2 served only at plan A's first step and no longer does: the
	// fleet's counters for it (every replica's last snapshot, published
	// every 500ms) are exactly what the clients saw.
	fv := getFleet(t, hc, reps[0])
	var repSum sideObj
	for _, r := range fv.Replicas {
		repSum.Requests += r.Versions["v2"].Requests
		repSum.NonFinite += r.Versions["v2"].NonFinite
	}
	seenV2, nanV2 := load.served["v2"].Load()+load.nan["v2"].Load(), load.nan["v2"].Load()
	t.Logf("fleet counters of v2 after the rollback: %d requests, %d errors, %d NaN (replicas sum %d / %d); the clients saw %d answers, %d NaN; the rollback verdict judged %d",
		fv.Versions["v2"].Requests, fv.Versions["v2"].Errors, fv.Versions["v2"].NonFinite, repSum.Requests, repSum.NonFinite, seenV2, nanV2, v.Canary.Requests)
	if got := fv.Versions["v2"]; got.Requests != seenV2 || got.Errors != nanV2 || got.NonFinite != nanV2 || repSum.Requests != seenV2 || len(fv.Replicas) != 3 {
		t.Errorf("fleet counters of v2 %+v over %d replicas (sum %+v); want %d requests, %d errors and NaN answers, as the clients saw, over 3 replicas", got, len(fv.Replicas), repSum, seenV2, nanV2)
	}
	// With the plan ended, `signalforge judge` (through another replica)
	// judges everything the fleet counted.
	var jv verdictObj
	out := fleetCLI(t, s, "judge", fleetModel, "--canary", "v2", "--baseline", "v1", "--max-p99-ratio", "-1", "--server", reps[1].url, "--format", "json")
	if err := json.Unmarshal([]byte(out), &jv); err != nil {
		t.Fatalf("signalforge judge --format json: %v\n%s", err, out)
	}
	t.Logf("signalforge judge v2 against v1 after the plan: %s: %s (canary %d requests / %d errors over %d replicas, baseline %d / %d)",
		jv.Decision, jv.Reason, jv.Canary.Requests, jv.Canary.Errors, len(jv.Replicas), jv.Baseline.Requests, jv.Baseline.Errors)
	if jv.Decision != "rollback" || jv.Canary.Requests != seenV2 || jv.Canary.NonFinite != nanV2 || len(jv.Replicas) != 3 {
		t.Errorf("signalforge judge: %s on canary %+v over %d replicas; want rollback on the %d requests (%d NaN) the clients saw, over 3 replicas", jv.Decision, jv.Canary, len(jv.Replicas), seenV2, nanV2)
	}
	if out := fleetCLI(t, s, "stats", fleetModel, "--server", reps[2].url); !strings.Contains(out, "v2") || !strings.Contains(out, "r3") {
		t.Errorf("signalforge stats names neither v2 nor replica r3:\n%s", out)
	} else {
		t.Logf("signalforge stats %s --server %s:\n%s", fleetModel, reps[2].id, out)
	}
}

// promoteAcrossLeaderKill: plan B tries v3 (1% NaN) against v1 (1%),
// steps 20, 50, 100, healthy margin 3 pp. Once the first step is applied the
// autopilot's leader is killed (kill -9); another replica takes the lease
// over within its TTL and a renewal, continues the plan and promotes it:
// one event per step, none repeated, no rollback.
func (d *drill) promoteAcrossLeaderKill() {
	t, s, hc, reps := d.t, d.s, d.hc, d.reps
	startB := time.Now()
	fleetCLI(t, s, "canary", "start", fleetModel, "--canary", "v3", "--baseline", "v1", "--steps", "20,50,100",
		"--interval", planInterval.String(), "--min-samples", fmt.Sprint(fleetMinSamples), "--max-p99-ratio", "-1",
		"--margin-pct", fmt.Sprint(marginPct))
	stepped := waitPlan(t, hc, reps[0], 10*time.Second, "first step of plan B", func(p planView) bool { return p.Canary == "v3" && (p.Step >= 0 || p.State != "running") })
	if stepped.State != "running" || stepped.Step != 0 {
		t.Fatalf("plan B is %s before the leader could be killed", stepped.key())
	}
	samePlan(t, hc, reps)
	leader := stepped.Autopilot.Leader
	li := slices.IndexFunc(reps, func(r *fleetReplica) bool { return r.id == leader })
	if li < 0 {
		t.Fatalf("plan B: autopilot leader %q is not one of the replicas", leader)
	}
	if err := reps[li].cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	<-reps[li].done
	survivors := slices.Delete(slices.Clone(reps), li, li+1)
	var successor string
	var takeover time.Duration
	for deadline := killed.Add(leaseTTL + 5*time.Second); successor == ""; {
		for _, r := range survivors {
			if p, err := getPlan(hc, r); err == nil && p.Autopilot.Leads && p.Autopilot.Leader == r.id {
				successor, takeover = r.id, time.Since(killed)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no replica took the autopilot over within %v of killing leader %s", leaseTTL+5*time.Second, leader)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("killed autopilot leader %s (kill -9) at %s; %s took over %v later (lease TTL %v)", leader, stepped.key(), successor, takeover.Round(10*time.Millisecond), leaseTTL)
	if limit := leaseTTL + leaseTTL/3 + time.Second; takeover > limit {
		t.Errorf("takeover took %v, more than the lease TTL and a renewal (%v)", takeover, limit)
	}
	promoted := waitPlan(t, hc, survivors[0], 60*time.Second, "end of plan B", func(p planView) bool { return p.Canary == "v3" && p.State != "running" })
	promoteAfter := time.Since(startB)
	if promoted.State != "promoted" {
		t.Fatalf("plan B ended %s, not promoted: %s (%s, verdict %+v)", promoted.State, promoted.key(), promoted.Note, promoted.Verdict)
	}
	samePlan(t, hc, survivors)
	waitSplit(t, hc, survivors, "v3", 100)
	evB := planEvents(t, d.reg)
	var steps []int
	for _, e := range evB {
		if e.Action == registry.ActionCanaryStep || e.Action == registry.ActionCanaryPromote {
			if e.Canary == nil {
				t.Fatalf("%s event %d carries no plan", e.Action, e.Seq)
			}
			steps = append(steps, e.Canary.Step)
		}
	}
	if !slices.Equal(steps, []int{0, 1, 2}) || countAction(evB, registry.ActionCanaryPromote) != 1 || countAction(evB, registry.ActionCanaryRollback) != 0 {
		t.Errorf("plan B: step events at steps %v, %d promote, %d rollback; want steps [0 1 2] once each (the last a promote), no rollback",
			steps, countAction(evB, registry.ActionCanaryPromote), countAction(evB, registry.ActionCanaryRollback))
	}
	var timeline []string
	for _, e := range evB {
		step := -1
		if e.Canary != nil {
			step = e.Canary.Step
		}
		timeline = append(timeline, fmt.Sprintf("%s step %d by %s at kill%+.2fs", e.Action, step, e.Actor, e.Time.Sub(killed).Seconds()))
		// The successor continues the plan: every step after the first
		// is taken after the kill.
		if (e.Action == registry.ActionCanaryStep || e.Action == registry.ActionCanaryPromote) && step > 0 && e.Time.Before(killed) {
			t.Errorf("plan B: %s to step %d at %v, before the leader was killed at %v", e.Action, step, e.Time, killed)
		}
	}
	t.Logf("plan B promoted %v after the CLI started it, across the leader's kill: %s",
		promoteAfter.Round(10*time.Millisecond), strings.Join(timeline, "; "))
}
