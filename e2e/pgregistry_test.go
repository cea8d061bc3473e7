package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	neturl "net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/signalforge/signalforge/internal/testpg"
	"github.com/signalforge/signalforge/onnx/onnxtest"
	"github.com/signalforge/signalforge/registry"
	"github.com/signalforge/signalforge/registry/pgstore"
)

// pgDatabase returns the URL of a fresh, empty PostgreSQL database: in the
// server $SIGNALFORGE_TEST_POSTGRES names, else in a throwaway cluster of
// t's own (testpg.Start: this package's TestMain builds the binary and
// does not run testpg.Main).
func pgDatabase(t *testing.T) string {
	t.Helper()
	if os.Getenv(testpg.EnvURL) != "" {
		return testpg.NewDatabase(t)
	}
	return testpg.Start(t).NewDatabase(t)
}

// drillApp is the application_name the killed CLIs connect with, so the
// drill can see in pg_stat_activity when one has a write in flight.
const drillApp = "signalforge-drill"

// writeModels writes n distinct small ONNX models into dir and returns
// their paths.
func writeModels(t *testing.T, dir string, n int) []string {
	t.Helper()
	feats := []string{"rsi_14", "macd"}
	paths := make([]string, n)
	for i := range paths {
		m, err := onnxtest.NewMLP(onnxtest.MLPConfig{Sizes: []int{len(feats), 4, 2}, Seed: uint64(i + 1), Features: feats})
		if err != nil {
			t.Fatal(err)
		}
		b, err := m.Bytes()
		if err != nil {
			t.Fatal(err)
		}
		paths[i] = filepath.Join(dir, fmt.Sprintf("m%02d.onnx", i))
		if err := os.WriteFile(paths[i], b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return paths
}

// pgCLI is `signalforge ARGS…` against the registry at url, with a cache
// folder of its own.
func pgCLI(t *testing.T, url, cache string, args ...string) *exec.Cmd {
	cmd := exec.Command(binPath, args...)
	cmd.Env = append(os.Environ(), "SIGNALFORGE_REGISTRY="+url, "XDG_CACHE_HOME="+cache, "USER=drill")
	return cmd
}

// drillChange picks a lifecycle change that m's state allows: register a
// new artifact, promote a staging version, set a production version's
// traffic, archive (with --force when it serves), or roll back the last
// traffic change. Only a rollback may be refused (the split before may
// name a version archived since).
func drillChange(rng *rand.Rand, m registry.Model, next func() string) []string {
	var staging, prod []string
	for _, v := range m.Versions {
		switch v.Status {
		case registry.StatusStaging:
			staging = append(staging, v.Version)
		case registry.StatusProduction:
			prod = append(prod, v.Version)
		}
	}
	ref := func(vs []string) string { return m.Name + ":" + vs[rng.IntN(len(vs))] }
	pct := func(lo, hi int) string { return strconv.Itoa(lo + rng.IntN(hi-lo)) }
	common := []string{"models"}
	for {
		switch rng.IntN(6) {
		case 0, 1:
			if len(staging) < 3 {
				return append(common, "register", "--skip-engine-check", "--name", m.Name, next())
			}
		case 2:
			if len(staging) > 0 && len(prod) < 6 {
				return append(common, "promote", "--traffic", pct(5, 50), ref(staging))
			}
		case 3:
			if len(prod) > 1 {
				return append(common, "traffic", ref(prod), pct(5, 60))
			}
		case 4:
			if len(prod) > 2 {
				return append(common, "archive", "--force", ref(prod))
			}
			if len(staging) > 1 {
				return append(common, "archive", ref(staging))
			}
		case 5:
			if len(prod) > 1 {
				return append(common, "traffic", "--rollback", m.Name)
			}
		}
	}
}

// withParam returns the database URL raw with the query parameter k=v.
func withParam(t *testing.T, raw, k, v string) string {
	t.Helper()
	u, err := neturl.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set(k, v)
	u.RawQuery = q.Encode()
	return u.String()
}

// drillTarget is a registry the kill drill runs against.
type drillTarget struct {
	registry string // --registry of the CLIs
	// open opens the registry's store for the test's own reads.
	open func(t *testing.T) registry.Store
	// check checks the registry is consistent and returns its Seq.
	check func(t *testing.T) uint64
	// sessions, if set, counts the CLI's open sessions (writing: those
	// with a write in flight, not yet committed). Nil: the kill comes a
	// random 0–50 ms after the start.
	sessions func(t *testing.T, writing bool) int
}

// TestCLIKilledMidChange SIGKILLs `signalforge models …` processes
// (register, promote, traffic, archive, rollback) in the middle of their
// changes until 30 were killed. On PostgreSQL half the kills come a random
// 0–50 ms after the CLI connected, half within 1.5 ms of PostgreSQL
// showing that its transaction has written and not yet committed (a
// transaction id assigned). On the folder store, which the drill cannot
// watch, kills come a random 0–50 ms after the start. After every kill the
// registry must be consistent (every model valid, Seqs gap-free, the audit
// log replays to the stored state through registry.Rebuild, every artifact
// intact; on PostgreSQL no orphaned large object) and the change either
// wholly committed (one event) or not at all.
func TestCLIKilledMidChange(t *testing.T) {
	t.Run("postgres", func(t *testing.T) {
		url := pgDatabase(t)
		var mon *pgx.Conn
		killDrill(t, drillTarget{
			registry: withParam(t, url, "application_name", drillApp),
			open: func(t *testing.T) registry.Store {
				s, err := pgstore.Open(context.Background(), pgstore.Config{URL: url, CacheDir: t.TempDir()})
				if err != nil {
					t.Fatalf("open: %v", err)
				}
				return s
			},
			check: func(t *testing.T) uint64 { return pgConsistent(t, context.Background(), url) },
			sessions: func(t *testing.T, writing bool) int {
				ctx := context.Background()
				if mon == nil {
					var err error
					if mon, err = pgx.Connect(ctx, url); err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() { mon.Close(ctx) })
				}
				var n int
				q := "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
				if writing {
					q += " AND backend_xid IS NOT NULL"
				}
				if err := mon.QueryRow(ctx, q, drillApp).Scan(&n); err != nil {
					t.Fatal(err)
				}
				return n
			},
		})
	})
	t.Run("folder", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "models")
		open := func(t *testing.T) registry.Store {
			s, err := registry.OpenFileStore(dir)
			if err != nil {
				t.Fatalf("open: %v", err)
			}
			return s
		}
		killDrill(t, drillTarget{
			registry: dir,
			open:     open,
			check: func(t *testing.T) uint64 {
				s := open(t)
				defer s.Close()
				return consistent(t, context.Background(), s)
			},
		})
	})
}

func killDrill(t *testing.T, tg drillTarget) {
	ctx := context.Background()
	cache := t.TempDir()
	files := writeModels(t, t.TempDir(), 40)
	nextFile := 1
	next := func() string { f := files[nextFile%len(files)]; nextFile++; return f }

	if out, err := pgCLI(t, tg.registry, cache, "models", "register", "--skip-engine-check", "--name", "m",
		"--status", "production", "--traffic", "100", files[0]).CombinedOutput(); err != nil {
		t.Fatalf("register: %v\n%s", err, out)
	}
	const wantKills = 30
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 12))
	var kills, inFlight, inFlightRolledBack, committed, finished int
	for attempt := 0; kills < wantKills; attempt++ {
		if attempt == 10*wantKills {
			t.Fatalf("only %d of %d runs were killed before they ended", kills, attempt)
		}
		if tg.sessions != nil {
			for tg.sessions(t, false) > 0 {
				// The last killed CLI's backend has not noticed yet.
				time.Sleep(time.Millisecond)
			}
		}
		s := tg.open(t)
		m, err := s.Model(ctx, "m")
		if err != nil {
			t.Fatal(err)
		}
		before, _ := s.Seq(ctx)
		s.Close()
		args := drillChange(rng, m, next)
		cmd := pgCLI(t, tg.registry, cache, args...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		ended, sawWrite := false, false
		inflight := tg.sessions != nil && attempt%2 == 1
	poll:
		for tg.sessions != nil {
			select {
			case <-done:
				ended = true // before it wrote, or too fast to see
				break poll
			default:
			}
			if tg.sessions(t, inflight) > 0 {
				sawWrite = inflight
				break
			}
		}
		if !ended {
			if inflight {
				time.Sleep(time.Duration(rng.IntN(1500)) * time.Microsecond)
			} else {
				time.Sleep(time.Duration(rng.IntN(50_000)) * time.Microsecond)
			}
			_ = cmd.Process.Signal(syscall.SIGKILL)
			<-done
		}
		after := tg.check(t)
		ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
		switch {
		case ws.Signaled():
			kills++
			if after != before {
				committed++
			}
			if sawWrite {
				inFlight++
				if after == before {
					inFlightRolledBack++
				}
			}
		case !cmd.ProcessState.Success() && args[1] == "traffic" && args[2] == "--rollback":
			finished++ // a refused rollback changes nothing
			if after != before {
				t.Fatalf("a refused %v moved Seq from %d to %d\n%s", args, before, after, out.String())
			}
		case !cmd.ProcessState.Success():
			t.Fatalf("%v failed: %s\n%s", args, cmd.ProcessState, out.String())
		default:
			finished++
		}
		if after != before && after != before+1 {
			t.Fatalf("%v: Seq went from %d to %d; one change is one event", args, before, after)
		}
	}
	actions := map[registry.Action]int{}
	s := tg.open(t)
	evs, err := s.Events(ctx, "", 0)
	s.Close()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range evs {
		actions[e.Action]++
	}
	t.Logf("%d kills (%d with a write in flight, %d of those rolled back; %d after the change had committed), %d runs ended before the kill; %d events %v",
		kills, inFlight, inFlightRolledBack, committed, finished, len(evs), actions)
	if tg.sessions != nil && inFlightRolledBack == 0 {
		// Not a timing threshold: without one such kill the drill has not
		// shown what it is for, so it says so rather than pass.
		t.Fatalf("no kill landed on a transaction that had written and not committed; run again")
	}

	// The registry still takes changes.
	if out, err := pgCLI(t, tg.registry, cache, "models", "register", "--skip-engine-check", "--name", "m", next()).CombinedOutput(); err != nil {
		t.Fatalf("register after the drill: %v\n%s", err, out)
	}
	tg.check(t)
}

// pgConsistent checks the PostgreSQL registry at url through a store of
// its own (as a new process would open it; see consistent) and that no
// large object is left without its artifacts row, and returns its Seq.
func pgConsistent(t *testing.T, ctx context.Context, url string) uint64 {
	t.Helper()
	s, err := pgstore.Open(ctx, pgstore.Config{URL: url, CacheDir: t.TempDir()})
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer s.Close()
	seq := consistent(t, ctx, s)
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var orphans int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_largeobject_metadata WHERE oid NOT IN (SELECT oid FROM artifacts)").Scan(&orphans); err != nil {
		t.Fatal(err)
	}
	if orphans > 0 {
		t.Fatalf("%d large objects belong to no artifact", orphans)
	}
	return seq
}

// consistent checks the registry in s and returns its Seq: listing works
// (every model passes registry.ValidateModel), the events' Seqs are 1…Seq
// with no gap, and registry.Rebuild replays the audit log (artifacts
// verified) into exactly the stored models with no problem.
func consistent(t *testing.T, ctx context.Context, s registry.Store) uint64 {
	t.Helper()
	models, err := s.Models(ctx)
	if err != nil {
		t.Fatalf("Models: %v", err)
	}
	for _, m := range models {
		if err := registry.ValidateModel(m); err != nil {
			t.Fatalf("model %s: %v", m.Name, err)
		}
	}
	evs, err := s.Events(ctx, "", 0)
	if err != nil {
		t.Fatalf("Events: %v", err)
	}
	seq, err := s.Seq(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if uint64(len(evs)) != seq {
		t.Fatalf("%d events but Seq %d", len(evs), seq)
	}
	for i, e := range evs {
		if e.Seq != uint64(i+1) {
			t.Fatalf("event %d has Seq %d: a gap", i, e.Seq)
		}
	}
	rb, err := registry.Rebuild(ctx, evs, registry.StoredArtifacts(s))
	if err != nil {
		t.Fatalf("Rebuild: %v", err)
	}
	if len(rb.Problems) > 0 {
		t.Fatalf("replaying the audit log: %v", rb.Problems)
	}
	if got, want := canonical(t, models), canonical(t, rb.Models); !bytes.Equal(got, want) {
		t.Fatalf("the stored models differ from the audit log's replay:\nstored:   %s\nreplayed: %s", got, want)
	}
	return seq
}

func canonical(t *testing.T, ms []registry.Model) []byte {
	t.Helper()
	ms = slices.Clone(ms)
	slices.SortFunc(ms, func(a, b registry.Model) int { return strings.Compare(a.Name, b.Name) })
	b, err := json.Marshal(ms)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
