package loadgen

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"
)

// CeilingBody is what the ceiling server answers: the size and shape of a
// small native prediction answer, so the comparison with the real server is
// like for like.
const CeilingBody = `{"request_id":"ceiling","model":"ceiling","version":"v0","predictions":[[0.125]],"cached":true,"total_ms":0.01}` + "\n"

// CeilingServer is a trivial net/http server on 127.0.0.1 that reads the
// request body and answers CeilingBody: no routing, no JSON decoding, no
// model. Its throughput under load is the loopback HTTP ceiling of this
// machine (and of net/http on it).
type CeilingServer struct {
	// URL is the server's base URL, e.g. "http://127.0.0.1:41234".
	URL string
	srv *http.Server
	ln  net.Listener
	// done is closed when Serve returns.
	done chan struct{}
}

// StartCeiling starts a CeilingServer on 127.0.0.1:0. Close it when done.
func StartCeiling() (*CeilingServer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	body := []byte(CeilingBody)
	clen := strconv.Itoa(len(body))
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		// Read the body as a real handler would; otherwise the
		// server would answer before the request is received.
		_, _ = io.Copy(io.Discard, r.Body)
		h := w.Header()
		h["Content-Type"] = []string{"application/json"}
		h["Content-Length"] = []string{clen}
		_, _ = w.Write(body)
	})
	cs := &CeilingServer{
		URL:  "http://" + ln.Addr().String(),
		srv:  &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second},
		ln:   ln,
		done: make(chan struct{}),
	}
	go func() {
		defer close(cs.done)
		_ = cs.srv.Serve(ln)
	}()
	return cs, nil
}

// Close stops the server and waits for it. It is safe to call twice.
func (cs *CeilingServer) Close() error {
	err := cs.srv.Close()
	<-cs.done
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// Ceiling runs cfg against a fresh CeilingServer (cfg.URL is ignored and
// replaced by the server's "/v1/models/ceiling/predict") and returns the
// result. Use the same Concurrency, Duration and Body as the run it is the
// ceiling of, in the same process, right before or after it.
func Ceiling(ctx context.Context, cfg Config) (Result, error) {
	cs, err := StartCeiling()
	if err != nil {
		return Result{}, err
	}
	defer cs.Close()
	cfg.URL = cs.URL + "/v1/models/ceiling/predict"
	cfg.Check = nil
	return Run(ctx, cfg)
}
