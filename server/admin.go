package server

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"

	"github.com/signalforge/signalforge/api"
	"github.com/signalforge/signalforge/registry"
)

func (s *Server) routes() {
	h := s.handle
	// Native API.
	h("POST /v1/models/{name}/predict", classData, s.handlePredict)
	h("GET /v1/models", classProbe, s.handleListModels)
	h("GET /v1/models/{name}", classProbe, s.handleGetModel)
	h("GET /v1/models/{name}/versions/{version}", classProbe, s.handleGetVersion)
	// Admin.
	h("POST /v1/admin/models/{name}/versions", classAdmin, s.admin(s.handleRegister))
	h("POST /v1/admin/models/{name}/versions/{version}/promote", classAdmin, s.admin(s.handlePromote))
	h("POST /v1/admin/models/{name}/versions/{version}/traffic", classAdmin, s.admin(s.handleTraffic))
	h("POST /v1/admin/models/{name}/versions/{version}/archive", classAdmin, s.admin(s.handleArchive))
	h("PUT /v1/admin/models/{name}/split", classAdmin, s.admin(s.handleSplit))
	h("POST /v1/admin/models/{name}/rollback", classAdmin, s.admin(s.handleRollback))
	h("GET /v1/admin/models/{name}/history", classAdmin, s.admin(s.handleHistory))
	h("GET /v1/admin/models/{name}/stats", classAdmin, s.admin(s.handleModelStats))
	h("POST /v1/admin/models/{name}/canary", classAdmin, s.admin(s.handleCanaryStart))
	h("GET /v1/admin/models/{name}/canary", classAdmin, s.admin(s.handleCanaryStatus))
	h("POST /v1/admin/models/{name}/canary/pause", classAdmin, s.admin(s.canaryStateHandler(s.reg.PauseCanary)))
	h("POST /v1/admin/models/{name}/canary/resume", classAdmin, s.admin(s.canaryStateHandler(s.reg.ResumeCanary)))
	h("DELETE /v1/admin/models/{name}/canary", classAdmin, s.admin(s.canaryStateHandler(s.reg.AbortCanary)))
	h("GET /v1/admin/models/{name}/judge", classAdmin, s.admin(s.handleJudge))
	h("PUT /v1/admin/models/{name}/shadow", classAdmin, s.admin(s.handleShadowStart))
	h("GET /v1/admin/models/{name}/shadow", classAdmin, s.admin(s.handleShadowStats))
	h("DELETE /v1/admin/models/{name}/shadow", classAdmin, s.admin(s.handleShadowStop))
	h("GET /v1/admin/models/{name}/fleet", classAdmin, s.admin(s.handleFleet))
	h("POST /v1/admin/cache/invalidate", classAdmin, s.admin(s.handleInvalidate))
	h("GET /v1/admin/cache/stats", classAdmin, s.admin(s.handleCacheStats))
	// Open Inference Protocol v2.
	h("GET /v2", classProbe, s.handleV2Server)
	h("GET /v2/health/live", classProbe, s.handleLive)
	h("GET /v2/health/ready", classProbe, s.handleReady)
	h("GET /v2/models/{name}", classProbe, s.handleV2Metadata)
	h("GET /v2/models/{name}/versions/{version}", classProbe, s.handleV2Metadata)
	h("GET /v2/models/{name}/ready", classProbe, s.handleV2ModelReady)
	h("GET /v2/models/{name}/versions/{version}/ready", classProbe, s.handleV2ModelReady)
	h("POST /v2/models/{name}/infer", classData, s.handleV2Infer)
	h("POST /v2/models/{name}/versions/{version}/infer", classData, s.handleV2Infer)
	// Operations.
	h("GET /healthz", classProbe, s.handleLive)
	h("GET /readyz", classProbe, s.handleReady)
	h("GET /metrics", classProbe, promhttpHandler(s.cfg.Gatherer).ServeHTTP)
}

// handle registers a route with its timeout class.
func (s *Server) handle(pattern string, c routeClass, h http.HandlerFunc) {
	s.routeClass[pattern] = c
	s.mux.HandleFunc(pattern, h)
}

// ServeHTTP serves the API. Requests no route matches get a JSON 404, or a
// JSON 405 with an Allow header when the path exists for other methods.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h, pattern := s.mux.Handler(r)
	s.setDeadlines(w, s.routeClass[pattern]) // unknown paths: classProbe
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

// errAdminClosed is the answer of every admin endpoint on a server with no
// admin token that was not explicitly opened for loopback development.
const errAdminClosed = "the admin API is closed: this server has no admin token. " +
	"Set one (serve --admin-token, env SIGNALFORGE_ADMIN_TOKEN, config admin_token) and send \"Authorization: Bearer <token>\"; " +
	"for development on this machine only, serve on a loopback address (127.0.0.1) with --admin-open-loopback (config admin_open_loopback: true)"

// admin wraps an admin handler with the bearer-token check. Without a
// token the admin API is closed, unless AdminOpenLoopback opened it (Serve
// then only listens on loopback).
func (s *Server) admin(h func(w http.ResponseWriter, r *http.Request) error) http.HandlerFunc {
	return func(rw http.ResponseWriter, r *http.Request) {
		// Admin handlers may run long (registration loads and warms a
		// model): the write deadline starts when the answer does.
		w := &deadlineWriter{ResponseWriter: rw, d: s.cfg.Timeouts.Write}
		switch tok := s.cfg.AdminToken; {
		case tok != "":
			scheme, got, ok := strings.Cut(r.Header.Get("Authorization"), " ")
			if !ok || !strings.EqualFold(scheme, "Bearer") || subtle.ConstantTimeCompare([]byte(strings.TrimSpace(got)), []byte(tok)) != 1 {
				w.Header().Set("WWW-Authenticate", `Bearer realm="signalforge-admin"`)
				s.writeError(w, r, &HTTPError{Status: http.StatusUnauthorized, Code: api.CodeUnauthorized, Msg: "admin endpoints need \"Authorization: Bearer <token>\""}, false)
				return
			}
		case !s.cfg.AdminOpenLoopback:
			s.writeError(w, r, &HTTPError{Status: http.StatusForbidden, Code: api.CodeForbidden, Msg: errAdminClosed}, false)
			return
		}
		if r.ContentLength == 0 {
			bodyRead(w) // nothing to read: the handler may take its time
		}
		if err := h(w, r.WithContext(registry.WithActor(r.Context(), "http:"+r.RemoteAddr))); err != nil {
			s.writeError(w, r, registryError(err), false)
		}
	}
}

// checkAdminAddr refuses an admin API opened without a token on an
// address other machines can reach.
func (s *Server) checkAdminAddr(addr string) error {
	if s.cfg.AdminToken != "" || !s.cfg.AdminOpenLoopback || LoopbackAddr(addr) {
		return nil
	}
	return fmt.Errorf("server: the admin API is open without a token (AdminOpenLoopback, --admin-open-loopback), "+
		"which is only allowed on a loopback address like 127.0.0.1:8080, not %s: set an admin token to serve admin beyond this machine", addr)
}

// LoopbackAddr reports whether a listen address ("host:port") accepts
// connections from this machine only: a loopback IP or "localhost".
func LoopbackAddr(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
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
	case errors.Is(err, registry.ErrExists), errors.Is(err, registry.ErrTransition), errors.Is(err, registry.ErrStaleRevision):
		return &HTTPError{Status: http.StatusConflict, Code: api.CodeConflict, Msg: err.Error(), Err: err}
	case errors.Is(err, registry.ErrInvalidName), errors.Is(err, registry.ErrInvalidArtifact),
		errors.Is(err, registry.ErrFeatures), errors.Is(err, registry.ErrTraffic), errors.Is(err, registry.ErrCanary):
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
		release, err := s.acquireUpload()
		if err != nil {
			return err
		}
		defer release()
		body, err := s.readUpload(w, r)
		if err != nil {
			return err
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
		if err := s.decodeJSON(w, r, &b); err != nil {
			return err
		}
		if b.ONNXPath == "" {
			return badRequest("field \"onnx_path\" is required (or upload the file as application/octet-stream)")
		}
		p, err := s.importPath(b.ONNXPath)
		if err != nil {
			return err
		}
		// Registration reads the file into memory like an upload.
		release, err := s.acquireUpload()
		if err != nil {
			return err
		}
		defer release()
		b.ONNXPath = p
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
	if err := s.decodeJSON(w, r, &b); err != nil {
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
		if err := s.decodeJSON(w, r, &b); err != nil {
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
	if err := s.decodeJSON(w, r, &b); err != nil {
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
		if err := s.decodeJSON(w, r, &b); err != nil {
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
	for ver, l := range s.models.Current().Versions(name) {
		st := out[ver]
		b := viewBatch(l.Batcher().Stats())
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
	if err := s.decodeJSON(w, r, &b); err != nil {
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
