package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/signalforge/signalforge/api"
)

// decodeJSON reads r's body (at most limit bytes) into v, turning every
// failure into a 4xx HTTPError that says what is wrong and where.
func decodeJSON(w http.ResponseWriter, r *http.Request, limit int64, v any) error {
	// The Content-Type is not checked: `curl -d` sends form encoding for
	// JSON bodies, and a body that is not JSON fails below anyway.
	body := http.MaxBytesReader(w, r.Body, limit)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return jsonError(err, limit)
	}
	if dec.More() {
		return badRequest("malformed JSON: unexpected data after the request object")
	}
	// Drain to detect trailing garbage beyond whitespace, within the limit.
	if _, err := io.Copy(io.Discard, body); err != nil {
		return jsonError(err, limit)
	}
	return nil
}

func jsonError(err error, limit int64) error {
	var maxErr *http.MaxBytesError
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &maxErr):
		return &HTTPError{Status: http.StatusRequestEntityTooLarge, Code: api.CodeTooLarge, Msg: fmt.Sprintf("request body is larger than the limit of %d bytes", limit)}
	case errors.Is(err, io.EOF):
		return badRequest("malformed JSON: empty request body")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return badRequest("malformed JSON: body ends before the JSON value does")
	case errors.As(err, &syn):
		return badRequest("malformed JSON at byte %d: %v", syn.Offset, syn)
	case errors.As(err, &typ):
		field := typ.Field
		if field == "" {
			return badRequest("the request body must be a JSON object, got JSON %s", typ.Value)
		}
		return badRequest("field %q: want %v, got JSON %s", field, typ.Type, typ.Value)
	case errors.Is(err, api.ErrValue):
		return &HTTPError{Status: http.StatusBadRequest, Code: api.CodeInvalidInput, Msg: err.Error(), Err: err}
	case strings.HasPrefix(err.Error(), "json: unknown field"):
		return badRequest("%s", strings.TrimPrefix(err.Error(), "json: "))
	}
	return badRequest("malformed JSON: %v", err)
}

// readBody reads r's body, at most limit bytes.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	body := http.MaxBytesReader(w, r.Body, limit)
	n := r.ContentLength
	if n < 0 || n > limit {
		n = 512
	}
	buf := bytes.NewBuffer(make([]byte, 0, n+1))
	if _, err := buf.ReadFrom(body); err != nil {
		return nil, jsonError(err, limit)
	}
	return buf.Bytes(), nil
}

// decodePredict reads and decodes a native prediction request.
func decodePredict(w http.ResponseWriter, r *http.Request, limit int64) (api.PredictRequest, error) {
	b, err := readBody(w, r, limit)
	if err != nil {
		return api.PredictRequest{}, err
	}
	req, err := api.DecodePredictRequest(b)
	if err != nil {
		if strings.HasPrefix(err.Error(), "malformed JSON") {
			return req, badRequest("%v", err)
		}
		return req, jsonError(err, limit)
	}
	return req, nil
}
