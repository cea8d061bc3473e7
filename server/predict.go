package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/signalforge/signalforge/api"
	"github.com/signalforge/signalforge/batch"
	"github.com/signalforge/signalforge/cache"
	"github.com/signalforge/signalforge/feature"
	"github.com/signalforge/signalforge/infer"
	"github.com/signalforge/signalforge/manager"
	"github.com/signalforge/signalforge/registry"
	"github.com/signalforge/signalforge/route"
	"github.com/signalforge/signalforge/tensor"
)

// requestTimeout derives the request's deadline from timeout_ms.
func (s *Server) requestTimeout(ms int) (time.Duration, error) {
	if ms < 0 {
		return 0, badRequest("field \"timeout_ms\": must not be negative, got %d", ms)
	}
	if ms == 0 {
		return s.cfg.DefaultTimeout, nil
	}
	// Compared in milliseconds: converting a huge timeout_ms (1e13, max
	// int64) to a Duration first would overflow into a past deadline.
	if int64(ms) >= int64(s.cfg.MaxTimeout/time.Millisecond) {
		return s.cfg.MaxTimeout, nil
	}
	return time.Duration(ms) * time.Millisecond, nil
}

// pick chooses the version that serves a request and takes a reference on
// it: the pinned version, or the router's sticky choice for key.
func (s *Server) pick(ctx context.Context, model, pinned, key string) (*manager.Version, error) {
	if err := registry.ValidateName(model); err != nil {
		return nil, notFound("model %q does not exist: names match [A-Za-z0-9][A-Za-z0-9._-]{0,127}", model)
	}
	if pinned != "" {
		if err := registry.ValidateName(pinned); err != nil {
			return nil, notFound("model %q has no version %q: versions match [A-Za-z0-9][A-Za-z0-9._-]{0,127}", model, pinned)
		}
		if l, ok := s.models.Acquire(model, pinned); ok {
			return l, nil
		}
		return nil, s.notServing(ctx, model, pinned)
	}
	for range 3 {
		v, err := s.router.Route(model, key)
		if err != nil {
			if errors.Is(err, route.ErrUnknownModel) {
				return nil, s.notServing(ctx, model, "")
			}
			return nil, err
		}
		if l, ok := s.models.Acquire(model, v); ok {
			return l, nil
		}
		// The split moved between Route and acquire; route again.
	}
	return nil, &HTTPError{Status: http.StatusServiceUnavailable, Code: api.CodeUnavailable, Msg: fmt.Sprintf("model %q is being reloaded; retry", model), RetryAfter: time.Second}
}

// notServing explains why model (or model:version) cannot answer.
func (s *Server) notServing(ctx context.Context, model, version string) error {
	if version == "" {
		vs, err := s.reg.Versions(ctx, model)
		if err != nil && !errors.Is(err, registry.ErrNotFound) {
			return registryDown(model, err)
		}
		if err != nil || len(vs) == 0 {
			return notFound("model %q does not exist", model)
		}
		if !s.ready.Load() {
			return &HTTPError{Status: http.StatusServiceUnavailable, Code: api.CodeUnavailable, Msg: "server is not ready: models are still loading", RetryAfter: time.Second}
		}
		if why := s.models.ModelFailure(model); why != "" {
			return &HTTPError{Status: http.StatusServiceUnavailable, Code: api.CodeUnavailable, Msg: fmt.Sprintf("model %q cannot serve: %s", model, why)}
		}
		return notFound("model %q has no production version with traffic; pin a version (native API: \"version\" field; OIP v2: /v2/models/%s/versions/{version}/infer)", model, model)
	}
	v, err := s.reg.Get(ctx, registry.Ref{Name: model, Version: version})
	if err != nil {
		if !errors.Is(err, registry.ErrNotFound) {
			return registryDown(model, err)
		}
		if _, merr := s.reg.Versions(ctx, model); merr != nil {
			return notFound("model %q does not exist", model)
		}
		return notFound("model %q has no version %q", model, version)
	}
	if v.Status == registry.StatusArchived || (v.Status == registry.StatusStaging && !s.cfg.ServeStaging) {
		return notFound("version %q of model %q is %s and not served", version, model, v.Status)
	}
	if f, ok := s.models.Failure(v.Ref()); ok && f.SHA256 == v.Artifact.SHA256 {
		return &HTTPError{Status: http.StatusServiceUnavailable, Code: api.CodeUnavailable, Msg: fmt.Sprintf("version %q of model %q failed to load: %v", version, model, f.Err)}
	}
	return &HTTPError{Status: http.StatusServiceUnavailable, Code: api.CodeUnavailable, Msg: fmt.Sprintf("version %q of model %q is not loaded yet", version, model), RetryAfter: time.Second}
}

// registryDown is notServing's answer when the registry cannot be read to
// tell an unknown model from one not loaded here: the loaded models keep
// answering, this one cannot be looked up until the registry is back.
func registryDown(model string, err error) error {
	return &HTTPError{Status: http.StatusServiceUnavailable, Code: api.CodeUnavailable,
		Msg: fmt.Sprintf("model %q is not loaded on this server and the registry cannot be read to look it up; retry", model), RetryAfter: time.Second, Err: err}
}

// featureKey builds the cache key input of a single-row request. Its maps
// come from a pool: call releaseKey when the key is made.
func (p *pools) featureKey(model, version, ticker string, horizon int, typ string, f api.Features) cache.KeyInput {
	ki := cache.KeyInput{Model: model, Version: version, Ticker: ticker, Horizon: horizon, Type: typ}
	for k, v := range f {
		if v.Seq {
			if ki.Sequences == nil {
				ki.Sequences, _ = p.seqMaps.Get().(map[string][]float64)
				if ki.Sequences == nil {
					ki.Sequences = map[string][]float64{}
				}
			}
			ki.Sequences[k] = v.Values
			continue
		}
		if ki.Features == nil {
			ki.Features, _ = p.pointMaps.Get().(map[string]float64)
			if ki.Features == nil {
				ki.Features = map[string]float64{}
			}
		}
		ki.Features[k] = v.Values[0]
	}
	return ki
}

// releaseKey returns featureKey's maps to their pools.
func (p *pools) releaseKey(ki cache.KeyInput) {
	if ki.Features != nil && len(ki.Features) <= 4096 {
		clear(ki.Features)
		p.pointMaps.Put(ki.Features)
	}
	if ki.Sequences != nil && len(ki.Sequences) <= 4096 {
		clear(ki.Sequences)
		p.seqMaps.Put(ki.Sequences)
	}
}

// modelError maps errors from the batcher and the engine.
func modelError(err error, l *manager.Version) error {
	var qf *batch.QueueFullError
	var fe *infer.FeatureError
	switch {
	case errors.As(err, &qf):
		return &HTTPError{Status: http.StatusTooManyRequests, Code: api.CodeQueueFull, Msg: fmt.Sprintf("model %s is overloaded: %v", l.Ref(), err), RetryAfter: qf.RetryAfter, Err: err}
	case errors.As(err, &fe):
		return &HTTPError{Status: http.StatusBadRequest, Code: fe.Code, Msg: fmt.Sprintf("model %s: %v", l.Ref(), err), Err: err}
	case errors.Is(err, infer.ErrInput):
		return &HTTPError{Status: http.StatusBadRequest, Code: api.CodeInvalidInput, Msg: fmt.Sprintf("model %s: %v", l.Ref(), err), Err: err}
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return ctxError(err)
	case errors.Is(err, batch.ErrClosed):
		return &HTTPError{Status: http.StatusServiceUnavailable, Code: api.CodeUnavailable, Msg: "server is shutting down", RetryAfter: time.Second, Err: err}
	}
	return err
}

func newRequestID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "req_" + hex.EncodeToString(b[:])
}

// handlePredict is POST /v1/models/{name}/predict.
func (s *Server) handlePredict(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	model := r.PathValue("name")
	version, cached, status := "", false, http.StatusOK
	defer func() {
		m, version := s.metricLabels(model, version)
		s.met.requests.WithLabelValues("v1", m, version, codeLabel(status)).Inc()
		s.met.latency.WithLabelValues("v1", m, version, strconv.FormatBool(cached)).Observe(time.Since(start).Seconds())
	}()
	resp, err := s.predict(w, r, model, start)
	if err != nil {
		var he *HTTPError
		status = http.StatusInternalServerError
		if errors.As(err, &he) {
			status = he.Status
		}
		if resp != nil {
			version = resp.Version
		}
		s.writeError(w, r, err, false)
		return
	}
	version, cached = resp.Version, resp.Cached
	s.writePredictResponse(w, resp)
}

func (s *Server) predict(w http.ResponseWriter, r *http.Request, model string, start time.Time) (*api.PredictResponse, error) {
	// The body must arrive within Timeouts.Body (set by ServeHTTP for the
	// route), or the client gets 408.
	if err := checkEncoding(r); err != nil {
		return nil, err
	}
	buf, err := s.pools.readBody(w, r, s.cfg.MaxBodyBytes, s.cfg.Timeouts.Body)
	if err != nil {
		return nil, err
	}
	defer func() {
		if buf != nil {
			s.pools.putBody(buf)
		}
	}()
	// Requests of the common shape leave their rows in the body until the
	// model is known, and then decode them straight into its input order;
	// the rest are decoded in full, as maps.
	req, raw, lazy := api.ScanPredictRequest(buf.Bytes())
	if !lazy {
		if req, err = decodeNative(buf.Bytes(), s.cfg.MaxBodyBytes); err != nil {
			return nil, err
		}
	}
	hasFeatures, hasInstances, nInstances := req.Features != nil, req.Instances != nil, len(req.Instances)
	if lazy {
		hasFeatures, hasInstances = raw.HasFeatures(), raw.HasInstances()
		if hasInstances {
			nInstances = raw.Len()
		}
	}
	switch {
	case hasFeatures && hasInstances:
		return nil, badRequest("send either \"features\" (one row) or \"instances\" (several rows), not both")
	case !hasFeatures && !hasInstances:
		return nil, badRequest("request has no features: send \"features\": {name: value, …} or \"instances\": [{…}, …]")
	case hasInstances && nInstances == 0:
		return nil, badRequest("field \"instances\" is empty: send at least one row")
	case nInstances > s.cfg.MaxRows:
		return nil, &HTTPError{Status: http.StatusBadRequest, Code: infer.CodeRowCount, Msg: fmt.Sprintf("too many rows: %d instances, the limit is %d", nInstances, s.cfg.MaxRows)}
	case req.Horizon < 0:
		return nil, badRequest("field \"horizon\": must not be negative, got %d", req.Horizon)
	}
	if err := checkTicker(req.Ticker); err != nil {
		return nil, err
	}
	if err := checkRequestID(req.RequestID); err != nil {
		return nil, err
	}
	timeout, err := s.requestTimeout(req.TimeoutMS)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(r.Context(), timeout)
	defer cancel()
	if req.RequestID == "" {
		req.RequestID = newRequestID()
	}
	l, err := s.pick(ctx, model, req.Version, req.RequestID)
	if err != nil {
		return nil, err
	}
	defer l.Release()
	resp := &api.PredictResponse{RequestID: req.RequestID, Model: model, Version: l.Ref().Version}
	p := l.Predictor()
	if p == nil {
		return resp, badRequest("model %s takes raw tensors, not named features (%v); use POST /v2/models/%s/versions/%s/infer", l.Ref(), l.PredictorErr(), model, l.Ref().Version)
	}
	// Exactly one of dense (rows in the model's input order) and rows
	// (rows as maps, which name what is wrong with them) is set.
	var dense []feature.Row
	var rows []api.Features
	if lazy {
		ok := false
		if p.SeqLen() == 0 {
			dense, ok = raw.Decode(p.Schema())
		}
		if !ok {
			full, err := decodeNative(buf.Bytes(), s.cfg.MaxBodyBytes)
			if err != nil {
				return resp, err
			}
			rows = full.Rows()
		}
	} else {
		rows = req.Rows()
	}
	s.pools.putBody(buf) // nothing refers to it any more
	buf = nil
	nRows := len(rows) + len(dense)
	// inferUS is written by compute, which a cache may still be running
	// after this request gave up; hence atomic.
	var inferUS atomic.Int64
	// Encoding (and so validation) happens on a cache miss only: a hit means
	// an identical request was valid before.
	compute := func(ctx context.Context) (cache.Value, error) {
		var x tensor.Tensor
		var err error
		if dense != nil {
			x, err = p.EncodeValues(dense)
		} else {
			x, err = infer.EncodeRows(p, rows)
		}
		if err != nil {
			return cache.Value{}, err
		}
		t0 := time.Now()
		out, err := execute(ctx, l, []tensor.Tensor{x}, p.Output())
		if err != nil {
			return cache.Value{}, err
		}
		inferUS.Store(time.Since(t0).Microseconds())
		preds, err := p.Decode(out)
		if err != nil {
			return cache.Value{}, err
		}
		return cache.Value{Predictions: preds}, nil
	}
	var val cache.Value
	if s.cache != nil && !req.NoCache && nRows == 1 {
		typ := s.cfg.PredictionType(model, l.Ref().Version, req.Horizon)
		var ki cache.KeyInput
		if dense != nil {
			ki = cache.KeyInput{Model: model, Version: l.Ref().Version, Ticker: req.Ticker, Horizon: req.Horizon, Type: typ, Row: dense[0]}
		} else {
			ki = s.pools.featureKey(model, l.Ref().Version, req.Ticker, req.Horizon, typ, rows[0])
			if completeRow(rows[0], l.SortedFeatures()) {
				ki.SortedNames = l.SortedFeatures()
			}
		}
		key, kerr := cache.MakeKey(ki)
		s.pools.releaseKey(ki)
		var fe *cache.FeatureError
		switch {
		case errors.As(kerr, &fe):
			// A value the key refuses (NaN, ±Inf): the predictor's
			// validation names it in the API's own terms.
			val, err = compute(ctx)
		case kerr != nil:
			return resp, &HTTPError{Status: http.StatusBadRequest, Code: api.CodeInvalidInput, Msg: kerr.Error(), Err: kerr}
		default:
			val, resp.Cached, err = s.cache.GetOrCompute(ctx, key, compute)
		}
	} else {
		val, err = compute(ctx)
	}
	lat := time.Since(start)
	// Only answers the version computed count in its stats: counting hits
	// would make a warm baseline look faster than a cold canary.
	if err := s.settle(model, l, err, timeout, lat, resp.Cached); err != nil {
		return resp, err
	}
	if sh := s.shadowFor(model); sh != nil && !resp.Cached {
		if dense != nil {
			rows = namedRows(dense)
		}
		sh.Offer(req.RequestID, rows, slices.Concat(val.Predictions...), lat) // neither is touched again
	}
	resp.Predictions = val.Predictions
	resp.TotalMS = msSince(start)
	if !resp.Cached {
		resp.InferenceMS = float64(inferUS.Load()) / 1000
	}
	return resp, nil
}

// versionsFault reports whether a failed request counts against the
// version in the router's stats, which drive the canary judge and
// automatic rollback. Only failures the version can cause count: model
// errors, and deadlines missed within the server's default timeout. A
// client's mistakes, its own shorter timeout_ms, or its going away never
// count — otherwise any client could roll back a healthy canary.
func (s *Server) versionsFault(err error, timeout time.Duration) bool {
	var he *HTTPError
	if !errors.As(err, &he) {
		return true // an unexpected (internal) error
	}
	switch {
	case errors.Is(err, context.Canceled):
		return false
	case he.Status == http.StatusGatewayTimeout:
		return timeout >= s.cfg.DefaultTimeout
	case he.Code == codeNonFinite:
		// NaN is a model defect (0/0, sqrt of a negative); ±Inf is what
		// extreme but valid inputs overflow to, so it does not count:
		// otherwise a client could roll back a canary at will.
		return errors.Is(err, errNaNOutput)
	}
	return he.Status >= 500
}

const codeNonFinite = "non_finite_output"

// errNaNOutput marks a non-finite answer that is NaN (see versionsFault);
// it wraps route.ErrNonFinite, so the router counts it as a non-finite
// answer in the counters a replica publishes to its fleet.
var errNaNOutput = fmt.Errorf("model produced NaN: %w", route.ErrNonFinite)

// nonFiniteError is the 422 for a non-finite model output.
func nonFiniteError(l *manager.Version, v float32, where string) *HTTPError {
	he := &HTTPError{Status: http.StatusUnprocessableEntity, Code: codeNonFinite,
		Msg: fmt.Sprintf("model %s produced %v %s: the inputs are probably outside the range the model was trained on", l.Ref(), v, where)}
	if v != v {
		he.Msg = fmt.Sprintf("model %s produced NaN %s: the model is numerically unstable for these inputs", l.Ref(), where)
		he.Err = errNaNOutput
	}
	return he
}

func msSince(t time.Time) float64 { return float64(time.Since(t).Microseconds()) / 1000 }

// completeRow reports whether row has exactly the model's features.
func completeRow(row api.Features, features []string) bool {
	if len(row) != len(features) {
		return false
	}
	for _, f := range features {
		if _, ok := row[f]; !ok {
			return false
		}
	}
	return true
}

// namedRows turns rows in a model's input order back into maps of named
// features, for a shadow model whose order may differ.
func namedRows(dense []feature.Row) []api.Features {
	rows := make([]api.Features, len(dense))
	for i, d := range dense {
		f := make(api.Features, len(d.Values))
		for j, v := range d.Values {
			f[d.Schema.Name(j)] = api.Scalar(v)
		}
		rows[i] = f
	}
	return rows
}
