package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"testing"
)

func TestCheckDuplicateKeys(t *testing.T) {
	tests := []struct {
		in        string
		key, path string // empty key: no duplicate
	}{
		{`{"a":1,"b":2}`, "", ""},
		{`{"a":1,"a":2}`, "a", ""},
		{`{"ticker":"A","Ticker":"B"}`, "Ticker", ""}, // encoding/json folds struct fields
		{`{"features":{"RSI":1,"rsi":2}}`, "", ""},    // feature names are exact
		{`{"features":{"rsi":1,"macd":2,"rsi":3}}`, "rsi", "features"},
		{`{"features":{"r\u0073i":1,"rsi":3}}`, "rsi", "features"},
		{`{"instances":[{"a":1},{"b":1,"b":2}]}`, "b", "instances[1]"},
		{`{"inputs":[{"name":"x","parameters":{"p":1,"p":2}}]}`, "p", "inputs[0].parameters"},
		{`{"inputs":[{"name":"x","data":[1,2,3],"name":"y"}]}`, "name", "inputs[0]"},
		{`{"a":{"x":1},"b":{"x":1}}`, "", ""},
		{`{"s":"{\"a\":1,\"a\":2}"}`, "", ""}, // inside a string: not keys
		{`[{"a":1},{"a":1}]`, "", ""},
		{`{"a":[1,{"k":1,"k":2}]}`, "k", "a[1]"},
	}
	for _, tt := range tests {
		err := CheckDuplicateKeys([]byte(tt.in))
		var de *DuplicateKeyError
		switch {
		case tt.key == "" && err != nil:
			t.Errorf("%s: %v, want no error", tt.in, err)
		case tt.key != "" && !errors.As(err, &de):
			t.Errorf("%s: %v, want a duplicate %q", tt.in, err, tt.key)
		case tt.key != "" && (de.Key != tt.key || de.Path != tt.path):
			t.Errorf("%s: duplicate %q in %q, want %q in %q", tt.in, de.Key, de.Path, tt.key, tt.path)
		}
	}
	// Objects past the small-array size switch to a set.
	var b strings.Builder
	b.WriteString(`{"f":{`)
	for i := range 40 {
		b.WriteString(`"k` + strconv.Itoa(i) + `":1,`)
	}
	b.WriteString(`"k2":2}}`)
	var de *DuplicateKeyError
	if err := CheckDuplicateKeys([]byte(b.String())); !errors.As(err, &de) || de.Key != "k2" || de.Path != "f" {
		t.Fatalf("large object: %v", err)
	}
}

func TestDecodePredictRequestDuplicates(t *testing.T) {
	for in, want := range map[string]string{
		`{"horizon":5,"horizon":6}`:                      `duplicate key "horizon" in the request object`,
		`{"features":{"rsi_14":1,"rsi_14":2}}`:           `duplicate key "rsi_14" in features`,
		`{"instances":[{"a":1},{"a":1,"a":2}]}`:          `duplicate key "a" in instances[1]`,
		`{"ticker":"AAPL","Ticker":"MSFT"}`:              `duplicate key "Ticker" in the request object`,
		`{"features":{"a":1,"a":"NaN"},"ticker":"AAPL"}`: `duplicate key "a" in features`,
	} {
		_, err := DecodePredictRequest([]byte(in))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", in, err, want)
		}
	}
}

// dupReference finds duplicate keys with encoding/json's tokenizer (exact
// comparison everywhere except the top level, which folds case).
func dupReference(b []byte) (bool, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	type frame struct {
		obj    bool
		keys   map[string]bool
		expect bool // the next string token is a key
	}
	var stack []*frame
	for {
		tok, err := dec.Token()
		if err != nil {
			return false, err
		}
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if s, ok := tok.(string); ok && top != nil && top.obj && top.expect {
			if len(stack) == 1 {
				s = strings.ToLower(s)
			}
			if top.keys[s] {
				return true, nil
			}
			top.keys[s] = true
			top.expect = false
			continue
		}
		switch tok {
		case json.Delim('{'):
			stack = append(stack, &frame{obj: true, keys: map[string]bool{}, expect: true})
			continue
		case json.Delim('['):
			stack = append(stack, &frame{})
			continue
		case json.Delim('}'), json.Delim(']'):
			stack = stack[:len(stack)-1]
		}
		if len(stack) == 0 {
			return false, nil
		}
		if t := stack[len(stack)-1]; t.obj {
			t.expect = true
		}
	}
}

func FuzzCheckDuplicateKeys(f *testing.F) {
	for _, s := range []string{`{"a":1,"a":2}`, `{"A":1,"a":2}`, `{"x":{"A":1,"a":2}}`, `{"x":[{"k":"v","k\u0000":1}]}`, `[1,"a",{"b":null,"b":true}]`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if !json.Valid(b) {
			CheckDuplicateKeys(b) // must not panic
			return
		}
		want, err := dupReference(b)
		if err != nil {
			return
		}
		got := CheckDuplicateKeys(b) != nil
		if got != want {
			t.Fatalf("%q: CheckDuplicateKeys found a duplicate: %v, reference: %v", b, got, want)
		}
	})
}
