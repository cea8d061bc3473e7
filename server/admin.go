package server

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/signalforge/signalforge/api"
	"github.com/signalforge/signalforge/registry"
)

// Version is the server's version string (OIP v2 server metadata).
const Version = "0.1.0"

func (s *Server) routes() {
	m := s.mux
	// Native API.
	m.HandleFunc("POST /v1/models/{name}/predict", s.handlePredict)
	m.HandleFunc("GET /v1/models", s.handleListModels)
	m.HandleFunc("GET /v1/models/{name}", s.handleGetModel)
	m.HandleFunc("GET /v1/models/{name}/versions/{version}", s.handleGetVersion)
	// Admin.
	m.HandleFunc("POST /v1/admin/models/{name}/versions", s.admin(s.handleRegister))
	m.HandleFunc("POST /v1/admin/models/{name}/versions/{version}/promote", s.admin(s.handlePromote))
	m.HandleFunc("POST /v1/admin/models/{name}/versions/{version}/traffic", s.admin(s.handleTraffic))
	m.HandleFunc("POST /v1/admin/models/{name}/versions/{version}/archive", s.admin(s.handleArchive))
	m.HandleFunc("PUT /v1/admin/models/{name}/split", s.admin(s.handleSplit))
	m.HandleFunc("POST /v1/admin/models/{name}/rollback", s.admin(s.handleRollback))
	m.HandleFunc("GET /v1/admin/models/{name}/history", s.admin(s.handleHistory))
	m.HandleFunc("GET /v1/admin/models/{name}/stats", s.admin(s.handleModelStats))
	m.HandleFunc("POST /v1/admin/models/{name}/canary", s.admin(s.handleCanaryStart))
	m.HandleFunc("GET /v1/admin/models/{name}/canary", s.admin(s.handleCanaryStatus))
	m.HandleFunc("DELETE /v1/admin/models/{name}/canary", s.admin(s.handleCanaryStop))
	m.HandleFunc("GET /v1/admin/models/{name}/judge", s.admin(s.handleJudge))
	m.HandleFunc("PUT /v1/admin/models/{name}/shadow", s.admin(s.handleShadowStart))
	m.HandleFunc("GET /v1/admin/models/{name}/shadow", s.admin(s.handleShadowStats))
	m.HandleFunc("DELETE /v1/admin/models/{name}/shadow", s.admin(s.handleShadowStop))
	m.HandleFunc("POST /v1/admin/cache/invalidate", s.admin(s.handleInvalidate))
	m.HandleFunc("GET /v1/admin/cache/stats", s.admin(s.handleCacheStats))
	// Open Inference Protocol v2.
	m.HandleFunc("GET /v2", s.handleV2Server)
	m.HandleFunc("GET /v2/health/live", s.handleLive)
	m.HandleFunc("GET /v2/health/ready", s.handleReady)
	m.HandleFunc("GET /v2/models/{name}", s.handleV2Metadata)
	m.HandleFunc("GET /v2/models/{name}/versions/{version}", s.handleV2Metadata)
	m.HandleFunc("GET /v2/models/{name}/ready", s.handleV2ModelReady)
	m.HandleFunc("GET /v2/models/{name}/versions/{version}/ready", s.handleV2ModelReady)
	m.HandleFunc("POST /v2/models/{name}/infer", s.handleV2Infer)
	m.HandleFunc("POST /v2/models/{name}/versions/{version}/infer", s.handleV2Infer)
	// Operations.
	m.HandleFunc("GET /healthz", s.handleLive)
	m.HandleFunc("GET /readyz", s.handleReady)
	m.Handle("GET /metrics", promhttpHandler(s.cfg.Gatherer))
}

// ServeHTTP serves the API. Requests no route matches get a JSON 404, or a
// JSON 405 with an Allow header when the path exists for other methods.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h, pattern := s.mux.Handler(r)
	if pattern != "" {
		s.mux.ServeHTTP(w, r) // sets the path values
		return
	}
	// Let the mux decide between 404 and 405 (and fill Allow), then answer
	// in our format.
	rec := &statusRecorder{header: http.Header{}}
	h.ServeHTTP(rec, r)
	v2 := strings.HasPrefix(r.URL.Path, "/v2")
	if rec.status == http.StatusMethodNotAllowed {
		w.Header().Set("Allow", rec.header.Get("Allow"))
		s.writeError(w, r, &HTTPError{Status: http.StatusMethodNotAllowed, Code: api.CodeMethodNotAllo,
			Msg: fmt.Sprintf("%s is not allowed on %s; allowed: %s", r.Method, r.URL.Path, rec.header.Get("Allow"))}, v2)
		return
	}
	s.writeError(w, r, notFound("no such endpoint: %s %s (the API is described in docs/API.md)", r.Method, r.URL.Path), v2)
}

// statusRecorder captures a handler's status and headers, dropping its body.
type statusRecorder struct {
	header http.Header
	status int
}

func (r *statusRecorder) Header() http.Header { return r.header }
func (r *statusRecorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return len(b), nil
}
func (r *statusRecorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
}

// admin wraps an admin handler with the bearer-token check.
func (s *Server) admin(h func(w http.ResponseWriter, r *http.Request) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if tok := s.cfg.AdminToken; tok != "" {
			scheme, got, ok := strings.Cut(r.Header.Get("Authorization"), " ")
			if !ok || !strings.EqualFold(scheme, "Bearer") || subtle.ConstantTimeCompare([]byte(strings.TrimSpace(got)), []byte(tok)) != 1 {
				w.Header().Set("WWW-Authenticate", `Bearer realm="signalforge-admin"`)
				s.writeError(w, r, &HTTPError{Status: http.StatusUnauthorized, Code: api.CodeUnauthorized, Msg: "admin endpoints need \"Authorization: Bearer <token>\""}, false)
				return
			}
		}
		if err := h(w, r.WithContext(registry.WithActor(r.Context(), "http:"+r.RemoteAddr))); err != nil {
			s.writeError(w, r, registryError(err), false)
		}
	}
}

// registryError maps registry errors to HTTP errors.
func registryError(err error) error {
	var he *HTTPError
	if errors.As(err, &he) {
		return err
	}
	switch {
	case errors.Is(err, registry.ErrNotFound):
		return &HTTPError{Status: http.StatusNotFound, Code: api.CodeNotFound, Msg: err.Error(), Err: err}
	case errors.Is(err, registry.ErrExists), errors.Is(err, registry.ErrTransition):
		return &HTTPError{Status: http.StatusConflict, Code: api.CodeConflict, Msg: err.Error(), Err: err}
	case errors.Is(err, registry.ErrInvalidName), errors.Is(err, registry.ErrInvalidArtifact),
		errors.Is(err, registry.ErrFeatures), errors.Is(err, registry.ErrTraffic):
		return &HTTPError{Status: http.StatusBadRequest, Code: api.CodeInvalidInput, Msg: err.Error(), Err: err}
	}
	return err
}

func (s *Server) handleListModels(w http.ResponseWriter, r *http.Request) {
	models, err := s.reg.Models(r.Context())
	if err != nil {
		s.writeError(w, r, err, false)
		return
	}
	out := []modelView{}
	for _, m := range models {
		ms := modelView{Name: m.Name, Versions: []versionView{}}
		for _, v := range m.Versions {
			ms.Versions = append(ms.Versions, s.versionSummary(v))
		}
		out = append(out, ms)
	}
	writeJSON(w, http.StatusOK, map[string]any{"models": out})
}

func (s *Server) handleGetModel(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if registry.ValidateName(name) != nil {
		s.writeError(w, r, notFound("model %q does not exist", name), false)
		return
	}
	vs, err := s.reg.Versions(r.Context(), name)
	if err != nil {
		s.writeError(w, r, registryError(err), false)
		return
	}
	ms := modelView{Name: name, Versions: []versionView{}}
	for _, v := range vs {
		ms.Versions = append(ms.Versions, s.versionSummary(v))
	}
	writeJSON(w, http.StatusOK, ms)
}

func (s *Server) handleGetVersion(w http.ResponseWriter, r *http.Request) {
	ref := registry.Ref{Name: r.PathValue("name"), Version: r.PathValue("version")}
	if ref.Validate() != nil {
		s.writeError(w, r, notFound("model version %s does not exist", ref), false)
		return
	}
	v, err := s.reg.Get(r.Context(), ref)
	if err != nil {
		s.writeError(w, r, registryError(err), false)
		return
	}
	v.Artifact.Path = "" // server paths are not the public API's business
	writeJSON(w, http.StatusOK, map[string]any{"summary": s.versionSummary(v), "version": v})
}

// registerBody is the JSON form of POST /v1/admin/models/{name}/versions.
// The raw form sends the ONNX bytes as application/octet-stream with
// ?version=&features=a,b,c&status=&traffic_pct= in the query.
type registerBody struct {
	Version     string             `json:"version"`
	ONNXPath    string             `json:"onnx_path"`
	Features    []string           `json:"features"`
	Metrics     map[string]float64 `json:"metrics"`
	Tags        map[string]string  `json:"tags"`
	Description string             `json:"description"`
	Status      string             `json:"status"`
	TrafficPct  float64            `json:"traffic_pct"`
	Lineage     registry.Lineage   `json:"lineage"`
}

func (s *Server) handleRegister(w http.ResponseWriter, r *http.Request) error {
	req := registry.RegisterRequest{Name: r.PathValue("name")}
	if strings.HasPrefix(r.Header.Get("Content-Type"), "application/octet-stream") {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.cfg.MaxUploadBytes))
		if err != nil {
			return jsonError(err, s.cfg.MaxUploadBytes)
		}
		q := r.URL.Query()
		for k := range q {
			switch k {
			case "version", "status", "features", "traffic_pct", "description":
			default:
				return badRequest("unknown query parameter %q (known: version, status, features, traffic_pct, description)", k)
			}
		}
		req.ONNX, req.Version, req.Status, req.Description = body, q.Get("version"), registry.Status(q.Get("status")), q.Get("description")
		if f := q.Get("features"); f != "" {
			req.Features = strings.Split(f, ",")
		}
		if t := q.Get("traffic_pct"); t != "" {
			pct, err := strconv.ParseFloat(t, 64)
			if err != nil {
				return badRequest("query traffic_pct: %q is not a number", t)
			}
			req.Traffic = pct
		}
	} else {
		var b registerBody
		if err := decodeJSON(w, r, s.cfg.MaxBodyBytes, &b); err != nil {
			return err
		}
		if b.ONNXPath == "" {
			return badRequest("field \"onnx_path\" is required (or upload the file as application/octet-stream)")
		}
		req.Version, req.ONNXPath, req.Features, req.Metrics, req.Tags = b.Version, b.ONNXPath, b.Features, b.Metrics, b.Tags
		req.Description, req.Status, req.Traffic, req.Lineage = b.Description, registry.Status(b.Status), b.TrafficPct, b.Lineage
	}
	switch req.Status {
	case "", registry.StatusStaging, registry.StatusProduction:
	default:
		return badRequest("status %q: a new version is \"staging\" (default) or \"production\"", req.Status)
	}
	v, err := s.reg.Register(r.Context(), req)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, v)
	return nil
}

type trafficBody struct {
	TrafficPct *float64 `json:"traffic_pct"`
}

func (s *Server) refFrom(r *http.Request) (registry.Ref, error) {
	ref := registry.Ref{Name: r.PathValue("name"), Version: r.PathValue("version")}
	if err := ref.Validate(); err != nil {
		return ref, err
	}
	return ref, nil
}

func (s *Server) trafficCall(w http.ResponseWriter, r *http.Request, fn func(registry.Ref, float64) (registry.Split, error)) error {
	ref, err := s.refFrom(r)
	if err != nil {
		return err
	}
	var b trafficBody
	if err := decodeJSON(w, r, s.cfg.MaxBodyBytes, &b); err != nil {
		return err
	}
	if b.TrafficPct == nil {
		return badRequest("field \"traffic_pct\" is required (0–100)")
	}
	split, err := fn(ref, *b.TrafficPct)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"model": ref.Name, "split": split})
	return nil
}

func (s *Server) handlePromote(w http.ResponseWriter, r *http.Request) error {
	return s.trafficCall(w, r, func(ref registry.Ref, pct float64) (registry.Split, error) {
		return s.reg.Promote(r.Context(), ref, pct)
	})
}

func (s *Server) handleTraffic(w http.ResponseWriter, r *http.Request) error {
	return s.trafficCall(w, r, func(ref registry.Ref, pct float64) (registry.Split, error) {
		return s.reg.SetTraffic(r.Context(), ref, pct)
	})
}

func (s *Server) handleArchive(w http.ResponseWriter, r *http.Request) error {
	ref, err := s.refFrom(r)
	if err != nil {
		return err
	}
	var b struct {
		Force      bool `json:"force"`
		AllowEmpty bool `json:"allow_empty"`
	}
	if r.ContentLength != 0 {
		if err := decodeJSON(w, r, s.cfg.MaxBodyBytes, &b); err != nil {
			return err
		}
	}
	split, err := s.reg.Archive(r.Context(), ref, b.Force, allowEmpty(b.AllowEmpty)...)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"model": ref.Name, "split": split})
	return nil
}

func (s *Server) handleSplit(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	var b struct {
		Split registry.Split `json:"split"`
	}
	if err := decodeJSON(w, r, s.cfg.MaxBodyBytes, &b); err != nil {
		return err
	}
	if len(b.Split) == 0 {
		return badRequest("field \"split\" is required: {\"version\": percent, …} totalling 100")
	}
	split, err := s.reg.SetSplit(r.Context(), name, b.Split)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"model": name, "split": split})
	return nil
}

func (s *Server) handleRollback(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	var b struct {
		ToSeq      uint64 `json:"to_seq"`
		AllowEmpty bool   `json:"allow_empty"`
	}
	if r.ContentLength != 0 {
		if err := decodeJSON(w, r, s.cfg.MaxBodyBytes, &b); err != nil {
			return err
		}
	}
	split, err := s.reg.Rollback(r.Context(), name, b.ToSeq, allowEmpty(b.AllowEmpty)...)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"model": name, "split": split})
	return nil
}

func (s *Server) handleHistory(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	if err := registry.ValidateName(name); err != nil {
		return err
	}
	evs, err := s.reg.History(r.Context(), name)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"model": name, "events": evs})
	return nil
}

func (s *Server) handleModelStats(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	type verStats struct {
		Router *versionStatsView `json:"router,omitempty"`
		Batch  *batchView        `json:"batch,omitempty"`
	}
	out := map[string]verStats{}
	for _, vs := range s.router.Stats() {
		if vs.Model == name {
			out[vs.Version] = verStats{Router: &versionStatsView{Weight: vs.Weight * 100, Window: viewMetrics(vs.Window), Total: viewMetrics(vs.Total)}}
		}
	}
	for ver, l := range s.models.current()[name] {
		st := out[ver]
		b := viewBatch(l.batcher.Stats())
		st.Batch = &b
		out[ver] = st
	}
	if len(out) == 0 {
		if _, err := s.reg.Versions(r.Context(), name); err != nil {
			return err
		}
	}
	split, _ := s.router.Split(name)
	pct := map[string]float64{}
	for v, w := range split {
		pct[v] = w * 100
	}
	writeJSON(w, http.StatusOK, map[string]any{"model": name, "split_pct": pct, "versions": out})
	return nil
}

func (s *Server) handleInvalidate(w http.ResponseWriter, r *http.Request) error {
	if s.cache == nil {
		return badRequest("the cache is disabled on this server")
	}
	var b struct {
		Model   string `json:"model"`
		Version string `json:"version"`
		Ticker  string `json:"ticker"`
		Pattern string `json:"pattern"`
	}
	if err := decodeJSON(w, r, s.cfg.MaxBodyBytes, &b); err != nil {
		return err
	}
	ctx := r.Context()
	var n int64
	var err error
	switch {
	case b.Pattern != "":
		n, err = s.cache.InvalidatePattern(ctx, b.Pattern)
	case b.Model != "" && b.Version != "":
		n, err = s.cache.InvalidateVersion(ctx, b.Model, b.Version)
	case b.Model != "":
		n, err = s.cache.InvalidateModel(ctx, b.Model)
	case b.Ticker != "":
		n, err = s.cache.InvalidateTicker(ctx, b.Ticker)
	default:
		return badRequest("say what to invalidate: \"model\" (with optional \"version\"), \"ticker\" or \"pattern\"")
	}
	if err != nil {
		return &HTTPError{Status: http.StatusBadRequest, Code: api.CodeInvalidInput, Msg: err.Error(), Err: err}
	}
	writeJSON(w, http.StatusOK, map[string]any{"deleted": n})
	return nil
}

func (s *Server) handleCacheStats(w http.ResponseWriter, r *http.Request) error {
	if s.cache == nil {
		writeJSON(w, http.StatusOK, map[string]any{"enabled": false})
		return nil
	}
	writeJSON(w, http.StatusOK, map[string]any{"enabled": true, "stats": viewCache(s.cache.Stats())})
	return nil
}

// allowEmpty turns the API's allow_empty flag into registry options: only
// with it may a change leave a model with no serving version.
func allowEmpty(ok bool) []registry.ChangeOption {
	if ok {
		return []registry.ChangeOption{registry.AllowEmpty()}
	}
	return nil
}
