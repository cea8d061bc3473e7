package main

import (
	"context"
	"fmt"
	"io"
	"net/http"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// serverMetrics is one reading of the server's /metrics, summed over the
// versions of the model under test (or the pinned version).
type serverMetrics struct {
	hasBatches     bool    // signalforge_batches_total is exported
	batches, rows  float64 // signalforge_batches_total, signalforge_batch_rows_total
	hasQueueWait   bool    // signalforge_queue_wait_seconds is exported
	queueWaitSum   float64 // its _sum, seconds
	queueWaitCount float64 // its _count
}

// loadMaxMetricsBytes caps a /metrics answer.
const loadMaxMetricsBytes = 64 << 20

// scrapeServer reads base/metrics. A series counts when its model label
// is model (and its version label version, if version is set); a metric
// without a model label counts whole.
func scrapeServer(ctx context.Context, hc *http.Client, base, modelName, version string) (serverMetrics, error) {
	var m serverMetrics
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/metrics", nil)
	if err != nil {
		return m, err
	}
	req.Header.Set("Accept", "text/plain;version=0.0.4")
	resp, err := hc.Do(req)
	if err != nil {
		return m, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return m, fmt.Errorf("GET /metrics: HTTP %d", resp.StatusCode)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(io.LimitReader(resp.Body, loadMaxMetricsBytes))
	if err != nil {
		return m, fmt.Errorf("GET /metrics: %w", err)
	}
	match := func(mt *dto.Metric) bool {
		for _, l := range mt.GetLabel() {
			switch l.GetName() {
			case "model":
				if l.GetValue() != modelName {
					return false
				}
			case "version":
				if version != "" && l.GetValue() != version {
					return false
				}
			}
		}
		return true
	}
	counter := func(name string) (float64, bool) {
		f, ok := fams[name]
		if !ok {
			return 0, false
		}
		var sum float64
		for _, mt := range f.GetMetric() {
			if match(mt) {
				sum += mt.GetCounter().GetValue() + mt.GetUntyped().GetValue()
			}
		}
		return sum, true
	}
	var okRows bool
	m.batches, m.hasBatches = counter("signalforge_batches_total")
	m.rows, okRows = counter("signalforge_batch_rows_total")
	m.hasBatches = m.hasBatches && okRows
	if f, ok := fams["signalforge_queue_wait_seconds"]; ok {
		m.hasQueueWait = true
		for _, mt := range f.GetMetric() {
			if match(mt) {
				m.queueWaitSum += mt.GetHistogram().GetSampleSum() + mt.GetSummary().GetSampleSum()
				m.queueWaitCount += float64(mt.GetHistogram().GetSampleCount() + mt.GetSummary().GetSampleCount())
			}
		}
	}
	return m, nil
}
