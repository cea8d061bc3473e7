package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// DuplicateKeyError reports a key that appears twice in one JSON object of
// a request. encoding/json would silently keep the last value, so a client
// could not tell which of its two values was used.
type DuplicateKeyError struct {
	// Key is the repeated key, unescaped.
	Key string
	// Path says which object holds it: "" for the request object, then
	// keys and indexes like "features", "instances[2]" or
	// "inputs[0].parameters".
	Path string
}

func (e *DuplicateKeyError) Error() string {
	if e.Path == "" {
		return fmt.Sprintf("duplicate key %q in the request object: each key may appear once", e.Key)
	}
	return fmt.Sprintf("duplicate key %q in %s: each key may appear once", e.Key, e.Path)
}

// CheckDuplicateKeys reports the first key that appears twice in one object
// of the JSON document b, as a *DuplicateKeyError. Keys of the top-level
// object compare case-insensitively, as encoding/json matches them to
// struct fields ("ticker" and "Ticker" set the same field); keys of nested
// objects (feature names, parameters) compare exactly. b should be valid
// JSON (check it after decoding); malformed input is not reported. It
// allocates only for objects with many keys or escaped keys.
func CheckDuplicateKeys(b []byte) error {
	d := dupScanner{b: b}
	d.value(skipWS(b, 0), 0)
	if d.err != nil {
		return d.err
	}
	return nil
}

// maxDupDepth bounds the scanner's recursion (encoding/json refuses
// documents nested deeper than 10000 anyway).
const maxDupDepth = 10000

type dupSeg struct {
	key   [2]int // the raw key's bytes, when index < 0
	index int
}

type dupScanner struct {
	b    []byte
	path []dupSeg
	err  *DuplicateKeyError
}

// value scans the value at b[i] and returns the index after it, or -1 when
// the input is malformed or a duplicate was found.
func (d *dupScanner) value(i, depth int) int {
	b := d.b
	if i >= len(b) || depth > maxDupDepth {
		return -1
	}
	switch b[i] {
	case '{':
		return d.object(i, depth)
	case '[':
		i = skipWS(b, i+1)
		if i < len(b) && b[i] == ']' {
			return i + 1
		}
		d.path = append(d.path, dupSeg{index: 0})
		for n := 0; ; n++ {
			d.path[len(d.path)-1].index = n
			if i = d.value(i, depth+1); i < 0 {
				return -1
			}
			i = skipWS(b, i)
			switch {
			case i < len(b) && b[i] == ',':
				i = skipWS(b, i+1)
			case i < len(b) && b[i] == ']':
				d.path = d.path[:len(d.path)-1]
				return i + 1
			default:
				return -1
			}
		}
	case '"':
		_, end, ok := rawString(b, i)
		if !ok {
			return -1
		}
		return end
	default:
		// A number, true, false or null: up to the next delimiter.
		for ; i < len(b); i++ {
			switch b[i] {
			case ',', ']', '}', ' ', '\t', '\r', '\n':
				return i
			}
		}
		return i
	}
}

func (d *dupScanner) object(i, depth int) int {
	b := d.b
	top := len(d.path) == 0
	var small [16][2]int
	keys := small[:0]
	var set map[string]struct{}
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == '}' {
		return i + 1
	}
	d.path = append(d.path, dupSeg{index: -1})
	for {
		escaped, end, ok := rawString(b, i)
		if !ok {
			return -1
		}
		k := [2]int{i + 1, end - 1}
		switch {
		case set != nil:
			s := d.keyString(k, escaped, top)
			if _, dup := set[s]; dup {
				return d.dup(k)
			}
			set[s] = struct{}{}
		case len(keys) < len(small):
			for _, o := range keys {
				if d.sameKey(o, k, top) {
					return d.dup(k)
				}
			}
			keys = append(keys, k)
		default: // many keys: a set from here on
			set = make(map[string]struct{}, 2*len(keys))
			for _, o := range keys {
				set[d.keyString(o, bytes.IndexByte(b[o[0]:o[1]], '\\') >= 0, top)] = struct{}{}
			}
			s := d.keyString(k, escaped, top)
			if _, dup := set[s]; dup {
				return d.dup(k)
			}
			set[s] = struct{}{}
		}
		i = skipWS(b, end)
		if i >= len(b) || b[i] != ':' {
			return -1
		}
		d.path[len(d.path)-1].key = k
		if i = d.value(skipWS(b, i+1), depth+1); i < 0 {
			return -1
		}
		i = skipWS(b, i)
		switch {
		case i < len(b) && b[i] == ',':
			i = skipWS(b, i+1)
		case i < len(b) && b[i] == '}':
			d.path = d.path[:len(d.path)-1]
			return i + 1
		default:
			return -1
		}
	}
}

// rawString finds the end of the JSON string at b[i] (the index after its
// closing quote) and whether it contains escapes.
func rawString(b []byte, i int) (escaped bool, end int, ok bool) {
	if i >= len(b) || b[i] != '"' {
		return false, 0, false
	}
	for j := i + 1; j < len(b); j++ {
		switch b[j] {
		case '\\':
			escaped = true
			j++
		case '"':
			return escaped, j + 1, true
		}
	}
	return false, 0, false
}

// keyString returns the key in b[k[0]:k[1]] unescaped, lowercased when
// fold.
func (d *dupScanner) keyString(k [2]int, escaped, fold bool) string {
	s := string(d.b[k[0]:k[1]])
	if escaped {
		var u string
		if json.Unmarshal(d.b[k[0]-1:k[1]+1], &u) == nil {
			s = u
		}
	}
	if fold {
		s = strings.ToLower(s)
	}
	return s
}

func (d *dupScanner) sameKey(a, k [2]int, fold bool) bool {
	ra, rk := d.b[a[0]:a[1]], d.b[k[0]:k[1]]
	if bytes.IndexByte(ra, '\\') < 0 && bytes.IndexByte(rk, '\\') < 0 {
		if fold {
			return bytes.EqualFold(ra, rk)
		}
		return bytes.Equal(ra, rk)
	}
	return d.keyString(a, true, fold) == d.keyString(k, true, fold)
}

// dup records a duplicate of key k in the innermost object of the path.
func (d *dupScanner) dup(k [2]int) int {
	var p strings.Builder
	for _, s := range d.path[:len(d.path)-1] {
		if s.index >= 0 {
			p.WriteString("[" + strconv.Itoa(s.index) + "]")
			continue
		}
		if p.Len() > 0 {
			p.WriteByte('.')
		}
		p.WriteString(d.keyString(s.key, bytes.IndexByte(d.b[s.key[0]:s.key[1]], '\\') >= 0, false))
	}
	d.err = &DuplicateKeyError{Key: d.keyString(k, bytes.IndexByte(d.b[k[0]:k[1]], '\\') >= 0, false), Path: p.String()}
	return -1
}
