package testredis

import (
	"fmt"
	"strings"
	"testing"
)

func TestStartKillRestart(t *testing.T) {
	s := Start(t)
	if err := ping(s.Addr); err != nil {
		t.Fatalf("fresh server: %v", err)
	}
	addr := s.Addr
	s.Kill()
	if err := ping(s.Addr); err == nil {
		t.Fatal("killed server still answers PING")
	}
	s.Kill() // idempotent
	s.Restart()
	if s.Addr != addr {
		t.Fatalf("Restart moved the server from %s to %s", addr, s.Addr)
	}
	if err := ping(s.Addr); err != nil {
		t.Fatalf("restarted server: %v", err)
	}
}

func TestTwoServersAreIndependent(t *testing.T) {
	a, b := Start(t), Start(t)
	if a.Addr == b.Addr {
		t.Fatalf("two servers share %s", a.Addr)
	}
	a.Kill()
	if err := ping(b.Addr); err != nil {
		t.Fatalf("killing one server affected the other: %v", err)
	}
}

func TestMissingBinaryFailsLoudly(t *testing.T) {
	t.Setenv("SIGNALFORGE_REDIS_SERVER", "/nonexistent/redis-server")
	ft := &fatalRecorder{TB: t}
	func() {
		defer func() { recover() }()
		Start(ft)
	}()
	if !strings.Contains(ft.msg, "make test") || !strings.Contains(ft.msg, "/nonexistent/redis-server") {
		t.Fatalf("Start with a missing binary: failure message %q does not say what is missing and how to install it", ft.msg)
	}
	t.Logf("failure message: %s", ft.msg)
}

// fatalRecorder records Fatalf instead of stopping the real test.
type fatalRecorder struct {
	testing.TB
	msg string
}

func (f *fatalRecorder) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	panic("fatal")
}

func (f *fatalRecorder) Helper() {}

func TestMissingFromPathFailsLoudly(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	_, err := findBinary("")
	if err == nil || !strings.Contains(err.Error(), "redis-server not found") || !strings.Contains(err.Error(), "make test") {
		t.Fatalf("findBinary with redis-server absent from PATH = %v", err)
	}
}

func TestCluster(t *testing.T) {
	c := StartCluster(t, 3)
	if len(c.Addrs) != 3 {
		t.Fatalf("%d addresses", len(c.Addrs))
	}
	for _, a := range c.Addrs {
		info, err := do(a, "CLUSTER", "INFO")
		if err != nil || !strings.Contains(info, "cluster_slots_assigned:16384") {
			t.Fatalf("%s: CLUSTER INFO = %q, %v", a, info, err)
		}
	}
	// A key lands on exactly one master; the others redirect.
	var owners, moved int
	for _, a := range c.Addrs {
		_, err := do(a, "SET", "somekey", "v")
		switch {
		case err == nil:
			owners++
		case strings.Contains(err.Error(), "MOVED"):
			moved++
		default:
			t.Fatalf("SET on %s: %v", a, err)
		}
	}
	if owners != 1 || moved != 2 {
		t.Fatalf("somekey accepted by %d masters, redirected by %d", owners, moved)
	}
}
