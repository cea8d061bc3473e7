// Package api holds SignalForge Serve's wire types — the native JSON API and
// the Open Inference Protocol v2 (KServe v2) REST types — and a Go client.
//
// Native prediction, one row:
//
//	POST /v1/models/lstm_model/predict
//	{"request_id": "req_123", "ticker": "AAPL", "horizon": 5,
//	 "features": {"rsi_14": 65.0, "macd": 0.5}}
//
// Several rows use "instances": [{...}, {...}]. A sequence model takes each
// feature as an array of time steps. Errors are always
// {"error": {"code": "...", "message": "..."}}.
package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"maps"
	"math"
	"strconv"
)

// Features maps a feature name to its value: one number for a tabular model,
// an array of numbers (one per time step) for a sequence model.
type Features map[string]Value

// Value is one feature's value. Seq is true when it was sent as an array.
type Value struct {
	Values []float64
	Seq    bool
}

// Scalar returns a scalar feature value.
func Scalar(v float64) Value { return Value{Values: []float64{v}} }

// Sequence returns a sequence feature value.
func Sequence(v ...float64) Value { return Value{Values: v, Seq: true} }

// MarshalJSON writes a number or an array of numbers.
func (v Value) MarshalJSON() ([]byte, error) {
	if !v.Seq && len(v.Values) == 1 {
		return json.Marshal(v.Values[0])
	}
	if v.Values == nil {
		return []byte("[]"), nil
	}
	return json.Marshal(v.Values)
}

// ErrValue is wrapped by errors about a feature value that is not a number
// or an array of numbers.
var ErrValue = errors.New("invalid feature value")

// UnmarshalJSON accepts a number, an array of numbers, or the strings "NaN",
// "Infinity", "-Infinity" (which JSON cannot carry as numbers; they decode to
// NaN/±Inf so that validation can refuse them by feature name).
func (v *Value) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return fmt.Errorf("%w: empty", ErrValue)
	}
	switch b[0] {
	case '[':
		var raw []json.RawMessage
		if err := json.Unmarshal(b, &raw); err != nil {
			return fmt.Errorf("%w: want an array of numbers", ErrValue)
		}
		vals := make([]float64, len(raw))
		for i, r := range raw {
			f, err := parseNumber(r)
			if err != nil {
				return fmt.Errorf("%w: time step %d: %v", ErrValue, i, err)
			}
			vals[i] = f
		}
		*v = Value{Values: vals, Seq: true}
		return nil
	default:
		f, err := parseNumber(b)
		if err != nil {
			return fmt.Errorf("%w: %v", ErrValue, err)
		}
		*v = Value{Values: []float64{f}}
		return nil
	}
}

func parseNumber(b []byte) (float64, error) {
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return 0, errors.New("want a number")
	}
	switch b[0] {
	case '"':
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return 0, errors.New("want a number")
		}
		switch s {
		case "NaN", "nan":
			return math.NaN(), nil
		case "Infinity", "inf", "Inf", "+Infinity":
			return math.Inf(1), nil
		case "-Infinity", "-inf", "-Inf":
			return math.Inf(-1), nil
		}
		return 0, fmt.Errorf("want a number, got the string %q", s)
	case 't', 'f':
		return 0, errors.New("want a number, got a boolean")
	case 'n':
		return 0, errors.New("want a number, got null")
	case '{':
		return 0, errors.New("want a number, got an object")
	case '[':
		return 0, errors.New("want a number, got a nested array")
	}
	f, err := strconv.ParseFloat(string(b), 64)
	if errors.Is(err, strconv.ErrRange) {
		return 0, fmt.Errorf("%s is out of range for a number", truncate(b, 32))
	}
	if err != nil {
		return 0, fmt.Errorf("want a number, got %s", truncate(b, 32))
	}
	return f, nil
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "…"
	}
	return string(b)
}

// PredictRequest is the body of POST /v1/models/{name}/predict. Exactly one
// of Features and Instances must be set.
type PredictRequest struct {
	// RequestID makes routing sticky: the same id reaches the same version
	// while the split is unchanged. If empty, the server assigns one.
	RequestID string `json:"request_id,omitempty"`
	Ticker    string `json:"ticker,omitempty"`
	Horizon   int    `json:"horizon,omitempty"`
	// Features is one row.
	Features Features `json:"features,omitempty"`
	// Instances are several rows.
	Instances []Features `json:"instances,omitempty"`
	// Version pins a model version, bypassing the traffic split.
	Version string `json:"version,omitempty"`
	// TimeoutMS bounds the request; if zero the server's default applies.
	TimeoutMS int `json:"timeout_ms,omitempty"`
	// NoCache skips the prediction cache for this request.
	NoCache bool `json:"no_cache,omitempty"`
}

// Rows returns the request's rows: Instances, or Features as one row.
func (r *PredictRequest) Rows() []Features {
	if r.Instances != nil {
		return r.Instances
	}
	if r.Features != nil {
		return []Features{r.Features}
	}
	return nil
}

// PredictResponse is the answer to a native prediction.
type PredictResponse struct {
	RequestID string `json:"request_id,omitempty"`
	Model     string `json:"model"`
	Version   string `json:"version"`
	// Predictions has one row of outputs per input row.
	Predictions [][]float32 `json:"predictions"`
	Cached      bool        `json:"cached"`
	// Timing in milliseconds.
	TotalMS     float64 `json:"total_ms"`
	InferenceMS float64 `json:"inference_ms,omitempty"`
}

// ErrorBody is every error response: {"error": {"code", "message"}}.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail describes one error.
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Error codes.
const (
	CodeBadRequest   = "bad_request"
	CodeInvalidInput = "invalid_input"
	CodeNotFound     = "not_found"
	CodeTooLarge     = "too_large"
	CodeQueueFull    = "queue_full"
	CodeUnavailable  = "unavailable"
	CodeTimeout      = "timeout"
	// CodeRequestTimeout (408): the request body did not arrive in time.
	CodeRequestTimeout = "request_timeout"
	CodeUnauthorized   = "unauthorized"
	// CodeForbidden (403): the admin API is closed (no token configured),
	// or register-by-path is off or names a file outside the import folder.
	CodeForbidden     = "forbidden"
	CodeConflict      = "conflict"
	CodeInternal      = "internal"
	CodeMethodNotAllo = "method_not_allowed"
)

// ModelSummary is one entry of GET /v1/models.
type ModelSummary struct {
	Name     string           `json:"name"`
	Versions []VersionSummary `json:"versions"`
}

// VersionSummary describes one version of a model.
type VersionSummary struct {
	Version  string             `json:"version"`
	Status   string             `json:"status"`
	Traffic  float64            `json:"traffic_pct"`
	Features []string           `json:"features,omitempty"`
	Loaded   bool               `json:"loaded"`
	Metrics  map[string]float64 `json:"metrics,omitempty"`
	Tags     map[string]string  `json:"tags,omitempty"`
	Path     string             `json:"onnx_path,omitempty"`
}

// UnmarshalJSON decodes an object of feature values, naming the feature in
// any error.
func (f *Features) UnmarshalJSON(b []byte) error {
	if out, ok := fastFeatures(b); ok {
		*f = out
		return nil
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return fmt.Errorf("%w: features must be an object of name → number or array of numbers", ErrValue)
	}
	out := make(Features, len(raw))
	for name, r := range raw {
		var v Value
		if err := v.UnmarshalJSON(r); err != nil {
			return fmt.Errorf("feature %q: %w", name, err)
		}
		out[name] = v
	}
	*f = out
	return nil
}

// Len is the number of features (infer.RowReader).
func (f Features) Len() int { return len(f) }

// Values returns a feature's values (infer.RowReader).
func (f Features) Values(name string) ([]float64, bool) {
	v, ok := f[name]
	return v.Values, ok
}

// Names yields the feature names (infer.RowReader).
func (f Features) Names() iter.Seq[string] { return maps.Keys(f) }
