package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
)

// RequestError is a request body that is not JSON of the request's shape.
// Its message says what is wrong and where, for the client that sent it.
type RequestError struct {
	Msg string
	Err error // the decoder's error, if any
}

func (e *RequestError) Error() string { return e.Msg }

func (e *RequestError) Unwrap() error { return e.Err }

// ErrTrailing reports data after the request object.
var ErrTrailing = &RequestError{Msg: "malformed JSON: unexpected data after the request object"}

// DecodeJSON decodes the JSON request body b into v. Strict refuses
// unknown fields (the native API does, so that typos surface; OIP v2 does
// not, as its extensions add fields); a repeated key is refused in both
// modes with a *DuplicateKeyError. A feature value that is not a number is
// an error wrapping ErrValue; every other failure is a *RequestError.
func DecodeJSON(b []byte, v any, strict bool) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	if strict {
		dec.DisallowUnknownFields()
	}
	if err := dec.Decode(v); err != nil {
		return describeJSONError(err)
	}
	if dec.More() {
		return ErrTrailing
	}
	if _, err := dec.Token(); err != io.EOF {
		return ErrTrailing
	}
	// encoding/json keeps the last of two equal keys; refuse them instead.
	return CheckDuplicateKeys(b)
}

// describeJSONError words an encoding/json error for the client.
func describeJSONError(err error) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.Is(err, ErrValue):
		return err
	case errors.Is(err, io.EOF):
		return &RequestError{Msg: "malformed JSON: empty request body", Err: err}
	case errors.Is(err, io.ErrUnexpectedEOF):
		return &RequestError{Msg: "malformed JSON: body ends before the JSON value does", Err: err}
	case errors.As(err, &syn):
		return &RequestError{Msg: fmt.Sprintf("malformed JSON at byte %d: %v", syn.Offset, syn), Err: err}
	case errors.As(err, &typ):
		if typ.Field == "" {
			return &RequestError{Msg: fmt.Sprintf("the request body must be a JSON object, got JSON %s", typ.Value), Err: err}
		}
		return &RequestError{Msg: fmt.Sprintf("field %q: want %v, got JSON %s", typ.Field, typ.Type, typ.Value), Err: err}
	case strings.HasPrefix(err.Error(), "json: unknown field"):
		// encoding/json has no type for this one.
		return &RequestError{Msg: strings.TrimPrefix(err.Error(), "json: "), Err: err}
	}
	return &RequestError{Msg: fmt.Sprintf("malformed JSON: %v", err), Err: err}
}
