package fleet

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/signalforge/signalforge/route"
)

// Source returns a replica's cumulative counters; route.Router.Counters
// is one.
type Source func() []route.VersionCounters

// FromRouter returns r's counters as a Source.
func FromRouter(r *route.Router) Source { return r.Counters }

// PublisherConfig configures a Publisher. The zero value is ready to use.
type PublisherConfig struct {
	// Replica identifies this replica in the fleet (a pod or host name).
	// If empty, the host name and process id.
	Replica string
	// Interval is how often the counters are published. If zero, 2s.
	Interval time.Duration
	// TTL is how long a published snapshot lives unless replaced. If
	// zero, 3×Interval: a replica that misses two publishes is still
	// counted, one that stopped ages out.
	TTL time.Duration
	// Timeout bounds one publish. If zero, Interval.
	Timeout time.Duration
}

func (c *PublisherConfig) setDefaults() error {
	if c.Replica == "" {
		host, err := os.Hostname()
		if err != nil || !validReplica(host) {
			host = "replica"
		}
		c.Replica = host + "-" + strconv.Itoa(os.Getpid())
	}
	if c.Interval == 0 {
		c.Interval = 2 * time.Second
	}
	if c.TTL == 0 {
		c.TTL = 3 * c.Interval
	}
	if c.Timeout == 0 {
		c.Timeout = c.Interval
	}
	switch {
	case !validReplica(c.Replica):
		return fmt.Errorf("fleet: invalid Replica %q (letters, digits, '.', '_', '-'; at most 128)", c.Replica)
	case c.Interval < time.Millisecond:
		return fmt.Errorf("fleet: Interval %v below 1ms", c.Interval)
	case c.TTL <= c.Interval:
		return fmt.Errorf("fleet: TTL %v not above Interval %v: snapshots would expire between publishes", c.TTL, c.Interval)
	case c.Timeout < 0:
		return fmt.Errorf("fleet: negative Timeout %v", c.Timeout)
	}
	return nil
}

// PublisherStats is a snapshot of a Publisher's work.
type PublisherStats struct {
	Replica   string
	Publishes int64 // successful
	Failures  int64
	// LastPublish is when the last successful publish was read from the
	// Source; LastError is the last failure's message ("" if none since).
	LastPublish time.Time
	LastError   string
}

// Publisher publishes one replica's counters to a Store every Interval,
// from one goroutine of its own that Close stops.
type Publisher struct {
	store   Store
	src     Source
	cfg     PublisherConfig
	started time.Time

	cancel context.CancelFunc // stops run, interrupting a publish in flight
	done   chan struct{}

	mu    sync.Mutex // guards stats
	stats PublisherStats
}

// NewPublisher starts publishing src's counters to store: at once, then
// every cfg.Interval.
func NewPublisher(store Store, src Source, cfg PublisherConfig) (*Publisher, error) {
	if store == nil || src == nil {
		return nil, errors.New("fleet: NewPublisher needs a Store and a Source")
	}
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Publisher{store: store, src: src, cfg: cfg, started: time.Now(),
		cancel: cancel, done: make(chan struct{}), stats: PublisherStats{Replica: cfg.Replica}}
	go p.run(ctx)
	return p, nil
}

func (p *Publisher) run(ctx context.Context) {
	defer close(p.done)
	t := time.NewTicker(p.cfg.Interval)
	defer t.Stop()
	for {
		p.publish(ctx)
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
	}
}

// publish sends one snapshot per model.
func (p *Publisher) publish(ctx context.Context) {
	if ctx.Err() != nil {
		return // closed
	}
	now := time.Now()
	byModel := map[string]*Snapshot{}
	var snaps []*Snapshot
	for _, vc := range p.src() {
		s := byModel[vc.Model]
		if s == nil {
			s = &Snapshot{Model: vc.Model, Replica: p.cfg.Replica, Started: p.started, At: now,
				Versions: map[string]route.Counters{}}
			byModel[vc.Model] = s
			snaps = append(snaps, s)
		}
		s.Versions[vc.Version] = vc.Counters
	}
	out := make([]Snapshot, len(snaps))
	for i, s := range snaps {
		out[i] = *s
	}
	ctx, cancel := context.WithTimeout(ctx, p.cfg.Timeout)
	err := p.store.Publish(ctx, p.cfg.TTL, out...)
	cancel()
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil {
		p.stats.Failures++
		p.stats.LastError = err.Error()
		return
	}
	p.stats.Publishes++
	p.stats.LastPublish = now
	p.stats.LastError = ""
}

// Stats returns a snapshot of the publisher's work.
func (p *Publisher) Stats() PublisherStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stats
}

// Close stops publishing, interrupting a publish in flight, and waits for
// the goroutine to end. It is idempotent. The last snapshot stays in the
// Store until its TTL.
func (p *Publisher) Close() error {
	p.cancel()
	<-p.done
	return nil
}

// CollectorConfig configures a Collector. The zero value is ready to use.
type CollectorConfig struct {
	// Interval is the replicas' publish interval. If zero, 2s.
	Interval time.Duration
	// StaleAfter is the age beyond which a snapshot is left out of the
	// sum (its replica is listed as stale). If zero, 3×Interval.
	StaleAfter time.Duration
}

// Collector reads a model's snapshots and sums them over the fleet.
type Collector struct {
	store      Store
	staleAfter time.Duration
}

// NewCollector returns a Collector reading store.
func NewCollector(store Store, cfg CollectorConfig) (*Collector, error) {
	if store == nil {
		return nil, errors.New("fleet: NewCollector needs a Store")
	}
	if cfg.Interval == 0 {
		cfg.Interval = 2 * time.Second
	}
	if cfg.StaleAfter == 0 {
		cfg.StaleAfter = 3 * cfg.Interval
	}
	if cfg.Interval < 0 || cfg.StaleAfter < 0 {
		return nil, fmt.Errorf("fleet: negative Interval %v or StaleAfter %v", cfg.Interval, cfg.StaleAfter)
	}
	return &Collector{store: store, staleAfter: cfg.StaleAfter}, nil
}

// Collect returns the fleet's sum for model now.
func (c *Collector) Collect(ctx context.Context, model string) (Fleet, error) {
	snaps, err := c.store.Snapshots(ctx, model)
	if err != nil {
		return Fleet{Model: model}, err
	}
	return Sum(model, snaps, time.Now(), c.staleAfter), nil
}
