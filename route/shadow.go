package route

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// ShadowFunc runs the shadow version on one request's input and returns
// its flattened outputs. The server typically closes over its batcher or
// session for the shadow version; the router does not depend on either.
type ShadowFunc[In any] func(ctx context.Context, in In) ([]float32, error)

// ShadowConfig configures a Shadow.
type ShadowConfig[In any] struct {
	// Model and Version label the shadow in its stats.
	Model, Version string
	// Run executes the shadow version. Required.
	Run ShadowFunc[In]
	// Rate is the share of offered requests copied to the shadow, in
	// (0, 1], sampled by key hash so a request id is consistently in or
	// out. If zero, 1.
	Rate float64
	// QueueSize bounds the requests waiting for the shadow; when it is
	// full, Offer drops instead of waiting. If zero, 64.
	QueueSize int
	// Workers is how many shadow requests run at once. If zero, 1: the
	// shadow should never compete with the primary for more than a core.
	Workers int
	// MaxBusy caps the share of wall time each worker spends running the
	// shadow: after a run that took d, the worker rests d·(1/MaxBusy − 1)
	// (requests arriving meanwhile queue or drop). A CPU-bound shadow on
	// the primary's machine takes a core's worth of CPU otherwise; 0.25
	// limits it to a quarter of one. If zero, 1 (no cap).
	MaxBusy float64
	// Nice is the scheduling niceness (1–19) of the workers' OS threads on
	// Linux: each worker is locked to its own thread, whose nice value is
	// raised so that when the CPU is short the kernel runs the primary's
	// threads first. It covers work Run does on the calling goroutine
	// (a cgo session Run included), not goroutines Run hands work to (a
	// batcher's). If zero, 19; negative leaves the priority alone.
	// Measured (BenchmarkShadowPrimaryP99, 2-core VM shared with other
	// jobs): a CPU-bound shadow at normal priority stalled the primary's
	// p99 from 0.2 to 4.2ms, at nice 19 to 0.4–4ms (with autogroup
	// scheduling, Debian's default, nice only ranks threads within the
	// process's session group, so it cannot keep other processes off the
	// primary's core). Run CPU-heavy shadows on another replica, with
	// Run making a remote call, when the p99 matters. The caveat: a niced
	// thread running Go code still takes part in GC stop-the-world, so on
	// a starved machine it can lengthen pauses; cgo calls do not hold a P
	// and are not affected.
	Nice int
	// Timeout bounds one shadow run. If zero, 10s.
	Timeout time.Duration
	// Salt varies the sampled subset. If empty, none.
	Salt string
	// Logger receives shadow errors at debug level. If nil, discarded.
	Logger *slog.Logger
}

// ShadowStats compares a shadow with the primary on the requests both
// answered.
type ShadowStats struct {
	Model, Version string
	// Offered counts Offer calls; Sampled those picked by Rate; Dropped
	// those discarded because the queue was full or Close came first
	// (including a run Close cancelled).
	Offered, Sampled, Dropped int64
	// Compared counts requests where both answers had the same length;
	// Mismatched those where the lengths differed.
	Compared, Mismatched int64
	// MeanAbsDiff and MaxAbsDiff are over every compared output element;
	// non-finite elements are left out and counted in NonFinite.
	MeanAbsDiff, MaxAbsDiff float64
	NonFinite               int64
	// DirectionAgreementPct is the share of compared elements where the
	// shadow's sign (down, flat, up) equals the primary's.
	DirectionAgreementPct float64
	// Shadow is the shadow's latency (and errors); Primary is the primary's
	// latency on the same sampled requests.
	Shadow, Primary Metrics
}

// Shadow mirrors a sampled share of traffic to a shadow version, compares
// its answers with the primary's and throws them away. Offer never blocks.
type Shadow[In any] struct {
	cfg       ShadowConfig[In]
	salt      uint64
	threshold uint64 // sample when hash < threshold (or always if rate 1)
	queue     chan shadowJob[In]

	offered, sampled, dropped atomic.Int64
	closed                    atomic.Bool

	mu  sync.Mutex // guards cmp
	cmp shadowCompare

	cancel    context.CancelFunc
	closeOnce sync.Once
	wg        sync.WaitGroup
}

type shadowJob[In any] struct {
	in      In
	primary []float32
	lat     time.Duration
}

type shadowCompare struct {
	compared, mismatched, nonFinite int64
	elems, agree                    int64
	sumAbs, maxAbs                  float64
	shadow, primary                 counters
}

// NewShadow starts a Shadow's workers. Close stops them.
func NewShadow[In any](cfg ShadowConfig[In]) (*Shadow[In], error) {
	if cfg.Run == nil {
		return nil, errors.New("route: ShadowConfig.Run is required")
	}
	if cfg.Rate == 0 {
		cfg.Rate = 1
	}
	if cfg.QueueSize == 0 {
		cfg.QueueSize = 64
	}
	if cfg.Workers == 0 {
		cfg.Workers = 1
	}
	if cfg.MaxBusy == 0 {
		cfg.MaxBusy = 1
	}
	if cfg.Nice == 0 {
		cfg.Nice = 19
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	switch {
	case !(cfg.Rate > 0 && cfg.Rate <= 1):
		return nil, fmt.Errorf("route: shadow Rate %v not in (0, 1]", cfg.Rate)
	case !(cfg.MaxBusy > 0 && cfg.MaxBusy <= 1):
		return nil, fmt.Errorf("route: shadow MaxBusy %v not in (0, 1]", cfg.MaxBusy)
	case cfg.Nice > 19:
		return nil, fmt.Errorf("route: shadow Nice %d above 19", cfg.Nice)
	case cfg.QueueSize < 0 || cfg.Workers < 0 || cfg.Timeout < 0:
		return nil, errors.New("route: shadow QueueSize, Workers and Timeout must be positive")
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Shadow[In]{
		cfg:    cfg,
		salt:   modelSalt(cfg.Salt, cfg.Model+"\xffshadow\xff"+cfg.Version),
		queue:  make(chan shadowJob[In], cfg.QueueSize),
		cancel: cancel,
	}
	if cfg.Rate < 1 {
		s.threshold = uint64(cfg.Rate * (1 << 63) * 2)
	}
	s.wg.Add(cfg.Workers)
	for range cfg.Workers {
		go s.worker(ctx)
	}
	return s, nil
}

// Offer hands one answered request to the shadow: key is the request id
// (for sampling), in the request's input, primary the primary's flattened
// outputs and primaryLatency how long it took. It reports whether the
// request was queued. Offer never blocks and does not allocate. The shadow
// keeps in and primary until it has run: the caller must not modify them
// afterwards.
func (s *Shadow[In]) Offer(key string, in In, primary []float32, primaryLatency time.Duration) bool {
	s.offered.Add(1)
	if s.threshold != 0 {
		var h uint64
		if key == "" {
			h = rand.Uint64()
		} else {
			h = hashString(s.salt, key)
		}
		if h >= s.threshold {
			return false
		}
	}
	s.sampled.Add(1)
	if s.closed.Load() {
		s.dropped.Add(1)
		return false
	}
	select {
	case s.queue <- shadowJob[In]{in: in, primary: primary, lat: primaryLatency}:
		return true
	default:
		s.dropped.Add(1)
		return false
	}
}

func (s *Shadow[In]) worker(ctx context.Context) {
	defer s.wg.Done()
	if s.cfg.Nice > 0 {
		if err := lowerThreadPriority(s.cfg.Nice); err != nil {
			s.cfg.Logger.Warn("route: shadow worker keeps normal priority", "err", err)
		}
	}
	for {
		select {
		case <-ctx.Done():
			return
		case j := <-s.queue:
			if ctx.Err() != nil { // select picked the job over Done
				s.dropped.Add(1)
				return
			}
			busy := s.runJob(ctx, j)
			if s.cfg.MaxBusy < 1 {
				rest := time.NewTimer(time.Duration(float64(busy) * (1/s.cfg.MaxBusy - 1)))
				select {
				case <-rest.C:
				case <-ctx.Done():
					rest.Stop()
					return
				}
			}
		}
	}
}

// runJob runs and compares one request and returns how long the run took.
func (s *Shadow[In]) runJob(ctx context.Context, j shadowJob[In]) time.Duration {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	start := time.Now()
	out, err := s.cfg.Run(ctx, j.in)
	lat := time.Since(start)
	if err != nil {
		if ctx.Err() != nil && errors.Is(err, context.Canceled) {
			s.dropped.Add(1) // cancelled by Close: not the shadow's fault
			return lat
		}
		s.cfg.Logger.Debug("route: shadow run failed", "model", s.cfg.Model, "version", s.cfg.Version, "err", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c := &s.cmp
	c.shadow.add(lat, err != nil)
	c.primary.add(j.lat, false)
	if err != nil {
		return lat
	}
	if len(out) != len(j.primary) {
		c.mismatched++
		return lat
	}
	c.compared++
	for i, p := range j.primary {
		q := out[i]
		d := math.Abs(float64(q) - float64(p))
		if math.IsNaN(d) || math.IsInf(d, 0) {
			c.nonFinite++
			continue
		}
		c.elems++
		c.sumAbs += d
		c.maxAbs = max(c.maxAbs, d)
		if sign(p) == sign(q) {
			c.agree++
		}
	}
	return lat
}

func sign(x float32) int {
	switch {
	case x > 0:
		return 1
	case x < 0:
		return -1
	}
	return 0
}

// Stats returns a snapshot of the comparison so far.
func (s *Shadow[In]) Stats() ShadowStats {
	st := ShadowStats{
		Model: s.cfg.Model, Version: s.cfg.Version,
		Offered: s.offered.Load(), Sampled: s.sampled.Load(), Dropped: s.dropped.Load(),
	}
	s.mu.Lock()
	c := s.cmp
	s.mu.Unlock()
	st.Compared, st.Mismatched, st.NonFinite = c.compared, c.mismatched, c.nonFinite
	if c.elems > 0 {
		st.MeanAbsDiff = c.sumAbs / float64(c.elems)
		st.MaxAbsDiff = c.maxAbs
		st.DirectionAgreementPct = 100 * float64(c.agree) / float64(c.elems)
	}
	st.Shadow, st.Primary = c.shadow.metrics(), c.primary.metrics()
	return st
}

// Close stops the workers, cancelling shadow runs in flight, and waits for
// them. Requests still queued are dropped. Close is idempotent.
func (s *Shadow[In]) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		s.cancel()
		s.wg.Wait()
		s.dropped.Add(int64(len(s.queue)))
	})
	return nil
}
