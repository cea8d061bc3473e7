package batch

import (
	"context"
	"errors"
	"math/rand/v2"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/signalforge/signalforge/infer"
	"github.com/signalforge/signalforge/tensor"
)

// fakeModel is a RunFunc for logic tests: output 0 is input 0 times 2, so
// every caller can check it got exactly its own rows back; output 1 holds
// the batch's row count in every row.
type fakeModel struct {
	delay time.Duration   // time one run takes (fake time under synctest)
	gate  chan struct{}   // if non-nil, each run waits for it or ctx
	hold  chan struct{}   // if non-nil, a run of blocker rows waits for it or ctx
	fail  func(v float32) // called with each input value; may panic
	err   func(v float32) error

	releaseOnce sync.Once

	mu      sync.Mutex
	batches []fakeBatch
	running atomic.Int32
	maxRun  atomic.Int32
}

type fakeBatch struct {
	rows  int
	at    time.Time // when the run started
	shape tensor.Shape
	vals  []float32
}

func (m *fakeModel) run(ctx context.Context, in []tensor.Tensor) ([]tensor.Tensor, error) {
	n := m.running.Add(1)
	defer m.running.Add(-1)
	for {
		cur := m.maxRun.Load()
		if n <= cur || m.maxRun.CompareAndSwap(cur, n) {
			break
		}
	}
	x := in[0]
	m.mu.Lock()
	m.batches = append(m.batches, fakeBatch{rows: x.Len(), at: time.Now(), shape: x.Shape().Clone(), vals: slices.Clone(x.Float32s())})
	m.mu.Unlock()
	if m.hold != nil && x.Float32s()[0] >= blockerVal {
		select {
		case <-m.hold:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	} else if m.gate != nil {
		select {
		case <-m.gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if m.delay > 0 {
		time.Sleep(m.delay)
	}
	for _, v := range x.Float32s() {
		if m.fail != nil {
			m.fail(v)
		}
		if m.err != nil {
			if err := m.err(v); err != nil {
				return nil, err
			}
		}
	}
	y := make([]float32, x.NumElements())
	for i, v := range x.Float32s() {
		y[i] = 2 * v
	}
	sizes := make([]int64, x.Len())
	for i := range sizes {
		sizes[i] = int64(x.Len())
	}
	return []tensor.Tensor{
		tensor.Must(x.Shape().Clone(), y),
		tensor.Must(tensor.Shape{int64(x.Len())}, sizes),
	}, nil
}

// blockerVal marks the rows of a request whose run waits for
// fakeModel.hold: it keeps the model busy while a test fills the queue.
const blockerVal = 1e6

// block starts a one-row request that occupies an execution slot until
// m.hold is closed (the Batcher is idle, so it runs at once), and waits
// until it runs. m.hold must be set.
func block(t *testing.T, b *Batcher, m *fakeModel) <-chan reply {
	t.Helper()
	r := async(t.Context(), b, rowsOf(1, 1, blockerVal))
	t.Cleanup(m.release) // before Close, which waits for it
	synctest.Wait()
	if m.running.Load() == 0 {
		t.Fatal("the blocker is not running")
	}
	return r
}

// others returns the batches that are not blockers.
func (m *fakeModel) others() []fakeBatch {
	var out []fakeBatch
	for _, bt := range m.seen() {
		if bt.vals[0] < blockerVal {
			out = append(out, bt)
		}
	}
	return out
}

// release closes m.hold, once.
func (m *fakeModel) release() { m.releaseOnce.Do(func() { close(m.hold) }) }

func (m *fakeModel) seen() []fakeBatch {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.batches)
}

func (m *fakeModel) sizes() []int {
	var s []int
	for _, b := range m.seen() {
		s = append(s, b.rows)
	}
	return s
}

// rowsOf returns a [rows, cols] float32 input whose values start at base.
func rowsOf(rows, cols int, base float32) []tensor.Tensor {
	d := make([]float32, rows*cols)
	for i := range d {
		d[i] = base + float32(i)
	}
	return []tensor.Tensor{tensor.Must(tensor.Shape{int64(rows), int64(cols)}, d)}
}

// checkDoubled fails unless out[0] is in[0] times 2.
func checkDoubled(t *testing.T, in, out []tensor.Tensor) {
	t.Helper()
	if len(out) != 2 {
		t.Fatalf("got %d outputs, want 2", len(out))
	}
	if !out[0].Shape().Equal(in[0].Shape()) {
		t.Fatalf("output shape %v, want %v", out[0].Shape(), in[0].Shape())
	}
	for i, v := range in[0].Float32s() {
		if got := out[0].Float32s()[i]; got != 2*v {
			t.Fatalf("output[%d] = %v, want %v (another request's row?)", i, got, 2*v)
		}
	}
	if out[1].Len() != in[0].Len() {
		t.Fatalf("output 1 has %d rows, want %d", out[1].Len(), in[0].Len())
	}
}

type reply struct {
	out []tensor.Tensor
	err error
	at  time.Time
}

// async runs Predict in a goroutine and returns where its reply arrives.
func async(ctx context.Context, b *Batcher, in []tensor.Tensor) <-chan reply {
	ch := make(chan reply, 1)
	go func() {
		out, err := b.Predict(ctx, in)
		ch <- reply{out, err, time.Now()}
	}()
	return ch
}

func mustNew(t *testing.T, cfg Config, run RunFunc) *Batcher {
	t.Helper()
	b, err := New(cfg, run)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := b.Close(context.Background()); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return b
}

// TestWindowMeasuredFromOldestArrival: while a model call runs and a slot
// is free, requests wait for company, at most Window from the oldest
// arrival.
func TestWindowMeasuredFromOldestArrival(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := &fakeModel{hold: make(chan struct{})}
		b := mustNew(t, Config{MaxBatchSize: 8, Window: 10 * time.Millisecond, MaxInFlight: 2}, m.run)
		blocker := block(t, b, m)
		start := time.Now()
		inA, inB := rowsOf(1, 3, 1), rowsOf(1, 3, 100)
		a := async(t.Context(), b, inA)
		time.Sleep(6 * time.Millisecond)
		bb := async(t.Context(), b, inB)
		time.Sleep(3 * time.Millisecond)
		synctest.Wait()
		if n := len(m.others()); n != 0 {
			t.Fatalf("%d batches ran 9ms after the first arrival, want 0 (window 10ms)", n)
		}
		ra, rb := <-a, <-bb
		if ra.err != nil || rb.err != nil {
			t.Fatal(ra.err, rb.err)
		}
		checkDoubled(t, inA, ra.out)
		checkDoubled(t, inB, rb.out)
		seen := m.others()
		if len(seen) != 1 || seen[0].rows != 2 {
			t.Fatalf("batches %v, want one of 2 rows", m.sizes())
		}
		// The window runs from A's arrival, not B's (which would be 16ms).
		if got := seen[0].at.Sub(start); got != 10*time.Millisecond {
			t.Fatalf("batch left %v after the oldest arrival, want 10ms", got)
		}
		m.release()
		if r := <-blocker; r.err != nil {
			t.Fatal(r.err)
		}
		// Waits: the blocker 0 (the model was idle), A 10ms, B 4ms.
		st := b.Stats()
		if w := st.QueueWait; w.Max != 10*time.Millisecond || w.Avg != 14*time.Millisecond/3 || !near(w.P50, 4*time.Millisecond) {
			t.Errorf("queue wait %+v, want max 10ms, avg 4.67ms, p50 ≈4ms", w)
		}
		checkHist(t, "QueueWaitHist", st.QueueWaitHist, 14*time.Millisecond, map[time.Duration]uint64{
			5 * time.Microsecond: 1, 2500 * time.Microsecond: 1, 5 * time.Millisecond: 2, 10 * time.Millisecond: 3, 10 * time.Second: 3,
		})
	})
}

// checkHist checks a cumulative histogram: bounds sorted, counts
// cumulative, the given sum, and the counts at the given bounds (the last
// of which must equal Count).
func checkHist(t *testing.T, name string, h Histogram, sum time.Duration, want map[time.Duration]uint64) {
	t.Helper()
	if len(h.Bounds) != len(h.Counts) || !slices.IsSorted(h.Bounds) {
		t.Fatalf("%s: bounds %v, counts %v", name, h.Bounds, h.Counts)
	}
	if h.Sum != sum {
		t.Errorf("%s: sum %v, want %v", name, h.Sum, sum)
	}
	found := 0
	for i, le := range h.Bounds {
		if w, ok := want[le]; ok {
			found++
			if h.Counts[i] != w {
				t.Errorf("%s: le %v: %d, want %d", name, le, h.Counts[i], w)
			}
		}
		if i > 0 && h.Counts[i] < h.Counts[i-1] {
			t.Errorf("%s: counts are not cumulative: %v", name, h.Counts)
		}
	}
	if found != len(want) {
		t.Errorf("%s: bounds %v lack some of %v", name, h.Bounds, want)
	}
	if last := h.Counts[len(h.Counts)-1]; last > h.Count {
		t.Errorf("%s: %d counted under the last bound, %d in all", name, last, h.Count)
	}
}

// TestSizeTriggeredDispatch: a full batch takes a free slot at once, and
// an executor that frees up takes what is left without waiting Window.
func TestSizeTriggeredDispatch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := &fakeModel{hold: make(chan struct{}), gate: make(chan struct{})}
		b := mustNew(t, Config{MaxBatchSize: 4, Window: time.Hour, MaxInFlight: 2}, m.run)
		blocker := block(t, b, m)
		start := time.Now()
		var replies []<-chan reply
		var ins [][]tensor.Tensor
		for i := range 5 {
			in := rowsOf(1, 2, float32(10*i))
			ins = append(ins, in)
			replies = append(replies, async(t.Context(), b, in))
		}
		synctest.Wait()
		seen := m.others()
		if len(seen) != 1 || seen[0].rows != 4 || !seen[0].at.Equal(start) {
			t.Fatalf("after 5 arrivals: batches %v, want one of 4 rows at once", m.sizes())
		}
		close(m.gate)
		for i, ch := range replies {
			r := <-ch
			if r.err != nil {
				t.Fatal(r.err)
			}
			checkDoubled(t, ins[i], r.out)
		}
		seen = m.others()
		if len(seen) != 2 || seen[1].rows != 1 || !seen[1].at.Equal(start) {
			t.Fatalf("batches %v, want [4 1] with the lone row taken when the full batch returned, not after the 1h window", m.sizes())
		}
		m.release()
		<-blocker
		st := b.Stats()
		if st.Batches != 3 || st.Requests != 6 || st.Rows != 6 || st.AvgBatchSize != 2 ||
			st.BatchSizes[4] != 1 || st.BatchSizes[1] != 2 {
			t.Errorf("stats %+v", st)
		}
	})
}

func TestMultiRowRequestsCountAllRows(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := &fakeModel{hold: make(chan struct{})}
		b := mustNew(t, Config{MaxBatchSize: 4, Window: 10 * time.Millisecond, MaxInFlight: 2}, m.run)
		block(t, b, m)
		start := time.Now()
		inA, inB := rowsOf(3, 2, 0), rowsOf(2, 2, 50)
		a := async(t.Context(), b, inA)
		synctest.Wait()
		time.Sleep(time.Millisecond)
		if n := len(m.others()); n != 0 {
			t.Fatalf("3 of 4 rows ran before the window, beside a running batch")
		}
		bb := async(t.Context(), b, inB)
		ra, rb := <-a, <-bb
		if ra.err != nil || rb.err != nil {
			t.Fatal(ra.err, rb.err)
		}
		checkDoubled(t, inA, ra.out)
		checkDoubled(t, inB, rb.out)
		seen := m.others()
		// 5 rows queued >= 4: A leaves at once (B does not fit beside it);
		// when A's call returns, its executor takes B.
		if len(seen) != 2 || seen[0].rows != 3 || seen[1].rows != 2 {
			t.Fatalf("batches %v, want [3 2]", m.sizes())
		}
		if seen[0].at.Sub(start) != time.Millisecond || seen[1].at.Sub(start) != time.Millisecond {
			t.Fatalf("batches at %v and %v, want both at 1ms", seen[0].at.Sub(start), seen[1].at.Sub(start))
		}
	})
}

func TestLargeRequestIsSplit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := &fakeModel{}
		b := mustNew(t, Config{MaxBatchSize: 4, Window: time.Millisecond, MaxInFlight: 2}, m.run)
		in := rowsOf(10, 3, 0)
		out, err := b.Predict(t.Context(), in)
		if err != nil {
			t.Fatal(err)
		}
		checkDoubled(t, in, out)
		got := m.sizes()
		sort.Ints(got)
		if !slices.Equal(got, []int{2, 4, 4}) {
			t.Fatalf("batches %v, want chunks of 4, 4 and 2 rows", got)
		}
		if st := b.Stats(); st.Requests != 1 || st.Rows != 10 || st.BatchedRows != 10 {
			t.Errorf("stats %+v", st)
		}
	})
}

func TestIncompatibleShapesAreNotMixed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := &fakeModel{hold: make(chan struct{})}
		b := mustNew(t, Config{MaxBatchSize: 8, Window: 5 * time.Millisecond, MaxInFlight: 1}, m.run)
		block(t, b, m) // all four queue behind it
		ins := [][]tensor.Tensor{rowsOf(1, 3, 0), rowsOf(1, 5, 10), rowsOf(2, 3, 20), rowsOf(1, 5, 30)}
		var replies []<-chan reply
		for _, in := range ins {
			replies = append(replies, async(t.Context(), b, in))
		}
		synctest.Wait()
		m.release()
		for i, ch := range replies {
			r := <-ch
			if r.err != nil {
				t.Fatal(r.err)
			}
			checkDoubled(t, ins[i], r.out)
		}
		byWidth := map[int64]int{}
		for _, bt := range m.others() {
			byWidth[bt.shape[1]] += bt.rows
		}
		if len(m.others()) != 2 || byWidth[3] != 3 || byWidth[5] != 2 {
			t.Fatalf("batches %+v, want one of 3 rows of width 3 and one of 2 rows of width 5", m.others())
		}

		// A different number of inputs or dtype is another group too.
		two := append(rowsOf(1, 3, 0), tensor.Must(tensor.Shape{1}, []int64{7}))
		if _, err := b.Predict(t.Context(), two); err != nil {
			t.Fatal(err)
		}
		if last := m.seen()[len(m.seen())-1]; last.rows != 1 {
			t.Fatalf("two-input request batched as %d rows", last.rows)
		}
	})
}

func TestInvalidInputs(t *testing.T) {
	m := &fakeModel{}
	b := mustNew(t, Config{MaxBatchSize: 4, MaxQueue: 8}, m.run)
	for name, in := range map[string][]tensor.Tensor{
		"none":          nil,
		"zero tensor":   {{}},
		"scalar":        {tensor.Must(tensor.Shape{}, []float32{1})},
		"no rows":       {tensor.Must(tensor.Shape{0, 3}, []float32{})},
		"rows disagree": {tensor.Must(tensor.Shape{2, 1}, []float32{1, 2}), tensor.Must(tensor.Shape{1, 1}, []float32{1})},
		"too large":     rowsOf(9, 1, 0),
	} {
		if _, err := b.Predict(context.Background(), in); !errors.Is(err, infer.ErrInput) {
			t.Errorf("%s: err = %v, want infer.ErrInput", name, err)
		}
	}
	if _, err := b.Predict(context.Background(), rowsOf(9, 1, 0)); !errors.Is(err, ErrTooLarge) {
		t.Errorf("9 rows with MaxQueue 8: err = %v, want ErrTooLarge", err)
	}
	if len(m.seen()) != 0 {
		t.Errorf("the model ran on invalid input")
	}
}

func TestConfig(t *testing.T) {
	b := mustNew(t, Config{}, (&fakeModel{}).run)
	cfg := b.Config()
	if cfg.MaxBatchSize != 32 || cfg.Window != DefaultWindow || cfg.MaxQueue != 32*32 ||
		cfg.RunThreads != 1 || cfg.MaxInFlight != defaultInFlight(runtime.GOMAXPROCS(0), 1) || cfg.Logger == nil {
		t.Errorf("defaults: %+v", cfg)
	}
	for _, bad := range []Config{
		{MaxBatchSize: -1},
		{Window: -time.Second},
		{MaxBatchSize: 8, MaxQueue: 4},
		{MaxInFlight: -2},
		{RunThreads: -1},
	} {
		if _, err := New(bad, (&fakeModel{}).run); err == nil {
			t.Errorf("New(%+v) accepted", bad)
		}
	}
	if _, err := New(Config{}, nil); err == nil {
		t.Error("New with nil RunFunc accepted")
	}
}

// warm runs one batch of the given duration so the batcher has an
// execution time estimate.
func warm(t *testing.T, b *Batcher, m *fakeModel, d time.Duration) {
	t.Helper()
	m.delay = d
	if _, err := b.Predict(t.Context(), rowsOf(1, 1, 0)); err != nil {
		t.Fatal(err)
	}
	synctest.Wait() // the loop has recorded the run
	if est := time.Duration(b.estimate.Load()); est != d {
		t.Fatalf("estimate %v after one %v batch", est, d)
	}
	m.delay = 0
}

func TestDeadlineDispatchesEarly(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := &fakeModel{hold: make(chan struct{})}
		b := mustNew(t, Config{MaxBatchSize: 4, Window: 10 * time.Millisecond, MaxInFlight: 2}, m.run)
		warm(t, b, m, 2*time.Millisecond)
		m.delay = time.Millisecond
		block(t, b, m) // so the request waits for company
		start := time.Now()
		ctx, cancel := context.WithTimeout(t.Context(), 6*time.Millisecond)
		defer cancel()
		in := rowsOf(1, 2, 5)
		out, err := b.Predict(ctx, in)
		if err != nil {
			t.Fatalf("request with 6ms left, 2ms batches, 10ms window: %v", err)
		}
		checkDoubled(t, in, out)
		last := m.others()[len(m.others())-1]
		if got := last.at.Sub(start); got != 4*time.Millisecond {
			t.Fatalf("dispatched after %v, want 4ms (deadline 6ms - estimate 2ms)", got)
		}
	})
}

func TestHopelessDeadlineDroppedBeforeExecution(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := &fakeModel{}
		b := mustNew(t, Config{MaxBatchSize: 4, Window: 10 * time.Millisecond, MaxInFlight: 1}, m.run)
		warm(t, b, m, 2*time.Millisecond)
		runs := len(m.seen())
		start := time.Now()
		ctx, cancel := context.WithTimeout(t.Context(), time.Millisecond)
		defer cancel()
		_, err := b.Predict(ctx, rowsOf(1, 2, 5))
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v, want DeadlineExceeded", err)
		}
		if time.Since(start) != 0 {
			t.Errorf("hopeless request answered after %v, want at once", time.Since(start))
		}
		if len(m.seen()) != runs {
			t.Error("the model ran for a request that could not meet its deadline")
		}
		if st := b.Stats(); st.Expired != 1 || st.QueueDepth != 0 {
			t.Errorf("stats %+v, want 1 expired and an empty queue", st)
		}
	})
}

func TestExpiredWhileQueuedLeavesQueue(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := &fakeModel{gate: make(chan struct{})}
		b := mustNew(t, Config{MaxBatchSize: 1, Window: time.Millisecond, MaxInFlight: 1}, m.run)
		first := async(t.Context(), b, rowsOf(1, 1, 1))
		synctest.Wait() // first is running, holding the only slot
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := b.Predict(ctx, rowsOf(1, 1, 2))
		if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) != 3*time.Millisecond {
			t.Fatalf("err = %v after %v, want DeadlineExceeded after 3ms", err, time.Since(start))
		}
		synctest.Wait()
		if st := b.Stats(); st.Expired != 1 || st.QueueDepth != 0 {
			t.Errorf("stats %+v, want 1 expired, queue empty", st)
		}
		close(m.gate)
		if r := <-first; r.err != nil {
			t.Fatal(r.err)
		}
		synctest.Wait()
		if n := len(m.seen()); n != 1 {
			t.Errorf("%d model runs, want 1 (the expired request must not run)", n)
		}
	})
}

func TestCancelledRequestTakesNoCapacity(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := &fakeModel{gate: make(chan struct{})}
		b := mustNew(t, Config{MaxBatchSize: 4, Window: time.Hour, MaxInFlight: 1}, m.run)
		start := time.Now()
		x := async(t.Context(), b, rowsOf(4, 1, 0)) // full: runs at once, blocks
		synctest.Wait()
		ctxA, cancelA := context.WithCancel(t.Context())
		a := async(ctxA, b, rowsOf(3, 1, 100))
		synctest.Wait()
		inB, inC := rowsOf(1, 1, 200), rowsOf(3, 1, 300)
		rb := async(t.Context(), b, inB)
		synctest.Wait()
		rc := async(t.Context(), b, inC)
		synctest.Wait()
		cancelA()
		if r := <-a; !errors.Is(r.err, context.Canceled) {
			t.Fatalf("cancelled request: err = %v", r.err)
		}
		synctest.Wait()
		if st := b.Stats(); st.Cancelled != 1 || st.QueueDepth != 4 {
			t.Fatalf("stats %+v, want 1 cancelled and 4 rows queued", st)
		}
		close(m.gate)
		for _, r := range []reply{<-x, <-rb, <-rc} {
			if r.err != nil {
				t.Fatal(r.err)
			}
		}
		// Without A's 3 rows, B and C fill a batch of 4 and leave at once.
		if !slices.Equal(m.sizes(), []int{4, 4}) {
			t.Fatalf("batches %v, want [4 4]", m.sizes())
		}
		if d := time.Since(start); d != 0 {
			t.Errorf("took %v, want no window wait", d)
		}
	})
}

func TestBatchNobodyWaitsForIsCancelled(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := &fakeModel{hold: make(chan struct{}), gate: make(chan struct{})}
		b := mustNew(t, Config{MaxBatchSize: 2, Window: time.Hour, MaxInFlight: 1}, m.run)
		block(t, b, m) // so that the next two are batched
		ctx1, cancel1 := context.WithCancel(t.Context())
		ctx2, cancel2 := context.WithCancel(t.Context())
		r1 := async(ctx1, b, rowsOf(1, 1, 1))
		r2 := async(ctx2, b, rowsOf(1, 1, 2))
		synctest.Wait()
		m.release()
		synctest.Wait()
		if m.running.Load() != 1 || len(m.others()) != 1 || m.others()[0].rows != 2 {
			t.Fatal("the full batch is not running")
		}
		cancel1()
		<-r1
		synctest.Wait()
		if m.running.Load() != 1 {
			t.Fatal("the model call stopped while a caller still waits for it")
		}
		cancel2()
		<-r2
		synctest.Wait()
		if m.running.Load() != 0 {
			t.Fatal("the model call still runs though nobody waits for it")
		}
		if st := b.Stats(); st.Abandoned != 1 || st.InFlight != 0 {
			t.Errorf("stats %+v, want 1 abandoned batch", st)
		}
		close(m.gate)
		in := rowsOf(2, 1, 3)
		out, err := b.Predict(t.Context(), in)
		if err != nil {
			t.Fatal(err)
		}
		checkDoubled(t, in, out)
	})
}

func TestQueueFull(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := &fakeModel{gate: make(chan struct{})}
		b := mustNew(t, Config{MaxBatchSize: 2, MaxQueue: 4, Window: time.Millisecond, MaxInFlight: 1}, m.run)
		var pending []<-chan reply
		pending = append(pending, async(t.Context(), b, rowsOf(2, 1, 0)))
		synctest.Wait() // running
		pending = append(pending, async(t.Context(), b, rowsOf(2, 1, 10)), async(t.Context(), b, rowsOf(2, 1, 20)))
		synctest.Wait() // 4 rows queued
		start := time.Now()
		_, err := b.Predict(t.Context(), rowsOf(1, 1, 30))
		var qf *QueueFullError
		if !errors.Is(err, ErrQueueFull) || !errors.As(err, &qf) || time.Since(start) != 0 {
			t.Fatalf("err = %v after %v, want an immediate *QueueFullError", err, time.Since(start))
		}
		if qf.Queued != 4 || qf.Limit != 4 || qf.Rows != 1 || qf.RetryAfter < time.Millisecond {
			t.Errorf("QueueFullError %+v", qf)
		}
		if st := b.Stats(); st.Rejected != 1 || st.QueueDepth != 4 {
			t.Errorf("stats %+v", st)
		}
		close(m.gate)
		for _, ch := range pending {
			if r := <-ch; r.err != nil {
				t.Fatal(r.err)
			}
		}
		// Room again.
		if _, err := b.Predict(t.Context(), rowsOf(1, 1, 30)); err != nil {
			t.Fatal(err)
		}
	})
}

func TestRetryAfterEstimate(t *testing.T) {
	b := mustNew(t, Config{MaxBatchSize: 2, MaxQueue: 8, Window: time.Millisecond, MaxInFlight: 2}, (&fakeModel{}).run)
	if got := b.retryAfter(5); got != time.Millisecond {
		t.Errorf("no estimate yet: RetryAfter %v, want the window (1ms)", got)
	}
	b.estimate.Store(int64(4 * time.Millisecond))
	// 5 rows = 3 batches of 4ms on 2 slots.
	if got := b.retryAfter(5); got != 6*time.Millisecond {
		t.Errorf("RetryAfter %v, want 6ms", got)
	}
}

func TestModelErrorFailsExactlyItsBatch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		errModel := errors.New("model says no")
		m := &fakeModel{err: func(v float32) error {
			if v < 0 {
				return errModel
			}
			return nil
		}}
		m.hold = make(chan struct{})
		b := mustNew(t, Config{MaxBatchSize: 2, Window: time.Hour, MaxInFlight: 1}, m.run)
		block(t, b, m) // so that 1 and 2, then 3 and 4, are batched
		r1, r2 := async(t.Context(), b, rowsOf(1, 1, -1)), async(t.Context(), b, rowsOf(1, 1, 1))
		synctest.Wait()
		in3, in4 := rowsOf(1, 1, 3), rowsOf(1, 1, 4)
		r3, r4 := async(t.Context(), b, in3), async(t.Context(), b, in4)
		synctest.Wait()
		m.release()
		for _, ch := range []<-chan reply{r1, r2} {
			if r := <-ch; !errors.Is(r.err, errModel) {
				t.Errorf("request in the failing batch: err = %v, want the model's error", r.err)
			}
		}
		for i, ch := range []<-chan reply{r3, r4} {
			r := <-ch
			if r.err != nil {
				t.Fatalf("request in the next batch: %v", r.err)
			}
			checkDoubled(t, [][]tensor.Tensor{in3, in4}[i], r.out)
		}
		if st := b.Stats(); st.Failed != 1 || st.Batches != 3 {
			t.Errorf("stats %+v", st)
		}
	})
}

func TestModelPanicIsRecovered(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := &fakeModel{fail: func(v float32) {
			if v == 13 {
				panic("unlucky row")
			}
		}}
		b := mustNew(t, Config{MaxBatchSize: 4, Window: time.Millisecond, MaxInFlight: 1}, m.run)
		if _, err := b.Predict(t.Context(), rowsOf(1, 1, 13)); !errors.Is(err, ErrPanic) {
			t.Fatalf("err = %v, want ErrPanic", err)
		}
		in := rowsOf(2, 1, 1)
		out, err := b.Predict(t.Context(), in)
		if err != nil {
			t.Fatalf("after a panic: %v", err)
		}
		checkDoubled(t, in, out)
		if st := b.Stats(); st.Panics != 1 || st.Failed != 1 || st.Batches != 2 {
			t.Errorf("stats %+v", st)
		}
	})
}

func TestBadModelOutputsFailTheBatch(t *testing.T) {
	b := mustNew(t, Config{MaxBatchSize: 4, Window: time.Millisecond}, func(ctx context.Context, in []tensor.Tensor) ([]tensor.Tensor, error) {
		return []tensor.Tensor{tensor.Must(tensor.Shape{1}, []float32{0})}, nil
	})
	if _, err := b.Predict(context.Background(), rowsOf(2, 1, 0)); err == nil {
		t.Fatal("a model returning 1 row for a batch of 2 was accepted")
	}
}

func TestSplitRequestFailsIfAChunkFails(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := &fakeModel{err: func(v float32) error {
			if v == 6 {
				return errors.New("bad row")
			}
			return nil
		}}
		b := mustNew(t, Config{MaxBatchSize: 4, Window: time.Millisecond, MaxInFlight: 1}, m.run)
		if _, err := b.Predict(t.Context(), rowsOf(12, 1, 0)); err == nil {
			t.Fatal("split request with a failing chunk succeeded")
		}
		synctest.Wait()
		if st := b.Stats(); st.QueueDepth != 0 {
			t.Errorf("queue depth %d after a failed split request", st.QueueDepth)
		}
	})
}

func TestCloseDrainsQueue(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := &fakeModel{gate: make(chan struct{})}
		b, err := New(Config{MaxBatchSize: 2, Window: time.Hour, MaxInFlight: 1}, m.run)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		var pending []<-chan reply
		var ins [][]tensor.Tensor
		for i := range 5 {
			in := rowsOf(1, 1, float32(i))
			ins = append(ins, in)
			pending = append(pending, async(t.Context(), b, in))
			synctest.Wait()
		}
		closed := make(chan error, 1)
		go func() { closed <- b.Close(t.Context()) }()
		synctest.Wait()
		if _, err := b.Predict(t.Context(), rowsOf(1, 1, 9)); !errors.Is(err, ErrClosed) {
			t.Fatalf("Predict during Close: err = %v, want ErrClosed", err)
		}
		select {
		case err := <-closed:
			t.Fatalf("Close returned %v with work queued", err)
		default:
		}
		close(m.gate)
		for i, ch := range pending {
			r := <-ch
			if r.err != nil {
				t.Fatalf("queued request %d: %v", i, r.err)
			}
			checkDoubled(t, ins[i], r.out)
		}
		if err := <-closed; err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d != 0 {
			t.Errorf("drain took %v; the window must not delay Close", d)
		}
		if err := b.Close(t.Context()); err != nil {
			t.Errorf("second Close: %v", err)
		}
		if _, err := b.Predict(t.Context(), rowsOf(1, 1, 9)); !errors.Is(err, ErrClosed) {
			t.Errorf("Predict after Close: err = %v", err)
		}
		if st := b.Stats(); st.Requests != 5 || st.BatchedRows != 5 {
			t.Errorf("stats after Close %+v", st)
		}
		// synctest.Test fails if any goroutine of the Batcher is left.
	})
}

func TestCloseGivesUpAtDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := &fakeModel{gate: make(chan struct{})} // never opened: runs end only by ctx
		b, err := New(Config{MaxBatchSize: 1, Window: time.Hour, MaxInFlight: 1}, m.run)
		if err != nil {
			t.Fatal(err)
		}
		running := async(t.Context(), b, rowsOf(1, 1, 0))
		synctest.Wait()
		queued := async(t.Context(), b, rowsOf(1, 1, 1))
		synctest.Wait()
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Millisecond)
		defer cancel()
		if err := b.Close(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Close: %v, want DeadlineExceeded", err)
		}
		if r := <-running; !errors.Is(r.err, context.Canceled) {
			t.Errorf("running request: err = %v, want its model call cancelled", r.err)
		}
		if r := <-queued; !errors.Is(r.err, ErrClosed) {
			t.Errorf("queued request: err = %v, want ErrClosed", r.err)
		}
	})
}

func TestCloseUnderLoadSynctest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := &fakeModel{delay: 500 * time.Microsecond}
		b, err := New(Config{MaxBatchSize: 8, Window: time.Millisecond, MaxInFlight: 2, MaxQueue: 64}, m.run)
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		var ok, closed, full atomic.Int64
		for g := range 100 {
			wg.Go(func() {
				for i := 0; ; i++ {
					in := rowsOf(1+i%3, 2, float32(g*1000+i))
					out, err := b.Predict(context.Background(), in)
					switch {
					case err == nil:
						checkDoubled(t, in, out)
						ok.Add(1)
					case errors.Is(err, ErrClosed):
						closed.Add(1)
						return
					case errors.Is(err, ErrQueueFull):
						full.Add(1)
						time.Sleep(time.Millisecond)
					default:
						t.Errorf("unexpected error %v", err)
						return
					}
				}
			})
		}
		time.Sleep(20 * time.Millisecond)
		if err := b.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
		st := b.Stats()
		if ok.Load() == 0 || closed.Load() != 100 || st.Requests != ok.Load() || st.QueueDepth != 0 || st.InFlight != 0 {
			t.Errorf("ok %d closed %d full %d; stats %+v", ok.Load(), closed.Load(), full.Load(), st)
		}
		if int(m.maxRun.Load()) > 2 {
			t.Errorf("%d batches ran at once, MaxInFlight is 2", m.maxRun.Load())
		}
		for _, bt := range m.seen() {
			if bt.rows > 8 {
				t.Fatalf("batch of %d rows, MaxBatchSize is 8", bt.rows)
			}
		}
	})
}

// TestRaceManyGoroutines runs in real time for the race detector: hundreds
// of callers, mixed sizes and shapes, random cancellations, then Close.
func TestRaceManyGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	m := &fakeModel{}
	b, err := New(Config{MaxBatchSize: 16, Window: 200 * time.Microsecond, MaxInFlight: 2, MaxQueue: 256}, m.run)
	if err != nil {
		t.Fatal(err)
	}
	const callers, each = 300, 20
	var wg sync.WaitGroup
	var ok, cancelled, full atomic.Int64
	for g := range callers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			for i := range each {
				in := rowsOf(1+rng.IntN(20), 2+g%2, float32(g*100000+i*100))
				ctx, cancel := context.WithCancel(context.Background())
				if rng.IntN(10) == 0 {
					go cancel()
				}
				out, err := b.Predict(ctx, in)
				cancel()
				switch {
				case err == nil:
					checkDoubled(t, in, out)
					ok.Add(1)
				case errors.Is(err, context.Canceled):
					cancelled.Add(1)
				case errors.Is(err, ErrQueueFull):
					full.Add(1)
				default:
					t.Errorf("unexpected error %v", err)
				}
			}
		})
	}
	go func() {
		for range 50 {
			_ = b.Stats()
			runtime.Gosched()
		}
	}()
	wg.Wait()
	if err := b.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	st := b.Stats()
	t.Logf("ok %d cancelled %d full %d; batches %d avg %.1f", ok.Load(), cancelled.Load(), full.Load(), st.Batches, st.AvgBatchSize)
	if ok.Load()+cancelled.Load()+full.Load() != callers*each {
		t.Errorf("outcomes do not add up")
	}
	if st.QueueDepth != 0 || st.InFlight != 0 || st.Rejected != full.Load() {
		t.Errorf("stats %+v", st)
	}
	for _, bt := range m.seen() {
		if bt.rows > 16 {
			t.Fatalf("batch of %d rows, MaxBatchSize is 16", bt.rows)
		}
	}
	checkGoroutines(t, before)
}

// checkGoroutines fails if more goroutines run than before (a leak). The
// batcher's own goroutines have finished when Close returns, but may not
// have been reaped yet, so it allows them a moment.
func checkGoroutines(t *testing.T, before int) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		n := runtime.NumGoroutine()
		if n <= before {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines after Close, %d before:\n%s", n, before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(time.Millisecond)
	}
}

// near reports whether got is within the histogram's 1/16 of want.
func near(got, want time.Duration) bool {
	d := got - want
	return d <= want/16 && -d <= want/16
}

func TestHistQuantiles(t *testing.T) {
	var h hist
	rng := rand.New(rand.NewPCG(1, 2))
	var exact []time.Duration
	for range 10000 {
		d := time.Duration(rng.ExpFloat64() * float64(time.Millisecond))
		h.record(d)
		exact = append(exact, d)
	}
	slices.Sort(exact)
	for _, q := range []float64{0.5, 0.95, 0.99} {
		want := exact[int(q*float64(len(exact)))-1]
		got := h.quantile(q)
		if rel := float64(got-want) / float64(want); rel > 0.07 || rel < -0.07 {
			t.Errorf("p%v = %v, exact %v (%.1f%% off)", q*100, got, want, 100*rel)
		}
	}
	if h.quantile(1) != exact[len(exact)-1] {
		t.Errorf("p100 %v, max %v", h.quantile(1), exact[len(exact)-1])
	}
	for _, d := range []time.Duration{0, 1, 15, 16, 17, 1000, time.Second, 1<<62 + 5} {
		i := histBucket(d)
		if i < 0 || i >= histBuckets {
			t.Fatalf("bucket %d for %v", i, d)
		}
		if mid := histMid(i); float64(mid) < float64(d)*0.93 || float64(mid) > float64(d)*1.07+1 {
			t.Errorf("bucket of %v has middle %v", d, mid)
		}
	}
}

// TestBatchTimeHistogram: every batch's execution time lands in the first
// fixed bucket whose bound is at least that long, cumulatively, and the
// count and sum agree with the batches run.
func TestBatchTimeHistogram(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := &fakeModel{}
		b := mustNew(t, Config{MaxBatchSize: 1, Window: time.Millisecond, MaxInFlight: 1}, m.run)
		for i, d := range []time.Duration{3 * time.Millisecond, 3 * time.Millisecond, 5 * time.Millisecond, 20 * time.Millisecond, 11 * time.Second} {
			m.delay = d
			if _, err := b.Predict(t.Context(), rowsOf(1, 1, float32(i))); err != nil {
				t.Fatal(err)
			}
		}
		synctest.Wait() // the loop has recorded the last run
		h := b.Stats().BatchTimeHist
		if h.Count != 5 || h.Sum != 11031*time.Millisecond {
			t.Errorf("count %d, sum %v; want 5 batches, 11.031s", h.Count, h.Sum)
		}
		if len(h.Bounds) != len(h.Counts) || !slices.IsSorted(h.Bounds) {
			t.Fatalf("bounds %v, counts %v", h.Bounds, h.Counts)
		}
		want := map[time.Duration]uint64{ // cumulative; a bound is inclusive
			2500 * time.Microsecond: 0, 5 * time.Millisecond: 3, 10 * time.Millisecond: 3,
			25 * time.Millisecond: 4, 10 * time.Second: 4,
		}
		for i, le := range h.Bounds {
			if w, ok := want[le]; ok && h.Counts[i] != w {
				t.Errorf("le %v: %d batches, want %d", le, h.Counts[i], w)
			}
			if i > 0 && h.Counts[i] < h.Counts[i-1] {
				t.Errorf("counts are not cumulative: %v", h.Counts)
			}
		}
	})
}

func TestDefaultInFlight(t *testing.T) {
	for _, c := range []struct{ procs, threads, want int }{
		{1, 1, 1}, {2, 1, 2}, {2, 2, 1}, {2, 4, 1}, {8, 1, 8}, {8, 2, 4}, {8, 3, 2},
	} {
		if got := defaultInFlight(c.procs, c.threads); got != c.want {
			t.Errorf("defaultInFlight(%d cores, %d threads) = %d, want %d", c.procs, c.threads, got, c.want)
		}
	}
	b := mustNew(t, Config{RunThreads: 1 << 20}, (&fakeModel{}).run)
	if got := b.Config().MaxInFlight; got != 1 {
		t.Errorf("MaxInFlight %d with more threads per run than cores, want 1", got)
	}
}

// TestLoneRequestRunsAtOnce: a request that finds the model idle runs at
// once, whatever the window.
func TestLoneRequestRunsAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := &fakeModel{}
		b := mustNew(t, Config{MaxBatchSize: 8, Window: time.Hour, MaxInFlight: 2}, m.run)
		start := time.Now()
		for i := range 3 {
			in := rowsOf(1+i, 2, float32(10*i))
			out, err := b.Predict(t.Context(), in)
			if err != nil {
				t.Fatal(err)
			}
			checkDoubled(t, in, out)
			synctest.Wait() // the loop has seen the run return: idle again
		}
		if d := time.Since(start); d != 0 {
			t.Errorf("three lone requests took %v, want no wait", d)
		}
		st := b.Stats()
		if st.Batches != 3 || st.QueueWait.Max != 0 {
			t.Errorf("stats %+v, want 3 batches and no queue wait", st)
		}
		checkHist(t, "QueueWaitHist", st.QueueWaitHist, 0, map[time.Duration]uint64{5 * time.Microsecond: 3, 10 * time.Second: 3})
	})
}

// TestLoneRequestRunsAtOnceRealTime is TestLoneRequestRunsAtOnce on the
// real clock: with a 10s window a lone request returns without waiting it
// (a window-bound batcher would make the test wait 10s per request, and
// QueueWait would say so).
func TestLoneRequestRunsAtOnceRealTime(t *testing.T) {
	m := &fakeModel{}
	b := mustNew(t, Config{Window: 10 * time.Second}, m.run)
	for i := range 3 {
		in := rowsOf(1, 4, float32(i))
		out, err := b.Predict(t.Context(), in)
		if err != nil {
			t.Fatal(err)
		}
		checkDoubled(t, in, out)
	}
	if st := b.Stats(); st.QueueWait.Max >= b.Config().Window || st.Batches != 3 {
		t.Errorf("stats %+v: a lone request waited for the window", st)
	}
}

// TestArrivalsDuringARunAreBatched: requests that arrive while the model
// runs wait, and the executor that frees up takes all of them, first come
// first served, up to MaxBatchSize, without waiting for the window.
func TestArrivalsDuringARunAreBatched(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := &fakeModel{hold: make(chan struct{})}
		b := mustNew(t, Config{MaxBatchSize: 8, Window: time.Hour, MaxInFlight: 1}, m.run)
		blocker := block(t, b, m)
		start := time.Now()
		var replies []<-chan reply
		var ins [][]tensor.Tensor
		for i := range 10 {
			in := rowsOf(1, 1, float32(i))
			ins = append(ins, in)
			replies = append(replies, async(t.Context(), b, in))
			synctest.Wait() // queued in this order
		}
		if n := len(m.others()); n != 0 {
			t.Fatalf("%d batches ran beside the running one with MaxInFlight 1", n)
		}
		if st := b.Stats(); st.QueueDepth != 10 {
			t.Fatalf("queue depth %d, want 10", st.QueueDepth)
		}
		m.release()
		if r := <-blocker; r.err != nil {
			t.Fatal(r.err)
		}
		for i, ch := range replies {
			r := <-ch
			if r.err != nil {
				t.Fatal(r.err)
			}
			checkDoubled(t, ins[i], r.out)
		}
		seen := m.others()
		if len(seen) != 2 || seen[0].rows != 8 || seen[1].rows != 2 {
			t.Fatalf("batches %v, want [8 2] after the blocker", m.sizes())
		}
		if !slices.Equal(seen[0].vals, []float32{0, 1, 2, 3, 4, 5, 6, 7}) {
			t.Errorf("first batch holds %v, want the first 8 arrivals in order", seen[0].vals)
		}
		for _, bt := range seen {
			if !bt.at.Equal(start) {
				t.Errorf("a batch left %v after the arrivals, want at once (the window is 1h)", bt.at.Sub(start))
			}
		}
	})
}

// TestConcurrencyLimit: with plenty of full batches queued, exactly
// MaxInFlight model calls run at once.
func TestConcurrencyLimit(t *testing.T) {
	for _, limit := range []int{1, 3} {
		t.Run(strconv.Itoa(limit), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				m := &fakeModel{delay: time.Millisecond}
				b := mustNew(t, Config{MaxBatchSize: 2, Window: time.Hour, MaxInFlight: limit}, m.run)
				var replies []<-chan reply
				for i := range 40 {
					replies = append(replies, async(t.Context(), b, rowsOf(1, 1, float32(i))))
				}
				synctest.Wait()
				if st := b.Stats(); st.InFlight != limit {
					t.Errorf("Stats().InFlight %d, want %d", st.InFlight, limit)
				}
				for _, ch := range replies {
					if r := <-ch; r.err != nil {
						t.Fatal(r.err)
					}
				}
				if got := int(m.maxRun.Load()); got != limit {
					t.Errorf("at most %d model calls ran at once, want %d (MaxInFlight)", got, limit)
				}
			})
		})
	}
}

// TestQueueWaitAndComputeHistograms: every request chunk that ran counts
// once in each histogram: its wait in the queue, and its batch's run.
func TestQueueWaitAndComputeHistograms(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := &fakeModel{hold: make(chan struct{}), delay: 3 * time.Millisecond}
		b := mustNew(t, Config{MaxBatchSize: 8, Window: time.Hour, MaxInFlight: 1}, m.run)
		blocker := block(t, b, m)
		var replies []<-chan reply
		for i := range 3 {
			replies = append(replies, async(t.Context(), b, rowsOf(1, 1, float32(i))))
		}
		synctest.Wait()
		m.release() // the blocker takes 3ms more, then the three run together for 3ms
		for _, ch := range append(replies, blocker) {
			if r := <-ch; r.err != nil {
				t.Fatal(r.err)
			}
		}
		synctest.Wait()
		st := b.Stats()
		if st.Batches != 2 || st.QueueWaitHist.Count != 4 || st.ComputeTimeHist.Count != 4 || st.BatchTimeHist.Count != 2 {
			t.Fatalf("%d batches; counts: wait %d, compute %d, batch time %d; want 2 batches, 4, 4, 2",
				st.Batches, st.QueueWaitHist.Count, st.ComputeTimeHist.Count, st.BatchTimeHist.Count)
		}
		// Waits: the blocker 0, the others 3ms (the blocker's run).
		checkHist(t, "QueueWaitHist", st.QueueWaitHist, 9*time.Millisecond, map[time.Duration]uint64{
			5 * time.Microsecond: 1, 2500 * time.Microsecond: 1, 5 * time.Millisecond: 4, 10 * time.Second: 4,
		})
		checkHist(t, "ComputeTimeHist", st.ComputeTimeHist, 12*time.Millisecond, map[time.Duration]uint64{
			2500 * time.Microsecond: 0, 5 * time.Millisecond: 4, 10 * time.Second: 4,
		})
	})
}
