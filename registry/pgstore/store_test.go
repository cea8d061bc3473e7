package pgstore_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"os"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/signalforge/signalforge/internal/testpg"
	"github.com/signalforge/signalforge/onnx/onnxtest"
	"github.com/signalforge/signalforge/registry"
	"github.com/signalforge/signalforge/registry/pgstore"
)

var feats = []string{"rsi_14", "macd"}

func onnxModel(t testing.TB, seed uint64) []byte {
	t.Helper()
	m, err := onnxtest.NewMLP(onnxtest.MLPConfig{Sizes: []int{len(feats), 2}, Seed: seed, Features: feats})
	if err != nil {
		t.Fatal(err)
	}
	b, err := m.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func openReg(t testing.TB, s registry.Store) *registry.Registry {
	t.Helper()
	r, err := registry.Open(context.Background(), registry.Config{Store: s, PollInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func ref(t testing.TB, s string) registry.Ref {
	t.Helper()
	r, err := registry.ParseRef(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// sql runs statements on the database at url directly, as an operator (or
// an attacker) would.
func sql(t *testing.T, url, q string, args ...any) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, q, args...); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

// TestConcurrentTrafficChangesLoseNothing: two stores (two pools, as two
// processes on two machines would have) × 8 goroutines each change the
// traffic of one model at once. Every change must be committed once, each
// on top of the previous one: every event's split-before is the split-after
// of the event before it, Seqs are gap-free, and replaying the log gives
// the stored state.
func TestConcurrentTrafficChangesLoseNothing(t *testing.T) {
	ctx := context.Background()
	url := testpg.NewDatabase(t)
	regs := []*registry.Registry{openReg(t, open(t, url)), openReg(t, open(t, url))}
	const perStore, each = 8, 6
	art := onnxModel(t, 1)
	if _, err := regs[0].Register(ctx, registry.RegisterRequest{Name: "m", Version: "v0", ONNX: art, Status: registry.StatusProduction, Traffic: 100}); err != nil {
		t.Fatal(err)
	}
	for g := range 2 * perStore {
		v := fmt.Sprintf("g%d", g)
		if _, err := regs[g%2].Register(ctx, registry.RegisterRequest{Name: "m", Version: v, ONNX: art}); err != nil {
			t.Fatal(err)
		}
		if _, err := regs[g%2].Promote(ctx, ref(t, "m:"+v), 1); err != nil {
			t.Fatal(err)
		}
	}
	setup, _ := regs[0].Seq(ctx)

	var wg sync.WaitGroup
	errs := make(chan error, 2*perStore*each)
	for g := range 2 * perStore {
		wg.Go(func() {
			for i := range each {
				// A value no rescaling produces: every call is a change.
				pct := 1 + float64(g)/2 + float64(i+1)/1000
				_, err := regs[g%2].SetTraffic(ctx, ref(t, fmt.Sprintf("m:g%d", g)), pct)
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}

	versions := make([]string, 2*perStore)
	for g := range versions {
		versions[g] = fmt.Sprintf("g%d", g)
	}
	checkTrafficLog(t, open(t, url), setup, versions, each) // a third process reads the result
}

// checkTrafficLog checks, through s, the registry after each of versions
// (of model "m") had its traffic set each times on top of setup events:
// the Seq counts every change, each version has each set-traffic events,
// Seqs are gap-free, every event starts from the split the event before
// it left, and replaying the log gives the stored state (also through
// registry.Rebuild).
func checkTrafficLog(t *testing.T, s *pgstore.Store, setup uint64, versions []string, each int) {
	t.Helper()
	ctx := context.Background()
	evs, err := s.Events(ctx, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	seq, _ := s.Seq(ctx)
	if want := setup + uint64(len(versions)*each); seq != want || uint64(len(evs)) != want {
		t.Fatalf("Seq %d and %d events after %d set-traffic calls on top of %d events; want %d: updates were lost", seq, len(evs), len(versions)*each, setup, want)
	}
	perVersion := map[string]int{}
	replay := map[string]registry.State{}
	var prev registry.Split
	for i, e := range evs {
		if e.Seq != uint64(i+1) {
			t.Fatalf("event %d has Seq %d", i, e.Seq)
		}
		if i > 0 && !maps.Equal(e.SplitBefore, prev) {
			t.Fatalf("event %d (%s %s) starts from split %v, but the event before left %v: a change was made on a stale state", e.Seq, e.Action, e.Version, e.SplitBefore, prev)
		}
		prev = e.SplitAfter
		if e.Action == registry.ActionSetTraffic {
			perVersion[e.Version]++
		}
		for _, c := range e.Changes {
			replay[c.Version] = c.After
		}
	}
	for _, v := range versions {
		if n := perVersion[v]; n != each {
			t.Errorf("%s has %d set-traffic events; want %d", v, n, each)
		}
	}
	m, err := s.Model(ctx, "m")
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(m.Split(), prev) {
		t.Fatalf("stored split %v; the last event left %v", m.Split(), prev)
	}
	for _, v := range m.Versions {
		if got := replay[v.Version]; got != (registry.State{Status: v.Status, Traffic: v.Traffic}) {
			t.Fatalf("%s is %s %v%%; replaying the audit log gives %+v", v.Version, v.Status, v.Traffic, got)
		}
	}
	rb, err := registry.Rebuild(ctx, evs, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(rb.Problems) != 0 || len(rb.Models) != 1 || jsonOf(rb.Models[0]) != jsonOf(m) {
		t.Fatalf("registry.Rebuild replays the log to %s (problems %v); stored: %s", jsonOf(rb.Models), rb.Problems, jsonOf(m))
	}
}

// patterned yields n deterministic pseudo-random bytes.
type patterned struct {
	rng *rand.ChaCha8
	n   int64
}

func (p *patterned) Read(b []byte) (int, error) {
	if p.n == 0 {
		return 0, io.EOF
	}
	b = b[:min(int64(len(b)), p.n)]
	p.rng.Read(b)
	p.n -= int64(len(b))
	return len(b), nil
}

func newPatterned(seed byte, n int64) *patterned {
	return &patterned{rng: rand.NewChaCha8([32]byte{seed}), n: n}
}

func hashOf(t *testing.T, r io.Reader) (string, int64) {
	t.Helper()
	h := sha256.New()
	n, err := io.Copy(h, r)
	if err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil)), n
}

func largeObject(t *testing.T, url, sha string) uint32 {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var oid uint32
	if err := conn.QueryRow(ctx, "SELECT oid FROM artifacts WHERE sha256 = $1", sha).Scan(&oid); err != nil {
		t.Fatal(err)
	}
	return oid
}

// TestStreamedArtifact stores an artifact of several chunks from a reader
// and reads it back every way: streamed, whole and as a cached file.
func TestStreamedArtifact(t *testing.T) {
	ctx := context.Background()
	url := testpg.NewDatabase(t)
	s := open(t, url)
	const size = 5<<20 + 12345 // 5 chunks and a bit
	want, _ := hashOf(t, newPatterned(7, size))
	a, err := s.PutArtifactFrom(ctx, newPatterned(7, size))
	if err != nil || a.SHA256 != want || a.Size != size {
		t.Fatalf("PutArtifactFrom = %+v, %v; want sha256 %s, %d bytes", a, err, want, size)
	}
	again, err := s.PutArtifactFrom(ctx, newPatterned(7, size))
	if err != nil || again != a {
		t.Fatalf("second PutArtifactFrom = %+v, %v", again, err)
	}
	var objects int
	conn, _ := pgx.Connect(ctx, url)
	conn.QueryRow(ctx, "SELECT count(*) FROM pg_largeobject_metadata").Scan(&objects)
	conn.Close(ctx)
	if objects != 1 {
		t.Fatalf("%d large objects after storing the same bytes twice; want 1", objects)
	}

	rc, n, err := s.OpenArtifact(ctx, want)
	if err != nil || n != size {
		t.Fatalf("OpenArtifact = %d, %v", n, err)
	}
	if got, read := hashOf(t, rc); got != want || read != size {
		t.Fatalf("streamed %d bytes hashing to %s", read, got)
	}
	rc.Close()
	rc.Close()

	data, err := s.ReadArtifact(ctx, want)
	if err != nil || int64(len(data)) != size {
		t.Fatalf("ReadArtifact: %d bytes, %v", len(data), err)
	}
	if got, _ := hashOf(t, bytes.NewReader(data)); got != want {
		t.Fatal("ReadArtifact returned other bytes")
	}
	path, err := s.ArtifactPath(ctx, want)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if got, _ := hashOf(t, f); got != want {
		t.Fatalf("cached file %s holds other bytes", path)
	}
	if _, _, err := s.OpenArtifact(ctx, strings.Repeat("0", 64)); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("OpenArtifact(unknown) = %v; want ErrNotFound", err)
	}
}

// TestTamperedArtifactIsRefused changes stored bytes behind the store's
// back: every read must notice, and nothing lands in the cache.
func TestTamperedArtifactIsRefused(t *testing.T) {
	ctx := context.Background()
	data := bytes.Repeat([]byte("model bytes "), 300_000) // 3.6 MB: several chunks
	cases := []struct {
		name   string
		tamper string // SQL on the large object $1
	}{
		{"byte flipped", `SELECT lo_put($1, 2000000, '\x00')`},
		{"bytes appended", `SELECT lo_put($1, 3600000, '\x0a0a')`},
		{"object emptied", `UPDATE pg_largeobject SET data = '' WHERE loid = $1`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			url := testpg.NewDatabase(t)
			cache := t.TempDir()
			s := openCache(t, url, cache)
			a, err := s.PutArtifact(ctx, data)
			if err != nil {
				t.Fatal(err)
			}
			sql(t, url, c.tamper, largeObject(t, url, a.SHA256))
			if _, err := s.ReadArtifact(ctx, a.SHA256); !errors.Is(err, registry.ErrInvalidArtifact) {
				t.Fatalf("ReadArtifact of a tampered artifact = %v; want ErrInvalidArtifact", err)
			}
			rc, _, err := s.OpenArtifact(ctx, a.SHA256)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.Copy(io.Discard, rc); !errors.Is(err, registry.ErrInvalidArtifact) {
				t.Fatalf("streaming a tampered artifact to the end = %v; want ErrInvalidArtifact", err)
			}
			rc.Close()
			if p, err := s.ArtifactPath(ctx, a.SHA256); !errors.Is(err, registry.ErrInvalidArtifact) {
				t.Fatalf("ArtifactPath of a tampered artifact = %q, %v; want ErrInvalidArtifact", p, err)
			}
			if left, _ := os.ReadDir(cache); len(left) != 0 {
				t.Fatalf("a failed download left %v in the cache", left)
			}
		})
	}
}

// TestDamagedCacheIsDownloadedAgain: a cached file that was truncated or
// changed on disk is not handed out; it is downloaded again.
func TestDamagedCacheIsDownloadedAgain(t *testing.T) {
	ctx := context.Background()
	url := testpg.NewDatabase(t)
	cache := t.TempDir()
	data := bytes.Repeat([]byte("weights "), 200_000)
	s := openCache(t, url, cache)
	a, err := s.PutArtifact(ctx, data)
	if err != nil {
		t.Fatal(err)
	}
	path, err := s.ArtifactPath(ctx, a.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	check := func(s *pgstore.Store, what string) {
		t.Helper()
		p, err := s.ArtifactPath(ctx, a.SHA256)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := os.ReadFile(p); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("after the cache file was %s, ArtifactPath hands out %s holding %d other bytes (%v)", what, p, len(got), err)
		}
	}
	// Truncated: the same process notices by size.
	if err := os.Truncate(path, 1000); err != nil {
		t.Fatal(err)
	}
	check(s, "truncated")
	// One byte changed, same size: a new process hashes the file before
	// handing it out.
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte{'X'}, 12345)
	f.Close()
	check(openCache(t, url, cache), "changed in place")
}

// TestOpenRefusesNewerSchema: a database migrated by a newer signalforge
// is refused with a message saying what to do.
func TestOpenRefusesNewerSchema(t *testing.T) {
	ctx := context.Background()
	url := testpg.NewDatabase(t)
	open(t, url).Close()
	sql(t, url, "INSERT INTO schema_migrations (version, name) VALUES ($1, 'from_the_future.sql')", pgstore.SchemaVersion()+1)
	_, err := pgstore.Open(ctx, pgstore.Config{URL: url, CacheDir: t.TempDir()})
	var se *pgstore.SchemaError
	if !errors.As(err, &se) || se.Database != pgstore.SchemaVersion()+1 || se.Known != pgstore.SchemaVersion() {
		t.Fatalf("Open on a newer schema = %v; want a *SchemaError", err)
	}
	want := fmt.Sprintf("database schema is version %d; this signalforge knows up to %d: upgrade signalforge", pgstore.SchemaVersion()+1, pgstore.SchemaVersion())
	if !strings.Contains(err.Error(), want) {
		t.Fatalf("error %q does not say %q", err, want)
	}
}

// TestConcurrentOpensMigrateOnce: replicas starting together on an empty
// database all start, and each migration is applied once.
func TestConcurrentOpensMigrateOnce(t *testing.T) {
	ctx := context.Background()
	url := testpg.NewDatabase(t)
	const n = 4
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			s, err := pgstore.Open(ctx, pgstore.Config{URL: url, CacheDir: t.TempDir()})
			if err == nil {
				s.Close()
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("concurrent Open: %v", err)
		}
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var rows, distinct int
	if err := conn.QueryRow(ctx, "SELECT count(*), count(DISTINCT version) FROM schema_migrations").Scan(&rows, &distinct); err != nil {
		t.Fatal(err)
	}
	if rows != pgstore.SchemaVersion() || distinct != rows {
		t.Fatalf("schema_migrations has %d rows (%d versions); want each of %d once", rows, distinct, pgstore.SchemaVersion())
	}
}

// TestImport copies a registry's content keeping Seqs, and refuses to
// import over content.
func TestImport(t *testing.T) {
	ctx := context.Background()
	src := registry.NewMemStore()
	defer src.Close()
	reg := openReg(t, src)
	for i, st := range []registry.Status{registry.StatusProduction, registry.StatusStaging} {
		req := registry.RegisterRequest{Name: "m", ONNX: onnxModel(t, uint64(i)), Status: st}
		if st == registry.StatusProduction {
			req.Traffic = 100
		}
		if _, err := reg.Register(ctx, req); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := reg.Promote(ctx, ref(t, "m:v2"), 30); err != nil {
		t.Fatal(err)
	}
	models, _ := src.Models(ctx)
	events, _ := src.Events(ctx, "", 0)

	url := testpg.NewDatabase(t)
	s := open(t, url)
	if err := s.Import(ctx, models, events); err != nil {
		t.Fatal(err)
	}
	gotModels, _ := s.Models(ctx)
	gotEvents, _ := s.Events(ctx, "", 0)
	if seq, _ := s.Seq(ctx); seq != uint64(len(events)) {
		t.Fatalf("Seq after import = %d; want %d", seq, len(events))
	}
	if jsonOf(gotModels) != jsonOf(models) || jsonOf(gotEvents) != jsonOf(events) {
		t.Fatalf("imported\n%s\n%s\nread back\n%s\n%s", jsonOf(models), jsonOf(events), jsonOf(gotModels), jsonOf(gotEvents))
	}
	if err := s.Import(ctx, models, events); !errors.Is(err, pgstore.ErrConflict) {
		t.Fatalf("second Import = %v; want ErrConflict", err)
	}
	// The registry goes on from the imported Seq.
	if _, err := openReg(t, s).SetTraffic(ctx, ref(t, "m:v2"), 50); err != nil {
		t.Fatal(err)
	}
	if evs, _ := s.Events(ctx, "", uint64(len(events))); len(evs) != 1 || evs[0].Seq != uint64(len(events))+1 {
		t.Fatalf("events after the import: %+v", evs)
	}
	bad := append([]registry.Event(nil), events...)
	bad[1].Seq = bad[0].Seq
	if err := open(t, testpg.NewDatabase(t)).Import(ctx, models, bad); err == nil {
		t.Fatal("Import accepted events with a repeated Seq")
	}
}

func jsonOf(v any) string {
	b, err := json.MarshalIndent(v, "", " ")
	if err != nil {
		return err.Error()
	}
	return string(b)
}

// TestOutage: with the database down, a cached artifact is still handed
// out (servers keep loading what they have), writes fail with an error that
// names the host and never the password, and when the database is back the
// same store works again.
func TestOutage(t *testing.T) {
	ctx := context.Background()
	srv := testpg.Start(t)
	srv.NewDatabase(t)
	db := srv.NewDatabase(t)
	dbName := db[strings.LastIndex(db, "/")+1 : strings.Index(db, "?")]
	const password = "hunter2-s3cret"
	url := fmt.Sprintf("postgres://postgres:%s@%s/%s?sslmode=disable", password, srv.Addr(), dbName)
	s := open(t, url)
	reg := openReg(t, s)
	v, err := reg.Register(ctx, registry.RegisterRequest{Name: "m", ONNX: onnxModel(t, 1), Status: registry.StatusProduction, Traffic: 100})
	if err != nil {
		t.Fatal(err)
	}
	path, err := s.ArtifactPath(ctx, v.Artifact.SHA256)
	if err != nil {
		t.Fatal(err)
	}

	srv.Kill()
	if p, err := s.ArtifactPath(ctx, v.Artifact.SHA256); err != nil || p != path {
		t.Fatalf("ArtifactPath with the database down = %q, %v; want the cached %s", p, err, path)
	}
	_, err = reg.Register(ctx, registry.RegisterRequest{Name: "m", ONNX: onnxModel(t, 2)})
	var dbe *pgstore.DBError
	if !errors.As(err, &dbe) || !strings.Contains(err.Error(), srv.Addr()) || strings.Contains(err.Error(), password) {
		t.Fatalf("Register with the database down = %v; want a *pgstore.DBError naming %s, without the password", err, srv.Addr())
	}
	_, err = pgstore.Open(ctx, pgstore.Config{URL: url, CacheDir: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), srv.Addr()) || strings.Contains(err.Error(), password) {
		t.Fatalf("Open with the database down = %v; want an error naming %s, without the password", err, srv.Addr())
	}

	srv.Restart(t)
	if _, err := reg.Register(ctx, registry.RegisterRequest{Name: "m", ONNX: onnxModel(t, 2)}); err != nil {
		t.Fatalf("Register after the database came back: %v", err)
	}
	if seq, err := s.Seq(ctx); err != nil || seq != 2 {
		t.Fatalf("Seq after the outage = %d, %v; want 2", seq, err)
	}
}

// TestURLErrorsHidePassword: a URL pgx cannot parse is reported without
// its password.
func TestURLErrorsHidePassword(t *testing.T) {
	for _, url := range []string{
		"postgres://u:hunter2-s3cret@127.0.0.1:notaport/db",
		"host=127.0.0.1 password=hunter2-s3cret port=notaport",
	} {
		_, err := pgstore.Open(context.Background(), pgstore.Config{URL: url, CacheDir: t.TempDir()})
		if err == nil || strings.Contains(err.Error(), "hunter2") {
			t.Errorf("Open(%s) = %v; want an error without the password", url, err)
		}
	}
}

// TestSerializationFailuresAreRetried runs concurrent writers with every
// transaction SERIALIZABLE (a setting a DBA may impose through the URL or
// the role): PostgreSQL then aborts writers that raced for the Seq row with
// SQLSTATE 40001. Each Update must either commit once (retried as needed)
// or fail with ErrConflict, never with a raw database error, and never
// commit twice.
func TestSerializationFailuresAreRetried(t *testing.T) {
	ctx := context.Background()
	url := testpg.NewDatabase(t) + "&default_transaction_isolation=serializable"
	stores := []*pgstore.Store{open(t, url), open(t, url)}
	const writers, each = 8, 5
	var wg sync.WaitGroup
	var mu sync.Mutex
	committed, conflicts := 0, 0
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				name := fmt.Sprintf("m%d", w)
				err := stores[w%2].Update(ctx, name, func(m *registry.Model) ([]registry.Event, error) {
					v := fmt.Sprintf("v%d", i)
					m.Versions = append(m.Versions, registry.Version{Name: name, Version: v, Status: registry.StatusStaging,
						Artifact: registry.Artifact{SHA256: strings.Repeat("a", 64), Size: 1}})
					return []registry.Event{{Name: name, Version: v, Action: registry.ActionRegister}}, nil
				})
				mu.Lock()
				switch {
				case err == nil:
					committed++
				case errors.Is(err, pgstore.ErrConflict):
					conflicts++
				default:
					t.Errorf("Update under SERIALIZABLE = %v; want success or ErrConflict", err)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	t.Logf("%d committed, %d gave up with ErrConflict", committed, conflicts)
	evs, err := stores[0].Events(ctx, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	versions := 0
	ms, _ := stores[1].Models(ctx)
	for _, m := range ms {
		versions += len(m.Versions)
	}
	if len(evs) != committed || versions != committed {
		t.Fatalf("%d events and %d versions for %d committed Updates", len(evs), versions, committed)
	}
	for i, e := range evs {
		if e.Seq != uint64(i+1) {
			t.Fatalf("event %d has Seq %d", i, e.Seq)
		}
	}
}

// TestInvalidStoredModelIsRefused: a models row edited by hand into a state
// that breaks the registry's rules is refused by every read and by Update,
// as the file store refuses such a state.json.
func TestInvalidStoredModelIsRefused(t *testing.T) {
	ctx := context.Background()
	url := testpg.NewDatabase(t)
	s := open(t, url)
	if _, err := openReg(t, s).Register(ctx, registry.RegisterRequest{Name: "m", ONNX: onnxModel(t, 1), Status: registry.StatusProduction, Traffic: 100}); err != nil {
		t.Fatal(err)
	}
	sql(t, url, `UPDATE models SET doc = replace(doc::text, '"traffic":100', '"traffic":500')::json WHERE name = 'm'`)
	_, errModel := s.Model(ctx, "m")
	_, errModels := s.Models(ctx)
	errUpdate := s.Update(ctx, "m", func(m *registry.Model) ([]registry.Event, error) {
		t.Error("Update ran its change on an invalid stored model")
		return nil, nil
	})
	for what, err := range map[string]error{"Model": errModel, "Models": errModels, "Update": errUpdate} {
		var se *registry.StateError
		if !errors.As(err, &se) || !errors.Is(err, registry.ErrInvalidState) || se.Field != "traffic" {
			t.Errorf("%s on a model with 500%% traffic = %v; want a *StateError about traffic", what, err)
		}
	}
}

// TestCanaryVerdictAndMarkRoundTrip: the autopilot's verdict, evidence
// mark and judgement time are stored with the plan (the model's JSON
// document) and in the event that committed them, read back unchanged by
// another Store on the same database, and replayed by Rebuild.
func TestCanaryVerdictAndMarkRoundTrip(t *testing.T) {
	ctx := context.Background()
	url := testpg.NewDatabase(t)
	r := openReg(t, open(t, url))
	for i := range 2 {
		if _, err := r.Register(ctx, registry.RegisterRequest{Name: "m", ONNX: onnxModel(t, uint64(i+1))}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r.Promote(ctx, ref(t, "m:v1"), 100); err != nil {
		t.Fatal(err)
	}
	p, err := r.StartCanary(ctx, "m", registry.CanaryPlan{Canary: "v2", Baseline: "v1", StepUp: true})
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 12, 4, 18, 30, 0, 0, time.UTC)
	v := registry.CanaryVerdict{Decision: registry.VerdictHealthy, Reason: "within margin",
		Canary: registry.VerdictSide{Requests: 500, Errors: 1, P99Ms: 3.5}, Baseline: registry.VerdictSide{Requests: 9000, Errors: 20, NonFinite: 2, P99Ms: 3.25},
		PValue: 0.6, UpperBound: 0.002, P99Ratio: 1.08, At: at,
		Replicas: []registry.ReplicaEvidence{{Replica: "pod-a", Canary: registry.VerdictSide{Requests: 500, Errors: 1}, Age: time.Second}}}
	mark := json.RawMessage(`{"pod-a": {"started": "2026-12-04T18:00:00Z", "versions": {"v1": {"requests": 3, "hist": [[40, 3]]}}}}`)
	want, _, err := r.UpdateCanary(ctx, "m", p.Revision, func(c *registry.CanaryChange) error {
		c.Plan.Verdict, c.Plan.Mark, c.Plan.JudgedAt, c.Plan.Healthy = &v, mark, at, 1
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(want.Verdict, &v) || want.Mark == nil || !want.JudgedAt.Equal(at) {
		t.Fatalf("committed plan = %+v", want)
	}
	other := openReg(t, open(t, url))
	got, err := other.Canary(ctx, "m")
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("read by another store: %+v, %v\nwant %+v", got, err, want)
	}
	evs, err := other.History(ctx, "m")
	if err != nil {
		t.Fatal(err)
	}
	if last := evs[len(evs)-1]; last.Canary == nil || !reflect.DeepEqual(*last.Canary, want) {
		t.Fatalf("the event carries %+v; want %+v", last.Canary, want)
	}
	rb, err := registry.Rebuild(ctx, evs, nil)
	if err != nil || len(rb.Problems) != 0 || len(rb.Models) != 1 || !reflect.DeepEqual(*rb.Models[0].Canary, want) {
		t.Fatalf("Rebuild = %+v, %v; want the plan %+v", rb, err, want)
	}
}
