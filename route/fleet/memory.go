package fleet

import (
	"context"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/signalforge/signalforge/route"
)

// Memory is a Store inside one process: the fleet of a machine that has
// neither Redis nor a database is the process itself. The zero value is
// not ready; use NewMemory.
type Memory struct {
	now func() time.Time

	mu    sync.Mutex                     // guards snaps
	snaps map[string]map[string]memEntry // model → replica → entry
}

type memEntry struct {
	snap    Snapshot
	expires time.Time
}

// NewMemory returns an empty in-process Store.
func NewMemory() *Memory {
	return &Memory{now: time.Now, snaps: map[string]map[string]memEntry{}}
}

// Publish implements Store.
func (m *Memory) Publish(ctx context.Context, ttl time.Duration, snaps ...Snapshot) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := validTTL(ttl); err != nil {
		return err
	}
	for i := range snaps {
		if err := snaps[i].validate(); err != nil {
			return err
		}
	}
	expires := m.now().Add(ttl)
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, s := range snaps {
		byReplica := m.snaps[s.Model]
		if byReplica == nil {
			byReplica = map[string]memEntry{}
			m.snaps[s.Model] = byReplica
		}
		byReplica[s.Replica] = memEntry{snap: clone(s), expires: expires}
	}
	return nil
}

// Snapshots implements Store.
func (m *Memory) Snapshots(ctx context.Context, model string) ([]Snapshot, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	now := m.now()
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Snapshot
	for _, id := range slices.Sorted(maps.Keys(m.snaps[model])) {
		e := m.snaps[model][id]
		if !now.Before(e.expires) {
			delete(m.snaps[model], id)
			continue
		}
		out = append(out, clone(e.snap))
	}
	return out, nil
}

// clone copies s deeply, so that neither side shares histograms.
func clone(s Snapshot) Snapshot {
	vs := make(map[string]route.Counters, len(s.Versions))
	for v, c := range s.Versions {
		c.Hist = slices.Clone(c.Hist)
		vs[v] = c
	}
	s.Versions = vs
	return s
}
