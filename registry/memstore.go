package registry

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
)

// MemStore is a Store in memory, for tests and for trying the product
// without a folder. It is safe for concurrent use within one process;
// nothing survives the process. ArtifactPath writes the artifact to a
// private temporary folder on first use (as a remote store would download
// to a local cache); Close removes it.
type MemStore struct {
	sem chan struct{} // size 1: held by the Update in progress

	mu        sync.Mutex // guards the fields below
	models    map[string]Model
	events    []Event
	artifacts map[string][]byte
	cacheDir  string
	leases    map[string]leaseRec // Leaser; nil until the first TryAcquire
	closed    bool
}

// NewMemStore returns an empty MemStore.
func NewMemStore() *MemStore {
	return &MemStore{sem: make(chan struct{}, 1), models: map[string]Model{}, artifacts: map[string][]byte{}}
}

func (s *MemStore) checkOpenLocked() error {
	if s.closed {
		return ErrClosed
	}
	return nil
}

// PutArtifact implements Store.
func (s *MemStore) PutArtifact(ctx context.Context, data []byte) (Artifact, error) {
	sum := sha256.Sum256(data)
	a := Artifact{SHA256: hex.EncodeToString(sum[:]), Size: int64(len(data))}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkOpenLocked(); err != nil {
		return Artifact{}, err
	}
	if _, ok := s.artifacts[a.SHA256]; !ok {
		s.artifacts[a.SHA256] = slices.Clone(data)
	}
	return a, nil
}

// ReadArtifact implements Store.
func (s *MemStore) ReadArtifact(ctx context.Context, sha string) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkOpenLocked(); err != nil {
		return nil, err
	}
	data, ok := s.artifacts[sha]
	if !ok {
		return nil, fmt.Errorf("%w: artifact %q", ErrNotFound, sha)
	}
	return slices.Clone(data), nil
}

// ArtifactPath implements Store.
func (s *MemStore) ArtifactPath(ctx context.Context, sha string) (string, error) {
	if err := checkSHA(sha); err != nil {
		return "", err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkOpenLocked(); err != nil {
		return "", err
	}
	data, ok := s.artifacts[sha]
	if !ok {
		return "", fmt.Errorf("%w: artifact %s", ErrNotFound, sha)
	}
	if s.cacheDir == "" {
		dir, err := os.MkdirTemp("", "signalforge-memstore-")
		if err != nil {
			return "", fmt.Errorf("registry: mem store: %w", err)
		}
		s.cacheDir = dir
	}
	path := filepath.Join(s.cacheDir, sha+".onnx")
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	if err := writeFileAtomic(s.cacheDir, path, data); err != nil {
		return "", fmt.Errorf("registry: mem store: %w", err)
	}
	return path, nil
}

// Model implements Store.
func (s *MemStore) Model(ctx context.Context, name string) (Model, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkOpenLocked(); err != nil {
		return Model{}, err
	}
	m, ok := s.models[name]
	if !ok || len(m.Versions) == 0 {
		return Model{}, fmt.Errorf("%w: model %q", ErrNotFound, name)
	}
	return m.Clone(), nil
}

// Models implements Store.
func (s *MemStore) Models(ctx context.Context) ([]Model, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkOpenLocked(); err != nil {
		return nil, err
	}
	out := []Model{}
	for _, name := range slices.Sorted(maps.Keys(s.models)) {
		if m := s.models[name]; len(m.Versions) > 0 {
			out = append(out, m.Clone())
		}
	}
	return out, nil
}

// Update implements Store.
func (s *MemStore) Update(ctx context.Context, name string, fn func(m *Model) ([]Event, error)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case s.sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-s.sem }()
	s.mu.Lock()
	if err := s.checkOpenLocked(); err != nil {
		s.mu.Unlock()
		return err
	}
	m := Model{Name: name}
	if old, ok := s.models[name]; ok {
		m = old.Clone()
	}
	seq := uint64(len(s.events))
	s.mu.Unlock()

	events, err := fn(&m) // outside mu: readers go on; sem keeps writers out
	if err != nil || len(events) == 0 {
		return err
	}
	if err := ValidateModel(m); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range events {
		seq++
		events[i].Seq = seq
		s.events = append(s.events, cloneEvent(events[i]))
	}
	s.models[name] = m.Clone()
	return nil
}

// Import implements Importer.
func (s *MemStore) Import(ctx context.Context, models []Model, events []Event) error {
	if err := checkImport(models, events); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case s.sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-s.sem }()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkOpenLocked(); err != nil {
		return err
	}
	if n := countModels(s.models); n != 0 || len(s.events) != 0 {
		return fmt.Errorf("%w: the memory store holds %d models and %d events", ErrNotEmpty, n, len(s.events))
	}
	for _, e := range events {
		e = cloneEvent(e)
		if e.Record != nil {
			e.Record.Artifact.Path = ""
		}
		s.events = append(s.events, e)
	}
	for _, m := range models {
		s.models[m.Name] = importedModel(m)
	}
	return nil
}

func cloneEvent(e Event) Event {
	e.Changes = slices.Clone(e.Changes)
	e.SplitBefore = maps.Clone(e.SplitBefore)
	e.SplitAfter = maps.Clone(e.SplitAfter)
	if e.Record != nil {
		r := e.Record.clone()
		e.Record = &r
	}
	e.Canary = e.Canary.clone()
	e.Shadow = e.Shadow.clone()
	return e
}

// Events implements Store.
func (s *MemStore) Events(ctx context.Context, name string, after uint64) ([]Event, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkOpenLocked(); err != nil {
		return nil, err
	}
	var out []Event
	for _, e := range s.events[min(after, uint64(len(s.events))):] {
		if name == "" || e.Name == name {
			out = append(out, cloneEvent(e))
		}
	}
	return out, nil
}

// Seq implements Store.
func (s *MemStore) Seq(ctx context.Context) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkOpenLocked(); err != nil {
		return 0, err
	}
	return uint64(len(s.events)), nil
}

// Close implements Store: the store's content is dropped.
func (s *MemStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	s.models, s.events, s.artifacts = nil, nil, nil
	if s.cacheDir != "" {
		return os.RemoveAll(s.cacheDir)
	}
	return nil
}
