package pgstore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/signalforge/signalforge/registry"
)

// chunk is how much of an artifact moves per round trip to PostgreSQL, and
// the most of it held in memory at once.
const chunk = 1 << 20

// checkSHA rejects anything but 64 lowercase hex digits.
func checkSHA(sha string) error {
	if len(sha) != 64 || strings.Trim(sha, "0123456789abcdef") != "" {
		return fmt.Errorf("%w: artifact %q is not a sha256", registry.ErrNotFound, sha)
	}
	return nil
}

// corrupt is the error of a read whose bytes do not match the artifact.
func corrupt(sha string, n, size int64, got string) error {
	if got != "" && got != sha {
		return fmt.Errorf("%w: artifact %s read from PostgreSQL hashes to %s: it was changed or damaged", registry.ErrInvalidArtifact, sha, got)
	}
	return fmt.Errorf("%w: artifact %s read from PostgreSQL has %d bytes; the record says %d: it was changed or damaged", registry.ErrInvalidArtifact, sha, n, size)
}

// PutArtifact implements registry.Store. Bytes already stored are not sent
// again.
func (s *Store) PutArtifact(ctx context.Context, data []byte) (registry.Artifact, error) {
	if err := s.checkOpen(); err != nil {
		return registry.Artifact{}, err
	}
	sum := sha256.Sum256(data)
	a := registry.Artifact{SHA256: hex.EncodeToString(sum[:]), Size: int64(len(data))}
	var one int
	err := s.pool.QueryRow(ctx, "SELECT 1 FROM artifacts WHERE sha256 = $1", a.SHA256).Scan(&one)
	if err == nil {
		return a, nil
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return registry.Artifact{}, s.fail(ctx, "look up artifact "+a.SHA256, err)
	}
	return s.PutArtifactFrom(ctx, bytes.NewReader(data))
}

// PutArtifactFrom stores what r yields, hashing it on the way, and returns
// the artifact. It streams: at most one chunk (1 MiB) is in memory, so any
// size fits. The bytes go into a new large object in one transaction with
// the artifacts row; if the sha256 was already stored the transaction is
// rolled back and the new copy vanishes (idempotent, also when two
// processes store the same bytes at once).
func (s *Store) PutArtifactFrom(ctx context.Context, r io.Reader) (registry.Artifact, error) {
	if err := s.checkOpen(); err != nil {
		return registry.Artifact{}, err
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return registry.Artifact{}, s.fail(ctx, "store artifact", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	los := tx.LargeObjects()
	oid, err := los.Create(ctx, 0)
	if err != nil {
		return registry.Artifact{}, s.fail(ctx, "store artifact", err)
	}
	obj, err := los.Open(ctx, oid, pgx.LargeObjectModeWrite)
	if err != nil {
		return registry.Artifact{}, s.fail(ctx, "store artifact", err)
	}
	h := sha256.New()
	buf := make([]byte, chunk)
	var size int64
	for {
		n, rerr := io.ReadFull(r, buf)
		if n > 0 {
			h.Write(buf[:n])
			if _, err := obj.Write(buf[:n]); err != nil {
				return registry.Artifact{}, s.fail(ctx, "store artifact", err)
			}
			size += int64(n)
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			return registry.Artifact{}, fmt.Errorf("pgstore: store artifact: read: %w", rerr)
		}
	}
	if err := obj.Close(); err != nil {
		return registry.Artifact{}, s.fail(ctx, "store artifact", err)
	}
	a := registry.Artifact{SHA256: hex.EncodeToString(h.Sum(nil)), Size: size}
	tag, err := tx.Exec(ctx, "INSERT INTO artifacts (sha256, size, oid) VALUES ($1, $2, $3) ON CONFLICT (sha256) DO NOTHING", a.SHA256, a.Size, oid)
	if err != nil {
		return registry.Artifact{}, s.fail(ctx, "store artifact "+a.SHA256, err)
	}
	if tag.RowsAffected() == 0 {
		return a, nil // already stored: the rollback drops this copy
	}
	if err := tx.Commit(ctx); err != nil {
		return registry.Artifact{}, s.fail(ctx, "store artifact "+a.SHA256, err)
	}
	return a, nil
}

// OpenArtifact streams the artifact sha256 from PostgreSQL and returns it
// with its size. The reader verifies as it goes: a read that reaches the
// end returns io.EOF only if the bytes hash to sha256 and number size,
// else an error wrapping registry.ErrInvalidArtifact (so a consumer must
// read to io.EOF before trusting what it read). ctx bounds the whole read.
// The reader holds a connection (and a read-only transaction) until
// closed: close it.
func (s *Store) OpenArtifact(ctx context.Context, sha string) (io.ReadCloser, int64, error) {
	if err := s.checkOpen(); err != nil {
		return nil, 0, err
	}
	if err := checkSHA(sha); err != nil {
		return nil, 0, err
	}
	tx, err := s.pool.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, 0, s.fail(ctx, "read artifact "+sha, err)
	}
	ok := false
	defer func() {
		if !ok {
			_ = tx.Rollback(context.WithoutCancel(ctx))
		}
	}()
	var size int64
	var oid uint32
	err = tx.QueryRow(ctx, "SELECT size, oid FROM artifacts WHERE sha256 = $1", sha).Scan(&size, &oid)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, 0, fmt.Errorf("%w: artifact %s", registry.ErrNotFound, sha)
	}
	if err != nil {
		return nil, 0, s.fail(ctx, "read artifact "+sha, err)
	}
	los := tx.LargeObjects()
	obj, err := los.Open(ctx, oid, pgx.LargeObjectModeRead)
	if err != nil {
		return nil, 0, s.fail(ctx, "read artifact "+sha, err)
	}
	ok = true
	return &artifactReader{s: s, ctx: ctx, tx: tx, obj: obj, h: sha256.New(), sha: sha, size: size}, size, nil
}

// artifactReader reads a large object, verifying it at the end.
type artifactReader struct {
	s   *Store
	ctx context.Context // OpenArtifact's: the large object is bound to it anyway
	tx  pgx.Tx
	obj *pgx.LargeObject
	h   hash.Hash
	sha string

	size, n int64
	err     error // sticky: io.EOF once verified, or the failure
	closed  bool
}

func (r *artifactReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	if len(p) > chunk {
		p = p[:chunk]
	}
	n, err := r.obj.Read(p)
	r.h.Write(p[:n])
	r.n += int64(n)
	switch {
	case r.n > r.size:
		r.err = corrupt(r.sha, r.n, r.size, "")
		return n, r.err
	case err == io.EOF:
		if got := hex.EncodeToString(r.h.Sum(nil)); got != r.sha || r.n != r.size {
			r.err = corrupt(r.sha, r.n, r.size, got)
			return n, r.err
		}
		r.err = io.EOF
		return n, io.EOF
	case err != nil:
		r.err = r.s.fail(r.ctx, "read artifact "+r.sha, err)
		return n, r.err
	}
	return n, nil
}

// Close ends the read's transaction. It is safe to call more than once.
func (r *artifactReader) Close() error {
	if r.closed {
		return nil
	}
	r.closed = true
	return r.tx.Rollback(context.WithoutCancel(r.ctx))
}

// ReadArtifact implements registry.Store: the whole artifact, verified.
func (s *Store) ReadArtifact(ctx context.Context, sha string) ([]byte, error) {
	rc, size, err := s.OpenArtifact(ctx, sha)
	if err != nil {
		return nil, err
	}
	defer closeQuietly(rc)
	if size > maxRead {
		return nil, fmt.Errorf("pgstore: artifact %s has %d bytes, more than ReadArtifact reads (%d); stream it with OpenArtifact", sha, size, int64(maxRead))
	}
	// Exactly size bytes, then the read that verifies (io.EOF): no
	// buffer growth, so a 2 GiB artifact costs 2 GiB, not 4.
	data := make([]byte, size)
	if _, err := io.ReadFull(rc, data); err != nil {
		return nil, err
	}
	if _, err := rc.Read(make([]byte, 1)); err != io.EOF {
		if err == nil {
			err = corrupt(sha, size+1, size, "")
		}
		return nil, err
	}
	return data, nil
}

// maxRead caps ReadArtifact: the registry refuses bigger artifacts anyway.
const maxRead = 4 << 30

// fileStamp identifies a cache file this process has hashed.
type fileStamp struct {
	size  int64
	mtime time.Time
}

// ArtifactPath implements registry.Store: the artifact as a file in the
// local cache (CacheDir/<sha256>), downloaded once per machine. A download
// streams to a temporary file while hashing, is fsynced and renamed into
// place only if it matches, so a file in the cache is always complete. A
// file found in the cache is checked against the database's size; the
// first time this process hands it out it is also hashed whole (a damaged
// file is downloaded again), and later only its size and modification time
// are compared. When PostgreSQL cannot be reached, a cached file is still
// handed out (servers keep loading what they have), as long as this
// process has verified it or it hashes right.
func (s *Store) ArtifactPath(ctx context.Context, sha string) (string, error) {
	if err := s.checkOpen(); err != nil {
		return "", err
	}
	if err := checkSHA(sha); err != nil {
		return "", err
	}
	lock := s.fetchLock(sha)
	lock.Lock()
	defer lock.Unlock()
	path := filepath.Join(s.cacheDir, sha)
	// A cache file this process hashed already, unchanged since, is
	// returned without a round trip: rows of the artifacts table are never
	// deleted, and a server's reconcile after each registry change asks
	// for every version's path.
	if s.knownGood(path, sha) {
		return path, nil
	}
	var size int64
	err := s.pool.QueryRow(ctx, "SELECT size FROM artifacts WHERE sha256 = $1", sha).Scan(&size)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return "", fmt.Errorf("%w: artifact %s", registry.ErrNotFound, sha)
	case err != nil:
		if info, serr := os.Stat(path); serr == nil && ctx.Err() == nil && s.cachedOK(path, sha, info, info.Size()) {
			s.log.Warn("pgstore: database unreachable; using the cached artifact", "sha256", sha, "database", s.target)
			return path, nil
		}
		return "", s.fail(ctx, "look up artifact "+sha, err)
	}
	if info, err := os.Stat(path); err == nil {
		if s.cachedOK(path, sha, info, size) {
			return path, nil
		}
		s.log.Warn("pgstore: cached artifact is damaged; downloading it again", "path", path)
	}
	if err := s.download(ctx, sha, path); err != nil {
		return "", err
	}
	return path, nil
}

// fetchLock returns the mutex that serializes this process's downloads of
// sha.
func (s *Store) fetchLock(sha string) *sync.Mutex {
	s.mu.Lock()
	defer s.mu.Unlock()
	if l, ok := s.fetching[sha]; ok {
		return l
	}
	l := new(sync.Mutex)
	s.fetching[sha] = l
	return l
}

// cachedOK reports whether the cache file at path (info) is the artifact
// sha of size bytes, hashing it unless this process already did.
// knownGood reports whether path is a regular file that cachedOK verified
// earlier and that has not changed (size, mtime) since.
func (s *Store) knownGood(path, sha string) bool {
	s.mu.Lock()
	known, ok := s.verified[sha]
	s.mu.Unlock()
	if !ok {
		return false
	}
	info, err := os.Stat(path)
	return err == nil && info.Mode().IsRegular() && known == fileStamp{size: info.Size(), mtime: info.ModTime()}
}

func (s *Store) cachedOK(path, sha string, info os.FileInfo, size int64) bool {
	if info.Size() != size || !info.Mode().IsRegular() {
		return false
	}
	stamp := fileStamp{size: info.Size(), mtime: info.ModTime()}
	s.mu.Lock()
	known, ok := s.verified[sha]
	s.mu.Unlock()
	if ok && known == stamp {
		return true
	}
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer closeQuietly(f)
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil || n != size || hex.EncodeToString(h.Sum(nil)) != sha {
		return false
	}
	s.mu.Lock()
	s.verified[sha] = stamp
	s.mu.Unlock()
	return true
}

// download streams the artifact into the cache at path.
func (s *Store) download(ctx context.Context, sha, path string) error {
	rc, _, err := s.OpenArtifact(ctx, sha)
	if err != nil {
		return err
	}
	defer closeQuietly(rc)
	f, err := os.CreateTemp(s.cacheDir, "."+sha+".*.tmp")
	if err != nil {
		return fmt.Errorf("pgstore: artifact cache: %w", err)
	}
	tmp := f.Name()
	_, err = io.CopyBuffer(f, rc, make([]byte, chunk))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		if errors.Is(err, registry.ErrInvalidArtifact) || errors.Is(err, registry.ErrClosed) || ctx.Err() != nil {
			return err
		}
		var dbe *DBError
		if errors.As(err, &dbe) {
			return err
		}
		return fmt.Errorf("pgstore: artifact cache: %w", err)
	}
	if d, err := os.Open(s.cacheDir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	if info, err := os.Stat(path); err == nil {
		s.mu.Lock()
		s.verified[sha] = fileStamp{size: info.Size(), mtime: info.ModTime()}
		s.mu.Unlock()
	}
	return nil
}
