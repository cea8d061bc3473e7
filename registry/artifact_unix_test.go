//go:build unix

package registry_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/signalforge/signalforge/registry"
)

// TestRegisterFromFIFOIsRefusedAtOnce: opening a FIFO blocks until a
// writer appears, so a FIFO must be refused from its Stat, never opened.
func TestRegisterFromFIFOIsRefusedAtOnce(t *testing.T) {
	ctx := context.Background()
	r := openReg(t, t.TempDir())
	fifo := filepath.Join(t.TempDir(), "model.onnx")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := r.Register(ctx, registry.RegisterRequest{Name: "m", ONNXPath: fifo})
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, registry.ErrInvalidArtifact) || !strings.Contains(err.Error(), fifo) || !strings.Contains(err.Error(), "not a regular file") {
			t.Fatalf("Register(fifo) = %v; want ErrInvalidArtifact naming the path, not a regular file", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Register(fifo) blocked: it opened the FIFO instead of refusing it")
	}
}
