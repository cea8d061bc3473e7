package registry_test

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

	"github.com/signalforge/signalforge/registry"
	"github.com/signalforge/signalforge/registry/registrytest"
)

// leaseTTL is the lease the lease children contend for.
const leaseTTL = time.Second

// leaseChild contends for the "autopilot" lease of the folder store in dir
// as holder: it prints "ready", then "leader EPOCH" or "standby EPOCH" on
// each change; when its stdin closes it closes the elector (releasing the
// lease) and exits.
func leaseChild(dir, holder string) int {
	s, err := registry.OpenFileStore(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer s.Close()
	return registrytest.LeaseContender(s, holder, leaseTTL, os.Stdin, os.Stdout, os.Stderr)
}

// leaseLine is a line a lease child printed.
type leaseLine struct {
	p    int
	line string
}

// TestFolderLeaseTakeoverAcrossProcesses: three processes contend for the
// autopilot lease of one registry folder. One leads; the others stand by
// while it lives; SIGKILLed, it is replaced by another once its lease
// expired (the time is logged); that one, closed cleanly, releases the
// lease and the third takes over within a renewal period. Each takeover is
// at the next epoch.
func TestFolderLeaseTakeoverAcrossProcesses(t *testing.T) {
	dir := t.TempDir()
	if s, err := registry.OpenFileStore(dir); err != nil { // created once, before the race
		t.Fatal(err)
	} else {
		s.Close()
	}
	lines := make(chan leaseLine, 32)
	cmds := make([]*exec.Cmd, 3)
	stdins := make([]io.WriteCloser, 3)
	errs := make([]strings.Builder, 3)
	for p := range cmds {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), envChild+"=lease", envDir+"="+dir, envN+"="+fmt.Sprint("p", p))
		cmd.Stderr = &errs[p]
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if stdins[p], err = cmd.StdinPipe(); err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		cmds[p] = cmd
		sc := bufio.NewScanner(stdout)
		if !sc.Scan() || sc.Text() != "ready" {
			t.Fatalf("process %d did not start: %q\n%s", p, sc.Text(), errs[p].String())
		}
		go func() {
			for sc.Scan() {
				lines <- leaseLine{p, sc.Text()}
			}
		}()
	}
	next := func() leaseLine {
		t.Helper()
		select {
		case l := <-lines:
			return l
		case <-time.After(30 * time.Second):
			t.Fatalf("no leadership change\n%s\n%s\n%s", errs[0].String(), errs[1].String(), errs[2].String())
			return leaseLine{}
		}
	}
	first := next()
	if first.line != "leader 1" {
		t.Fatalf("process %d: %q; want the first leader at epoch 1", first.p, first.line)
	}
	select {
	case l := <-lines:
		t.Fatalf("process %d printed %q while process %d led", l.p, l.line, first.p)
	case <-time.After(2 * leaseTTL):
	}

	if err := cmds[first.p].Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	second := next()
	if second.p == first.p || second.line != "leader 2" {
		t.Fatalf("after the leader was killed: process %d printed %q; want another leader at epoch 2", second.p, second.line)
	}
	t.Logf("takeover after SIGKILL of the leader: %v (TTL %v, renewal every %v)", time.Since(killed).Round(time.Millisecond), leaseTTL, (leaseTTL / 3).Round(time.Millisecond))

	closed := time.Now()
	stdins[second.p].Close()
	third := next()
	for ; third.p == second.p; third = next() {
		if third.line != "standby 2" {
			t.Fatalf("process %d printed %q while closing", third.p, third.line)
		}
	}
	if third.p == first.p || third.line != "leader 3" {
		t.Fatalf("after the leader closed: process %d printed %q; want the third process leader at epoch 3", third.p, third.line)
	}
	t.Logf("handover after a clean shutdown of the leader: %v", time.Since(closed).Round(time.Millisecond))
	if err := cmds[second.p].Wait(); err != nil {
		t.Fatalf("process %d: %v\n%s", second.p, err, errs[second.p].String())
	}
	s, err := registry.OpenFileStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if l, err := s.ReadLease(context.Background(), "autopilot"); err != nil || l.Held || l.Holder != fmt.Sprint("p", third.p) || l.Epoch != 3 {
		t.Fatalf("the lease = %+v, %v; want held by p%d at epoch 3", l, err, third.p)
	}
}
