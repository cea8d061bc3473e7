package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/signalforge/signalforge/api"
)

// HTTPError is an error with the HTTP status and API code it maps to. Every
// handler error becomes one before it reaches the client; anything else is
// a 500 and is logged, so bad input must always be turned into an HTTPError
// with a 4xx.
type HTTPError struct {
	Status int
	Code   string
	Msg    string
	// RetryAfter, if positive, is sent as the Retry-After header.
	RetryAfter time.Duration
	Err        error
}

func (e *HTTPError) Error() string {
	if e.Err != nil && e.Msg == "" {
		return e.Err.Error()
	}
	return e.Msg
}

func (e *HTTPError) Unwrap() error { return e.Err }

func badRequest(format string, args ...any) *HTTPError {
	return &HTTPError{Status: http.StatusBadRequest, Code: api.CodeBadRequest, Msg: fmt.Sprintf(format, args...)}
}

func notFound(format string, args ...any) *HTTPError {
	return &HTTPError{Status: http.StatusNotFound, Code: api.CodeNotFound, Msg: fmt.Sprintf(format, args...)}
}

// ctxError maps a context error to 504 (deadline) or 499-ish 503 (the
// client went away; it will not read the answer anyway).
func ctxError(err error) *HTTPError {
	if errors.Is(err, context.DeadlineExceeded) {
		return &HTTPError{Status: http.StatusGatewayTimeout, Code: api.CodeTimeout, Msg: "deadline exceeded before the prediction finished", Err: err}
	}
	return &HTTPError{Status: http.StatusServiceUnavailable, Code: api.CodeUnavailable, Msg: "request cancelled", Err: err}
}

// writeJSON writes v with the given status. v is encoded before anything
// is written, so an encoding failure (a non-finite float) becomes an error
// answer instead of a 200 with an empty body.
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		b, _ = json.Marshal(api.ErrorBody{Error: api.ErrorDetail{Code: api.CodeInternal, Message: "answer could not be encoded: " + err.Error()}})
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

// writeError writes err in the native error format. v2 selects the OIP v2
// format ({"error": "message"}).
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error, v2 bool) {
	var he *HTTPError
	if !errors.As(err, &he) {
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
			he = ctxError(err)
		} else {
			s.log.Error("internal error", "method", r.Method, "path", r.URL.Path, "err", err)
			he = &HTTPError{Status: http.StatusInternalServerError, Code: api.CodeInternal, Msg: "internal error", Err: err}
		}
	}
	if he.RetryAfter > 0 {
		secs := int(he.RetryAfter.Round(time.Second) / time.Second)
		if secs < 1 {
			secs = 1
		}
		w.Header().Set("Retry-After", strconv.Itoa(secs))
	}
	msg := capMessage(he.Error())
	if v2 {
		writeJSON(w, he.Status, api.V2Error{Error: msg})
		return
	}
	writeJSON(w, he.Status, api.ErrorBody{Error: api.ErrorDetail{Code: he.Code, Message: msg}})
}
