package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// leasesFile holds a FileStore's leases: every lease's holder, expiry and
// epoch, as JSON.
const leasesFile = "leases.json"

var (
	_ Leaser = (*MemStore)(nil)
	_ Leaser = (*FileStore)(nil)
)

// TryAcquire implements Leaser, by this process's clock.
func (s *MemStore) TryAcquire(ctx context.Context, name, holder string, ttl time.Duration) (Lease, error) {
	if err := checkLease(name, holder, ttl, true); err != nil {
		return Lease{}, err
	}
	if err := ctx.Err(); err != nil {
		return Lease{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkOpenLocked(); err != nil {
		return Lease{}, err
	}
	if s.leases == nil {
		s.leases = map[string]leaseRec{}
	}
	now := time.Now()
	rec, changed := acquireRec(s.leases[name], holder, ttl, now)
	if changed {
		s.leases[name] = rec
	}
	return leaseOf(name, holder, rec, now), nil
}

// Release implements Leaser.
func (s *MemStore) Release(ctx context.Context, name, holder string) error {
	if err := checkLease(name, holder, 0, false); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkOpenLocked(); err != nil {
		return err
	}
	if rec, changed := releaseRec(s.leases[name], holder, time.Now()); changed {
		s.leases[name] = rec
	}
	return nil
}

// ReadLease implements Leaser.
func (s *MemStore) ReadLease(ctx context.Context, name string) (Lease, error) {
	if err := checkLease(name, "-", 0, false); err != nil {
		return Lease{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkOpenLocked(); err != nil {
		return Lease{}, err
	}
	return leaseOf(name, "", s.leases[name], time.Now()), nil
}

// ReadLease implements Leaser.
func (s *FileStore) ReadLease(ctx context.Context, name string) (Lease, error) {
	if err := checkLease(name, "-", 0, false); err != nil {
		return Lease{}, err
	}
	var l Lease
	err := s.changeLeases(ctx, func(leases map[string]leaseRec, now time.Time) bool {
		l = leaseOf(name, "", leases[name], now)
		return false
	})
	return l, err
}

// TryAcquire implements Leaser: the leases are in leases.json, read and
// rewritten under the store's lock, and expire by the machine's clock
// (every process sharing the folder is on this machine).
func (s *FileStore) TryAcquire(ctx context.Context, name, holder string, ttl time.Duration) (Lease, error) {
	if err := checkLease(name, holder, ttl, true); err != nil {
		return Lease{}, err
	}
	var l Lease
	err := s.changeLeases(ctx, func(leases map[string]leaseRec, now time.Time) bool {
		rec, changed := acquireRec(leases[name], holder, ttl, now)
		leases[name] = rec
		l = leaseOf(name, holder, rec, now)
		return changed
	})
	return l, err
}

// Release implements Leaser.
func (s *FileStore) Release(ctx context.Context, name, holder string) error {
	if err := checkLease(name, holder, 0, false); err != nil {
		return err
	}
	return s.changeLeases(ctx, func(leases map[string]leaseRec, now time.Time) bool {
		rec, changed := releaseRec(leases[name], holder, now)
		leases[name] = rec
		return changed
	})
}

// changeLeases runs fn on the leases under the store's lock, with the time
// read after the lock was taken, and writes them back (atomically and
// durably, so that an epoch never goes back after a crash) if fn reports a
// change.
func (s *FileStore) changeLeases(ctx context.Context, fn func(leases map[string]leaseRec, now time.Time) bool) error {
	unlock, err := s.acquire(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	path := filepath.Join(s.dir, leasesFile)
	leases := map[string]leaseRec{}
	data, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return fmt.Errorf("registry: file store: leases: %w", err)
	default:
		if err := json.Unmarshal(data, &leases); err != nil {
			return fmt.Errorf("registry: file store: %s is damaged: %w", path, err)
		}
	}
	if !fn(leases, time.Now()) {
		return nil
	}
	if data, err = json.MarshalIndent(leases, "", " "); err != nil {
		return fmt.Errorf("registry: file store: leases: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(s.dir, tmpDir), path, data); err != nil {
		return fmt.Errorf("registry: file store: leases: %w", err)
	}
	return nil
}
