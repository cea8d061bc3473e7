package server

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/signalforge/signalforge/api"
)

// resolveImportDir returns the import folder made absolute, as written
// and with its symbolic links resolved, so that paths inside it can be
// compared by prefix.
func resolveImportDir(dir string) (abs, root string, err error) {
	if abs, err = filepath.Abs(dir); err != nil {
		return "", "", fmt.Errorf("server: import folder %q: %w", dir, err)
	}
	if root, err = filepath.EvalSymlinks(abs); err != nil {
		return "", "", fmt.Errorf("server: import folder %q: %w", dir, err)
	}
	if fi, err := os.Stat(root); err != nil || !fi.IsDir() {
		return "", "", fmt.Errorf("server: import folder %q is not a folder", dir)
	}
	return abs, root, nil
}

// importPath resolves an "onnx_path" of the admin register request to a
// regular file inside the import folder (relative paths are relative to
// it), following symbolic links and checking where they lead. Every
// refusal says the same, so that the answer never reveals whether a file
// outside the folder exists.
func (s *Server) importPath(p string) (string, error) {
	if s.importRoot == "" {
		return "", &HTTPError{Status: http.StatusForbidden, Code: api.CodeForbidden,
			Msg: "register-by-path is off on this server: upload the ONNX file as application/octet-stream, " +
				"or start the server with an import folder (serve --import-dir DIR, config import_dir) and name a file inside it"}
	}
	refuse := &HTTPError{Status: http.StatusForbidden, Code: api.CodeForbidden,
		Msg: fmt.Sprintf("onnx_path %q is not a readable model file inside the import folder %s", p, s.importRoot)}
	if !filepath.IsAbs(p) {
		p = filepath.Join(s.importRoot, p)
	}
	// Lexically first (nothing outside is even looked at), then with the
	// links resolved.
	if p = filepath.Clean(p); !within(s.importRoot, p) && !within(s.importAbs, p) {
		return "", refuse
	}
	real, err := filepath.EvalSymlinks(p)
	if err != nil || !within(s.importRoot, real) {
		return "", refuse
	}
	if fi, err := os.Stat(real); err != nil || !fi.Mode().IsRegular() {
		return "", refuse
	}
	return real, nil
}

// within reports whether path is root or below it (both clean, absolute).
func within(root, path string) bool {
	rel, err := filepath.Rel(root, path)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator)) && !filepath.IsAbs(rel)
}

// acquireUpload takes one of MaxUploads slots for reading a model into
// memory, or answers 429: concurrent uploads must not add up past memory.
func (s *Server) acquireUpload() (release func(), err error) {
	select {
	case s.uploads <- struct{}{}:
		return func() { <-s.uploads }, nil
	default:
		return nil, &HTTPError{Status: http.StatusTooManyRequests, Code: api.CodeQueueFull, RetryAfter: 5 * time.Second,
			Msg: fmt.Sprintf("%d model registrations are already in progress (the limit); retry later", cap(s.uploads))}
	}
}

// readUpload reads a model upload: at most MaxUploadBytes, within
// Timeouts.Upload (counted from now: the token has been checked).
func (s *Server) readUpload(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	limit, budget := s.cfg.MaxUploadBytes, s.cfg.Timeouts.Upload
	if r.ContentLength > limit {
		return nil, bodyError(&http.MaxBytesError{Limit: limit}, limit, budget)
	}
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(budget))
	body := http.MaxBytesReader(w, r.Body, limit)
	var buf []byte
	if n := r.ContentLength; n > 0 {
		// Exactly the announced size (io.ReadAll's doubling would hold up
		// to twice that), plus a byte to see the end.
		buf = make([]byte, 0, n+1)
	}
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := body.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, bodyError(err, limit, budget)
		}
	}
	bodyRead(w)
	return buf, nil
}
