package server

import (
	"fmt"
	"unicode/utf8"

	"github.com/signalforge/signalforge/cache"
)

// Limits on free-form request fields, so that nothing a client sends can
// grow logs, keys or answers without bound.
const (
	maxRequestIDLen = 128
	maxTickerLen    = 32
	maxMessageLen   = 2048
)

// checkTicker applies the cache key's ticker rule (cache.ValidTicker) to
// every request, cached or not, so a ticker valid in one mode is valid in
// the other.
func checkTicker(t string) error {
	if t != "" && !cache.ValidTicker(t) {
		return badRequest("field \"ticker\": %s is not a ticker: use letters, digits and . _ = ^ - (e.g. \"AAPL\", \"BRK.B\", \"^GSPC\", \"EURUSD=X\"), at most %d characters", quoteShort(t), maxTickerLen)
	}
	return nil
}

func checkRequestID(id string) error {
	if len(id) > maxRequestIDLen || !utf8.ValidString(id) {
		return badRequest("field \"request_id\": must be valid UTF-8 of at most %d bytes, got %d bytes", maxRequestIDLen, len(id))
	}
	return nil
}

// quoteShort quotes s, cut to 40 bytes.
func quoteShort(s string) string {
	if len(s) > 40 {
		return fmt.Sprintf("%q… (%d bytes)", s[:40], len(s))
	}
	return fmt.Sprintf("%q", s)
}

// capMessage cuts an error message to maxMessageLen bytes: a request with
// 60,000 unknown features must not get a 500 KB answer.
func capMessage(m string) string {
	if len(m) <= maxMessageLen {
		return m
	}
	cut := maxMessageLen
	for cut > 0 && !utf8.RuneStart(m[cut]) {
		cut--
	}
	return m[:cut] + fmt.Sprintf("… (%d more bytes)", len(m)-cut)
}
