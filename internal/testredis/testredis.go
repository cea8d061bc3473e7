// Package testredis starts a real redis-server for tests, on a free
// loopback port with its own temporary directory, and stops it when the
// test ends.
//
//	srv := testredis.Start(t)
//	client := redis.NewClient(&redis.Options{Addr: srv.Addr})
//
// The binary is $SIGNALFORGE_REDIS_SERVER if set, else redis-server from
// PATH. When it is missing the test fails (not skips) with a message saying
// how to install it: `make test` installs it (scripts/deps.sh test).
//
// Kill and Restart let fault tests take the server away mid-traffic and
// bring it back on the same address (empty: persistence is off).
package testredis

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Server is a running (or killed) redis-server.
type Server struct {
	// Addr is host:port, e.g. "127.0.0.1:41234". It stays the same across
	// Restart.
	Addr string
	// Port is Addr's port.
	Port int

	t       testing.TB
	bin     string
	dir     string
	args    []string
	cluster bool // cluster-enabled, with a bus port of its own
	busPort int

	mu   sync.Mutex // guards cmd and done
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
}

// Start starts a redis-server and registers its shutdown with t.Cleanup.
// Extra arguments are passed on (e.g. "--maxmemory", "10mb").
func Start(t testing.TB, extraArgs ...string) *Server {
	t.Helper()
	return start(t, false, extraArgs)
}

func start(t testing.TB, cluster bool, extraArgs []string) *Server {
	t.Helper()
	bin, err := findBinary(os.Getenv("SIGNALFORGE_REDIS_SERVER"))
	if err != nil {
		t.Fatalf("testredis: %v", err)
	}
	s := &Server{t: t, bin: bin, dir: t.TempDir(), args: extraArgs, cluster: cluster}
	var lastErr error
	// A free port found by listening on :0 can be taken by someone else
	// before redis-server binds it; try a few.
	for range 5 {
		port, err := freePort()
		if err != nil {
			t.Fatalf("testredis: %v", err)
		}
		s.Port = port
		s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		if lastErr = s.start(); lastErr == nil {
			t.Cleanup(s.Kill)
			return s
		}
	}
	t.Fatalf("testredis: %v", lastErr)
	return nil
}

// findBinary returns the redis-server to run: env if set, else the one
// in PATH.
func findBinary(env string) (string, error) {
	const how = "run `make test` (scripts/deps.sh test installs it), or `apt-get install redis-server`"
	if env != "" {
		if _, err := os.Stat(env); err != nil {
			return "", fmt.Errorf("SIGNALFORGE_REDIS_SERVER=%s: %v; unset it or %s", env, err, how)
		}
		return env, nil
	}
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return "", fmt.Errorf("redis-server not found in PATH: %s, "+
			"or set SIGNALFORGE_REDIS_SERVER to its path", how)
	}
	return bin, nil
}

// URL returns "redis://Addr".
func (s *Server) URL() string { return "redis://" + s.Addr }

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (s *Server) start() error {
	logPath := filepath.Join(s.dir, "redis.log")
	args := append([]string{
		"--port", strconv.Itoa(s.Port),
		"--bind", "127.0.0.1",
		"--dir", s.dir,
		"--save", "",
		"--appendonly", "no",
		"--protected-mode", "no",
		"--daemonize", "no",
		"--logfile", logPath,
	}, s.args...)
	if s.cluster {
		// The bus port defaults to port+10000, which may not exist for
		// an ephemeral port; give it a free one of its own.
		bus, err := freePort()
		if err != nil {
			return err
		}
		s.busPort = bus
		args = append(args, "--cluster-enabled", "yes", "--cluster-port", strconv.Itoa(bus),
			"--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000")
	}
	cmd := exec.Command(s.bin, args...)
	cmd.Dir = s.dir
	setDeathSignal(cmd)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", s.bin, err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		close(done)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if ping(s.Addr) == nil {
			break
		}
		select {
		case <-done:
			log, _ := os.ReadFile(logPath)
			return fmt.Errorf("redis-server on %s exited at start-up; its log:\n%s", s.Addr, log)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			<-done
			log, _ := os.ReadFile(logPath)
			return fmt.Errorf("redis-server on %s did not answer PING within 10s; its log:\n%s", s.Addr, log)
		}
	}
	s.mu.Lock()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()
	return nil
}

// ping sends PING in RESP and expects +PONG.
func ping(addr string) error {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := conn.Write([]byte("*1\r\n$4\r\nPING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(line) != "+PONG" {
		return fmt.Errorf("PING answered %q", line)
	}
	return nil
}

// Kill stops the server with SIGKILL (as a crash would) and waits for it
// to exit. Killing a killed server does nothing.
func (s *Server) Kill() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.cmd, s.done = nil, nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Kill()
	<-done
}

// Restart starts the server again on the same address after Kill (or
// kills it first). The data is gone. It fails the test if the server does
// not come back, retrying for a while in case the port is still held.
func (s *Server) Restart() {
	s.t.Helper()
	s.Kill()
	var err error
	for range 50 {
		if err = s.start(); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.t.Fatalf("testredis: restart: %v", err)
}
