package registry

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// ElectorConfig configures NewElector. Only Leaser is required.
type ElectorConfig struct {
	// Leaser is the shared store the replicas contend on (a Store that
	// implements Leaser). Required.
	Leaser Leaser
	// Name is the lease's name. If empty, "autopilot".
	Name string
	// Holder names this contender; it must differ between contenders. If
	// empty, host-pid-random.
	Holder string
	// TTL is how long the lease lasts unless renewed: a leader that dies
	// is replaced within TTL. If zero, 10 s.
	TTL time.Duration
	// Renew is how often the leader renews the lease and a stand-by
	// contender tries to take it. It must be less than TTL. If zero, TTL/3.
	Renew time.Duration
	// OnChange, if set, is called by the elector's goroutine, in order,
	// each time this contender becomes leader (Leader true, a new Epoch)
	// or stops being one. It must not block for long.
	OnChange func(Leadership)
	// Logger receives leadership changes and store errors. If nil, they
	// are discarded.
	Logger *slog.Logger
}

// Leadership is one contender's standing in an election.
type Leadership struct {
	// Leader reports whether this contender holds the lease.
	Leader bool
	// Epoch is the lease's fencing epoch when this contender last took
	// it; tag the leader's actions with it.
	Epoch uint64
}

// ElectorStats is a snapshot of an Elector.
type ElectorStats struct {
	Name   string        // the lease
	Holder string        // this contender
	TTL    time.Duration // the lease's time to live
	Leader bool          // holds the lease now
	Epoch  uint64        // the epoch of this contender's current or last term
	// CurrentHolder is the lease's holder as last seen ("" if free or
	// never read).
	CurrentHolder string
	Terms         uint64 // times this contender became leader
	Attempts      uint64 // TryAcquire calls
	Errors        uint64 // TryAcquire and Release calls that failed
	LastError     string // the last failure, "" if none
}

// Elector keeps one contender in the election for a lease: its goroutine
// tries to take the lease every Renew while another holds it, renews it
// every Renew while it holds it, and stops being leader when it could not
// renew before the lease ran out (by the local clock, counted from before
// the last successful renewal was sent, so a leader always steps down
// before the store lets another take over). Close releases the lease, so
// that a successor takes over at once on a clean shutdown (within Renew,
// or at once when the Leaser is also a Notifier that reports the release,
// as the PostgreSQL store does); a killed leader's lease expires and
// another contender takes it within TTL.
//
// Only a Leader with the current Epoch may act: tag each action with the
// Epoch and have the store refuse actions from an older one, since a
// leader paused (GC, a stalled machine) past its lease cannot know it was
// deposed until it next renews.
type Elector struct {
	leaser       Leaser
	name, holder string
	ttl, renew   time.Duration
	onChange     func(Leadership)
	log          *slog.Logger
	stop         context.CancelFunc
	done         chan struct{}
	closeOnce    sync.Once
	mu           sync.Mutex // guards the fields below
	leader       bool
	until        time.Time // the local time the lease ends unless renewed
	stats        ElectorStats
}

// NewElector validates cfg and starts contending.
func NewElector(cfg ElectorConfig) (*Elector, error) {
	if cfg.Leaser == nil {
		return nil, errors.New("registry: elector: no Leaser")
	}
	if cfg.Name == "" {
		cfg.Name = "autopilot"
	}
	if cfg.Holder == "" {
		host, _ := os.Hostname()
		var b [4]byte
		_, _ = rand.Read(b[:])
		cfg.Holder = fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b[:]))
	}
	switch {
	case cfg.TTL < 0:
		return nil, fmt.Errorf("registry: elector: TTL %v is negative", cfg.TTL)
	case cfg.TTL == 0:
		cfg.TTL = 10 * time.Second
	}
	switch {
	case cfg.Renew < 0 || cfg.Renew >= cfg.TTL:
		return nil, fmt.Errorf("registry: elector: Renew %v must be positive and less than TTL %v", cfg.Renew, cfg.TTL)
	case cfg.Renew == 0:
		cfg.Renew = cfg.TTL / 3
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	ctx, stop := context.WithCancel(context.Background())
	e := &Elector{
		leaser: cfg.Leaser, name: cfg.Name, holder: cfg.Holder, ttl: cfg.TTL, renew: cfg.Renew,
		onChange: cfg.OnChange, log: cfg.Logger.With("lease", cfg.Name, "holder", cfg.Holder),
		stop: stop, done: make(chan struct{}),
		stats: ElectorStats{Name: cfg.Name, Holder: cfg.Holder, TTL: cfg.TTL},
	}
	go e.run(ctx)
	return e, nil
}

// Holder is this contender's name.
func (e *Elector) Holder() string { return e.holder }

// Leadership returns this contender's standing now. Leader is false once
// the lease's time ran out, even if the goroutine has not noticed yet.
func (e *Elector) Leadership() Leadership {
	e.mu.Lock()
	defer e.mu.Unlock()
	return Leadership{Leader: e.leader && time.Now().Before(e.until), Epoch: e.stats.Epoch}
}

// IsLeader reports whether this contender holds the lease now.
func (e *Elector) IsLeader() bool { return e.Leadership().Leader }

// Stats returns a snapshot.
func (e *Elector) Stats() ElectorStats {
	e.mu.Lock()
	defer e.mu.Unlock()
	s := e.stats
	s.Leader = e.leader && time.Now().Before(e.until)
	return s
}

// Close stops contending: a leader steps down (OnChange is called) and
// releases the lease. It waits for the goroutine and is safe to call more
// than once. Close the Elector before its store.
func (e *Elector) Close() error {
	e.closeOnce.Do(e.stop)
	<-e.done
	return nil
}

func (e *Elector) run(ctx context.Context) {
	defer close(e.done)
	notifier, _ := e.leaser.(Notifier)
	for {
		// A stand-by contender also tries as soon as the store reports a
		// change (a released lease is one), taking the channel before it
		// reads, as Notifier asks.
		var changed <-chan struct{}
		if notifier != nil {
			changed = notifier.Changed()
		}
		wait := e.attempt(ctx)
		if ctx.Err() != nil {
			break
		}
		if !e.leaderUntil().IsZero() {
			changed = nil
		}
		if until := e.leaderUntil(); !until.IsZero() && time.Until(until) < wait {
			wait = time.Until(until) // step down on time if the renewal fails
		}
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
		case <-changed:
		case <-timer.C:
			if until := e.leaderUntil(); !until.IsZero() && !time.Now().Before(until) {
				e.set(false, 0, "the lease ran out before it could be renewed")
			}
		}
		timer.Stop()
		if ctx.Err() != nil {
			break
		}
	}
	e.set(false, 0, "closing")
	rctx, cancel := context.WithTimeout(context.Background(), e.renew)
	defer cancel()
	if err := e.leaser.Release(rctx, e.name, e.holder); err != nil {
		e.failed(fmt.Errorf("release: %w", err))
	}
}

// attempt takes or renews the lease once and returns how long to wait
// before the next attempt.
func (e *Elector) attempt(ctx context.Context) time.Duration {
	start := time.Now()
	actx, cancel := context.WithTimeout(ctx, e.renew)
	l, err := e.leaser.TryAcquire(actx, e.name, e.holder, e.ttl)
	cancel()
	e.mu.Lock()
	e.stats.Attempts++
	e.mu.Unlock()
	if ctx.Err() != nil {
		return 0
	}
	if err != nil {
		e.failed(err)
		if until := e.leaderUntil(); !until.IsZero() && !time.Now().Before(until) {
			e.set(false, 0, "the lease ran out before it could be renewed")
		}
		return e.renew
	}
	e.mu.Lock()
	e.stats.CurrentHolder = l.Holder
	e.mu.Unlock()
	if l.Held {
		// The store's clock was at start or later when it counted Left.
		e.mu.Lock()
		e.until = start.Add(l.Left)
		e.mu.Unlock()
		e.set(true, l.Epoch, "")
		return e.renew
	}
	e.set(false, 0, "held by "+l.Holder)
	if l.Left > 0 && l.Left < e.renew {
		return l.Left + time.Millisecond // try as soon as it expires
	}
	return e.renew
}

// leaderUntil is the local time the held lease ends, zero if not leader.
func (e *Elector) leaderUntil() time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.leader {
		return time.Time{}
	}
	return e.until
}

// set records this contender's standing and calls OnChange if it changed
// (a new epoch is a new term).
func (e *Elector) set(leader bool, epoch uint64, why string) {
	e.mu.Lock()
	changed := leader != e.leader || (leader && epoch != e.stats.Epoch)
	e.leader = leader
	if leader {
		if changed {
			e.stats.Terms++
		}
		e.stats.Epoch = epoch
	} else {
		e.until = time.Time{}
	}
	now := Leadership{Leader: leader, Epoch: e.stats.Epoch}
	e.mu.Unlock()
	if !changed {
		return
	}
	if leader {
		e.log.Info("registry: elected leader", "epoch", epoch)
	} else {
		e.log.Info("registry: no longer leader", "epoch", now.Epoch, "reason", why)
	}
	if e.onChange != nil {
		e.onChange(now)
	}
}

func (e *Elector) failed(err error) {
	e.mu.Lock()
	e.stats.Errors++
	e.stats.LastError = err.Error()
	e.mu.Unlock()
	e.log.Warn("registry: lease", "err", err)
}
