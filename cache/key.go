package cache

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/signalforge/signalforge/feature"
)

// KeyInput is what a prediction depends on. Two inputs that a model cannot
// tell apart give the same Key; anything else gives a different one.
type KeyInput struct {
	// Model and Version name the model version that answers, as in the
	// registry ("lstm_model", "v2.0"). Both are required and must match
	// [A-Za-z0-9][A-Za-z0-9._-]{0,127}.
	Model, Version string
	// Ticker is optional; if set it must match [A-Za-z0-9^][A-Za-z0-9._=^-]{0,31}
	// ("AAPL", "BRK.B", "^GSPC", "EURUSD=X"). Characters that are special in
	// Redis glob patterns or in the key layout (":", "*", "?", "[", "\")
	// are refused so that pattern invalidation by ticker is exact.
	Ticker string
	// Horizon is the forecast horizon; it must not be negative.
	Horizon int
	// Type is the prediction type: a named class of prediction that selects
	// a TTL from Config.TypeTTL and a row in Stats.ByType ("intraday",
	// "daily"). It is not part of the stored key: the same prediction has
	// one entry whatever type the caller files it under. Empty means
	// DefaultType.
	Type string
	// Features are point features by name. Names are hashed in sorted
	// order, so map order never matters.
	Features map[string]float64
	// Sequences are sequence features by name, oldest step first. A name
	// must not appear in both Features and Sequences.
	Sequences map[string][]float64
	// SortedNames optionally lists every feature name of Features and
	// Sequences in byte-wise ascending order — typically a model's feature
	// schema, sorted once when the model loads. MakeKey then checks the
	// list in O(n) instead of collecting and sorting the names in
	// O(n log n) (the dominant cost for many features; see BenchmarkKey).
	// A list that is unsorted, repeats, misses or adds a name is refused
	// with ErrInvalidKey. The key is the same with or without it.
	SortedNames []string
	// Row, if its Schema is set, holds the point features instead of
	// Features and Sequences (which must then be empty): the row the
	// request decoder wrote in the model's input order. The key is the
	// same as for the same features in Features.
	Row feature.Row
}

// DefaultType is the prediction type of a KeyInput whose Type is empty.
const DefaultType = "default"

// Key identifies one cached prediction. Make it with Cache.Key or MakeKey.
// The zero Key is invalid.
type Key struct {
	Model, Version, Ticker string
	Horizon                int
	// Type is KeyInput.Type (DefaultType if that was empty).
	Type string
	// Hash is the hex of the first 128 bits of the SHA-256 of the
	// canonical feature encoding.
	Hash string
}

// String returns the key without its generation, for logs.
func (k Key) String() string {
	return k.Model + ":" + k.Version + ":" + tickerSegment(k.Ticker) + ":" + strconv.Itoa(k.Horizon) + ":" + k.Hash
}

// FeatureError reports a feature value that cannot be part of a key.
type FeatureError struct {
	Name  string
	Index int // step of a sequence feature; -1 for a point feature
	Err   error
}

func (e *FeatureError) Error() string {
	if e.Index >= 0 {
		return fmt.Sprintf("cache: feature %q step %d: %v", e.Name, e.Index, e.Err)
	}
	return fmt.Sprintf("cache: feature %q: %v", e.Name, e.Err)
}

func (e *FeatureError) Unwrap() error { return e.Err }

var (
	// ErrNaN is wrapped by the FeatureError of a NaN feature value. NaN
	// has many bit patterns and never equals itself: a key made from it
	// would either never hit or hit for the wrong input.
	ErrNaN = errors.New("NaN is not a valid feature value")
	// ErrInvalidKey is returned for a KeyInput whose model, version, ticker,
	// horizon or feature names cannot form a key.
	ErrInvalidKey = errors.New("cache: invalid key input")
)

// MakeKey derives the Key of in.
//
// The hash covers the features only (model, version, ticker and horizon are
// in the readable part of the key). The canonical encoding is, for each
// feature in byte-wise sorted name order: uvarint name length, name, a tag
// byte ('p' point, 's' sequence), for sequences a uvarint length, then each
// value as its IEEE-754 float64 bits, big-endian, with -0 written as +0.
// Equal float64 values therefore hash equally whatever their text form was
// ("65", "65.0", "6.5e1"); NaN is refused with a *FeatureError wrapping
// ErrNaN. ±Inf are ordinary bit patterns here (whether a model accepts them
// is the server's business).
//
// The hash is SHA-256 truncated to 128 bits, not a fast non-cryptographic
// hash such as xxhash: keys are derived from client-controlled input and a
// cache is shared between clients, so a hash an attacker can collide on
// purpose would let one client plant the answer for another's features.
// Truncated SHA-256 keeps collisions infeasible (2^64 work even for a
// birthday attack) and costs a few hundred nanoseconds with SHA-NI (see
// BenchmarkKey); a 64-bit hash like Triton's does not have that property.
func MakeKey(in KeyInput) (Key, error) {
	if !validName(in.Model) {
		return Key{}, fmt.Errorf("%w: model name %q", ErrInvalidKey, in.Model)
	}
	if !validName(in.Version) {
		return Key{}, fmt.Errorf("%w: version %q", ErrInvalidKey, in.Version)
	}
	if in.Ticker != "" && !ValidTicker(in.Ticker) {
		return Key{}, fmt.Errorf("%w: ticker %q", ErrInvalidKey, in.Ticker)
	}
	if in.Horizon < 0 {
		return Key{}, fmt.Errorf("%w: negative horizon %d", ErrInvalidKey, in.Horizon)
	}
	typ := in.Type
	if typ == "" {
		typ = DefaultType
	}
	if in.Row.Schema != nil {
		return rowKey(in, typ)
	}
	names, err := sortedNames(in)
	if err != nil {
		return Key{}, err
	}

	h := sha256.New()
	var buf [256]byte
	b := buf[:0]
	flush := func() {
		h.Write(b)
		b = buf[:0]
	}
	for _, n := range names {
		if len(b)+len(n)+2*binary.MaxVarintLen64+1 > cap(b) {
			flush()
		}
		b = binary.AppendUvarint(b, uint64(len(n)))
		if len(n) > cap(b)-len(b) {
			flush()
			h.Write([]byte(n))
		} else {
			b = append(b, n...)
		}
		if v, ok := in.Features[n]; ok {
			b = append(b, 'p')
			bits, err := canonicalBits(v)
			if err != nil {
				return Key{}, &FeatureError{Name: n, Index: -1, Err: err}
			}
			b = binary.BigEndian.AppendUint64(b, bits)
			continue
		}
		seq, ok := in.Sequences[n]
		if !ok {
			return Key{}, fmt.Errorf("%w: SortedNames lists %q, which is not a feature", ErrInvalidKey, n)
		}
		b = append(b, 's')
		b = binary.AppendUvarint(b, uint64(len(seq)))
		for i, v := range seq {
			if len(b)+8 > cap(b) {
				flush()
			}
			bits, err := canonicalBits(v)
			if err != nil {
				return Key{}, &FeatureError{Name: n, Index: i, Err: err}
			}
			b = binary.BigEndian.AppendUint64(b, bits)
		}
	}
	flush()
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return Key{
		Model:   in.Model,
		Version: in.Version,
		Ticker:  in.Ticker,
		Horizon: in.Horizon,
		Type:    typ,
		Hash:    hex.EncodeToString(sum[:16]),
	}, nil
}

// rowKey is MakeKey for in.Row: the canonical encoding of the schema's
// names in sorted order, each a point feature. The encoding is built in a
// stack buffer and hashed with sha256.Sum256 (no hash.Hash, which would
// move the buffer to the heap): nothing is allocated but the key.
func rowKey(in KeyInput, typ string) (Key, error) {
	r := in.Row
	if len(in.Features) > 0 || len(in.Sequences) > 0 || in.SortedNames != nil {
		return Key{}, fmt.Errorf("%w: Row set together with Features, Sequences or SortedNames", ErrInvalidKey)
	}
	if len(r.Values) != r.Schema.Len() {
		return Key{}, fmt.Errorf("%w: Row has %d values for %d features", ErrInvalidKey, len(r.Values), r.Schema.Len())
	}
	var buf [4096]byte // 100 features of 10-byte names take 2,000
	b := buf[:0]
	if need := encodedLen(r.Schema); need > len(buf) {
		b = make([]byte, 0, need)
	}
	for _, j := range r.Schema.Sorted() {
		n := r.Schema.Name(j)
		bits, err := canonicalBits(r.Values[j])
		if err != nil {
			return Key{}, &FeatureError{Name: n, Index: -1, Err: err}
		}
		b = binary.AppendUvarint(b, uint64(len(n)))
		b = append(b, n...)
		b = append(b, 'p')
		b = binary.BigEndian.AppendUint64(b, bits)
	}
	sum := sha256.Sum256(b)
	return Key{
		Model:   in.Model,
		Version: in.Version,
		Ticker:  in.Ticker,
		Horizon: in.Horizon,
		Type:    typ,
		Hash:    hex.EncodeToString(sum[:16]),
	}, nil
}

// encodedLen bounds the length of the canonical encoding of a row of s.
func encodedLen(s *feature.Schema) int {
	n := 0
	for j := range s.Len() {
		n += len(s.Name(j)) + binary.MaxVarintLen64 + 9
	}
	return n
}

// sortedNames returns the feature names of in in canonical order.
func sortedNames(in KeyInput) ([]string, error) {
	if in.SortedNames != nil {
		names := in.SortedNames
		if len(names) != len(in.Features)+len(in.Sequences) {
			return nil, fmt.Errorf("%w: SortedNames has %d names for %d features", ErrInvalidKey, len(names), len(in.Features)+len(in.Sequences))
		}
		for i := 1; i < len(names); i++ {
			if names[i-1] >= names[i] {
				return nil, fmt.Errorf("%w: SortedNames not strictly ascending at %q", ErrInvalidKey, names[i])
			}
		}
		// With the count equal, no repeats, and every name present (checked
		// while encoding), the list is exactly the set of names.
		return names, nil
	}
	names := make([]string, 0, len(in.Features)+len(in.Sequences))
	for n := range in.Features {
		names = append(names, n)
	}
	for n := range in.Sequences {
		if _, dup := in.Features[n]; dup {
			return nil, fmt.Errorf("%w: feature %q is both a point and a sequence", ErrInvalidKey, n)
		}
		names = append(names, n)
	}
	slices.Sort(names)
	return names, nil
}

func canonicalBits(v float64) (uint64, error) {
	if math.IsNaN(v) {
		return 0, ErrNaN
	}
	if v == 0 {
		return 0, nil // -0 and +0 are the same input to a model
	}
	return math.Float64bits(v), nil
}

// validName reports whether s matches [A-Za-z0-9][A-Za-z0-9._-]{0,127}, the
// registry's rule for model names and versions.
func validName(s string) bool {
	if len(s) == 0 || len(s) > 128 || !alnum(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		c := s[i]
		if !alnum(c) && c != '.' && c != '_' && c != '-' {
			return false
		}
	}
	return true
}

// ValidTicker reports whether s is a ticker keys can carry: letters,
// digits and . _ = ^ - ("AAPL", "BRK.B", "^GSPC", "EURUSD=X"), starting with
// a letter, digit or ^, at most 32 bytes; nothing special to Redis globs or
// to the key layout.
func ValidTicker(s string) bool {
	if len(s) == 0 || len(s) > 32 || !(alnum(s[0]) || s[0] == '^') {
		return false
	}
	for i := 1; i < len(s); i++ {
		c := s[i]
		if !alnum(c) && !strings.ContainsRune("._=^-", rune(c)) {
			return false
		}
	}
	return true
}

func alnum(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

// noTicker is the ticker segment of a key without a ticker. It is not a
// valid ticker, so it cannot collide with one.
const noTicker = "_"

func tickerSegment(t string) string {
	if t == "" {
		return noTicker
	}
	return t
}

// storeKey lays out the stored key:
//
//	{prefix}:pred:{model}:{version}:g{generation}:{ticker}:{horizon}:{hash}
func storeKey(prefix string, k Key, gen string) string {
	var sb strings.Builder
	sb.Grow(len(prefix) + len(k.Model) + len(k.Version) + len(gen) + len(k.Ticker) + len(k.Hash) + 20)
	sb.WriteString(prefix)
	sb.WriteString(":pred:")
	sb.WriteString(k.Model)
	sb.WriteByte(':')
	sb.WriteString(k.Version)
	sb.WriteString(":g")
	sb.WriteString(gen)
	sb.WriteByte(':')
	sb.WriteString(tickerSegment(k.Ticker))
	sb.WriteByte(':')
	sb.WriteString(strconv.Itoa(k.Horizon))
	sb.WriteByte(':')
	sb.WriteString(k.Hash)
	return sb.String()
}

// storedKey is a stored key taken apart.
type storedKey struct {
	model, version, gen, ticker string
	horizon                     int
	hash                        string
}

// parseStoreKey takes apart a key laid out by storeKey. Keys come back from
// the store (SCAN), which other programs can write to, so it checks every
// segment and reports false for anything storeKey could not have made.
func parseStoreKey(prefix, s string) (storedKey, bool) {
	rest, ok := strings.CutPrefix(s, prefix+":pred:")
	if !ok {
		return storedKey{}, false
	}
	seg := strings.Split(rest, ":")
	if len(seg) != 6 {
		return storedKey{}, false
	}
	var k storedKey
	k.model, k.version = seg[0], seg[1]
	if !validName(k.model) || !validName(k.version) {
		return storedKey{}, false
	}
	g, ok := strings.CutPrefix(seg[2], "g")
	if !ok || !validGeneration(g) {
		return storedKey{}, false
	}
	k.gen = g
	switch t := seg[3]; {
	case t == noTicker:
	case ValidTicker(t):
		k.ticker = t
	default:
		return storedKey{}, false
	}
	h, err := strconv.Atoi(seg[4])
	if err != nil || h < 0 || strconv.Itoa(h) != seg[4] {
		return storedKey{}, false
	}
	k.horizon = h
	if len(seg[5]) != 32 {
		return storedKey{}, false
	}
	if _, err := hex.DecodeString(seg[5]); err != nil || strings.ToLower(seg[5]) != seg[5] {
		return storedKey{}, false
	}
	k.hash = seg[5]
	return k, true
}

// validGeneration reports whether g looks like a generation token: 1–16
// lower-case hex digits.
func validGeneration(g string) bool {
	if len(g) == 0 || len(g) > 16 {
		return false
	}
	for i := 0; i < len(g); i++ {
		c := g[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}
