package server

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/signalforge/signalforge/api"
)

// decodeJSON reads r's body (at most MaxBodyBytes) into v, turning every
// failure into a 4xx HTTPError that says what is wrong and where.
func (s *Server) decodeJSON(w http.ResponseWriter, r *http.Request, v any) error {
	return s.decodeJSONMode(w, r, v, true)
}

// checkEncoding refuses request encodings the server does not read, with a
// message that says so instead of a confusing JSON error.
func checkEncoding(r *http.Request) error {
	if ce := r.Header.Get("Content-Encoding"); ce != "" && !strings.EqualFold(ce, "identity") {
		return &HTTPError{Status: http.StatusUnsupportedMediaType, Code: api.CodeBadRequest,
			Msg: fmt.Sprintf("Content-Encoding %q is not supported; send the body uncompressed", ce)}
	}
	if r.Header.Get("Inference-Header-Content-Length") != "" {
		return &HTTPError{Status: http.StatusUnsupportedMediaType, Code: api.CodeBadRequest,
			Msg: "binary tensor data (the OIP binary_data extension) is not supported; send the tensors as JSON \"data\""}
	}
	return nil
}

// decodeJSONMode is decodeJSON; strict refuses unknown fields (the native
// API does, so typos surface; OIP v2 does not, as its extensions add
// fields). Repeated keys are refused in both modes.
func (s *Server) decodeJSONMode(w http.ResponseWriter, r *http.Request, v any, strict bool) error {
	// The Content-Type is not checked: `curl -d` sends form encoding for
	// JSON bodies, and a body that is not JSON fails below anyway.
	if err := checkEncoding(r); err != nil {
		return err
	}
	buf, err := s.pools.readBody(w, r, s.cfg.MaxBodyBytes, s.cfg.Timeouts.Body)
	if err != nil {
		return err
	}
	defer s.pools.putBody(buf)
	if err := api.DecodeJSON(buf.Bytes(), v, strict); err != nil {
		return jsonError(err, s.cfg.MaxBodyBytes)
	}
	return nil
}

// jsonError maps the errors of api's decoders (and a body over the limit)
// to the HTTP error the client gets.
func jsonError(err error, limit int64) error {
	var maxErr *http.MaxBytesError
	var re *api.RequestError
	var dup *api.DuplicateKeyError
	switch {
	case errors.As(err, &maxErr):
		return &HTTPError{Status: http.StatusRequestEntityTooLarge, Code: api.CodeTooLarge, Msg: fmt.Sprintf("request body is larger than the limit of %d bytes", limit)}
	case errors.Is(err, api.ErrValue):
		return &HTTPError{Status: http.StatusBadRequest, Code: api.CodeInvalidInput, Msg: err.Error(), Err: err}
	case errors.As(err, &re), errors.As(err, &dup):
		return &HTTPError{Status: http.StatusBadRequest, Code: api.CodeBadRequest, Msg: err.Error(), Err: err}
	}
	return badRequest("malformed JSON: %v", err)
}

// readBody reads r's body, at most limit bytes, into a buffer from pool
// (release it with putBody once nothing refers to it). budget is the body
// timeout the route gave it, for the 408's message; once the body is read
// the read deadline is lifted (bodyRead).
func (p *pools) readBody(w http.ResponseWriter, r *http.Request, limit int64, budget time.Duration) (*bytes.Buffer, error) {
	body := http.MaxBytesReader(w, r.Body, limit)
	buf, _ := p.bodies.Get().(*bytes.Buffer)
	if buf == nil {
		buf = new(bytes.Buffer)
	}
	buf.Reset()
	if n := r.ContentLength; n > 0 && n <= limit {
		// ReadFrom wants bytes.MinRead of room beyond the data; grow once.
		buf.Grow(int(n) + bytes.MinRead)
	}
	if _, err := buf.ReadFrom(body); err != nil {
		p.putBody(buf)
		return nil, bodyError(err, limit, budget)
	}
	bodyRead(w)
	return buf, nil
}

// pools recycles per-request buffers: request bodies (the decoders copy
// what they keep) and the maps of cache-key inputs.
type pools struct {
	bodies, pointMaps, seqMaps, answers sync.Pool
}

// getBytes returns a buffer for an answer; putBytes gives it back.
func (p *pools) getBytes() []byte {
	if b, ok := p.answers.Get().(*[]byte); ok {
		return *b
	}
	return make([]byte, 0, 512)
}

func (p *pools) putBytes(b []byte) {
	if cap(b) <= 64<<10 {
		p.answers.Put(&b)
	}
}

func (p *pools) putBody(b *bytes.Buffer) {
	if b.Cap() <= 1<<20 {
		p.bodies.Put(b)
	}
}

// decodeNative decodes a native prediction request in full (rows as
// maps), turning every failure into a 400 that says what is wrong.
func decodeNative(b []byte, limit int64) (api.PredictRequest, error) {
	req, err := api.DecodePredictRequest(b)
	if err != nil {
		return req, jsonError(err, limit)
	}
	return req, nil
}
