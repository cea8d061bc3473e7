package pgstore_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/signalforge/signalforge/internal/testpg"
	"github.com/signalforge/signalforge/registry"
	"github.com/signalforge/signalforge/registry/pgstore"
	"github.com/signalforge/signalforge/registry/registrytest"
)

// The lease child is selected by envChild=lease; it contends as
// envHolder with a lease of envTTL.
const (
	envHolder = "PGSTORE_TEST_HOLDER"
	envTTL    = "PGSTORE_TEST_TTL"
)

// leaseChildMain contends for the "autopilot" lease on envURL as envHolder:
// it prints "ready", then "leader EPOCH" or "standby EPOCH" on each change,
// and when its stdin closes it closes the elector (releasing the lease)
// and exits.
func leaseChildMain() int {
	ttl, err := time.ParseDuration(os.Getenv(envTTL))
	if err != nil {
		fmt.Fprintf(os.Stderr, "lease child: %s: %v\n", envTTL, err)
		return 2
	}
	dir, err := os.MkdirTemp("", "pgstore-lease-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	s, err := pgstore.Open(context.Background(), pgstore.Config{URL: os.Getenv(envURL), CacheDir: dir})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer s.Close()
	return registrytest.LeaseContender(s, os.Getenv(envHolder), ttl, os.Stdin, os.Stdout, os.Stderr)
}

// contender is a lease child process.
type contender struct {
	holder string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string // its stdout, line by line; closed at EOF
	stderr strings.Builder
}

func startContender(t *testing.T, url, holder string, ttl time.Duration) *contender {
	t.Helper()
	c := &contender{holder: holder, lines: make(chan string, 16)}
	c.cmd = exec.Command(os.Args[0], "-test.run=^$")
	c.cmd.Env = append(os.Environ(), envChild+"=lease", envURL+"="+url, envHolder+"="+holder, envTTL+"="+ttl.String())
	c.cmd.Stderr = &c.stderr
	stdout, err := c.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if c.stdin, err = c.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.cmd.Process.Kill(); c.cmd.Wait() })
	go func() {
		defer close(c.lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
	}()
	if line := c.next(t); line != "ready" {
		t.Fatalf("%s did not start: %q\n%s", holder, line, c.stderr.String())
	}
	return c
}

// next returns the contender's next line ("" at EOF), failing if none
// comes (the bound only keeps a broken child from hanging the test).
func (c *contender) next(t *testing.T) string {
	t.Helper()
	select {
	case l := <-c.lines:
		return l
	case <-time.After(30 * time.Second):
		t.Fatalf("%s printed nothing\n%s", c.holder, c.stderr.String())
		return ""
	}
}

// TestLeaseTakeoverAcrossProcesses: three processes contend for the
// autopilot lease on PostgreSQL. One leads; the others stay on stand-by
// while it lives. SIGKILLed, it cannot release: the lease expires and
// another process takes over (the takeover time, from the kill, is
// logged: it is at most the lease's TTL plus one query). The new leader,
// closed cleanly, releases the lease and the third takes over at once.
// Each takeover is at the next epoch.
func TestLeaseTakeoverAcrossProcesses(t *testing.T) {
	url := testpg.NewDatabase(t)
	const ttl = 1500 * time.Millisecond
	cs := []*contender{startContender(t, url, "p0", ttl), startContender(t, url, "p1", ttl), startContender(t, url, "p2", ttl)}

	// The first leader.
	type change struct {
		c    *contender
		line string
	}
	changes := make(chan change, 16)
	watch := func(c *contender) {
		go func() {
			for l := range c.lines {
				changes <- change{c, l}
			}
		}()
	}
	for _, c := range cs {
		watch(c)
	}
	nextChange := func() change {
		t.Helper()
		select {
		case ch := <-changes:
			return ch
		case <-time.After(30 * time.Second):
			t.Fatal("no leadership change")
			return change{}
		}
	}
	first := nextChange()
	if first.line != "leader 1" {
		t.Fatalf("%s: %q; want the first leader at epoch 1", first.c.holder, first.line)
	}
	// While it lives nobody else leads: the others keep trying (every
	// TTL/3) for two lease lifetimes.
	select {
	case ch := <-changes:
		t.Fatalf("%s printed %q while %s led", ch.c.holder, ch.line, first.c.holder)
	case <-time.After(2 * ttl):
	}

	if err := first.c.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	second := nextChange()
	takeover := time.Since(killed)
	if second.c == first.c || second.line != "leader 2" {
		t.Fatalf("after the leader was killed: %s printed %q; want another process leader at epoch 2", second.c.holder, second.line)
	}
	t.Logf("takeover after SIGKILL of the leader: %v (TTL %v, renewal every %v)", takeover.Round(time.Millisecond), ttl, ttl/3)

	// A clean shutdown releases the lease: the third process takes over
	// without waiting for it to expire.
	closed := time.Now()
	second.c.stdin.Close()
	var third change
	for third = nextChange(); third.c == second.c; third = nextChange() {
		if third.line != "standby 2" && third.line != "" {
			t.Fatalf("%s printed %q while closing", third.c.holder, third.line)
		}
	}
	handover := time.Since(closed)
	if third.c == first.c || third.line != "leader 3" {
		t.Fatalf("after the leader closed: %s printed %q; want the third process leader at epoch 3", third.c.holder, third.line)
	}
	if err := second.c.cmd.Wait(); err != nil {
		t.Fatalf("%s: %v\n%s", second.c.holder, err, second.c.stderr.String())
	}
	t.Logf("handover after a clean shutdown of the leader: %v", handover.Round(time.Millisecond))

	// The store agrees: the third process holds the lease at epoch 3.
	l, err := open(t, url).ReadLease(context.Background(), "autopilot")
	if err != nil || l.Held || l.Holder != third.c.holder || l.Epoch != 3 {
		t.Fatalf("the lease = %+v, %v; want held by %s at epoch 3", l, err, third.c.holder)
	}
}

// TestElectorReleaseWakesStandby: with a renewal period far longer than
// the test waits, a stand-by Elector can only take over a released lease
// because the release's notification woke it.
func TestElectorReleaseWakesStandby(t *testing.T) {
	url := testpg.NewDatabase(t)
	cfg := registry.ElectorConfig{Leaser: open(t, url), Holder: "A", TTL: 3 * time.Minute, Renew: time.Minute}
	led := make(chan registry.Leadership, 4)
	cfg.OnChange = func(l registry.Leadership) { led <- l }
	a, err := registry.NewElector(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if l := <-led; !l.Leader {
		t.Fatalf("A: %+v; want leader", l)
	}
	cfg.Leaser, cfg.Holder = open(t, url), "B"
	bLed := make(chan registry.Leadership, 4)
	cfg.OnChange = func(l registry.Leadership) { bLed <- l }
	b, err := registry.NewElector(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	// B tries once, and again when its store's listener connects (a
	// Notifier wakes its callers then); after that it waits for Renew or a
	// notification.
	for b.Stats().Attempts < 2 {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	if st := b.Stats(); st.Attempts != 2 || st.Leader {
		t.Fatalf("B before the release: %+v; want 2 attempts, not leader", st)
	}
	a.Close()
	select {
	case l := <-bLed:
		if !l.Leader || l.Epoch != 2 {
			t.Fatalf("B: %+v; want leader at epoch 2", l)
		}
	case <-time.After(20 * time.Second): // a third of Renew
		t.Fatal("B did not take over the released lease: the release did not wake it")
	}
}

// TestElectorRidesOutDatabaseOutage: while PostgreSQL is down nobody can
// renew, so the leader steps down once its lease ran out (and the stand-by
// does not step up); when the database is back, one of them leads again.
func TestElectorRidesOutDatabaseOutage(t *testing.T) {
	srv := testpg.Start(t)
	url := srv.NewDatabase(t)
	changes := make(chan string, 16)
	elect := func(holder string) *registry.Elector {
		e, err := registry.NewElector(registry.ElectorConfig{Leaser: open(t, url), Holder: holder, TTL: time.Second,
			OnChange: func(l registry.Leadership) { changes <- fmt.Sprintf("%s %v %d", holder, l.Leader, l.Epoch) }})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { e.Close() })
		return e
	}
	next := func() string {
		t.Helper()
		select {
		case c := <-changes:
			return c
		case <-time.After(30 * time.Second):
			t.Fatal("no leadership change")
			return ""
		}
	}
	a := elect("A")
	if c := next(); c != "A true 1" {
		t.Fatalf("first change %q; want A leader at epoch 1", c)
	}
	b := elect("B")
	for b.Stats().Attempts == 0 {
		time.Sleep(10 * time.Millisecond)
	}

	srv.Kill()
	if c := next(); c != "A false 1" {
		t.Fatalf("change during the outage %q; want A stepped down", c)
	}
	if a.IsLeader() || b.IsLeader() {
		t.Fatalf("a leader during the outage: A %+v, B %+v", a.Stats(), b.Stats())
	}
	if st := a.Stats(); st.Errors == 0 || st.LastError == "" {
		t.Fatalf("A's stats during the outage: %+v; want the errors counted", st)
	}
	srv.Restart(t)
	c := next()
	// A renews its own lease at epoch 1 if the database came back before
	// the lease expired by its clock; otherwise the lease is taken anew.
	if c != "A true 1" && c != "A true 2" && c != "B true 2" {
		t.Fatalf("change after the outage %q; want a leader (A at epoch 1 or 2, B at 2)", c)
	}
	if a.IsLeader() == b.IsLeader() {
		t.Fatalf("after the outage: A leader %v, B leader %v; want exactly one", a.IsLeader(), b.IsLeader())
	}
	t.Logf("after the outage: %s", c)
}
