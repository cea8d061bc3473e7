package server

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"slices"
	"time"

	"github.com/signalforge/signalforge/api"
	"github.com/signalforge/signalforge/infer"
	"github.com/signalforge/signalforge/registry"
	"github.com/signalforge/signalforge/tensor"
)

// Open Inference Protocol v2 handlers. Errors use the protocol's
// {"error": "message"} body.

func (s *Server) handleV2Server(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, api.ServerMetadata{Name: "signalforge", Version: s.build.Version, Extensions: []string{}})
}

func (s *Server) handleLive(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]bool{"live": true})
}

// handleReady answers 200 when ready and 503 when not. The OIP v2 text
// asks for a 4xx when not ready; 503 is what Kubernetes probes and load
// balancers expect of an instance that is starting or draining, so we keep
// it (a deliberate deviation, documented in docs/API.md).
//
// A server is not ready while it loads, while it shuts down, and while a
// model with production traffic has no loaded production version (every
// one failed to load): the body then lists those models with the reason.
// The other models keep answering requests meanwhile.
func (s *Server) handleReady(w http.ResponseWriter, r *http.Request) {
	ok, bad := s.readiness()
	if !ok {
		body := map[string]any{"ready": false}
		if len(bad) > 0 {
			body["unavailable_models"] = bad
		}
		writeJSON(w, http.StatusServiceUnavailable, body)
		return
	}
	writeJSON(w, http.StatusOK, map[string]bool{"ready": true})
}

// readiness is what /v2/health/ready answers, with the models that have
// production traffic but no loadable production version.
func (s *Server) readiness() (bool, []unservable) {
	if !s.ready.Load() {
		return false, nil
	}
	var bad []unservable
	for _, u := range s.models.Unservable() {
		bad = append(bad, unservable{Model: u.Model, Reason: u.Reason})
	}
	return len(bad) == 0, bad
}

// unservable is a model readiness lists as unavailable: it has production
// traffic and none of its production versions is loaded.
type unservable struct {
	Model  string `json:"model"`
	Reason string `json:"reason"`
}

func (s *Server) handleV2ModelReady(w http.ResponseWriter, r *http.Request) {
	l, err := s.pick(r.Context(), r.PathValue("name"), r.PathValue("version"), "")
	if err != nil {
		var he *HTTPError
		if errors.As(err, &he) && he.Status == http.StatusServiceUnavailable {
			writeJSON(w, http.StatusServiceUnavailable, map[string]any{"name": r.PathValue("name"), "ready": false, "reason": he.Msg})
			return
		}
		s.writeError(w, r, err, true)
		return
	}
	defer l.Release()
	writeJSON(w, http.StatusOK, map[string]any{"name": l.Ref().Name, "version": l.Ref().Version, "ready": true})
}

func ioMeta(ios []infer.IOInfo) []api.TensorMetadata {
	out := make([]api.TensorMetadata, len(ios))
	for i, io := range ios {
		out[i] = api.TensorMetadata{Name: io.Name, Datatype: api.DataTypeName(io.DType), Shape: slices.Clone(io.Shape)}
	}
	return out
}

func (s *Server) handleV2Metadata(w http.ResponseWriter, r *http.Request) {
	name, version := r.PathValue("name"), r.PathValue("version")
	l, err := s.pick(r.Context(), name, version, "")
	if err != nil {
		s.writeError(w, r, err, true)
		return
	}
	defer l.Release()
	md := api.ModelMetadata{
		Name:     name,
		Platform: "onnxruntime_onnx",
		Inputs:   ioMeta(l.Session().Inputs()),
		Outputs:  ioMeta(l.Session().Outputs()),
	}
	if version != "" {
		md.Versions = []string{version}
	} else {
		for v := range s.models.Current().Versions(name) {
			md.Versions = append(md.Versions, v)
		}
		slices.Sort(md.Versions)
	}
	writeJSON(w, http.StatusOK, md)
}

func (s *Server) handleV2Infer(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	name, version := r.PathValue("name"), r.PathValue("version")
	status, servedBy := http.StatusOK, ""
	defer func() {
		m, servedBy := s.metricLabels(name, servedBy)
		s.met.requests.WithLabelValues("v2", m, servedBy, codeLabel(status)).Inc()
		s.met.latency.WithLabelValues("v2", m, servedBy, "false").Observe(time.Since(start).Seconds())
	}()
	resp, err := s.infer(w, r, name, version, start)
	if resp != nil {
		servedBy = resp.ModelVersion
	}
	if err != nil {
		var he *HTTPError
		status = http.StatusInternalServerError
		if errors.As(err, &he) {
			status = he.Status
		}
		s.writeError(w, r, err, true)
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

func (s *Server) infer(w http.ResponseWriter, r *http.Request, name, version string, start time.Time) (*api.InferResponse, error) {
	var req api.InferRequest
	if err := s.decodeJSONMode(w, r, &req, false); err != nil {
		return nil, err
	}
	if err := checkRequestID(req.ID); err != nil {
		return nil, err
	}
	if len(req.Inputs) == 0 {
		return nil, badRequest("field \"inputs\" is empty: send one tensor per model input")
	}
	timeout, err := s.v2Timeout(req.Parameters)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(r.Context(), timeout)
	defer cancel()
	l, err := s.pick(ctx, name, version, req.ID)
	if err != nil {
		return nil, err
	}
	defer l.Release()
	resp := &api.InferResponse{ModelName: name, ModelVersion: l.Ref().Version, ID: req.ID}
	want := l.Session().Inputs()
	if len(req.Inputs) != len(want) {
		return resp, badRequest("model %s has %d input(s) %v, request has %d", l.Ref(), len(want), ioNames(want), len(req.Inputs))
	}
	byName := map[string]api.InferTensor{}
	for _, in := range req.Inputs {
		if _, dup := byName[in.Name]; dup {
			return resp, badRequest("input %q appears twice", in.Name)
		}
		byName[in.Name] = in
	}
	wantOut := map[string]bool{}
	outNames := ioNames(l.Session().Outputs())
	for _, o := range req.Outputs {
		if !slices.Contains(outNames, o.Name) {
			return resp, badRequest("model %s has no output %q (outputs are %v)", l.Ref(), o.Name, outNames)
		}
		wantOut[o.Name] = true
	}
	// A JSON array of n numbers takes at least 2n-1 bytes, so no tensor in
	// a body of MaxBodyBytes has more elements than this: the cap that
	// keeps a huge declared shape from allocating before data is read.
	maxElems := s.cfg.MaxBodyBytes/2 + 1
	ins := make([]tensor.Tensor, len(want))
	for i, io := range want {
		in, ok := byName[io.Name]
		if !ok {
			return resp, badRequest("model %s: missing input %q (inputs are %v)", l.Ref(), io.Name, ioNames(want))
		}
		// The declared shape is checked before the data is decoded.
		switch shape := tensor.Shape(in.Shape); {
		case in.Shape == nil:
			return resp, badRequest("input %q: \"shape\" is missing; model %s wants %v (-1 = any size)", io.Name, l.Ref(), []int64(io.Shape))
		case !shape.Matches(io.Shape):
			return resp, badRequest("input %q: shape %v, model %s wants %v (-1 = any size)", io.Name, in.Shape, l.Ref(), []int64(io.Shape))
		case io.BatchAxis == 0 && shape[0] == 0:
			return resp, badRequest("input %q: shape %v has no rows", io.Name, in.Shape)
		case io.BatchAxis == 0 && shape[0] > int64(s.cfg.MaxRows):
			return resp, &HTTPError{Status: http.StatusBadRequest, Code: infer.CodeRowCount, Msg: fmt.Sprintf("input %q: %d rows, the limit is %d", io.Name, shape[0], s.cfg.MaxRows)}
		}
		if dt, ok := api.DataType(in.Datatype); ok && dt != io.DType {
			return resp, badRequest("input %q: datatype %s, model %s wants %s", io.Name, in.Datatype, l.Ref(), api.DataTypeName(io.DType))
		}
		t, err := api.DecodeTensorData(io.Name, in.Datatype, in.Shape, in.Data, maxElems)
		if err != nil {
			return resp, &HTTPError{Status: http.StatusBadRequest, Code: api.CodeInvalidInput, Msg: err.Error(), Err: err}
		}
		ins[i] = t
	}
	if len(want) > 0 && want[0].BatchAxis == 0 {
		for i := range ins {
			if ins[i].Len() != ins[0].Len() {
				return resp, badRequest("inputs disagree on the batch size: %q has %d rows, %q has %d", want[0].Name, ins[0].Len(), want[i].Name, ins[i].Len())
			}
		}
	}
	outs, err := execute(ctx, l, ins, -1)
	if err := s.settle(name, l, err, timeout, time.Since(start), false); err != nil {
		return resp, err
	}
	for i, io := range l.Session().Outputs() {
		if len(wantOut) > 0 && !wantOut[io.Name] {
			continue
		}
		t := outs[i]
		resp.Outputs = append(resp.Outputs, api.InferTensor{Name: io.Name, Shape: slices.Clone(t.Shape()), Datatype: api.DataTypeName(t.DType()), Data: api.EncodeTensorData(t)})
	}
	return resp, nil
}

// v2Timeout reads parameters.timeout_ms: a positive whole number of
// milliseconds, capped at MaxTimeout (compared before any conversion, so a
// huge value cannot overflow).
func (s *Server) v2Timeout(params map[string]any) (time.Duration, error) {
	raw, ok := params["timeout_ms"]
	if !ok {
		return s.cfg.DefaultTimeout, nil
	}
	const want = "parameters.timeout_ms: want a positive whole number of milliseconds"
	t, isNum := raw.(float64)
	switch {
	case !isNum:
		return 0, badRequest("%s, got %s", want, describeJSON(raw))
	case t <= 0 || t != math.Trunc(t):
		return 0, badRequest("%s, got %v", want, t)
	case t >= float64(s.cfg.MaxTimeout/time.Millisecond):
		return s.cfg.MaxTimeout, nil
	}
	return time.Duration(t) * time.Millisecond, nil
}

// describeJSON names a decoded JSON value that is not a number, so that
// "5" (a string) is not reported as if it were 5.
func describeJSON(v any) string {
	switch v := v.(type) {
	case string:
		return fmt.Sprintf("the string %q", v)
	case bool:
		return fmt.Sprintf("the boolean %v", v)
	case nil:
		return "null"
	case []any:
		return "an array"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("%v", v)
}

func ioNames(ios []infer.IOInfo) []string {
	out := make([]string, len(ios))
	for i, io := range ios {
		out[i] = io.Name
	}
	return out
}

// versionSummary renders a registry version for the native API.
// modelView is a model in /v1/models: api.ModelSummary with each version's
// load state.
type modelView struct {
	Name     string        `json:"name"`
	Versions []versionView `json:"versions"`
}

// versionView is api.VersionSummary plus whether this server serves the
// version: "loaded", "failed" (with the error in load_error) or
// "not_loaded" (archived, staging on a server that serves only
// production, or not loaded yet).
type versionView struct {
	api.VersionSummary
	State     string `json:"state"`
	LoadError string `json:"load_error,omitempty"`
}

func (s *Server) versionSummary(v registry.Version) versionView {
	out := versionView{VersionSummary: api.VersionSummary{
		Version: v.Version, Status: string(v.Status), Traffic: v.Traffic, Features: v.Features,
		Loaded: s.models.Current().Get(v.Name, v.Version) != nil, Metrics: v.Metrics, Tags: v.Tags,
	}, State: "not_loaded"}
	if out.Loaded {
		out.State = "loaded"
	} else if f, ok := s.models.Failure(v.Ref()); ok && f.SHA256 == v.Artifact.SHA256 {
		out.State, out.LoadError = "failed", f.Err.Error()
	}
	return out
}
