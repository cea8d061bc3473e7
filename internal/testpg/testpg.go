// Package testpg gives tests a real PostgreSQL database: never a mock.
//
//	func TestMain(m *testing.M) { testpg.Main(m) }
//
//	func TestX(t *testing.T) {
//		url := testpg.NewDatabase(t) // a fresh, empty database, dropped when t ends
//		…
//	}
//
// If $SIGNALFORGE_TEST_POSTGRES is set (a URL such as
// postgres://postgres@db:5432/postgres?sslmode=disable, whose user may
// create databases), each test gets a database created in that server.
// Otherwise the first test starts a throwaway cluster of its own, shared by
// every test of the binary: Debian's PostgreSQL binaries
// (/usr/lib/postgresql/*/bin, or initdb and postgres from PATH) on a free
// loopback port, data and socket in a temporary folder, fsync off. When the
// tests run as root, the cluster runs as the `postgres` user (PostgreSQL
// refuses root). It dies with the test process (a parent-death signal), and
// Main stops it and removes its folder when the tests end. A missing
// binary fails the test with how to install it: `make test` does
// (scripts/deps.sh test).
//
// Outage tests take a server of their own with Start, which Kill and
// Restart (same port, same data) without disturbing other tests.
package testpg

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// EnvURL names the variable holding an existing server's URL.
const EnvURL = "SIGNALFORGE_TEST_POSTGRES"

const howToInstall = "run `make test` (scripts/deps.sh test installs it), or `apt-get install postgresql`, " +
	"or set " + EnvURL + " to the URL of a server where the user may create databases"

// shared is the binary's server, started by the first NewDatabase.
var shared struct {
	once    sync.Once
	mainRan bool // set by Main before the tests run
	srv     *Server
	url     string // admin URL: EnvURL or the own server's
	err     error
}

// Main runs the package's tests, then stops the shared server (if one was
// started) and removes its folder. Call it from TestMain.
func Main(m *testing.M) {
	shared.mainRan = true
	code := m.Run()
	if shared.srv != nil {
		shared.srv.stop()
	}
	os.Exit(code)
}

// NewDatabase creates an empty database on the shared server (or in
// $SIGNALFORGE_TEST_POSTGRES) and returns its URL. The database is dropped
// when t ends.
func NewDatabase(t testing.TB) string {
	t.Helper()
	shared.once.Do(func() {
		if u := os.Getenv(EnvURL); u != "" {
			shared.url = u
			return
		}
		if !shared.mainRan {
			shared.err = errors.New("the package must run its tests through testpg.Main: add `func TestMain(m *testing.M) { testpg.Main(m) }`")
			return
		}
		shared.srv, shared.err = start(false)
		if shared.err == nil {
			shared.url = shared.srv.AdminURL()
		}
	})
	if shared.err != nil {
		t.Fatalf("testpg: %v", shared.err)
	}
	return createDatabase(t, shared.url)
}

// Server is a PostgreSQL cluster of the test's own.
type Server struct {
	// Port is the loopback TCP port; it stays the same across Restart.
	Port int

	bin     string // directory of initdb and postgres
	dir     string // temporary folder: data/, socket, log
	durable bool   // fsync on (PostgreSQL's defaults)
	runAs   *syscall.Credential
	logPath string

	mu   sync.Mutex // guards cmd and done
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
}

// Start starts a cluster for t alone (for tests that Kill and Restart it)
// and stops it when t ends. It ignores $SIGNALFORGE_TEST_POSTGRES.
func Start(t testing.TB) *Server {
	t.Helper()
	return startFor(t, false)
}

// StartDurable is Start with PostgreSQL's durable defaults (fsync on),
// for benchmarks that compare with stores that fsync. Its folder is in
// $TMPDIR, like every test's.
func StartDurable(t testing.TB) *Server {
	t.Helper()
	return startFor(t, true)
}

func startFor(t testing.TB, durable bool) *Server {
	t.Helper()
	s, err := start(durable)
	if err != nil {
		t.Fatalf("testpg: %v", err)
	}
	t.Cleanup(s.stop)
	return s
}

// AdminURL is the URL of the server's `postgres` database as the
// superuser.
func (s *Server) AdminURL() string { return s.URL("postgres") }

// URL is the URL of database db on the server.
func (s *Server) URL(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", s.Port, db)
}

// Addr is the server's host:port.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port)) }

// NewDatabase creates an empty database on s and returns its URL; it is
// dropped when t ends (if s is up then).
func (s *Server) NewDatabase(t testing.TB) string {
	t.Helper()
	return createDatabase(t, s.AdminURL())
}

func start(durable bool) (*Server, error) {
	bin, err := findBinaries()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "signalforge-testpg-")
	if err != nil {
		return nil, err
	}
	s := &Server{bin: bin, dir: dir, durable: durable, logPath: filepath.Join(dir, "postgres.log")}
	if err := s.initdb(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	// A free port found by listening on :0 can be taken by someone else
	// before postgres binds it; try a few.
	for range 5 {
		if s.Port, err = freePort(); err != nil {
			break
		}
		if err = s.start(); err == nil {
			return s, nil
		}
	}
	os.RemoveAll(dir)
	return nil, err
}

// findBinaries returns the directory holding initdb and postgres: the
// newest /usr/lib/postgresql/<major>/bin, else initdb's directory in PATH.
func findBinaries() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int {
		na, _ := strconv.Atoi(filepath.Base(filepath.Dir(a)))
		nb, _ := strconv.Atoi(filepath.Base(filepath.Dir(b)))
		return nb - na
	})
	for _, d := range dirs {
		if isExec(filepath.Join(d, "initdb")) && isExec(filepath.Join(d, "postgres")) {
			return d, nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil && isExec(filepath.Join(filepath.Dir(p), "postgres")) {
		return filepath.Dir(p), nil
	}
	return "", fmt.Errorf("PostgreSQL server binaries (initdb, postgres) not found in /usr/lib/postgresql/*/bin or PATH: %s", howToInstall)
}

func isExec(p string) bool {
	info, err := os.Stat(p)
	return err == nil && !info.IsDir() && info.Mode()&0o111 != 0
}

// initdb creates the cluster in s.dir/data, owned by the user postgres
// will run as.
func (s *Server) initdb() error {
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return fmt.Errorf("running as root, PostgreSQL must run as the `postgres` user, which does not exist (%v): %s", err, howToInstall)
		}
		uid, _ := strconv.ParseUint(u.Uid, 10, 32)
		gid, _ := strconv.ParseUint(u.Gid, 10, 32)
		s.runAs = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(s.dir, int(uid), int(gid)); err != nil {
			return err
		}
	}
	out, err := s.command("initdb", "-D", filepath.Join(s.dir, "data"), "-U", "postgres",
		"--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions").CombinedOutput()
	if err != nil {
		return fmt.Errorf("initdb: %v\n%s", err, out)
	}
	return nil
}

// command prepares a PostgreSQL binary to run as s.runAs, killed if the
// test process dies, in a process group of its own (so that Kill reaches
// every backend at once).
func (s *Server) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(s.bin, name), args...)
	cmd.Dir = s.dir
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	cmd.SysProcAttr = sysProcAttr(s.runAs)
	return cmd
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// start runs postgres on s.Port and waits until it accepts connections.
func (s *Server) start() error {
	logf, err := os.OpenFile(s.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	args := []string{"-D", filepath.Join(s.dir, "data"),
		"-p", strconv.Itoa(s.Port), "-k", s.dir,
		"-c", "listen_addresses=127.0.0.1",
		"-c", "max_connections=300", "-c", "shared_buffers=32MB",
		"-c", "log_min_messages=warning"}
	if !s.durable {
		// Still safe against SIGKILL (the kernel keeps what was
		// written), not against power loss.
		args = append(args, "-c", "fsync=off", "-c", "full_page_writes=off")
	}
	cmd := s.command("postgres", args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		close(done)
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if ping(s.AdminURL()) == nil {
			break
		}
		select {
		case <-done:
			log, _ := os.ReadFile(s.logPath)
			return fmt.Errorf("postgres on port %d exited at start-up; its log:\n%s", s.Port, log)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			killGroup(cmd)
			<-done
			log, _ := os.ReadFile(s.logPath)
			return fmt.Errorf("postgres on port %d did not accept connections within 30s; its log:\n%s", s.Port, log)
		}
	}
	s.mu.Lock()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()
	return nil
}

func ping(u string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, u)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	return conn.Ping(ctx)
}

func killGroup(cmd *exec.Cmd) {
	// The postmaster leads its own process group: kill every backend with it.
	if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); err != nil {
		cmd.Process.Kill()
	}
}

// Kill stops the server with SIGKILL (as a crash or a lost machine would)
// and waits for it to exit. Killing a killed server does nothing.
func (s *Server) Kill() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.cmd, s.done = nil, nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	killGroup(cmd)
	<-done
}

// Restart starts the server again on the same port and data after Kill
// (or kills it first); PostgreSQL recovers what was committed. It fails
// the test if the server does not come back.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Kill()
	var err error
	for range 50 {
		if err = s.start(); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("testpg: restart: %v", err)
}

func (s *Server) stop() {
	s.Kill()
	os.RemoveAll(s.dir)
}

// createDatabase creates t_<random> on the server at admin and drops it
// when t ends.
func createDatabase(t testing.TB, admin string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		t.Fatalf("testpg: connect to %s: %v", redact(admin), err)
	}
	defer conn.Close(ctx)
	var b [6]byte
	rand.Read(b[:])
	name := "t_" + hex.EncodeToString(b[:])
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("testpg: create database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, admin)
		if err != nil {
			return // the server is gone (a test killed it): nothing to drop
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("testpg: drop database %s: %v", name, err)
		}
	})
	u, err := url.Parse(admin)
	if err != nil {
		t.Fatalf("testpg: %s: %v", EnvURL, err)
	}
	u.Path = "/" + name
	return u.String()
}

// redact hides a URL's password.
func redact(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return "(unparsable URL)"
	}
	return p.Redacted()
}

// String describes the server for logs.
func (s *Server) String() string {
	return "postgres on " + s.Addr() + " in " + strings.TrimSuffix(s.dir, "/")
}
