package cache

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"
)

func mustKey(t *testing.T, in KeyInput) Key {
	t.Helper()
	k, err := MakeKey(in)
	if err != nil {
		t.Fatalf("MakeKey(%+v): %v", in, err)
	}
	return k
}

func base() KeyInput {
	return KeyInput{Model: "lstm_model", Version: "v2.0", Ticker: "AAPL", Horizon: 5}
}

func TestKeyIgnoresOrderAndFormatting(t *testing.T) {
	// The same request as two clients might send it: different map
	// insertion order, and numbers written differently in JSON.
	a := base()
	a.Features = map[string]float64{}
	for _, kv := range [][2]string{{"rsi_14", "65"}, {"macd", "0.5"}, {"volume", "1e6"}} {
		v, _ := strconv.ParseFloat(kv[1], 64)
		a.Features[kv[0]] = v
	}
	b := base()
	b.Features = map[string]float64{}
	for _, kv := range [][2]string{{"volume", "1000000.000"}, {"macd", "5e-1"}, {"rsi_14", "65.0"}} {
		v, _ := strconv.ParseFloat(kv[1], 64)
		b.Features[kv[0]] = v
	}
	ka, kb := mustKey(t, a), mustKey(t, b)
	if ka != kb {
		t.Fatalf("same features, different keys:\n%v\n%v", ka, kb)
	}
	// Many rebuilds of the map (Go randomizes iteration) give one key.
	for range 50 {
		c := base()
		c.Features = map[string]float64{"volume": 1e6, "rsi_14": 65, "macd": 0.5}
		if k := mustKey(t, c); k != ka {
			t.Fatalf("key changed between map rebuilds: %v vs %v", k, ka)
		}
	}
}

func TestKeySeparates(t *testing.T) {
	ref := base()
	ref.Features = map[string]float64{"rsi_14": 65, "macd": 0.5}
	ref.Sequences = map[string][]float64{"close": {1, 2, 3}}
	refKey := mustKey(t, ref)
	refStored := storeKey("sf", refKey, "1")
	cases := map[string]func(*KeyInput){
		"version":        func(in *KeyInput) { in.Version = "v2.1" },
		"model":          func(in *KeyInput) { in.Model = "mlp" },
		"ticker":         func(in *KeyInput) { in.Ticker = "MSFT" },
		"no ticker":      func(in *KeyInput) { in.Ticker = "" },
		"horizon":        func(in *KeyInput) { in.Horizon = 10 },
		"value":          func(in *KeyInput) { in.Features = map[string]float64{"rsi_14": 65.000001, "macd": 0.5} },
		"float32 apart":  func(in *KeyInput) { in.Features = map[string]float64{"rsi_14": float64(float32(65.1)), "macd": 0.5} },
		"name":           func(in *KeyInput) { in.Features = map[string]float64{"rsi_15": 65, "macd": 0.5} },
		"extra feature":  func(in *KeyInput) { in.Features = map[string]float64{"rsi_14": 65, "macd": 0.5, "x": 0} },
		"fewer features": func(in *KeyInput) { in.Features = map[string]float64{"rsi_14": 65} },
		"names swap values": func(in *KeyInput) {
			in.Features = map[string]float64{"rsi_14": 0.5, "macd": 65}
		},
		"sequence step":   func(in *KeyInput) { in.Sequences = map[string][]float64{"close": {1, 2, 4}} },
		"sequence length": func(in *KeyInput) { in.Sequences = map[string][]float64{"close": {1, 2, 3, 0}} },
		"sequence order":  func(in *KeyInput) { in.Sequences = map[string][]float64{"close": {3, 2, 1}} },
		"point vs sequence": func(in *KeyInput) {
			in.Features = map[string]float64{"rsi_14": 65, "macd": 0.5, "close": 1}
			in.Sequences = nil
		},
	}
	for name, mod := range cases {
		in := ref
		mod(&in)
		k := mustKey(t, in)
		if s := storeKey("sf", k, "1"); s == refStored {
			t.Errorf("%s: changed input, same stored key %s", name, s)
		}
	}
	// Name boundaries are length-prefixed: ("ab", "c") and ("a", "bc")
	// cannot be confused.
	k1 := mustKey(t, KeyInput{Model: "m", Version: "v", Sequences: map[string][]float64{"ab": {}, "c": {1}}})
	k2 := mustKey(t, KeyInput{Model: "m", Version: "v", Sequences: map[string][]float64{"a": {}, "bc": {1}}})
	if k1.Hash == k2.Hash {
		t.Error("feature name boundaries are ambiguous")
	}
	// The type is not part of the key: one prediction, one entry.
	typed := ref
	typed.Type = "intraday"
	if k := mustKey(t, typed); k.Hash != refKey.Hash || storeKey("sf", k, "1") != refStored {
		t.Error("prediction type changed the stored key")
	}
}

func TestKeyNegativeZeroIsZero(t *testing.T) {
	a, b := base(), base()
	a.Features = map[string]float64{"x": 0}
	b.Features = map[string]float64{"x": math.Copysign(0, -1)}
	if mustKey(t, a) != mustKey(t, b) {
		t.Fatal("-0 and 0 give different keys")
	}
	a.Sequences = map[string][]float64{"s": {1, 0}}
	b.Sequences = map[string][]float64{"s": {1, math.Copysign(0, -1)}}
	if mustKey(t, a) != mustKey(t, b) {
		t.Fatal("-0 and 0 in a sequence give different keys")
	}
	c := base()
	c.Features = map[string]float64{"x": math.SmallestNonzeroFloat64}
	if mustKey(t, c) == mustKey(t, a) {
		t.Fatal("the smallest subnormal collapsed to zero")
	}
}

func TestKeyRefusesNaN(t *testing.T) {
	for _, nan := range []float64{math.NaN(), math.Float64frombits(0x7ff8000000000001), math.Float64frombits(0xfff0000000000001)} {
		in := base()
		in.Features = map[string]float64{"ok": 1, "rsi_14": nan}
		_, err := MakeKey(in)
		var fe *FeatureError
		if !errors.As(err, &fe) || !errors.Is(err, ErrNaN) || fe.Name != "rsi_14" || fe.Index != -1 {
			t.Fatalf("MakeKey with NaN point (bits %x) = %v; want *FeatureError{rsi_14, -1} wrapping ErrNaN", math.Float64bits(nan), err)
		}
		in = base()
		in.Sequences = map[string][]float64{"close": {1, 2, nan}}
		_, err = MakeKey(in)
		if !errors.As(err, &fe) || !errors.Is(err, ErrNaN) || fe.Name != "close" || fe.Index != 2 {
			t.Fatalf("MakeKey with NaN step = %v; want *FeatureError{close, 2} wrapping ErrNaN", err)
		}
	}
	in := base()
	in.Features = map[string]float64{"x": math.Inf(1)}
	ki := mustKey(t, in)
	in.Features = map[string]float64{"x": math.Inf(-1)}
	if mustKey(t, in) == ki {
		t.Fatal("+Inf and -Inf share a key")
	}
}

func TestKeyRefusesBadInput(t *testing.T) {
	cases := map[string]KeyInput{
		"no model":       {Version: "v1"},
		"no version":     {Model: "m"},
		"model colon":    {Model: "m:x", Version: "v1"},
		"version glob":   {Model: "m", Version: "v*"},
		"model slash":    {Model: "../m", Version: "v1"},
		"long model":     {Model: strings.Repeat("m", 129), Version: "v1"},
		"ticker colon":   {Model: "m", Version: "v1", Ticker: "A:B"},
		"ticker glob":    {Model: "m", Version: "v1", Ticker: "A*"},
		"ticker bracket": {Model: "m", Version: "v1", Ticker: "A[B]"},
		"ticker space":   {Model: "m", Version: "v1", Ticker: "A B"},
		"ticker _":       {Model: "m", Version: "v1", Ticker: "_"},
		"negative h":     {Model: "m", Version: "v1", Horizon: -1},
		"point and seq": {Model: "m", Version: "v1", Features: map[string]float64{"a": 1},
			Sequences: map[string][]float64{"a": {1}}},
	}
	for name, in := range cases {
		if _, err := MakeKey(in); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("%s: MakeKey = %v, want ErrInvalidKey", name, err)
		}
	}
	for _, tk := range []string{"AAPL", "BRK.B", "^GSPC", "EURUSD=X", "BTC-USD", "6758.T"} {
		if _, err := MakeKey(KeyInput{Model: "m", Version: "v1", Ticker: tk}); err != nil {
			t.Errorf("ticker %q refused: %v", tk, err)
		}
	}
}

// TestKeyGolden pins the key layout and hash, and checks the hash against
// the encoding MakeKey documents, rebuilt here by hand. If it fails, the
// encoding changed: every entry cached by the previous release becomes
// unreachable at deploy. Change the golden value only on purpose.
func TestKeyGolden(t *testing.T) {
	in := base()
	in.Features = map[string]float64{"rsi_14": 65, "macd": 0.5}
	k := mustKey(t, in)
	const want = "sf:pred:lstm_model:v2.0:g3f:AAPL:5:071a31821af21399fe84a117e8bb2ff8"
	if got := storeKey("sf", k, "3f"); got != want {
		t.Fatalf("stored key = %s\nwant         %s", got, want)
	}
	var enc []byte
	enc = append(enc, 4)
	enc = append(enc, "macd"...)
	enc = append(enc, 'p')
	enc = binary.BigEndian.AppendUint64(enc, math.Float64bits(0.5))
	enc = append(enc, 6)
	enc = append(enc, "rsi_14"...)
	enc = append(enc, 'p')
	enc = binary.BigEndian.AppendUint64(enc, math.Float64bits(65))
	sum := sha256.Sum256(enc)
	if h := hex.EncodeToString(sum[:16]); h != k.Hash {
		t.Fatalf("hash %s differs from the documented encoding's %s", k.Hash, h)
	}
}

func TestStoreKeyRoundTrip(t *testing.T) {
	for _, in := range []KeyInput{
		{Model: "lstm_model", Version: "v2.0", Ticker: "AAPL", Horizon: 5},
		{Model: "m", Version: "1", Horizon: 0},
		{Model: "M-1.x_y", Version: "v.1-rc_2", Ticker: "^GSPC", Horizon: 365},
	} {
		k := mustKey(t, in)
		s := storeKey("sf", k, "abc123")
		p, ok := parseStoreKey("sf", s)
		if !ok {
			t.Fatalf("parseStoreKey(%q) failed", s)
		}
		want := storedKey{model: k.Model, version: k.Version, gen: "abc123", ticker: k.Ticker, horizon: k.Horizon, hash: k.Hash}
		if p != want {
			t.Fatalf("parseStoreKey(%q) = %+v, want %+v", s, p, want)
		}
	}
	for _, bad := range []string{
		"", "sf:pred:", "xx:pred:m:v:g1:A:5:0123456789abcdef0123456789abcdef",
		"sf:pred:m:v:1:A:5:0123456789abcdef0123456789abcdef",    // no g
		"sf:pred:m:v:g1:A:05:0123456789abcdef0123456789abcdef",  // non-canonical horizon
		"sf:pred:m:v:g1:A:-5:0123456789abcdef0123456789abcdef",  // negative
		"sf:pred:m:v:g1:A:5:0123456789ABCDEF0123456789abcdef",   // upper-case hash
		"sf:pred:m:v:g1:A:5:0123456789abcdef",                   // short hash
		"sf:pred:m:v:g1:A:5:0123456789abcdef0123456789abcdef:x", // extra segment
		"sf:pred:m:v:gXYZ:A:5:0123456789abcdef0123456789abcdef", // bad generation
		"sf:pred:m*:v:g1:A:5:0123456789abcdef0123456789abcdef",  // bad model
		"sf:pred:m:v:g1:A B:5:0123456789abcdef0123456789abcdef", // bad ticker
		"sf:pred:m:v:g1:A:99999999999999999999:0123456789abcdef0123456789abcdef",
	} {
		if p, ok := parseStoreKey("sf", bad); ok {
			t.Errorf("parseStoreKey(%q) = %+v, want failure", bad, p)
		}
	}
}

func TestValueRoundTrip(t *testing.T) {
	vals := []Value{
		{},
		{Predictions: [][]float32{}},
		{Predictions: [][]float32{{0.5, -1, float32(math.Inf(1))}}, CreatedAt: time.Unix(1700000000, 123456789)},
		{Predictions: [][]float32{{}, {1}, {1, 2, 3}}, CreatedAt: time.Unix(0, -5)},
	}
	for _, v := range vals {
		b := EncodeValue(nil, v)
		got, err := DecodeValue(b)
		if err != nil {
			t.Fatalf("DecodeValue(EncodeValue(%+v)): %v", v, err)
		}
		if !got.CreatedAt.Equal(v.CreatedAt) || len(got.Predictions) != len(v.Predictions) {
			t.Fatalf("round trip %+v -> %+v", v, got)
		}
		for i := range v.Predictions {
			if len(got.Predictions[i]) != len(v.Predictions[i]) {
				t.Fatalf("row %d: %v -> %v", i, v.Predictions[i], got.Predictions[i])
			}
			for j := range v.Predictions[i] {
				if math.Float32bits(got.Predictions[i][j]) != math.Float32bits(v.Predictions[i][j]) {
					t.Fatalf("row %d col %d: %v -> %v", i, j, v.Predictions[i][j], got.Predictions[i][j])
				}
			}
		}
	}
	// NaN outputs survive bit-exactly (the cache stores what the model said).
	nan := math.Float32frombits(0x7fc00001)
	got, err := DecodeValue(EncodeValue(nil, Value{Predictions: [][]float32{{nan}}}))
	if err != nil || math.Float32bits(got.Predictions[0][0]) != 0x7fc00001 {
		t.Fatalf("NaN payload: %v, %v", got, err)
	}
	good := EncodeValue(nil, vals[2])
	for name, b := range map[string][]byte{
		"empty":     nil,
		"format":    append([]byte{9}, good[1:]...),
		"truncated": good[:len(good)-1],
		"trailing":  append(append([]byte(nil), good...), 0),
		"huge rows": {valueFormat, 0, 0xff, 0xff, 0xff, 0xff, 0x0f},
		"huge row":  {valueFormat, 0, 1, 0xff, 0xff, 0xff, 0xff, 0x0f},
	} {
		if _, err := DecodeValue(b); !errors.Is(err, ErrCorruptValue) {
			t.Errorf("%s: DecodeValue = %v, want ErrCorruptValue", name, err)
		}
	}
}

func TestKeySortedNames(t *testing.T) {
	in := base()
	in.Features = map[string]float64{"rsi_14": 65, "macd": 0.5}
	in.Sequences = map[string][]float64{"close": {1, 2}}
	want := mustKey(t, in)
	in.SortedNames = []string{"close", "macd", "rsi_14"}
	if got := mustKey(t, in); got != want {
		t.Fatalf("SortedNames changed the key: %v vs %v", got, want)
	}
	for name, names := range map[string][]string{
		"unsorted":  {"macd", "close", "rsi_14"},
		"repeat":    {"close", "close", "rsi_14"},
		"missing":   {"close", "macd"},
		"extra":     {"close", "macd", "rsi_14", "z"},
		"wrong":     {"close", "macd", "rsi_15"},
		"wrong seq": {"clos", "macd", "rsi_14"},
	} {
		in.SortedNames = names
		if _, err := MakeKey(in); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("%s SortedNames %q: MakeKey = %v, want ErrInvalidKey", name, names, err)
		}
	}
	// A name in both maps cannot be listed consistently.
	dup := KeyInput{Model: "m", Version: "v", Features: map[string]float64{"a": 1}, Sequences: map[string][]float64{"a": {1}}, SortedNames: []string{"a"}}
	if _, err := MakeKey(dup); !errors.Is(err, ErrInvalidKey) {
		t.Errorf("point and sequence of one name with SortedNames: %v", err)
	}
}
