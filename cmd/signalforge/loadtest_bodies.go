package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/signalforge/signalforge/api"
)

// loadTarget is what the server says about the model under test.
type loadTarget struct {
	model, version string
	// versions are the versions load goes to: the pinned one, or those
	// with traffic.
	versions []api.VersionSummary
	// meta is the OIP v2 metadata (inputs with shapes), nil if the server
	// did not give it.
	meta *api.ModelMetadata
}

// describe asks the server about the model (GET /v1/models/NAME, then
// GET /v2/models/NAME[/versions/V]). It is also the check that the server
// is up and serves the model, before any load is sent.
func (lc *loadtestCmd) describe(ctx context.Context, hc *http.Client) (*loadTarget, error) {
	c := &api.Client{BaseURL: lc.server, HTTP: hc}
	var m struct {
		Versions []struct {
			api.VersionSummary
			State string `json:"state"`
		} `json:"versions"`
	}
	if err := c.Do(ctx, http.MethodGet, "/v1/models/"+url.PathEscape(lc.model), nil, &m); err != nil {
		var ae *api.Error
		if errors.As(err, &ae) && ae.Status == http.StatusNotFound {
			return nil, fmt.Errorf("model %q is not on the server at %s (GET /v1/models lists its models)", lc.model, lc.server)
		}
		return nil, lc.explain(err)
	}
	t := &loadTarget{model: lc.model, version: lc.version}
	var names []string
	for _, v := range m.Versions {
		names = append(names, v.Version)
		switch {
		case lc.version != "" && v.Version == lc.version:
			if v.State != "" && v.State != "loaded" {
				return nil, fmt.Errorf("version %s of model %s is %s on the server at %s, not serving", lc.version, lc.model, strings.ReplaceAll(v.State, "_", " "), lc.server)
			}
			t.versions = append(t.versions, v.VersionSummary)
		case lc.version == "" && v.Traffic > 0:
			t.versions = append(t.versions, v.VersionSummary)
		}
	}
	if len(t.versions) == 0 {
		if lc.version != "" {
			return nil, fmt.Errorf("model %s has no version %q on the server at %s (it has %s)", lc.model, lc.version, lc.server, strings.Join(names, ", "))
		}
		return nil, fmt.Errorf("model %s has no version with traffic on the server at %s; pin one with --model %s:VERSION", lc.model, lc.server, lc.model)
	}
	p := "/v2/models/" + url.PathEscape(lc.model)
	if lc.version != "" {
		p += "/versions/" + url.PathEscape(lc.version)
	}
	var md api.ModelMetadata
	if err := c.Do(ctx, http.MethodGet, p, nil, &md); err == nil {
		t.meta = &md
	} else if lc.api == "v2" && lc.bodyPath == "" {
		return nil, fmt.Errorf("reading the model's inputs (GET %s) to generate requests: %w", p, lc.explain(err))
	}
	return t, nil
}

// explain turns a failed call into a message that says what to do.
func (lc *loadtestCmd) explain(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return fmt.Errorf("cannot reach the server at %s: %v (is `signalforge serve` running? set --server or $%s)", lc.server, op.Err, predictEnvServer)
	}
	var ae *api.Error
	if errors.As(err, &ae) {
		return fmt.Errorf("the server at %s answered HTTP %d %s: %s", lc.server, ae.Status, ae.Code, ae.Message)
	}
	return fmt.Errorf("the server at %s: %w", lc.server, err)
}

// bodySource gives the body of request number seq.
type bodySource interface {
	body(seq int64) []byte
	describe() string
}

// loadMaxValues caps the values of one generated request.
const loadMaxValues = 1 << 20

// generator returns generated requests for the model: random values in
// [-1, 1), new ones for every request (so that none is a cache hit), for
// the model's features (native) or input tensors (v2).
func (t *loadTarget) generator(apiName string, rows int) (bodySource, error) {
	if apiName == "v2" {
		return t.v2Generator(rows)
	}
	features := t.versions[0].Features
	for _, v := range t.versions[1:] {
		if !slices.Equal(v.Features, features) {
			return nil, fmt.Errorf("versions %s and %s of %s take different features; pin one with --model %s:VERSION, or give --body",
				t.versions[0].Version, v.Version, t.model, t.model)
		}
	}
	if len(features) == 0 {
		return nil, fmt.Errorf("the server lists no features for %s; give request bodies with --body", t.model)
	}
	// A sequence model's single input is [batch, steps, features]: each
	// feature is a series of steps values.
	steps := 0
	if t.meta != nil && len(t.meta.Inputs) == 1 {
		if sh := t.meta.Inputs[0].Shape; len(sh) == 3 && sh[1] > 0 {
			steps = int(sh[1])
		}
	}
	if n := rows * len(features) * max(steps, 1); n > loadMaxValues {
		return nil, fmt.Errorf("--rows %d: %d values a request, over %d", rows, n, loadMaxValues)
	}
	return &nativeGen{features: features, steps: steps, rows: rows, version: t.version}, nil
}

func (t *loadTarget) v2Generator(rows int) (bodySource, error) {
	if t.meta == nil || len(t.meta.Inputs) == 0 {
		return nil, fmt.Errorf("the server lists no inputs for %s; give request bodies with --body", t.model)
	}
	g := &v2Gen{rows: rows}
	for _, in := range t.meta.Inputs {
		shape := slices.Clone(in.Shape)
		n := 1
		for d := range shape {
			switch {
			case d == 0 && shape[d] < 0:
				shape[d] = int64(rows)
			case d == 0 && rows > 1:
				return nil, fmt.Errorf("input %s has a fixed batch of %d: --rows does not apply", in.Name, shape[d])
			case shape[d] < 0:
				shape[d] = 1
			}
			n *= int(shape[d])
			if n > loadMaxValues {
				return nil, fmt.Errorf("input %s %v: more than %d values a request", in.Name, in.Shape, loadMaxValues)
			}
		}
		kind := ""
		switch {
		case strings.HasPrefix(in.Datatype, "FP"), in.Datatype == "BF16":
			kind = "float"
		case strings.HasPrefix(in.Datatype, "INT"), strings.HasPrefix(in.Datatype, "UINT"):
			kind = "int"
		case in.Datatype == "BOOL":
			kind = "bool"
		default:
			return nil, fmt.Errorf("input %s is %s: requests cannot be generated for it; give them with --body", in.Name, in.Datatype)
		}
		g.inputs = append(g.inputs, v2GenInput{name: in.Name, datatype: in.Datatype, shape: shape, n: n, kind: kind})
	}
	return g, nil
}

// loadRand is request seq's random source: the same seq gives the same
// body, distinct seqs distinct ones.
func loadRand(seq int64) *rand.Rand {
	return rand.New(rand.NewPCG(uint64(seq), 0x5167_4f52_4745))
}

func appendRandFloat(b []byte, r *rand.Rand) []byte {
	return strconv.AppendFloat(b, math.Round((r.Float64()*2-1)*1e4)/1e4, 'g', -1, 64)
}

// nativeGen generates native API requests.
type nativeGen struct {
	features []string
	steps    int // time steps of a sequence model; 0 for scalars
	rows     int
	version  string
}

func (g *nativeGen) describe() string {
	what := fmt.Sprintf("%d features", len(g.features))
	if g.steps > 0 {
		what += fmt.Sprintf(" × %d time steps", g.steps)
	}
	rows := "1 row"
	if g.rows > 1 {
		rows = fmt.Sprintf("%d rows", g.rows)
	}
	return fmt.Sprintf("generated: %s, %s a request, random values (no cache hits)", what, rows)
}

func (g *nativeGen) body(seq int64) []byte {
	r := loadRand(seq)
	b := make([]byte, 0, 64+g.rows*len(g.features)*(24+8*g.steps))
	b = fmt.Appendf(b, `{"request_id":"loadtest-%d",`, seq)
	if g.version != "" {
		b = fmt.Appendf(b, `"version":%q,`, g.version)
	}
	row := func(b []byte) []byte {
		b = append(b, '{')
		for i, f := range g.features {
			if i > 0 {
				b = append(b, ',')
			}
			b = strconv.AppendQuote(b, f)
			b = append(b, ':')
			if g.steps == 0 {
				b = appendRandFloat(b, r)
				continue
			}
			b = append(b, '[')
			for s := range g.steps {
				if s > 0 {
					b = append(b, ',')
				}
				b = appendRandFloat(b, r)
			}
			b = append(b, ']')
		}
		return append(b, '}')
	}
	if g.rows == 1 {
		b = append(b, `"features":`...)
		b = row(b)
	} else {
		b = append(b, `"instances":[`...)
		for i := range g.rows {
			if i > 0 {
				b = append(b, ',')
			}
			b = row(b)
		}
		b = append(b, ']')
	}
	return append(b, '}')
}

// v2Gen generates OIP v2 infer requests.
type v2Gen struct {
	inputs []v2GenInput
	rows   int
}

type v2GenInput struct {
	name, datatype string
	shape          []int64
	n              int    // values
	kind           string // float, int or bool
}

func (g *v2Gen) describe() string {
	var parts []string
	for _, in := range g.inputs {
		parts = append(parts, fmt.Sprintf("%s %s %v", in.name, in.datatype, in.shape))
	}
	return "generated: input " + strings.Join(parts, ", ") + ", random values"
}

func (g *v2Gen) body(seq int64) []byte {
	r := loadRand(seq)
	b := fmt.Appendf(nil, `{"id":"loadtest-%d","inputs":[`, seq)
	for i, in := range g.inputs {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"name":`...)
		b = strconv.AppendQuote(b, in.name)
		b = append(b, `,"shape":[`...)
		for d, n := range in.shape {
			if d > 0 {
				b = append(b, ',')
			}
			b = strconv.AppendInt(b, n, 10)
		}
		b = append(b, `],"datatype":`...)
		b = strconv.AppendQuote(b, in.datatype)
		b = append(b, `,"data":[`...)
		for j := range in.n {
			if j > 0 {
				b = append(b, ',')
			}
			switch in.kind {
			case "float":
				b = appendRandFloat(b, r)
			case "int":
				b = strconv.AppendInt(b, int64(r.IntN(10)), 10)
			default:
				b = strconv.AppendBool(b, r.IntN(2) == 1)
			}
		}
		b = append(b, "]}"...)
	}
	return append(b, "]}"...)
}

// fileBodies sends a file's requests in turn.
type fileBodies struct {
	path   string
	bodies [][]byte
}

func (f *fileBodies) body(seq int64) []byte { return f.bodies[seq%int64(len(f.bodies))] }

func (f *fileBodies) describe() string {
	n := "1 request"
	if len(f.bodies) > 1 {
		n = thousands(int64(len(f.bodies))) + " requests, sent in turn"
	}
	return fmt.Sprintf("from %s (%s)", f.path, n)
}

// loadMaxBodyFile caps --body's file: it is held in memory.
const loadMaxBodyFile = 256 << 20

// readLoadBodies reads --body: one JSON request, a JSON array of
// requests, or JSON Lines (any sequence of JSON objects). Each must be a
// request of the API (decoded strictly, so a typo in a field name is
// caught here rather than as errors under load). With version set, each
// native request is pinned to it.
func readLoadBodies(path, apiName, version string) (*fileBodies, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("--body: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, loadMaxBodyFile+1))
	if err != nil {
		return nil, fmt.Errorf("--body: %w", err)
	}
	if len(b) > loadMaxBodyFile {
		return nil, fmt.Errorf("--body %s: larger than %s", path, fmtBytes(loadMaxBodyFile))
	}
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return nil, fmt.Errorf("--body %s: empty", path)
	}
	var raws []json.RawMessage
	if b[0] == '[' {
		if err := json.Unmarshal(b, &raws); err != nil {
			return nil, fmt.Errorf("--body %s: want a JSON array of requests: %w", path, err)
		}
	} else {
		dec := json.NewDecoder(bytes.NewReader(b))
		for {
			var r json.RawMessage
			if err := dec.Decode(&r); err == io.EOF {
				break
			} else if err != nil {
				return nil, fmt.Errorf("--body %s: request %d: %w", path, len(raws)+1, err)
			}
			raws = append(raws, r)
		}
	}
	if len(raws) == 0 {
		return nil, fmt.Errorf("--body %s: no requests", path)
	}
	out := &fileBodies{path: path}
	for i, r := range raws {
		body, err := checkLoadBody(r, apiName, version)
		if err != nil {
			hint := ""
			if b[0] == '[' && apiName == "native" && strings.Contains(err.Error(), "unknown field") {
				hint = ` (an array here is a list of requests; rows go in {"instances": [...]})`
			}
			return nil, fmt.Errorf("--body %s: request %d: %v%s", path, i+1, err, hint)
		}
		out.bodies = append(out.bodies, body)
	}
	return out, nil
}

// checkLoadBody checks one request of a --body file and returns the bytes
// to send.
func checkLoadBody(r json.RawMessage, apiName, version string) ([]byte, error) {
	if t := bytes.TrimSpace(r); len(t) == 0 || t[0] != '{' {
		return nil, errors.New("not a JSON object")
	}
	if apiName == "v2" {
		var req api.InferRequest
		if err := decodeStrict(r, &req); err != nil {
			return nil, fmt.Errorf("not an OIP v2 infer request: %w", err)
		}
		if len(req.Inputs) == 0 {
			return nil, errors.New("no inputs")
		}
	} else {
		var req api.PredictRequest
		if err := decodeStrict(r, &req); err != nil {
			return nil, fmt.Errorf("not a prediction request: %w", err)
		}
		if len(req.Rows()) == 0 {
			return nil, errors.New(`no "features" or "instances"`)
		}
		if version != "" && req.Version != version {
			if req.Version != "" {
				return nil, fmt.Errorf("pins version %q, --model pins %q", req.Version, version)
			}
			req.Version = version
			return json.Marshal(&req)
		}
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, r); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
