package fleet_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/signalforge/signalforge/route"
	"github.com/signalforge/signalforge/route/fleet"
	"github.com/signalforge/signalforge/route/fleet/fleettest"
)

// The multi-process test re-executes the test binary as a publisher,
// selected by these environment variables.
const (
	envChild = "FLEET_TEST_CHILD" // "dir-publisher"
	envDir   = "FLEET_TEST_DIR"
	envArgs  = "FLEET_TEST_ARGS" // "REPLICA PUBLISHES"
)

func TestMain(m *testing.M) {
	if os.Getenv(envChild) == "dir-publisher" {
		var id string
		var n int
		if _, err := fmt.Sscan(os.Getenv(envArgs), &id, &n); err != nil {
			fmt.Fprintf(os.Stderr, "child: %s=%q: %v\n", envArgs, os.Getenv(envArgs), err)
			os.Exit(2)
		}
		if err := dirPublisher(os.Getenv(envDir), id, n); err != nil {
			fmt.Fprintf(os.Stderr, "child %s: %v\n", id, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// dirPublisher opens a Dir on dir, prints "ready", waits for a line on
// stdin (so that the processes start together), then n times publishes
// replica id's growing counters of model m (TTL a minute), and those of
// replica id-short with a TTL of 1ms, which every reader finds expired and
// removes while it is being rewritten; after each round it reads m too.
func dirPublisher(dir, id string, n int) error {
	ctx := context.Background()
	d, err := fleet.NewDir(dir)
	if err != nil {
		return err
	}
	fmt.Println("ready")
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		return fmt.Errorf("waiting for the start: %w", err)
	}
	start := time.Now()
	for i := int64(1); i <= int64(n); i++ {
		vs := map[string]route.Counters{"v1": fleettest.Counters(i, i/4, time.Millisecond)}
		if err := d.Publish(ctx, time.Minute, fleet.Snapshot{Model: "m", Replica: id, Started: start, At: time.Now(), Versions: vs}); err != nil {
			return err
		}
		if err := d.Publish(ctx, time.Millisecond, fleet.Snapshot{Model: "m", Replica: id + "-short", Started: start, At: time.Now(), Versions: vs}); err != nil {
			return err
		}
		if _, err := d.Snapshots(ctx, "m"); err != nil {
			return err
		}
	}
	if n := d.Invalid(); n != 0 {
		return fmt.Errorf("%d files did not parse", n)
	}
	return nil
}

// TestDirProcesses: four processes publish to one folder while this one
// reads and sums. No read fails or finds a file it cannot parse, no
// replica's counters go down or vanish once seen, the final sum is every
// last publish, and the folder ends up holding one file per live replica
// and nothing else (no temporary files, no expired snapshots).
func TestDirProcesses(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	const procs, each = 4, 300
	d, err := fleet.NewDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	starts := make([]io.WriteCloser, procs)
	errOut := make([]strings.Builder, procs)
	exited := make(chan error, procs)
	// Each process has a goroutine waiting for it; allDone closes when
	// all have exited. The cleanups kill the processes, then wait.
	var wg sync.WaitGroup
	allDone := make(chan struct{})
	var once sync.Once
	closeWhenDone := func() { once.Do(func() { go func() { wg.Wait(); close(allDone) }() }) }
	t.Cleanup(func() { closeWhenDone(); <-allDone })
	for p := range procs {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), envChild+"=dir-publisher", envDir+"="+dir, envArgs+"=p"+strconv.Itoa(p)+" "+strconv.Itoa(each))
		cmd.Stderr = &errOut[p]
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if starts[p], err = cmd.StdinPipe(); err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill() })
		line, err := bufio.NewReader(stdout).ReadString('\n')
		wg.Go(func() {
			if err := cmd.Wait(); err != nil {
				exited <- fmt.Errorf("process %d: %v\n%s", p, err, errOut[p].String())
			}
		})
		if line != "ready\n" {
			t.Fatalf("process %d did not start: %q %v", p, line, err)
		}
	}
	closeWhenDone()
	for _, w := range starts {
		fmt.Fprintln(w, "go")
	}

	seen := map[string]int64{}
	reads := 0
	for running := true; running; reads++ {
		select {
		case <-allDone:
			running = false // one more read, of the final state
		default:
		}
		got, err := d.Snapshots(ctx, "m")
		if err != nil {
			t.Fatalf("read %d: %v", reads, err)
		}
		f := fleet.Sum("m", got, time.Now(), time.Hour)
		now := map[string]int64{}
		for _, s := range f.Replicas {
			if !strings.HasSuffix(s.Replica, "-short") {
				now[s.Replica] = s.Versions["v1"].Requests
			}
		}
		for id, n := range seen {
			if now[id] < n {
				t.Fatalf("read %d: replica %s went from %d to %d requests", reads, id, n, now[id])
			}
		}
		seen = now
	}
	close(exited)
	for err := range exited {
		t.Error(err)
	}
	if t.Failed() {
		return
	}
	var total int64
	for _, n := range seen {
		total += n
	}
	if len(seen) != procs || total != procs*each {
		t.Fatalf("final read: %v; want %d replicas with %d requests each", seen, procs, each)
	}
	if n := d.Invalid(); n != 0 {
		t.Errorf("%d files did not parse", n)
	}
	entries, err := os.ReadDir(filepath.Join(dir, "m"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if want := []string{"p0.json", "p1.json", "p2.json", "p3.json"}; !slices.Equal(names, want) {
		t.Errorf("the folder holds %v, want %v", names, want)
	}
	t.Logf("%d reads while %d processes published %d times each", reads, procs, each)
}

// TestDirLeftovers: what killed writers, other programs and corruption
// leave in the folder is skipped, and removed once it cannot be live.
func TestDirLeftovers(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	d, err := fleet.NewDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	good := fleet.Snapshot{Model: "m", Replica: "a", Started: now, At: now,
		Versions: map[string]route.Counters{"v1": fleettest.Counters(3, 1, time.Millisecond)}}
	if err := d.Publish(ctx, time.Minute, good); err != nil {
		t.Fatal(err)
	}
	folder := filepath.Join(dir, "m")
	aFile, err := os.ReadFile(filepath.Join(folder, "a.json"))
	if err != nil {
		t.Fatal(err)
	}
	long := now.Add(-2 * time.Hour)
	write := func(name string, b []byte, mtime time.Time) {
		t.Helper()
		p := filepath.Join(folder, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}
	write(".b.123.tmp", []byte(`{"expires":`), long)    // a writer killed long ago
	write(".c.456.tmp", []byte(`{"expires":`), now)     // a live writer's
	write("garbage.json", []byte("not json"), now)      // corrupt, recent
	write("rotten.json", []byte(`{"expires":1}`), long) // corrupt, old
	write("impostor.json", aFile, now)                  // a's snapshot in another replica's file
	write("README", []byte("notes"), long)              // not ours
	write("bad name.json", []byte("whatever"), long)    // not a replica's file
	write(".hidden", []byte("whatever"), long)          // not ours
	if err := d.Publish(ctx, time.Millisecond, fleet.Snapshot{Model: "m", Replica: "gone", Started: now, At: now}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Millisecond)

	got, err := d.Snapshots(ctx, "m")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Replica != "a" || got[0].Versions["v1"].Requests != 3 {
		t.Fatalf("Snapshots = %+v, want replica a's only", got)
	}
	if n := d.Invalid(); n != 3 {
		t.Errorf("Invalid() = %d, want 3 (garbage, rotten, impostor)", n)
	}
	entries, err := os.ReadDir(folder)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	want := []string{".c.456.tmp", ".hidden", "README", "a.json", "bad name.json", "garbage.json", "impostor.json"}
	if !slices.Equal(names, want) {
		t.Errorf("after a read the folder holds %q, want %q", names, want)
	}

	if _, err := d.Snapshots(ctx, "../m"); !errors.Is(err, fleet.ErrInvalid) {
		t.Errorf("Snapshots(../m) = %v, want ErrInvalid", err)
	}
	if got, err := d.Snapshots(ctx, "never"); err != nil || len(got) != 0 {
		t.Errorf("Snapshots(never) = %+v, %v; want none", got, err)
	}
}

// FuzzDirDecode: whatever another process left in a snapshot file,
// Snapshots neither panics nor fails; what it returns is a snapshot of
// that file's model and replica that Publish accepts and that reads back
// the same.
func FuzzDirDecode(f *testing.F) {
	ctx := context.Background()
	seedDir := f.TempDir()
	d, err := fleet.NewDir(seedDir)
	if err != nil {
		f.Fatal(err)
	}
	now := time.Now()
	vs := map[string]route.Counters{"v1": fleettest.Counters(10, 2, time.Millisecond), "v2": {}}
	if err := d.Publish(ctx, time.Hour, fleet.Snapshot{Model: "m", Replica: "a", Started: now, At: now, Versions: vs}); err != nil {
		f.Fatal(err)
	}
	valid, err := os.ReadFile(filepath.Join(seedDir, "m", "a.json"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(valid)
	f.Add([]byte(`{"expires":9223372036854775807,"snapshot":{"model":"m","replica":"a","versions":{"v1":{"requests":1,"hist":[[3,1]]}}}}`))
	f.Add([]byte(`{"expires":9223372036854775807,"snapshot":{"model":"m","replica":"a","versions":{"v1":{"requests":1,"hist":[[99999,1]]}}}}`))
	f.Add([]byte(`{"expires":9223372036854775807,"snapshot":{"model":"m","replica":"b"}}`))
	f.Add([]byte(`{"expires":9223372036854775807,"snapshot":null}`))
	f.Add([]byte(`{"expires":-1}`))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		dir := t.TempDir()
		d, err := fleet.NewDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Join(dir, "m"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "m", "a.json"), b, 0o644); err != nil {
			t.Fatal(err)
		}
		got, err := d.Snapshots(ctx, "m")
		if err != nil {
			t.Fatalf("Snapshots: %v", err)
		}
		if len(got) == 0 {
			return
		}
		if len(got) != 1 || got[0].Model != "m" || got[0].Replica != "a" {
			t.Fatalf("Snapshots = %+v, want at most replica a's of m", got)
		}
		d2, err := fleet.NewDir(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		if err := d2.Publish(ctx, time.Hour, got[0]); err != nil {
			t.Fatalf("Publish refuses what Snapshots returned: %v", err)
		}
		again, err := d2.Snapshots(ctx, "m")
		if err != nil || len(again) != 1 {
			t.Fatalf("read back: %+v, %v", again, err)
		}
		if a, b := fleet.Sum("m", again, now, time.Hour), fleet.Sum("m", got, now, time.Hour); !sameCounters(a.Versions, b.Versions) {
			t.Fatalf("read back %+v, first read %+v", a.Versions, b.Versions)
		}
	})
}

func sameCounters(a, b map[string]route.Counters) bool {
	if len(a) != len(b) {
		return false
	}
	for v, c := range a {
		d, ok := b[v]
		if !ok || c.Requests != d.Requests || c.Errors != d.Errors || c.NonFinite != d.NonFinite ||
			c.LatencySum != d.LatencySum || c.MinLatency != d.MinLatency || c.MaxLatency != d.MaxLatency ||
			!slices.Equal(c.Hist, d.Hist) {
			return false
		}
	}
	return true
}

// Two server processes on one machine share a folder; either one's
// collector sees both.
func ExampleNewDir() {
	dir, _ := os.MkdirTemp("", "fleet-example-")
	defer os.RemoveAll(dir)
	store, err := fleet.NewDir(dir) // e.g. the registry's folder + "/fleet"
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	now := time.Now()
	for i, replica := range []string{"host-1201", "host-1202"} {
		store.Publish(ctx, 6*time.Second, fleet.Snapshot{Model: "lstm_model", Replica: replica, Started: now, At: now,
			Versions: map[string]route.Counters{"v2": fleettest.Counters(int64(100*(i+1)), int64(i), time.Millisecond)}})
	}
	snaps, _ := store.Snapshots(ctx, "lstm_model")
	f := fleet.Sum("lstm_model", snaps, now, 10*time.Second)
	fmt.Printf("replicas %d, requests %d, errors %d\n", len(f.Replicas), f.Versions["v2"].Requests, f.Versions["v2"].Errors)
	// Output: replicas 2, requests 300, errors 1
}
