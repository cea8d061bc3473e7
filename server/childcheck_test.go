package server

import (
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/signalforge/signalforge/internal/demo"
	"github.com/signalforge/signalforge/registry"
)

// TestChildCheckConfigured: Config.ChildCheck reaches the model manager
// (whose tests check a real child's verdicts): with a check whose child
// cannot run, no version loads, /v1/models shows each failed with the
// check's error and readiness is false, while the server stays up.
func TestChildCheckConfigured(t *testing.T) {
	ts := startServer(t, testOpts{noCache: true, mutate: func(c *Config) {
		c.ChildCheck = &registry.ChildCheck{Command: filepath.Join(t.TempDir(), "no-such-admit")}
	}})
	waitFor(t, func() bool {
		_, b := get(t, ts.URL+"/v1/models/"+demo.ModelName)
		return strings.Contains(string(b), `"state":"failed"`)
	})
	_, b := get(t, ts.URL+"/v1/models/"+demo.ModelName)
	if !strings.Contains(string(b), "admission check in a child process") || strings.Contains(string(b), `"state":"loaded"`) {
		t.Errorf("/v1/models/%s = %s", demo.ModelName, b)
	}
	if code, b := get(t, ts.URL+"/v2/health/ready"); code != http.StatusServiceUnavailable {
		t.Errorf("/v2/health/ready = %d %s", code, b)
	}
	if code, _ := get(t, ts.URL+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz = %d", code)
	}
}
