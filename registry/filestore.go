package registry

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// File names inside a FileStore directory.
const (
	stateFile   = "state.json" // every model, the last Seq and the committed audit log size
	auditFile   = "audit.log"  // one JSON event per line, append-only
	lockFile    = "LOCK"       // flock(2)ed by writers
	artifactDir = "artifacts"  // artifacts/sha256/ab/abcdef….onnx
	tmpDir      = "tmp"        // temporary files, renamed into place when complete
	stateFormat = 1
)

// FileStore is the default Store: a local directory that several processes
// may share (for example `signalforge serve` and the `signalforge models`
// CLI).
//
// Layout:
//
//	state.json                      every model and version, plus the last event Seq
//	                                and the committed size of audit.log
//	audit.log                       the audit log, one JSON event per line
//	artifacts/sha256/ab/<sha>.onnx  artifacts, content-addressed
//	LOCK                            flock(2)ed by writers
//	leases.json                     leases (Leaser), written under LOCK
//	tmp/                            files being written
//
// Crash safety: state.json is the commit point. Update appends its events to
// audit.log and fsyncs it, then writes the new state to a temporary file,
// fsyncs it, renames it over state.json and fsyncs the directory. A process
// killed at any point leaves either the old or the new state.json, never a
// mix; audit.log bytes past the committed size recorded in state.json are an
// uncommitted tail that readers ignore and the next writer truncates.
// Artifacts are written the same way (temporary file, fsync, rename) before
// the version that refers to them is committed; an artifact left without a
// version by a crash is harmless.
//
// Every commit rewrites state.json whole (all models and versions): at
// thousands of versions that is a few hundred KB per change, fine for a
// registry that changes a few times an hour, and the reason the Store
// interface leaves room for a database.
//
// Writers hold an exclusive flock on LOCK (and, within a process, a
// semaphore) while they read, modify and write the state, so updates from
// several goroutines and processes are serialized and none is lost. Readers
// take no lock: they read the current state.json, which is always complete.
type FileStore struct {
	dir string

	sem  chan struct{} // size 1: held by the goroutine that holds (or waits for) the flock
	lock *os.File      // dir/LOCK

	mu     sync.Mutex // guards cached, events, eventsSize, closed
	cached cachedState
	// events caches the parsed committed prefix of audit.log, eventsSize
	// bytes long. The committed prefix only ever grows.
	events     []Event
	ends       []int64 // ends[i] is the offset just past events[i]'s line
	eventsSize int64
	closed     bool
}

type fileState struct {
	Format    int              `json:"format"`
	Seq       uint64           `json:"seq"`
	AuditSize int64            `json:"audit_size"`
	Models    map[string]Model `json:"models"`
}

// cachedState is a parsed state.json and the identity of the file it came
// from: state.json is replaced on every commit, so a new inode, size or
// mtime means a new state. The file stays open while cached so that its
// inode number cannot be reused by a later state.json.
type cachedState struct {
	ino, size, mtime int64
	f                *os.File
	st               *fileState
}

// OpenFileStore opens (creating if needed) a FileStore in dir.
func OpenFileStore(dir string) (*FileStore, error) {
	if dir == "" {
		return nil, errors.New("registry: file store: empty directory")
	}
	// Artifact paths handed out must stay valid after a chdir.
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("registry: file store: %w", err)
	}
	for _, d := range []string{dir, filepath.Join(dir, artifactDir, "sha256"), filepath.Join(dir, tmpDir)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("registry: file store: %w", err)
		}
	}
	lf, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("registry: file store: %w", err)
	}
	s := &FileStore{dir: dir, sem: make(chan struct{}, 1), lock: lf}
	if err := s.init(); err != nil {
		lf.Close()
		return nil, err
	}
	return s, nil
}

// init writes an empty state.json if there is none, and removes temporary
// files that crashed writers left behind more than an hour ago (younger ones
// may belong to a live writer).
func (s *FileStore) init() error {
	unlock, err := s.acquire(context.Background())
	if err != nil {
		return err
	}
	defer unlock()
	if entries, err := os.ReadDir(filepath.Join(s.dir, tmpDir)); err == nil {
		for _, e := range entries {
			if info, err := e.Info(); err == nil && time.Since(info.ModTime()) > time.Hour {
				os.Remove(filepath.Join(s.dir, tmpDir, e.Name()))
			}
		}
	}
	if _, err := os.Stat(filepath.Join(s.dir, stateFile)); err == nil {
		_, err := s.load()
		return err
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("registry: file store: %w", err)
	}
	// A registry whose state.json was lost must not restart empty over its
	// own history: Repair rebuilds it.
	if err := CheckFileStoreState(s.dir); err != nil {
		return fmt.Errorf("%w; refusing to start an empty registry over it", err)
	}
	return s.writeState(&fileState{Format: stateFormat, Models: map[string]Model{}})
}

// Dir returns the store's directory.
func (s *FileStore) Dir() string { return s.dir }

// acquire takes the in-process semaphore and the flock, honouring ctx. The
// returned func releases both.
func (s *FileStore) acquire(ctx context.Context) (release func(), err error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	select {
	case s.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		<-s.sem
		return nil, ErrClosed
	}
	fd := int(s.lock.Fd())
	release = func() {
		syscall.Flock(fd, syscall.LOCK_UN)
		<-s.sem
	}
	err = flock(fd, syscall.LOCK_EX|syscall.LOCK_NB)
	if err == nil {
		return release, nil
	}
	if !errors.Is(err, syscall.EWOULDBLOCK) {
		<-s.sem
		return nil, fmt.Errorf("registry: file store: lock: %w", err)
	}
	// Another process holds the lock: wait for it without blocking ctx.
	done := make(chan error, 1)
	go func() { done <- flock(fd, syscall.LOCK_EX) }()
	select {
	case err := <-done:
		if err != nil {
			<-s.sem
			return nil, fmt.Errorf("registry: file store: lock: %w", err)
		}
		return release, nil
	case <-ctx.Done():
		// The waiting goroutine keeps the semaphore until its flock
		// returns, so no other goroutine of this process can believe it
		// holds the same lock meanwhile.
		go func() {
			if <-done == nil {
				syscall.Flock(fd, syscall.LOCK_UN)
			}
			<-s.sem
		}()
		return nil, ctx.Err()
	}
}

func flock(fd, how int) error {
	for {
		err := syscall.Flock(fd, how)
		if err != syscall.EINTR {
			return err
		}
	}
}

// load returns the current state, re-reading state.json only if it was
// replaced since the last read. The result is shared: do not modify it.
func (s *FileStore) load() (*fileState, error) {
	f, err := os.Open(filepath.Join(s.dir, stateFile))
	if err != nil {
		return nil, fmt.Errorf("registry: file store: %w", err)
	}
	keep := false
	defer func() {
		if !keep {
			f.Close()
		}
	}()
	info, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("registry: file store: %w", err)
	}
	sys, _ := info.Sys().(*syscall.Stat_t)
	key := cachedState{size: info.Size(), mtime: info.ModTime().UnixNano()}
	if sys != nil {
		key.ino = int64(sys.Ino)
	}
	s.mu.Lock()
	c := s.cached
	s.mu.Unlock()
	if c.st != nil && c.ino == key.ino && c.size == key.size && c.mtime == key.mtime {
		return c.st, nil
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("registry: file store: %w", err)
	}
	st := new(fileState)
	if err := json.Unmarshal(data, st); err != nil {
		return nil, fmt.Errorf("registry: file store: %s is corrupt: %w; %s", f.Name(), err, RepairHint)
	}
	if st.Format != stateFormat {
		return nil, fmt.Errorf("registry: file store: %s has format %d, this build reads format %d", stateFile, st.Format, stateFormat)
	}
	if st.Models == nil {
		st.Models = map[string]Model{}
	}
	// A state that breaks the rules (a hand edit, a bug elsewhere) is
	// refused rather than served from.
	if err := validateModels(st.Models); err != nil {
		return nil, fmt.Errorf("%w (in %s); %s", err, f.Name(), RepairHint)
	}
	key.st, key.f = st, f
	s.mu.Lock()
	old := s.cached
	if s.closed {
		s.mu.Unlock()
		return st, nil
	}
	s.cached, keep = key, true
	s.mu.Unlock()
	if old.f != nil {
		old.f.Close()
	}
	return st, nil
}

// writeState atomically replaces state.json with st.
func (s *FileStore) writeState(st *fileState) error {
	data, err := json.MarshalIndent(st, "", " ")
	if err != nil {
		return fmt.Errorf("registry: file store: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(s.dir, tmpDir), filepath.Join(s.dir, stateFile), data); err != nil {
		return fmt.Errorf("registry: file store: %w", err)
	}
	return nil
}

// writeFileAtomic writes data to a temporary file in tmp, fsyncs it, renames
// it to path and fsyncs path's directory.
func writeFileAtomic(tmp, path string, data []byte) error {
	f, err := os.CreateTemp(tmp, filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	name := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(name, path)
	}
	if err != nil {
		os.Remove(name)
		return err
	}
	return syncDir(filepath.Dir(path))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

func (s *FileStore) checkOpen() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	return nil
}

// Model implements Store.
func (s *FileStore) Model(ctx context.Context, name string) (Model, error) {
	if err := s.checkOpen(); err != nil {
		return Model{}, err
	}
	st, err := s.load()
	if err != nil {
		return Model{}, err
	}
	m, ok := st.Models[name]
	if !ok || len(m.Versions) == 0 {
		return Model{}, fmt.Errorf("%w: model %q", ErrNotFound, name)
	}
	return m.Clone(), nil
}

// Models implements Store.
func (s *FileStore) Models(ctx context.Context) ([]Model, error) {
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	st, err := s.load()
	if err != nil {
		return nil, err
	}
	out := make([]Model, 0, len(st.Models))
	for _, name := range slices.Sorted(maps.Keys(st.Models)) {
		if m := st.Models[name]; len(m.Versions) > 0 {
			out = append(out, m.Clone())
		}
	}
	return out, nil
}

// Seq implements Store. It costs an open and fstat of state.json unless
// the state changed.
func (s *FileStore) Seq(ctx context.Context) (uint64, error) {
	if err := s.checkOpen(); err != nil {
		return 0, err
	}
	st, err := s.load()
	if err != nil {
		return 0, err
	}
	return st.Seq, nil
}

// Update implements Store.
func (s *FileStore) Update(ctx context.Context, name string, fn func(m *Model) ([]Event, error)) error {
	release, err := s.acquire(ctx)
	if err != nil {
		return err
	}
	defer release()
	st, err := s.load()
	if err != nil {
		return err
	}
	af, err := os.OpenFile(filepath.Join(s.dir, auditFile), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("registry: file store: %w", err)
	}
	defer af.Close()
	info, err := af.Stat()
	if err != nil {
		return fmt.Errorf("registry: file store: %w", err)
	}
	switch {
	case info.Size() < st.AuditSize:
		return fmt.Errorf("registry: file store: %s has %d bytes but %d are committed; it was truncated by something else", auditFile, info.Size(), st.AuditSize)
	case info.Size() > st.AuditSize:
		// An uncommitted tail from a writer that crashed.
		if err := af.Truncate(st.AuditSize); err != nil {
			return fmt.Errorf("registry: file store: %w", err)
		}
	}

	m := Model{Name: name}
	if old, ok := st.Models[name]; ok {
		m = old.Clone()
	}
	events, err := fn(&m)
	if err != nil {
		return err
	}
	if len(events) == 0 {
		return nil
	}
	if err := ValidateModel(m); err != nil {
		return err
	}
	var buf bytes.Buffer
	seq := st.Seq
	for i := range events {
		seq++
		events[i].Seq = seq
		line, err := json.Marshal(events[i])
		if err != nil {
			return fmt.Errorf("registry: file store: %w", err)
		}
		buf.Write(line)
		buf.WriteByte('\n')
	}
	if _, err := af.WriteAt(buf.Bytes(), st.AuditSize); err != nil {
		return fmt.Errorf("registry: file store: %w", err)
	}
	if err := af.Sync(); err != nil {
		return fmt.Errorf("registry: file store: %w", err)
	}
	next := &fileState{
		Format:    stateFormat,
		Seq:       seq,
		AuditSize: st.AuditSize + int64(buf.Len()),
		Models:    maps.Clone(st.Models),
	}
	next.Models[name] = m
	return s.writeState(next)
}

// Events implements Store.
func (s *FileStore) Events(ctx context.Context, name string, after uint64) ([]Event, error) {
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	st, err := s.load()
	if err != nil {
		return nil, err
	}
	all, err := s.committedEvents(st.AuditSize)
	if err != nil {
		return nil, err
	}
	i, _ := slices.BinarySearchFunc(all, after+1, func(e Event, seq uint64) int {
		switch {
		case e.Seq < seq:
			return -1
		case e.Seq > seq:
			return 1
		}
		return 0
	})
	var out []Event
	for _, e := range all[i:] {
		if name == "" || e.Name == name {
			out = append(out, e)
		}
	}
	return out, nil
}

// committedEvents returns the events in the first size bytes of audit.log,
// reading only what the cache does not hold yet. The result is shared.
func (s *FileStore) committedEvents(size int64) ([]Event, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if size <= s.eventsSize {
		// A reader holding an older state may ask for a shorter prefix.
		n, _ := slices.BinarySearch(s.ends, size+1)
		if n > 0 && s.ends[n-1] != size && size != 0 {
			return nil, fmt.Errorf("registry: file store: %s: committed size %d does not end a line", auditFile, size)
		}
		return s.events[:n:n], nil
	}
	f, err := os.Open(filepath.Join(s.dir, auditFile))
	if err != nil {
		return nil, fmt.Errorf("registry: file store: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(io.NewSectionReader(f, s.eventsSize, size-s.eventsSize))
	sc.Buffer(make([]byte, 64<<10), 64<<20)
	events, ends := slices.Clip(s.events), slices.Clip(s.ends)
	read := s.eventsSize
	for sc.Scan() {
		var e Event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			return nil, fmt.Errorf("registry: file store: %s is corrupt at byte %d: %w", auditFile, read, err)
		}
		read += int64(len(sc.Bytes())) + 1
		events = append(events, e)
		ends = append(ends, read)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("registry: file store: %s: %w", auditFile, err)
	}
	if read != size {
		return nil, fmt.Errorf("registry: file store: %s: committed size %d does not end a line (read %d)", auditFile, size, read)
	}
	s.events, s.ends, s.eventsSize = events, ends, size
	return events, nil
}

// PutArtifact implements Store: an artifact already stored is not written
// again; otherwise the bytes go through PutArtifactFrom (a temporary file,
// fsynced, renamed into place).
func (s *FileStore) PutArtifact(ctx context.Context, data []byte) (Artifact, error) {
	if err := s.checkOpen(); err != nil {
		return Artifact{}, err
	}
	sum := sha256.Sum256(data)
	a := Artifact{SHA256: hex.EncodeToString(sum[:]), Size: int64(len(data))}
	path := s.artifactPath(a.SHA256)
	if info, err := os.Stat(path); err == nil && info.Size() == a.Size {
		a.Path = path
		return a, nil
	}
	return s.PutArtifactFrom(ctx, bytes.NewReader(data))
}

func (s *FileStore) artifactPath(sha string) string { return artifactPathIn(s.dir, sha) }

// artifactPathIn is where a FileStore in dir keeps the artifact sha.
func artifactPathIn(dir, sha string) string {
	return filepath.Join(dir, artifactDir, "sha256", sha[:2], sha+".onnx")
}

// checkSHA rejects anything but 64 lowercase hex digits before it is used
// in a path.
func checkSHA(sha string) error {
	if len(sha) != 64 || strings.Trim(sha, "0123456789abcdef") != "" {
		return fmt.Errorf("%w: artifact %q is not a sha256", ErrNotFound, sha)
	}
	return nil
}

// ArtifactPath implements Store.
func (s *FileStore) ArtifactPath(ctx context.Context, sha string) (string, error) {
	if err := s.checkOpen(); err != nil {
		return "", err
	}
	if err := checkSHA(sha); err != nil {
		return "", err
	}
	path := s.artifactPath(sha)
	if _, err := os.Stat(path); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("%w: artifact %s", ErrNotFound, sha)
		}
		return "", fmt.Errorf("registry: file store: %w", err)
	}
	return path, nil
}

// ReadArtifact implements Store.
func (s *FileStore) ReadArtifact(ctx context.Context, sha string) ([]byte, error) {
	path, err := s.ArtifactPath(ctx, sha)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("registry: file store: %w", err)
	}
	return data, nil
}

// Close implements Store. It waits for an Update in progress.
func (s *FileStore) Close() error {
	s.sem <- struct{}{}
	defer func() { <-s.sem }()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	if s.cached.f != nil {
		s.cached.f.Close()
	}
	return s.lock.Close()
}

// FileStoreExists reports whether dir holds a FileStore (so that read-only
// tools can refuse a wrong folder instead of creating an empty registry).
func FileStoreExists(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, stateFile))
	return err == nil
}

// Import implements Importer. Under the write lock it checks that the store
// holds no model and no event, then commits the way Update does: the
// events are written to audit.log and fsynced, then the new state.json is
// renamed into place. A crash before the rename leaves the empty state
// (the written log is an uncommitted tail the next writer truncates); after
// it, everything.
func (s *FileStore) Import(ctx context.Context, models []Model, events []Event) error {
	if err := checkImport(models, events); err != nil {
		return err
	}
	release, err := s.acquire(ctx)
	if err != nil {
		return err
	}
	defer release()
	st, err := s.load()
	if err != nil {
		return err
	}
	if n := countModels(st.Models); st.Seq != 0 || st.AuditSize != 0 || n != 0 {
		return fmt.Errorf("%w: %s holds %d models and %d events", ErrNotEmpty, s.dir, n, st.Seq)
	}
	af, err := os.OpenFile(filepath.Join(s.dir, auditFile), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("registry: file store: %w", err)
	}
	defer af.Close()
	// Whatever is in audit.log is an uncommitted tail (AuditSize is 0).
	if err := af.Truncate(0); err != nil {
		return fmt.Errorf("registry: file store: %w", err)
	}
	var buf bytes.Buffer
	for i := range events {
		e := cloneEvent(events[i])
		if e.Record != nil {
			e.Record.Artifact.Path = ""
		}
		line, err := json.Marshal(e)
		if err != nil {
			return fmt.Errorf("registry: file store: %w", err)
		}
		buf.Write(line)
		buf.WriteByte('\n')
	}
	if _, err := af.WriteAt(buf.Bytes(), 0); err != nil {
		return fmt.Errorf("registry: file store: %w", err)
	}
	if err := af.Sync(); err != nil {
		return fmt.Errorf("registry: file store: %w", err)
	}
	next := &fileState{Format: stateFormat, AuditSize: int64(buf.Len()), Models: map[string]Model{}}
	if len(events) > 0 {
		next.Seq = events[len(events)-1].Seq
	}
	for _, m := range models {
		next.Models[m.Name] = importedModel(m)
	}
	return s.writeState(next)
}

// OpenArtifact implements ArtifactOpener.
func (s *FileStore) OpenArtifact(ctx context.Context, sha string) (io.ReadCloser, int64, error) {
	path, err := s.ArtifactPath(ctx, sha)
	if err != nil {
		return nil, 0, err
	}
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, 0, fmt.Errorf("%w: artifact %s", ErrNotFound, sha)
		}
		return nil, 0, fmt.Errorf("registry: file store: %w", err)
	}
	info, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("registry: file store: %w", err)
	}
	return f, info.Size(), nil
}

// PutArtifactFrom implements ArtifactWriter: the bytes are streamed through
// sha256 into a temporary file, which is fsynced and renamed into place
// only when r ended without an error.
func (s *FileStore) PutArtifactFrom(ctx context.Context, r io.Reader) (Artifact, error) {
	if err := s.checkOpen(); err != nil {
		return Artifact{}, err
	}
	f, err := os.CreateTemp(filepath.Join(s.dir, tmpDir), "artifact.*")
	if err != nil {
		return Artifact{}, fmt.Errorf("registry: file store: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // a no-op once renamed
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), ctxReader{ctx, r})
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return Artifact{}, fmt.Errorf("registry: file store: storing an artifact: %w", err)
	}
	a := Artifact{SHA256: hex.EncodeToString(h.Sum(nil)), Size: n}
	path := s.artifactPath(a.SHA256)
	if info, err := os.Stat(path); err == nil && info.Size() == a.Size {
		a.Path = path
		return a, nil
	}
	parent := filepath.Dir(path)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return Artifact{}, fmt.Errorf("registry: file store: %w", err)
	}
	if err := syncDir(filepath.Dir(parent)); err != nil {
		return Artifact{}, fmt.Errorf("registry: file store: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return Artifact{}, fmt.Errorf("registry: file store: %w", err)
	}
	if err := syncDir(parent); err != nil {
		return Artifact{}, fmt.Errorf("registry: file store: %w", err)
	}
	a.Path = path
	return a, nil
}

// ctxReader is r that stops with ctx's error once ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
