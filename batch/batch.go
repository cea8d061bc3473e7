// Package batch is SignalForge Serve's dynamic batcher: it gathers concurrent
// prediction requests for one model version into batches and runs each batch
// as one model call. It batches only when there is company to batch: a
// request that finds its model idle runs at once, and requests that arrive
// while the model runs are gathered into the next call, so batches grow with
// load by themselves.
//
//	b, err := batch.New(batch.Config{MaxBatchSize: 32}, sess.Run) // Window: DefaultWindow
//	...
//	out, err := b.Predict(ctx, []tensor.Tensor{x}) // x has shape [rows, features]
//	st := b.Stats()                                // AvgBatchSize, BatchTime.Avg, ...
//	err = b.Close(ctx)                             // drains the queue
//
// # Semantics
//
// Rows are counted on axis 0 of every tensor, the batch axis: a request of
// n rows occupies n rows of a batch, and every model output must have as
// many rows as the batch, row i of each output belonging to row i of the
// inputs. Any function with the shape of [RunFunc] can be batched, in
// particular an infer.Session's Run.
//
//   - Adaptive dispatch. At most MaxInFlight model calls (executors) run
//     at once. A request that arrives while none runs (the model is idle)
//     runs at once, alone. Requests that arrive while calls run wait in
//     the queue; when a call returns, its executor takes everything
//     waiting (up to MaxBatchSize rows) at once. Beside that, a batch
//     takes a free executor as soon as MaxBatchSize rows are queued, or
//     when its oldest request has waited Window since it arrived
//     (Predict was called): Window is the longest a request waits for
//     company while an executor is free, not a wait every request pays.
//     While every executor is busy, requests wait for one, however long
//     (within their deadline and the queue's bound).
//   - A batch never holds more than MaxBatchSize rows. Requests are packed
//     strictly first-come-first-served: a request that does not fit in the
//     current batch starts the next one (no overtaking).
//   - A request of more than MaxBatchSize rows is split into chunks of
//     MaxBatchSize rows (the last one smaller), which are queued together
//     and batched like any other request; Predict joins the chunks' outputs
//     in order. Splitting keeps the batch-size bound true for every model
//     call (memory and latency stay predictable) at the price of one copy
//     of that request's outputs. If any chunk fails, the request fails.
//   - Only requests whose inputs agree on everything but the batch axis (the
//     number of inputs, their element types and their shapes after axis 0)
//     are batched together; for example sequences of different lengths go to
//     different batches. Each such group has its own window; a free
//     executor takes the group whose oldest request arrived first.
//   - Deadlines: the batcher keeps an estimate of a batch's execution time
//     (a moving average of measured runs). A request whose deadline would
//     pass before its batch could finish is dispatched early (its batch
//     leaves when deadline − estimate comes before the window's end); a
//     request whose remaining time is less than the estimate when its batch
//     forms is dropped before execution with an error wrapping
//     [context.DeadlineExceeded]. The model's ctx carries the latest
//     deadline of the batch's requests.
//   - A request whose ctx ends while queued leaves the queue at once and
//     takes no batch capacity; Predict returns ctx.Err(). Once every caller
//     of a running batch has given up, the model call's ctx is cancelled
//     (ONNX Runtime then stops at the next operator).
//   - Backpressure: the queue holds at most MaxQueue rows. When a request
//     does not fit, Predict fails at once with a [*QueueFullError] (it
//     matches [ErrQueueFull] with errors.Is) whose RetryAfter estimates when
//     the queue will have drained; a server maps it to 429 + Retry-After.
//   - A model error fails exactly the requests of that batch. A panic in the
//     model is recovered and fails that batch with an error wrapping
//     [ErrPanic]; the batcher keeps serving.
//   - [Batcher.Close] stops intake, runs everything still queued, waits for
//     running batches and the batcher's goroutine, and returns. No goroutine
//     outlives it.
//
// # Choosing MaxInFlight and Window
//
// MaxInFlight is the number of model calls that may overlap. Its default,
// GOMAXPROCS / RunThreads, gives every call its cores; with more, calls
// only slow each other down, and with fewer, cores idle under load. With
// one executor Window plays no part (a request waits only while the model
// runs); with several it bounds how long a request waits for company
// before it takes a free executor beside a running call. Dispatching at
// once to any free executor ("eager" batching) degenerates under
// closed-loop load into batches of a few rows — the first caller to come
// back always finds a free executor — which is why a busy model's free
// executors wait for company. See [DefaultWindow] for the measurements.
package batch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/signalforge/signalforge/infer"
	"github.com/signalforge/signalforge/tensor"
)

// RunFunc runs a model on one batch. Every input and output has the batch
// axis first; outputs must have as many rows as the inputs. It is called
// from up to MaxInFlight goroutines at once. It must not keep or modify its
// inputs after it returns, and should return promptly once ctx is done.
// infer.Session's Run has this signature.
type RunFunc func(ctx context.Context, in []tensor.Tensor) ([]tensor.Tensor, error)

// DefaultWindow is the Window used when Config.Window is zero: 500 µs.
//
// Measured with BenchmarkBatcherInterleaved (batch/batchbench: one-row
// closed-loop callers, MaxBatchSize 32, ONNX Runtime with one intra-op
// thread, on 2 cores shared with other heavy jobs, so compare within a
// round):
//   - 1 caller: the model is always idle, so the window plays no part: a
//     median of 7 µs on the 100-50-10 MLP and ≈165 µs on the
//     512-1024-1024-1 MLP (unbatched: 3 µs and ≈90 µs), where a fixed
//     window cost ≈1.2 ms and ≈1.45 ms;
//   - 64 callers, 512-1024-1024-1 MLP: two executors served 53–58k req/s
//     against 36–39k with one (3.0–3.4× unbatched against 2.1–2.3×), in
//     batches of 24–25 rows; windows of 100 µs, 500 µs and 2 ms gave the
//     same throughput within the noise, as did 8 and 32 callers;
//   - with a cheap model (the 100-50-10 MLP runs in 4 µs) batching does
//     not raise throughput: the 5–7 µs the batcher adds per request
//     outweigh what a batch saves.
//
// So the default MaxInFlight is one executor per RunThreads cores, and the
// window, which only matters beside a running call, stays in the middle of
// the flat region.
const DefaultWindow = 500 * time.Microsecond

// Config configures a Batcher. The zero value is usable.
type Config struct {
	// MaxBatchSize is the most rows one model call receives. If zero, 32.
	MaxBatchSize int
	// Window is a latency budget: the longest a request waits for company
	// while other batches of the model run and an executor is free,
	// measured from its arrival. A request that finds the model idle does
	// not wait at all. If zero, DefaultWindow.
	Window time.Duration
	// MaxQueue is the most rows waiting to run (not counting running
	// batches). Requests beyond it are rejected with ErrQueueFull. If
	// zero, 32 × MaxBatchSize. It must be at least MaxBatchSize.
	MaxQueue int
	// MaxInFlight is the most model calls (batches) of this Batcher
	// running at once. If zero, GOMAXPROCS / RunThreads, at least 1: as
	// many concurrent runs as the cores can keep busy.
	MaxInFlight int
	// RunThreads is the number of threads one model call keeps busy: an
	// ONNX Runtime session's intra-op threads. It only sizes the default
	// of MaxInFlight. If zero, 1 (the sessions' default).
	RunThreads int
	// Logger receives a record for each recovered model panic (with its
	// stack). If nil, nothing is logged.
	Logger *slog.Logger
}

func (c *Config) setDefaults() error {
	if c.MaxBatchSize == 0 {
		c.MaxBatchSize = 32
	}
	if c.Window == 0 {
		c.Window = DefaultWindow
	}
	if c.MaxQueue == 0 {
		c.MaxQueue = 32 * c.MaxBatchSize
	}
	if c.RunThreads == 0 {
		c.RunThreads = 1
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = defaultInFlight(runtime.GOMAXPROCS(0), max(c.RunThreads, 1))
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	switch {
	case c.MaxBatchSize < 0:
		return fmt.Errorf("batch: MaxBatchSize %d is negative", c.MaxBatchSize)
	case c.Window < 0:
		return fmt.Errorf("batch: Window %v is negative", c.Window)
	case c.MaxQueue < c.MaxBatchSize:
		return fmt.Errorf("batch: MaxQueue %d is less than MaxBatchSize %d", c.MaxQueue, c.MaxBatchSize)
	case c.MaxInFlight < 0:
		return fmt.Errorf("batch: MaxInFlight %d is negative", c.MaxInFlight)
	case c.RunThreads < 0:
		return fmt.Errorf("batch: RunThreads %d is negative", c.RunThreads)
	}
	return nil
}

// defaultInFlight is MaxInFlight's default for procs cores and model calls
// of runThreads threads each.
func defaultInFlight(procs, runThreads int) int {
	return max(1, procs/runThreads)
}

// Errors returned by Predict.
var (
	// ErrClosed is returned by Predict once Close has been called, and
	// for queued requests when Close gives up draining.
	ErrClosed = errors.New("batch: batcher closed")
	// ErrQueueFull is matched (errors.Is) by the *QueueFullError Predict
	// returns when the queue has no room.
	ErrQueueFull = errors.New("batch: queue full")
	// ErrTooLarge is returned for a request with more rows than MaxQueue;
	// it can never be queued. It also wraps infer.ErrInput.
	ErrTooLarge = errors.New("batch: request larger than the queue")
	// ErrPanic is wrapped by the error of every request of a batch whose
	// model call panicked.
	ErrPanic = errors.New("batch: model panicked")
)

// QueueFullError reports a request rejected because the queue was full.
type QueueFullError struct {
	// Queued is the number of rows queued when the request arrived;
	// Limit is MaxQueue; Rows is the size of the rejected request.
	Queued, Limit, Rows int
	// RetryAfter estimates how long the queue needs to drain: the queued
	// batches times the estimated batch execution time, divided by
	// MaxInFlight, and never less than Window. HTTP's Retry-After is in
	// whole seconds, so a server rounds it up.
	RetryAfter time.Duration
}

func (e *QueueFullError) Error() string {
	return fmt.Sprintf("batch: queue full (%d of %d rows queued, request has %d); retry after %v",
		e.Queued, e.Limit, e.Rows, e.RetryAfter)
}

// Unwrap makes errors.Is(err, ErrQueueFull) true.
func (e *QueueFullError) Unwrap() error { return ErrQueueFull }

// Batcher batches Predict calls into model calls. It is safe for
// concurrent use. Create it with New and release it with Close.
type Batcher struct {
	cfg Config
	run RunFunc

	// Channels into the owner goroutine (loop), which alone owns the queue.
	submit   chan *call
	cancels  chan cancelMsg
	finished chan batchDone
	closing  chan struct{} // closed by Close: stop intake, drain
	abort    chan struct{} // closed when Close's ctx ends: give up draining
	done     chan struct{} // closed when loop and all batches have returned

	closeOnce, abortOnce sync.Once

	// runCtx is the parent of every model call's ctx; cancelled on abort.
	runCtx    context.Context
	cancelRun context.CancelFunc

	queuedRows atomic.Int64 // rows reserved in the queue (Predict adds, loop subtracts)
	estimate   atomic.Int64 // estimated batch execution time, ns (0: none yet)
	inFlight   atomic.Int64 // batches running
	rejected   atomic.Int64

	workers sync.WaitGroup // running batches' goroutines

	mu sync.Mutex // guards st
	st stats

	// Owned by loop.
	groups map[string]*group
}

// call is one Predict call on its way through the queue. It carries the
// caller's ctx like an http.Request does: the batcher reads its deadline and
// whether it is done, and never outlives the call with it.
type call struct {
	ctx      context.Context
	key      string
	rows     int
	parts    []*part
	arrival  time.Time
	deadline time.Time // zero if ctx has none
	results  chan result

	dropped bool // owned by loop: counted once in Expired/Cancelled
}

// part is a chunk of at most MaxBatchSize rows of a call, the unit that is
// queued and batched.
type part struct {
	c    *call
	idx  int
	in   []tensor.Tensor
	rows int

	// Owned by loop: the part is queued iff g != nil; bt is the batch it
	// ran in, once launched.
	g          *group
	prev, next *part
	bt         *batch
}

type result struct {
	idx int
	out []tensor.Tensor
	err error
}

type cancelMsg struct {
	c     *call
	count bool // the caller gave up (count it); false: Predict failed anyway
}

type batchDone struct {
	bt       *batch
	rows     int
	dur      time.Duration
	err      error
	panicked bool
}

// group is the FIFO queue of parts with one input signature.
type group struct {
	key        string
	head, tail *part
	rows       int
}

func (g *group) push(p *part) {
	p.g = g
	p.prev = g.tail
	if g.tail != nil {
		g.tail.next = p
	} else {
		g.head = p
	}
	g.tail = p
	g.rows += p.rows
}

func (g *group) unlink(p *part) {
	if p.prev != nil {
		p.prev.next = p.next
	} else {
		g.head = p.next
	}
	if p.next != nil {
		p.next.prev = p.prev
	} else {
		g.tail = p.prev
	}
	p.prev, p.next, p.g = nil, nil, nil
	g.rows -= p.rows
}

// New starts a Batcher that calls run. It returns an error if cfg is
// invalid.
func New(cfg Config, run RunFunc) (*Batcher, error) {
	if run == nil {
		return nil, errors.New("batch: nil RunFunc")
	}
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	b := &Batcher{
		cfg:      cfg,
		run:      run,
		submit:   make(chan *call),
		cancels:  make(chan cancelMsg),
		finished: make(chan batchDone),
		closing:  make(chan struct{}),
		abort:    make(chan struct{}),
		done:     make(chan struct{}),
		groups:   make(map[string]*group),
	}
	b.st.batchSizes = make([]int64, cfg.MaxBatchSize+1)
	b.st.batchExec = newBounded(execBounds[:])
	b.st.queueWaitHist = newBounded(latencyBounds[:])
	b.st.computeHist = newBounded(latencyBounds[:])
	b.runCtx, b.cancelRun = context.WithCancel(context.Background())
	go b.loop()
	return b, nil
}

// Config returns the configuration in effect, defaults applied.
func (b *Batcher) Config() Config { return b.cfg }

// Predict queues the request's inputs (all with the same number of rows on
// axis 0), waits for its batch to run and returns the outputs for its rows.
// The outputs may share memory with the batch's outputs, never with another
// request's rows. The caller must not modify in while Predict runs, nor
// after a Predict that returned because ctx ended (its batch may still be
// running).
//
// Errors: ctx.Err() if ctx ends first; an error wrapping
// context.DeadlineExceeded if the deadline cannot be met; *QueueFullError;
// ErrClosed; errors wrapping infer.ErrInput for malformed inputs (and
// ErrTooLarge); otherwise the model's error or ErrPanic, wrapped.
func (b *Batcher) Predict(ctx context.Context, in []tensor.Tensor) ([]tensor.Tensor, error) {
	rows, key, err := signature(in)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	select {
	case <-b.closing:
		return nil, ErrClosed
	default:
	}
	if rows > b.cfg.MaxQueue {
		return nil, fmt.Errorf("%w: %w: %d rows, the queue holds %d", ErrTooLarge, infer.ErrInput, rows, b.cfg.MaxQueue)
	}
	if qerr := b.reserve(rows); qerr != nil {
		return nil, qerr
	}
	c, err := b.newCall(ctx, in, rows, key)
	if err != nil {
		b.queuedRows.Add(-int64(rows))
		return nil, err
	}
	select {
	case b.submit <- c:
	case <-ctx.Done():
		b.queuedRows.Add(-int64(rows))
		return nil, ctx.Err()
	case <-b.done:
		b.queuedRows.Add(-int64(rows))
		return nil, ErrClosed
	}

	outs := make([][]tensor.Tensor, len(c.parts))
	for got := 0; got < len(c.parts); got++ {
		select {
		case r := <-c.results:
			if r.err != nil {
				if len(c.parts) > 1 {
					b.cancel(c, false)
				}
				return nil, r.err
			}
			outs[r.idx] = r.out
		case <-ctx.Done():
			b.cancel(c, true)
			return nil, ctx.Err()
		}
	}
	if len(outs) == 1 {
		return outs[0], nil
	}
	joined := make([]tensor.Tensor, len(outs[0]))
	parts := make([]tensor.Tensor, len(outs))
	for j := range joined {
		for i := range outs {
			parts[i] = outs[i][j]
		}
		t, err := tensor.Concat(parts)
		if err != nil {
			return nil, fmt.Errorf("batch: joining output %d of a split request: %w", j, err)
		}
		joined[j] = t
	}
	return joined, nil
}

// reserve takes rows of queue capacity, or returns a *QueueFullError.
func (b *Batcher) reserve(rows int) error {
	limit := int64(b.cfg.MaxQueue)
	for {
		cur := b.queuedRows.Load()
		if cur+int64(rows) > limit {
			b.rejected.Add(1)
			return &QueueFullError{Queued: int(cur), Limit: int(limit), Rows: rows, RetryAfter: b.retryAfter(cur)}
		}
		if b.queuedRows.CompareAndSwap(cur, cur+int64(rows)) {
			return nil
		}
	}
}

func (b *Batcher) retryAfter(queued int64) time.Duration {
	batches := (queued + int64(b.cfg.MaxBatchSize) - 1) / int64(b.cfg.MaxBatchSize)
	d := time.Duration(batches) * time.Duration(b.estimate.Load()) / time.Duration(b.cfg.MaxInFlight)
	return max(d, b.cfg.Window)
}

// cancel asks the loop to drop whatever of c is still queued.
func (b *Batcher) cancel(c *call, count bool) {
	select {
	case b.cancels <- cancelMsg{c: c, count: count}:
	case <-b.done:
	}
}

// signature validates a request and returns its rows and its group key:
// requests with equal keys can be concatenated on axis 0.
func signature(in []tensor.Tensor) (rows int, key string, err error) {
	if len(in) == 0 {
		return 0, "", fmt.Errorf("%w: batch: no input tensors", infer.ErrInput)
	}
	buf := make([]byte, 0, 16*len(in))
	for i, t := range in {
		if !t.Valid() {
			return 0, "", fmt.Errorf("%w: batch: input %d is not a valid tensor", infer.ErrInput, i)
		}
		s := t.Shape()
		if len(s) == 0 {
			return 0, "", fmt.Errorf("%w: batch: input %d is a scalar; inputs need a batch axis", infer.ErrInput, i)
		}
		if i == 0 {
			rows = int(s[0])
		} else if int(s[0]) != rows {
			return 0, "", fmt.Errorf("%w: batch: input %d has %d rows, input 0 has %d", infer.ErrInput, i, s[0], rows)
		}
		buf = append(buf, byte(t.DType()))
		for _, d := range s[1:] {
			buf = strconv.AppendInt(buf, d, 10)
			buf = append(buf, ',')
		}
		buf = append(buf, ';')
	}
	if rows == 0 {
		return 0, "", fmt.Errorf("%w: batch: request has no rows", infer.ErrInput)
	}
	return rows, string(buf), nil
}

func (b *Batcher) newCall(ctx context.Context, in []tensor.Tensor, rows int, key string) (*call, error) {
	maxRows := b.cfg.MaxBatchSize
	n := (rows + maxRows - 1) / maxRows
	c := &call{ctx: ctx, key: key, rows: rows, arrival: time.Now(), parts: make([]*part, n), results: make(chan result, n)}
	c.deadline, _ = ctx.Deadline()
	if n == 1 {
		c.parts[0] = &part{c: c, in: in, rows: rows}
		return c, nil
	}
	for i := range n {
		lo, hi := i*maxRows, min((i+1)*maxRows, rows)
		chunk := make([]tensor.Tensor, len(in))
		for j, t := range in {
			s, err := t.Slice(lo, hi)
			if err != nil {
				return nil, fmt.Errorf("%w: batch: %w", infer.ErrInput, err)
			}
			chunk[j] = s
		}
		c.parts[i] = &part{c: c, idx: i, in: chunk, rows: hi - lo}
	}
	return c, nil
}

// Close stops intake (Predict returns ErrClosed from now on), runs every
// queued request, waits for running batches and returns nil. If ctx ends
// first, Close gives up draining: queued requests fail with ErrClosed,
// running model calls see their ctx cancelled, and Close returns ctx.Err()
// once they have returned — a RunFunc that ignores ctx delays it. Either way
// no goroutine of the Batcher is left when Close returns. Close may be
// called more than once and from several goroutines.
func (b *Batcher) Close(ctx context.Context) error {
	b.closeOnce.Do(func() { close(b.closing) })
	select {
	case <-b.done:
		return nil
	case <-ctx.Done():
		b.abortOnce.Do(func() {
			close(b.abort)
			b.cancelRun()
		})
		<-b.done
		return ctx.Err()
	}
}

// loop owns the queue. Everything that changes it arrives on a channel.
func (b *Batcher) loop() {
	defer func() {
		// The batches have reported; wait until their goroutines have
		// returned too, so that nothing outlives Close.
		b.workers.Wait()
		b.cancelRun()
		close(b.done)
	}()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	closing, abort := b.closing, b.abort
	draining, freed := false, false
	for {
		now := time.Now()
		b.dispatch(now, draining, freed)
		freed = false
		if draining && len(b.groups) == 0 && b.inFlight.Load() == 0 {
			return
		}
		var timerC <-chan time.Time
		if !draining && b.inFlight.Load() < int64(b.cfg.MaxInFlight) {
			if due, ok := b.nextDue(); ok {
				timer.Reset(due.Sub(now))
				timerC = timer.C
			}
		}
		select {
		case c := <-b.submit:
			b.enqueue(c, draining)
		case m := <-b.cancels:
			b.remove(m)
		case d := <-b.finished:
			b.complete(d)
			freed = true
		case <-timerC:
		case <-closing:
			draining, closing = true, nil
		case <-abort:
			draining, abort, closing = true, nil, nil
			b.failQueued(ErrClosed)
		}
		timer.Stop()
	}
}

func (b *Batcher) enqueue(c *call, draining bool) {
	if draining {
		b.queuedRows.Add(-int64(c.rows))
		c.results <- result{err: ErrClosed}
		return
	}
	g := b.groups[c.key]
	if g == nil {
		g = &group{key: c.key}
		b.groups[c.key] = g
	}
	for _, p := range c.parts {
		g.push(p)
	}
	b.mu.Lock()
	b.st.requests++
	b.st.rows += int64(c.rows)
	b.mu.Unlock()
}

// remove drops the queued parts of m.c, whose caller has stopped waiting.
// Its parts already running no longer count as waited for; a running batch
// that nobody waits for any more has its model call cancelled.
func (b *Batcher) remove(m cancelMsg) {
	removed := 0
	for _, p := range m.c.parts {
		if g := p.g; g != nil {
			g.unlink(p)
			removed += p.rows
			if g.head == nil {
				delete(b.groups, g.key)
			}
		} else if bt := p.bt; bt != nil {
			p.bt = nil
			bt.waiting--
			if bt.waiting == 0 && !bt.finished {
				bt.cancel()
				b.mu.Lock()
				b.st.abandoned++
				b.mu.Unlock()
			}
		}
	}
	if removed == 0 {
		return
	}
	b.queuedRows.Add(-int64(removed))
	if m.count {
		b.countDropped(m.c, m.c.ctx.Err())
	}
}

func (b *Batcher) countDropped(c *call, err error) {
	if c.dropped {
		return
	}
	c.dropped = true
	b.mu.Lock()
	if errors.Is(err, context.DeadlineExceeded) {
		b.st.expired++
	} else {
		b.st.cancelled++
	}
	b.mu.Unlock()
}

// failQueued fails every queued request with err.
func (b *Batcher) failQueued(err error) {
	for key, g := range b.groups {
		for p := g.head; p != nil; {
			next := p.next
			g.unlink(p)
			b.queuedRows.Add(-int64(p.rows))
			p.c.results <- result{idx: p.idx, err: err}
			p = next
		}
		delete(b.groups, key)
	}
}

// due returns when g's head batch must leave: its oldest request's arrival
// plus Window, or earlier if a request in it needs the time to meet its
// deadline.
func (b *Batcher) due(g *group) time.Time {
	t := g.head.c.arrival.Add(b.cfg.Window)
	est := time.Duration(b.estimate.Load())
	rows := 0
	for p := g.head; p != nil && rows+p.rows <= b.cfg.MaxBatchSize; p = p.next {
		rows += p.rows
		if dl := p.c.deadline; !dl.IsZero() {
			if d := dl.Add(-est); d.Before(t) {
				t = d
			}
		}
	}
	return t
}

func (b *Batcher) nextDue() (time.Time, bool) {
	var next time.Time
	found := false
	for _, g := range b.groups {
		if d := b.due(g); !found || d.Before(next) {
			next, found = d, true
		}
	}
	return next, found
}

// dispatch starts batches while an execution slot is free and a group may
// leave. When the model is idle, when a model call has just returned
// (freed), or while draining, the group whose oldest request arrived first
// leaves at once with everything it holds, up to MaxBatchSize rows. Other
// batches take a free slot only when full or due (see due).
func (b *Batcher) dispatch(now time.Time, draining, freed bool) {
	for b.inFlight.Load() < int64(b.cfg.MaxInFlight) {
		take := draining || freed || b.inFlight.Load() == 0
		var best *group
		for _, g := range b.groups {
			if !take && g.rows < b.cfg.MaxBatchSize && now.Before(b.due(g)) {
				continue
			}
			if best == nil || g.head.c.arrival.Before(best.head.c.arrival) {
				best = g
			}
		}
		if best == nil {
			return
		}
		if b.launch(best, now) {
			// A freed executor takes one batch; the next one waits for
			// the next executor to free up, or for its due time.
			freed = false
		}
	}
}

// batch is a set of parts run as one model call.
type batch struct {
	parts []*part
	rows  int
	// ctx is the model call's; cancel ends it early when every caller
	// of the batch has given up.
	ctx    context.Context
	cancel context.CancelFunc

	// Owned by loop.
	waiting  int  // parts whose caller still waits
	finished bool // the model call has returned
}

// launch takes g's head batch off the queue and starts it. It reports
// whether a model call started: not if every request it took had been
// cancelled or could not meet its deadline.
func (b *Batcher) launch(g *group, now time.Time) bool {
	est := time.Duration(b.estimate.Load())
	bt := &batch{}
	var waits []time.Duration
	for p := g.head; p != nil && bt.rows+p.rows <= b.cfg.MaxBatchSize; {
		next := p.next
		g.unlink(p)
		b.queuedRows.Add(-int64(p.rows))
		c := p.c
		switch {
		case c.ctx.Err() != nil:
			// Predict is about to send a cancel; it will find nothing.
			b.countDropped(c, c.ctx.Err())
		case !c.deadline.IsZero() && c.deadline.Sub(now) < est:
			b.countDropped(c, context.DeadlineExceeded)
			c.results <- result{idx: p.idx, err: fmt.Errorf("batch: %w: %v left, a batch takes about %v",
				context.DeadlineExceeded, c.deadline.Sub(now).Round(time.Microsecond), est.Round(time.Microsecond))}
		default:
			bt.parts = append(bt.parts, p)
			bt.rows += p.rows
			waits = append(waits, now.Sub(c.arrival))
		}
		p = next
	}
	if g.head == nil {
		delete(b.groups, g.key)
	}
	if len(bt.parts) == 0 {
		return false
	}
	b.mu.Lock()
	b.st.batches++
	b.st.batchedRows += int64(bt.rows)
	b.st.batchSizes[bt.rows]++
	for _, w := range waits {
		b.st.queueWait.record(w)
		b.st.queueWaitHist.record(w)
	}
	b.mu.Unlock()
	for _, p := range bt.parts {
		p.bt = bt
	}
	bt.waiting = len(bt.parts)
	bt.ctx, bt.cancel = b.batchContext(bt)
	b.inFlight.Add(1)
	b.workers.Add(1)
	go b.execute(bt)
	return true
}

// execute runs one batch, hands each request its rows and reports to loop.
func (b *Batcher) execute(bt *batch) {
	defer b.workers.Done()
	in, err := joinInputs(bt)
	var out []tensor.Tensor
	var dur time.Duration
	panicked := false
	if err == nil {
		start := time.Now()
		out, panicked, err = b.runSafe(bt.ctx, in)
		dur = time.Since(start)
	}
	bt.cancel()
	if err == nil {
		err = checkOutputs(out, bt.rows)
	}
	if err != nil {
		for _, p := range bt.parts {
			p.c.results <- result{idx: p.idx, err: err}
		}
	} else {
		lo := 0
		for _, p := range bt.parts {
			mine := make([]tensor.Tensor, len(out))
			for j, o := range out {
				mine[j], _ = o.Slice(lo, lo+p.rows) // checked by checkOutputs
			}
			lo += p.rows
			p.c.results <- result{idx: p.idx, out: mine}
		}
	}
	b.finished <- batchDone{bt: bt, rows: bt.rows, dur: dur, err: err, panicked: panicked}
}

// batchContext returns the model call's ctx: cancelled by an aborted
// Close or when every caller has given up (see remove), and bounded by the
// latest deadline of the batch's requests when all have one (after it,
// nobody waits for the result).
func (b *Batcher) batchContext(bt *batch) (context.Context, context.CancelFunc) {
	var latest time.Time
	for _, p := range bt.parts {
		if p.c.deadline.IsZero() {
			return context.WithCancel(b.runCtx)
		}
		if p.c.deadline.After(latest) {
			latest = p.c.deadline
		}
	}
	return context.WithDeadline(b.runCtx, latest)
}

func joinInputs(bt *batch) ([]tensor.Tensor, error) {
	if len(bt.parts) == 1 {
		return bt.parts[0].in, nil
	}
	n := len(bt.parts[0].in)
	in := make([]tensor.Tensor, n)
	parts := make([]tensor.Tensor, len(bt.parts))
	for i := range n {
		for k, p := range bt.parts {
			parts[k] = p.in[i]
		}
		t, err := tensor.Concat(parts)
		if err != nil {
			return nil, fmt.Errorf("batch: joining input %d: %w", i, err)
		}
		in[i] = t
	}
	return in, nil
}

func checkOutputs(out []tensor.Tensor, rows int) error {
	if len(out) == 0 {
		return errors.New("batch: model returned no outputs")
	}
	for j, o := range out {
		if !o.Valid() || len(o.Shape()) == 0 || o.Len() != rows {
			return fmt.Errorf("batch: model output %d has shape %v, want %d rows on axis 0", j, o.Shape(), rows)
		}
	}
	return nil
}

func (b *Batcher) runSafe(ctx context.Context, in []tensor.Tensor) (out []tensor.Tensor, panicked bool, err error) {
	defer func() {
		if r := recover(); r != nil {
			b.cfg.Logger.Error("batch: model panicked", "panic", r, "stack", string(debug.Stack()))
			out, panicked, err = nil, true, fmt.Errorf("%w: %v", ErrPanic, r)
		}
	}()
	out, err = b.run(ctx, in)
	if err != nil {
		err = fmt.Errorf("batch: model: %w", err)
	}
	return out, false, err
}

// complete records a finished batch.
func (b *Batcher) complete(d batchDone) {
	d.bt.finished = true
	b.inFlight.Add(-1)
	if d.err == nil && d.dur > 0 {
		// Exponential moving average of successful runs, weight 1/8:
		// follows load changes within a few batches, ignores single
		// outliers (and fast failures).
		est := b.estimate.Load()
		if est == 0 {
			est = int64(d.dur)
		} else {
			est += (int64(d.dur) - est) / 8
		}
		b.estimate.Store(est)
	}
	b.mu.Lock()
	b.st.batchTime.record(d.dur)
	b.st.batchExec.record(d.dur)
	for range d.bt.parts {
		b.st.computeHist.record(d.dur)
	}
	if d.err != nil {
		b.st.failed++
	}
	if d.panicked {
		b.st.panics++
	}
	b.mu.Unlock()
}
