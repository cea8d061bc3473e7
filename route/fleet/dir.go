package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Dir is a Store in a folder, for replicas that share a machine (several
// server processes beside one folder registry). Each (model, replica) is
// one file, DIR/MODEL/REPLICA.json, holding the snapshot as Encode writes
// it and its expiry:
//
//	{"expires": UNIX_NANOSECONDS, "snapshot": {…}}
//
// Publish writes a temporary file beside it (its name starts with a dot,
// which no model or replica name does) and renames it over the old one, so
// a reader sees either the old snapshot or the new one, never half of one;
// no lock is taken. Expiry is by the machine's clock, which every process
// on it shares.
//
// Snapshots reads the model's folder, leaves out the snapshots past their
// expiry and removes their files. Removal must not delete a snapshot that
// was published after the expired one was read, and POSIX has no "unlink
// if unchanged": the file is renamed aside (atomically, so exactly one
// file is taken), read again, and deleted only if that one is expired too;
// a fresh one is linked back unless a newer one has been published
// meanwhile. Files that do not parse are skipped and counted (Invalid),
// and removed once an hour old; temporary files a killed writer left are
// removed once a minute old.
//
// Files are not synced to disk: they live for a few publish intervals,
// and one lost in a machine crash is replaced by the next publish.
type Dir struct {
	dir string
	now func() time.Time

	invalid atomic.Int64
}

const (
	// dirExt ends every snapshot file's name.
	dirExt = ".json"
	// tmpExt ends the temporary files of Publish and of removal; their
	// names start with a dot.
	tmpExt = ".tmp"
	// tmpKeep is the age after which a temporary file is taken for one
	// that a killed process left (a live one exists for microseconds).
	tmpKeep = time.Minute
	// invalidKeep is the age after which a file that does not parse is
	// removed: its replica would have replaced it long since.
	invalidKeep = time.Hour
	// maxDirFile bounds what Snapshots reads of one file.
	maxDirFile = 8 << 20
)

// dirFile is the content of a snapshot file.
type dirFile struct {
	Expires  int64           `json:"expires"` // Unix nanoseconds
	Snapshot json.RawMessage `json:"snapshot"`
}

// NewDir returns a Store in dir, creating the folder if needed.
func NewDir(dir string) (*Dir, error) {
	if dir == "" {
		return nil, errors.New("fleet: empty folder name")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("fleet: folder %s: %w", dir, err)
	}
	if err := os.MkdirAll(abs, 0o755); err != nil {
		return nil, fmt.Errorf("fleet: %w", err)
	}
	return &Dir{dir: abs, now: time.Now}, nil
}

// Path is the store's folder.
func (d *Dir) Path() string { return d.dir }

// Invalid returns how many files Snapshots skipped because they could not
// be read, did not parse or validate, or were not where their snapshot
// belongs.
func (d *Dir) Invalid() int64 { return d.invalid.Load() }

// Publish implements Store. Each snapshot is one file written atomically;
// a failure may leave the snapshots before it published.
func (d *Dir) Publish(ctx context.Context, ttl time.Duration, snaps ...Snapshot) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := validTTL(ttl); err != nil {
		return err
	}
	files := make([][]byte, len(snaps))
	expires := d.now().Add(ttl).UnixNano()
	for i, s := range snaps {
		b, err := Encode(s)
		if err != nil {
			return err
		}
		if files[i], err = json.Marshal(dirFile{Expires: expires, Snapshot: b}); err != nil {
			return fmt.Errorf("fleet: encoding %s from replica %s: %w", s.Model, s.Replica, err)
		}
	}
	for i, s := range snaps {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := d.write(s.Model, s.Replica, files[i]); err != nil {
			return fmt.Errorf("fleet: publishing %s from replica %s: %w", s.Model, s.Replica, err)
		}
	}
	return nil
}

// write replaces model's file of replica with b, atomically.
func (d *Dir) write(model, replica string, b []byte) error {
	folder := filepath.Join(d.dir, model)
	if err := os.MkdirAll(folder, 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(folder, "."+replica+".*"+tmpExt)
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(b)
	if err == nil {
		err = f.Chmod(0o644) // readable by the other processes, as the registry's files are
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(folder, replica+dirExt))
	}
	if err != nil {
		_ = os.Remove(tmp)
	}
	return err
}

// Snapshots implements Store.
func (d *Dir) Snapshots(ctx context.Context, model string) ([]Snapshot, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if !validName(model) {
		return nil, fmt.Errorf("%w: model name %q", ErrInvalid, model)
	}
	folder := filepath.Join(d.dir, model)
	entries, err := os.ReadDir(folder)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("fleet: reading the snapshots of %s: %w", model, err)
	}
	now := d.now()
	var out []Snapshot
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") {
			if strings.HasSuffix(name, tmpExt) {
				removeIfOlder(filepath.Join(folder, name), now, tmpKeep)
			}
			continue
		}
		replica, ok := strings.CutSuffix(name, dirExt)
		if !ok || !validReplica(replica) {
			continue // not ours
		}
		path := filepath.Join(folder, name)
		s, st := d.inspect(path, model, replica, now)
		switch st {
		case fileFresh:
			out = append(out, s)
		case fileBad:
			d.invalid.Add(1)
		case fileRotten:
			d.invalid.Add(1)
			fallthrough
		case fileExpired:
			if s, ok := d.discard(path, model, replica, now); ok {
				out = append(out, s)
			}
		}
	}
	return out, nil
}

// fileState is what inspect found.
type fileState int

const (
	fileGone    fileState = iota // removed since the folder was listed
	fileFresh                    // a snapshot within its TTL
	fileExpired                  // a snapshot past its TTL
	fileBad                      // unreadable or invalid; skipped
	fileRotten                   // invalid and old enough to remove
)

// inspect reads the snapshot file at path, which must hold model's
// snapshot of replica.
func (d *Dir) inspect(path, model, replica string, now time.Time) (Snapshot, fileState) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return Snapshot{}, fileGone
	}
	if err != nil {
		return Snapshot{}, fileBad
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxDirFile+1))
	if err == nil && len(b) > maxDirFile {
		err = fmt.Errorf("%w: larger than %d bytes", ErrInvalid, maxDirFile)
	}
	var s Snapshot
	var expires int64
	if err == nil {
		s, expires, err = decodeDirFile(b, model, replica)
	}
	if err != nil {
		if info, serr := f.Stat(); serr == nil && now.Sub(info.ModTime()) > invalidKeep && errors.Is(err, ErrInvalid) {
			return Snapshot{}, fileRotten
		}
		return Snapshot{}, fileBad
	}
	if now.UnixNano() >= expires {
		return Snapshot{}, fileExpired
	}
	return s, fileFresh
}

// decodeDirFile parses a snapshot file that must hold model's snapshot of
// replica, and returns the snapshot and its expiry.
func decodeDirFile(b []byte, model, replica string) (Snapshot, int64, error) {
	var df dirFile
	if err := json.Unmarshal(b, &df); err != nil {
		return Snapshot{}, 0, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	s, err := Decode(df.Snapshot)
	if err != nil {
		return Snapshot{}, 0, err
	}
	if s.Model != model || s.Replica != replica {
		return Snapshot{}, 0, fmt.Errorf("%w: file of %s from replica %s holds %s from replica %s",
			ErrInvalid, model, replica, s.Model, s.Replica)
	}
	return s, df.Expires, nil
}

// discard removes the expired or rotten snapshot file at path unless
// another process has meanwhile published a fresh snapshot there, which
// it returns (true) after putting it back. See Dir.
func (d *Dir) discard(path, model, replica string, now time.Time) (Snapshot, bool) {
	aside := filepath.Join(filepath.Dir(path),
		"."+filepath.Base(path)+"."+strconv.FormatUint(rand.Uint64(), 36)+tmpExt)
	if err := os.Rename(path, aside); err != nil {
		return Snapshot{}, false // another reader took it, or it cannot be moved: leave it
	}
	defer os.Remove(aside)
	s, st := d.inspect(aside, model, replica, now)
	if st != fileFresh {
		return Snapshot{}, false
	}
	// Published after it was read: put it back, unless a still newer
	// snapshot has arrived since the rename (Link does not replace).
	if err := os.Link(aside, path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return Snapshot{}, false
		}
		if err := os.Rename(aside, path); err != nil { // no hard links here
			return Snapshot{}, false
		}
	}
	return s, true
}

// removeIfOlder removes the file at path if it was last written more than
// keep before now.
func removeIfOlder(path string, now time.Time, keep time.Duration) {
	if info, err := os.Lstat(path); err == nil && now.Sub(info.ModTime()) > keep {
		_ = os.Remove(path)
	}
}
