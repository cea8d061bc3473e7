package main

import (
	"os"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

func TestParseFileConfig(t *testing.T) {
	c, err := parseFileConfig([]byte(`
addr: ":9090"
registry: /var/lib/signalforge
registry_max_conns: 3
registry_cache_dir: /var/cache/signalforge/artifacts
batch:
  max_batch_size: 16
  window: 2ms
cache:
  redis: redis://127.0.0.1:6379/0
  type_ttl: {h1: 1m, h5: 5m}
timeouts: {probe: 1s, body: 3s}
import_dir: /srv/models-in
`))
	if err != nil {
		t.Fatal(err)
	}
	if to := c.serverTimeouts(); to.Probe != time.Second || to.Body != 3*time.Second || to.Upload != 0 || c.ImportDir != "/srv/models-in" {
		t.Fatalf("timeouts %+v, import_dir %q", to, c.ImportDir)
	}
	if c.Addr != ":9090" || c.Batch.MaxBatchSize != 16 || time.Duration(c.Batch.Window) != 2*time.Millisecond ||
		time.Duration(c.Cache.TypeTTL["h5"]) != 5*time.Minute || !boolOr(c.Demo, true) ||
		c.RegistryMaxConns != 3 || c.RegistryCacheDir != "/var/cache/signalforge/artifacts" {
		t.Fatalf("parsed %+v", c)
	}
}

func TestParseFileConfigErrors(t *testing.T) {
	tests := []struct{ in, want string }{
		{"adr: x", "field adr not found"},
		{"batch: {window: fast}", `"fast" is not a duration`},
		{"batch: {max_batch_size: -1}", "batch sizes must not be negative"},
		{"cache: {type_ttl: {h1: 0s}}", `cache.type_ttl["h1"] must be positive`},
		{"log: {level: loud}", `log.level "loud"`},
		{"a: 1\n---\nb: 2", "field a not found"},
		{"addr: \":8080\"\nadmin_open_loopback: true", `admin_open_loopback needs a loopback addr like "127.0.0.1:8080", not ":8080"`},
		{"timeouts: {body: soon}", `"soon" is not a duration`},
		{"limits: {max_uploads: -1}", "limits.max_uploads must not be negative"},
		{"registry_max_conns: -2", "registry_max_conns must not be negative"},
	}
	for _, tt := range tests {
		_, err := parseFileConfig([]byte(tt.in))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("parseFileConfig(%q) = %v, want an error containing %q", tt.in, err, tt.want)
		}
	}
}

func TestExampleConfigParses(t *testing.T) {
	b, err := os.ReadFile("../../configs/serve.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := parseFileConfig(b); err != nil {
		t.Fatal(err)
	}
}

// TestDeployConfigMapParses: the config.yaml the Kubernetes ConfigMap
// mounts for `signalforge serve --config` is accepted as it stands.
func TestDeployConfigMapParses(t *testing.T) {
	b, err := os.ReadFile("../../deploy/configmap.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var cm struct {
		Kind string            `yaml:"kind"`
		Data map[string]string `yaml:"data"`
	}
	if err := yaml.Unmarshal(b, &cm); err != nil {
		t.Fatal(err)
	}
	text, ok := cm.Data["config.yaml"]
	if cm.Kind != "ConfigMap" || !ok {
		t.Fatalf("deploy/configmap.yaml: kind %q, no data.config.yaml: %v", cm.Kind, !ok)
	}
	c, err := parseFileConfig([]byte(text))
	if err != nil {
		t.Fatalf("signalforge serve refuses the ConfigMap's config.yaml: %v", err)
	}
	if c.Addr == "" {
		t.Error("the ConfigMap's config.yaml sets no addr")
	}
}

func FuzzParseFileConfig(f *testing.F) {
	f.Add([]byte("addr: \":8080\"\nbatch: {window: 2ms}\n"))
	f.Add([]byte("cache: {type_ttl: {h1: 1m}}"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := parseFileConfig(b)
		if err != nil {
			return
		}
		if c.Limits.MaxRows < 0 || c.Batch.MaxBatchSize < 0 {
			t.Fatalf("accepted negative sizes: %+v", c)
		}
	})
}
