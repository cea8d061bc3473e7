package batch

import "time"

// Stats is a snapshot of a Batcher's counters since New. Durations are
// read from log-linear histograms, within about 6% of the exact value.
// The seed's get_stats() fields are AvgBatchSize and BatchTime.Avg.
type Stats struct {
	// Requests and Rows count the Predict calls accepted into the queue
	// and their rows.
	Requests, Rows int64
	// Batches counts model calls; BatchedRows their rows.
	Batches, BatchedRows int64
	// AvgBatchSize is BatchedRows / Batches.
	AvgBatchSize float64
	// BatchSizes is a histogram: BatchSizes[n] is the number of batches of
	// n rows, for n from 0 (always 0) to MaxBatchSize.
	BatchSizes []int64
	// BatchTime is the execution time of model calls.
	BatchTime Latency
	// BatchTimeHist is the same execution times as a cumulative histogram
	// with fixed bounds, 100µs to 10s: a metrics adapter exports it as is,
	// and the histograms of many batchers or replicas add up, where
	// BatchTime's percentiles cannot.
	BatchTimeHist Histogram
	// QueueWait is the time from a request's arrival until its batch
	// formed (per request chunk).
	QueueWait Latency
	// QueueWaitHist is QueueWait as a cumulative histogram with fixed
	// bounds, 5µs to 10s: one count per request chunk that ran.
	QueueWaitHist Histogram
	// ComputeTimeHist is the execution time of the model call each request
	// chunk ran in, as a cumulative histogram with the bounds of
	// QueueWaitHist: one count per request chunk, so a batch of n
	// requests counts n times. Beside QueueWaitHist it splits a request's
	// time in the batcher into waiting and computing; BatchTimeHist counts
	// each model call once.
	ComputeTimeHist Histogram
	// QueueDepth is the number of rows queued now; InFlight the number of
	// batches running now.
	QueueDepth, InFlight int
	// Expired counts requests dropped before execution because their
	// deadline passed or could not be met; Cancelled those whose ctx was
	// cancelled while queued. Dropped requests took no batch capacity.
	Expired, Cancelled int64
	// Rejected counts requests refused because the queue was full.
	Rejected int64
	// Failed counts batches whose model call returned an error or
	// panicked; Panics those that panicked.
	Failed, Panics int64
	// Abandoned counts running batches whose model call was cancelled
	// because every one of their callers had given up.
	Abandoned int64
}

// Latency summarises a distribution of durations.
type Latency struct {
	Avg, P50, P95, P99, Max time.Duration
}

// stats is what Stats snapshots; guarded by Batcher.mu.
type stats struct {
	requests, rows       int64
	batches, batchedRows int64
	batchSizes           []int64
	batchTime, queueWait hist
	batchExec            bounded // batchTime's durations, in fixed buckets
	queueWaitHist        bounded // queueWait's durations, in fixed buckets
	computeHist          bounded // each request chunk's batch execution time
	expired, cancelled   int64
	failed, panics       int64
	abandoned            int64
}

// Stats returns a snapshot of the counters. It is cheap enough to call on
// every metrics scrape, and works after Close.
func (b *Batcher) Stats() Stats {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := Stats{
		Requests:        b.st.requests,
		Rows:            b.st.rows,
		Batches:         b.st.batches,
		BatchedRows:     b.st.batchedRows,
		BatchSizes:      append([]int64(nil), b.st.batchSizes...),
		BatchTime:       b.st.batchTime.latency(),
		BatchTimeHist:   b.st.batchExec.histogram(),
		QueueWait:       b.st.queueWait.latency(),
		QueueWaitHist:   b.st.queueWaitHist.histogram(),
		ComputeTimeHist: b.st.computeHist.histogram(),
		QueueDepth:      int(b.queuedRows.Load()),
		InFlight:        int(b.inFlight.Load()),
		Expired:         b.st.expired,
		Cancelled:       b.st.cancelled,
		Rejected:        b.rejected.Load(),
		Failed:          b.st.failed,
		Panics:          b.st.panics,
		Abandoned:       b.st.abandoned,
	}
	if s.Batches > 0 {
		s.AvgBatchSize = float64(s.BatchedRows) / float64(s.Batches)
	}
	return s
}
