package cache

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"
)

// Value is one cached prediction.
type Value struct {
	// Predictions are the model's output rows for the request.
	Predictions [][]float32
	// CreatedAt is when the prediction was computed. Set fills it in when
	// it is zero, so responses can report the age of a cached answer.
	CreatedAt time.Time
}

// valueFormat is the first byte of every encoded Value. A reader refuses
// any other format, so the encoding can evolve by bumping it.
const valueFormat = 1

// maxValueFloats caps what a decoder will allocate for one Value. Stored
// values come from a store other programs can write to.
const maxValueFloats = 1 << 24

// ErrCorruptValue is returned by DecodeValue for bytes EncodeValue did not
// make.
var ErrCorruptValue = errors.New("cache: corrupt cached value")

// EncodeValue appends the binary encoding of v to dst.
//
// The encoding is compact binary rather than JSON: predictions are float32
// and JSON would spend ~10 bytes of text per value and a float parse per
// hit, while this spends 4 bytes and a copy. Layout: format byte (1),
// varint CreatedAt in Unix nanoseconds (0 for zero time), uvarint row
// count, then per row a uvarint length and the float32 bits little-endian.
func EncodeValue(dst []byte, v Value) []byte {
	n := 0
	for _, r := range v.Predictions {
		n += 4*len(r) + binary.MaxVarintLen64
	}
	dst = slicesGrow(dst, 1+2*binary.MaxVarintLen64+n)
	dst = append(dst, valueFormat)
	var ns int64
	if !v.CreatedAt.IsZero() {
		ns = v.CreatedAt.UnixNano()
	}
	dst = binary.AppendVarint(dst, ns)
	dst = binary.AppendUvarint(dst, uint64(len(v.Predictions)))
	for _, r := range v.Predictions {
		dst = binary.AppendUvarint(dst, uint64(len(r)))
		for _, f := range r {
			dst = binary.LittleEndian.AppendUint32(dst, math.Float32bits(f))
		}
	}
	return dst
}

func slicesGrow(b []byte, n int) []byte {
	if cap(b)-len(b) >= n {
		return b
	}
	nb := make([]byte, len(b), len(b)+n)
	copy(nb, b)
	return nb
}

// DecodeValue decodes bytes made by EncodeValue. It never panics and
// refuses (ErrCorruptValue) truncated, oversized or trailing data.
func DecodeValue(b []byte) (Value, error) {
	if len(b) == 0 || b[0] != valueFormat {
		return Value{}, fmt.Errorf("%w: unknown format", ErrCorruptValue)
	}
	b = b[1:]
	ns, n := binary.Varint(b)
	if n <= 0 {
		return Value{}, fmt.Errorf("%w: bad timestamp", ErrCorruptValue)
	}
	b = b[n:]
	rows, n := binary.Uvarint(b)
	if n <= 0 || rows > uint64(len(b)) { // every row takes at least one byte
		return Value{}, fmt.Errorf("%w: bad row count", ErrCorruptValue)
	}
	b = b[n:]
	var v Value
	if ns != 0 {
		v.CreatedAt = time.Unix(0, ns)
	}
	v.Predictions = make([][]float32, rows)
	total := 0
	for i := range v.Predictions {
		cols, n := binary.Uvarint(b)
		if n <= 0 || cols > uint64(len(b)-n)/4 {
			return Value{}, fmt.Errorf("%w: bad row %d", ErrCorruptValue, i)
		}
		b = b[n:]
		total += int(cols)
		if total > maxValueFloats {
			return Value{}, fmt.Errorf("%w: too large", ErrCorruptValue)
		}
		r := make([]float32, cols)
		for j := range r {
			r[j] = math.Float32frombits(binary.LittleEndian.Uint32(b))
			b = b[4:]
		}
		v.Predictions[i] = r
	}
	if len(b) != 0 {
		return Value{}, fmt.Errorf("%w: %d trailing bytes", ErrCorruptValue, len(b))
	}
	return v, nil
}
