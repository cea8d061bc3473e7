package api

import (
	"math"
	"strconv"
	"unicode/utf8"
)

// AppendPredictResponse appends r as JSON, byte for byte what
// encoding/json writes for PredictResponse (a test checks), without
// reflection: the answer is written once per request. Predictions must be
// finite (the server refuses non-finite outputs before this).
func AppendPredictResponse(b []byte, r *PredictResponse) []byte {
	b = append(b, '{')
	if r.RequestID != "" {
		b = append(b, `"request_id":`...)
		b = appendString(b, r.RequestID)
		b = append(b, ',')
	}
	b = append(b, `"model":`...)
	b = appendString(b, r.Model)
	b = append(b, `,"version":`...)
	b = appendString(b, r.Version)
	b = append(b, `,"predictions":`...)
	if r.Predictions == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, '[')
		for i, row := range r.Predictions {
			if i > 0 {
				b = append(b, ',')
			}
			if row == nil {
				b = append(b, "null"...)
				continue
			}
			b = append(b, '[')
			for j, v := range row {
				if j > 0 {
					b = append(b, ',')
				}
				b = appendFloat(b, float64(v), 32)
			}
			b = append(b, ']')
		}
		b = append(b, ']')
	}
	b = append(b, `,"cached":`...)
	b = strconv.AppendBool(b, r.Cached)
	b = append(b, `,"total_ms":`...)
	b = appendFloat(b, r.TotalMS, 64)
	if r.InferenceMS != 0 {
		b = append(b, `,"inference_ms":`...)
		b = appendFloat(b, r.InferenceMS, 64)
	}
	return append(b, '}', '\n')
}

// appendFloat formats f as encoding/json does.
func appendFloat(b []byte, f float64, bits int) []byte {
	abs := math.Abs(f)
	fmt := byte('f')
	if abs != 0 {
		if bits == 64 && (abs < 1e-6 || abs >= 1e21) || bits == 32 && (float32(abs) < 1e-6 || float32(abs) >= 1e21) {
			fmt = 'e'
		}
	}
	b = strconv.AppendFloat(b, f, fmt, -1, bits)
	if fmt == 'e' {
		// clean up e-09 to e-9
		n := len(b)
		if n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b
}

// appendString appends s as a JSON string, escaping like encoding/json
// (including its HTML-safe escapes of <, > and &).
func appendString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 || r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			if r == utf8.RuneError {
				b = append(b, `\ufffd`...)
			} else {
				b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xf])
			}
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
