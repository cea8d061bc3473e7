package server

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/signalforge/signalforge/api"
)

// routeClass says which timeouts bound a route (see Timeouts).
type routeClass uint8

const (
	// classProbe: unauthenticated, no body (health, readiness, metrics,
	// listings, metadata, unknown paths). The zero value, so a path no
	// route matches is bounded like a probe.
	classProbe routeClass = iota
	// classData: predict and infer, which read a body and then compute
	// for at most the request's timeout.
	classData
	// classAdmin: the admin API; the answer's write deadline is set when
	// it is written (registration may take long), uploads extend the body
	// deadline after the token is checked.
	classAdmin
)

// setDeadlines bounds the request by its route's class. A connection's
// deadlines carry over to its next request, so every request sets both.
func (s *Server) setDeadlines(w http.ResponseWriter, c routeClass) {
	t := s.cfg.Timeouts
	rc := http.NewResponseController(w)
	now := time.Now()
	switch c {
	case classData:
		_ = rc.SetReadDeadline(now.Add(t.Body))
		_ = rc.SetWriteDeadline(now.Add(t.Body + s.cfg.MaxTimeout + t.Write))
	case classAdmin:
		_ = rc.SetReadDeadline(now.Add(t.Body))
		_ = rc.SetWriteDeadline(time.Time{}) // set when the answer is written
	default:
		// The whole request: a client that trickles a body nobody reads
		// (the server discards it after answering) is cut off too.
		_ = rc.SetReadDeadline(now.Add(t.Probe))
		_ = rc.SetWriteDeadline(now.Add(t.Probe))
	}
}

// bodyRead lifts the read deadline once a body has been read: the handler
// may then compute for longer than the body had to arrive (a read deadline
// that passes while net/http watches the idle connection would cancel the
// request), and net/http sets the next request's deadlines itself.
func bodyRead(w http.ResponseWriter) {
	_ = http.NewResponseController(w).SetReadDeadline(time.Time{})
}

// bodyError turns a failure to read a request body into an HTTPError: 413
// above the limit, 408 when the body did not arrive within budget, 400 when
// the client broke off. It never carries socket addresses.
func bodyError(err error, limit int64, budget time.Duration) *HTTPError {
	var maxErr *http.MaxBytesError
	switch {
	case errors.As(err, &maxErr):
		return &HTTPError{Status: http.StatusRequestEntityTooLarge, Code: api.CodeTooLarge, Msg: fmt.Sprintf("request body is larger than the limit of %d bytes", limit)}
	case errors.Is(err, os.ErrDeadlineExceeded):
		return &HTTPError{Status: http.StatusRequestTimeout, Code: api.CodeRequestTimeout, Msg: fmt.Sprintf("request body not received within %v", budget), Err: err}
	}
	return &HTTPError{Status: http.StatusBadRequest, Code: api.CodeBadRequest, Msg: "request body could not be read: the client closed or broke off the connection", Err: err}
}

// deadlineWriter sets the connection's write deadline when an answer
// starts, for handlers whose running time has no fixed bound (admin).
type deadlineWriter struct {
	http.ResponseWriter
	d   time.Duration
	set bool
}

func (w *deadlineWriter) arm() {
	if !w.set {
		w.set = true
		_ = http.NewResponseController(w.ResponseWriter).SetWriteDeadline(time.Now().Add(w.d))
	}
}

func (w *deadlineWriter) WriteHeader(code int) {
	w.arm()
	w.ResponseWriter.WriteHeader(code)
}

func (w *deadlineWriter) Write(b []byte) (int, error) {
	w.arm()
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection.
func (w *deadlineWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
