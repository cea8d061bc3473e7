package deploy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// The contract with `signalforge serve` (DESIGN.md §5, issue 7).
const (
	wantConfigPath = "/etc/signalforge/config.yaml"
	wantPort       = 8080
	wantReady      = "/v2/health/ready"
	wantLive       = "/v2/health/live"
	secretName     = "signalforge"
)

var wantArgs = []string{"serve", "--config", wantConfigPath}

// obj is one decoded YAML document.
type obj = map[string]any

// loadDocs decodes every YAML document of file.
func loadDocs(t *testing.T, file string) []obj {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	var docs []obj
	for {
		var d obj
		err := dec.Decode(&d)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if d != nil {
			docs = append(docs, d)
		}
	}
	return docs
}

// get walks a path of keys (string) and indexes (int) through o.
func get(t *testing.T, o any, path ...any) any {
	t.Helper()
	cur := o
	for i, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := cur.(obj)
			if !ok {
				t.Fatalf("%v: not a mapping at %v", path, path[:i])
			}
			v, ok := m[k]
			if !ok {
				t.Fatalf("%v: no key %q", path, k)
			}
			cur = v
		case int:
			l, ok := cur.([]any)
			if !ok || k >= len(l) {
				t.Fatalf("%v: no index %d", path, k)
			}
			cur = l[k]
		}
	}
	return cur
}

func str(t *testing.T, o any, path ...any) string {
	t.Helper()
	s, ok := get(t, o, path...).(string)
	if !ok {
		t.Fatalf("%v is not a string", path)
	}
	return s
}

func num(t *testing.T, o any, path ...any) int {
	t.Helper()
	n, ok := get(t, o, path...).(int)
	if !ok {
		t.Fatalf("%v is not an integer", path)
	}
	return n
}

// manifests loads every YAML file under deploy/ by kind/name.
func manifests(t *testing.T) map[string]obj {
	t.Helper()
	files, err := filepath.Glob("*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	more, _ := filepath.Glob("kserve/*.yaml")
	out := map[string]obj{}
	for _, f := range append(files, more...) {
		for _, d := range loadDocs(t, f) {
			kind := str(t, d, "kind")
			if kind == "Kustomization" {
				continue
			}
			key := kind + "/" + str(t, d, "metadata", "name")
			if _, dup := out[key]; dup {
				t.Fatalf("%s defined twice", key)
			}
			out[key] = d
		}
	}
	return out
}

func TestKustomizationListsEveryManifest(t *testing.T) {
	k := loadDocs(t, "kustomization.yaml")[0]
	var listed []string
	for _, r := range get(t, k, "resources").([]any) {
		listed = append(listed, r.(string))
		if _, err := os.Stat(r.(string)); err != nil {
			t.Errorf("kustomization lists %s: %v", r, err)
		}
	}
	files, _ := filepath.Glob("*.yaml")
	for _, f := range files {
		switch f {
		case "kustomization.yaml", "secret.example.yaml":
			if slices.Contains(listed, f) {
				t.Errorf("kustomization must not apply %s", f)
			}
		default:
			if !slices.Contains(listed, f) {
				t.Errorf("%s is not in kustomization.yaml", f)
			}
		}
	}
	// The image the Deployment names is mapped to the one KServe uses.
	img := get(t, k, "images", 0).(obj)
	full := fmt.Sprintf("%s:%s", img["newName"], img["newTag"])
	m := manifests(t)
	if dep := str(t, m["Deployment/signalforge"], "spec", "template", "spec", "containers", 0, "image"); dep != img["name"] {
		t.Errorf("Deployment image %q is not the kustomization's image name %q", dep, img["name"])
	}
	if ks := str(t, m["InferenceService/signalforge"], "spec", "predictor", "containers", 0, "image"); ks != full {
		t.Errorf("InferenceService image %q, kustomization image %q", ks, full)
	}
}

// serveConfig holds the keys of `signalforge serve --config` these tests
// check. That the server accepts the whole of the ConfigMap's config.yaml
// is checked beside the file format, in cmd/signalforge
// (TestDeployConfigMapParses).
type serveConfig struct {
	Addr              string        `yaml:"addr"`
	Registry          string        `yaml:"registry"`
	RegistryMaxConns  int32         `yaml:"registry_max_conns"`
	RegistryCacheDir  string        `yaml:"registry_cache_dir"`
	AdminToken        string        `yaml:"admin_token"`
	AdminOpenLoopback bool          `yaml:"admin_open_loopback"`
	ImportDir         string        `yaml:"import_dir"`
	Demo              *bool         `yaml:"demo"`
	ShutdownTimeout   time.Duration `yaml:"shutdown_timeout"`
	Cache             struct {
		Enabled *bool  `yaml:"enabled"`
		Redis   string `yaml:"redis"`
	} `yaml:"cache"`
}

// serverConfig returns the ConfigMap's config.yaml decoded.
func serverConfig(t *testing.T, m map[string]obj) serveConfig {
	t.Helper()
	text := str(t, m["ConfigMap/signalforge-config"], "data", "config.yaml")
	var fc serveConfig
	if err := yaml.Unmarshal([]byte(text), &fc); err != nil {
		t.Fatalf("the ConfigMap's config.yaml: %v", err)
	}
	return fc
}

// boolOr returns *b, or def when b is nil (the server's default).
func boolOr(b *bool, def bool) bool {
	if b == nil {
		return def
	}
	return *b
}

func TestConfigMapIsAValidServerConfig(t *testing.T) {
	fc := serverConfig(t, manifests(t))
	if fc.Addr != fmt.Sprintf(":%d", wantPort) {
		t.Errorf("addr %q, want :%d", fc.Addr, wantPort)
	}
	if fc.AdminToken != "" || fc.Cache.Redis != "" {
		t.Errorf("credentials in the ConfigMap (admin_token %q, cache.redis %q): they belong in the Secret", fc.AdminToken, fc.Cache.Redis)
	}
	if boolOr(fc.Demo, true) {
		t.Error("demo is on: replicas would seed demo models into the shared registry")
	}
	if fc.AdminOpenLoopback || fc.ImportDir != "" {
		t.Errorf("admin_open_loopback %v, import_dir %q: a cluster's admin API needs the token, and models arrive by upload", fc.AdminOpenLoopback, fc.ImportDir)
	}
	if !boolOr(fc.Cache.Enabled, true) {
		t.Error("the cache is off")
	}
	if fc.ShutdownTimeout <= 0 {
		t.Error("shutdown_timeout is not set; the grace period check needs it")
	}
	if fc.Registry != "" {
		t.Errorf("registry %q in the ConfigMap: the PostgreSQL URL carries credentials and comes from the Secret (SIGNALFORGE_REGISTRY)", fc.Registry)
	}
	if fc.RegistryMaxConns <= 0 {
		t.Error("registry_max_conns is not set: every replica would size its pool to the node's CPUs")
	}
	if !filepath.IsAbs(fc.RegistryCacheDir) {
		t.Errorf("registry_cache_dir %q: want an absolute path on the artifact cache volume (the root filesystem is read-only)", fc.RegistryCacheDir)
	}
}

// PostgreSQL's default max_connections, and what to leave of it for the
// CLIs, migrations and the operator (3 are reserved for superusers).
const (
	postgresMaxConnections = 100
	postgresHeadroom       = 20
)

// TestRegistryPoolsFitPostgres: at the most replicas the autoscalers allow
// (plus a surging pod), every replica's pool and its LISTEN session fit in
// PostgreSQL's default connection limit with room to spare.
func TestRegistryPoolsFitPostgres(t *testing.T) {
	m := manifests(t)
	fc := serverConfig(t, m)
	perPod := int(fc.RegistryMaxConns) + 1 // the pool, and the LISTEN session
	surge := 0
	if s, ok := get(t, m["Deployment/signalforge"], "spec", "strategy", "rollingUpdate").(obj)["maxSurge"].(int); ok {
		surge = s
	}
	for owner, max := range map[string]int{
		"HorizontalPodAutoscaler": num(t, m["HorizontalPodAutoscaler/signalforge"], "spec", "maxReplicas"),
		"InferenceService":        num(t, m["InferenceService/signalforge"], "spec", "predictor", "maxReplicas"),
	} {
		if used := (max + surge) * perPod; used > postgresMaxConnections-postgresHeadroom {
			t.Errorf("%s: %d replicas (+%d surging) × (registry_max_conns %d + 1 LISTEN) = %d connections; PostgreSQL allows %d by default and the CLIs need %d of them",
				owner, max, surge, fc.RegistryMaxConns, used, postgresMaxConnections, postgresHeadroom)
		}
	}
}

// TestSecretExampleRegistryURL: the example registry URL is one the server
// opens as PostgreSQL, and verifies the server's certificate.
func TestSecretExampleRegistryURL(t *testing.T) {
	raw := str(t, manifests(t)["Secret/"+secretName], "stringData", "registry-url")
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	if u.Scheme != "postgres" && u.Scheme != "postgresql" {
		t.Errorf("registry-url scheme %q: want postgres", u.Scheme)
	}
	if mode := u.Query().Get("sslmode"); mode != "verify-full" {
		t.Errorf("registry-url sslmode %q: want verify-full (a managed server is reached over the network)", mode)
	}
}

// podSpecs returns the pod specs that run the server, by owner.
func podSpecs(t *testing.T, m map[string]obj) map[string]obj {
	return map[string]obj{
		"Deployment":       get(t, m["Deployment/signalforge"], "spec", "template", "spec").(obj),
		"InferenceService": get(t, m["InferenceService/signalforge"], "spec", "predictor").(obj),
	}
}

func TestPodSpecsRunTheServerAsConfigured(t *testing.T) {
	m := manifests(t)
	fc := serverConfig(t, m)
	secret := m["Secret/"+secretName]
	for owner, ps := range podSpecs(t, m) {
		t.Run(owner, func(t *testing.T) {
			c := get(t, ps, "containers", 0).(obj)
			if owner == "InferenceService" && c["name"] != "kserve-container" {
				t.Errorf("KServe custom predictor container is %q, want kserve-container", c["name"])
			}
			var args []string
			for _, a := range get(t, c, "args").([]any) {
				args = append(args, a.(string))
			}
			if !slices.Equal(args, wantArgs) {
				t.Errorf("args %q, want %q", args, wantArgs)
			}
			if p := num(t, c, "ports", 0, "containerPort"); p != wantPort || str(t, c, "ports", 0, "name") != "http" {
				t.Errorf("port %d %q, want %d named http", p, str(t, c, "ports", 0, "name"), wantPort)
			}
			for probe, path := range map[string]string{"readinessProbe": wantReady, "livenessProbe": wantLive, "startupProbe": wantLive} {
				if got := str(t, c, probe, "httpGet", "path"); got != path {
					t.Errorf("%s path %q, want %q", probe, got, path)
				}
				if got := get(t, c, probe, "httpGet", "port"); got != "http" {
					t.Errorf("%s port %v, want http", probe, got)
				}
			}

			env := map[string]obj{}
			for _, e := range get(t, c, "env").([]any) {
				env[e.(obj)["name"].(string)] = e.(obj)
			}
			for name, key := range map[string]string{"SIGNALFORGE_REGISTRY": "registry-url", "SIGNALFORGE_REDIS": "redis-url", "SIGNALFORGE_ADMIN_TOKEN": "admin-token"} {
				e, ok := env[name]
				if !ok {
					t.Errorf("no %s in env", name)
					continue
				}
				if str(t, e, "valueFrom", "secretKeyRef", "name") != secretName || str(t, e, "valueFrom", "secretKeyRef", "key") != key {
					t.Errorf("%s does not come from secret %s key %s: %v", name, secretName, key, e)
				}
				// Without the token the admin API is closed, and without
				// the registry URL the pod would serve an empty folder: a
				// missing key must stop the pod.
				if opt, _ := get(t, e, "valueFrom", "secretKeyRef").(obj)["optional"].(bool); opt {
					t.Errorf("%s: secretKeyRef is optional", name)
				}
				if _, ok := get(t, secret, "stringData").(obj)[key]; !ok {
					t.Errorf("secret.example.yaml has no key %s", key)
				}
			}

			mounts := map[string]string{}
			for _, v := range get(t, c, "volumeMounts").([]any) {
				mounts[v.(obj)["name"].(string)] = v.(obj)["mountPath"].(string)
			}
			vols := map[string]obj{}
			for _, v := range get(t, ps, "volumes").([]any) {
				vols[v.(obj)["name"].(string)] = v.(obj)
			}
			if mounts["config"] != filepath.Dir(wantConfigPath) || str(t, vols["config"], "configMap", "name") != "signalforge-config" {
				t.Errorf("config volume: mounted at %q from %v", mounts["config"], vols["config"])
			}
			// The registry is in PostgreSQL: no shared volume.
			for name, v := range vols {
				if _, ok := v["persistentVolumeClaim"]; ok {
					t.Errorf("volume %s is a PersistentVolumeClaim: replicas share the registry through PostgreSQL, not a volume", name)
				}
			}
			// The artifact cache is on a pod-local emptyDir.
			cacheVol := ""
			for name, path := range mounts {
				if rel, err := filepath.Rel(path, fc.RegistryCacheDir); err == nil && !strings.HasPrefix(rel, "..") && len(path) > len(mounts[cacheVol]) {
					cacheVol = name
				}
			}
			if _, ok := vols[cacheVol]["emptyDir"]; !ok || cacheVol == "tmp" {
				t.Errorf("registry_cache_dir %q is not on an emptyDir volume of its own (mounted: %v)", fc.RegistryCacheDir, mounts)
			}
			if get(t, c, "securityContext", "readOnlyRootFilesystem") == true && mounts["tmp"] != "/tmp" {
				t.Error("read-only root filesystem without a writable /tmp")
			}

			grace := time.Duration(num(t, ps, "terminationGracePeriodSeconds")) * time.Second
			pause := time.Duration(num(t, c, "lifecycle", "preStop", "sleep", "seconds")) * time.Second
			if budget := pause + time.Duration(fc.ShutdownTimeout); budget+5*time.Second > grace {
				t.Errorf("preStop %v + shutdown_timeout %v leaves less than 5s of the %v grace period", pause, time.Duration(fc.ShutdownTimeout), grace)
			}
			if _, ok := get(t, c, "resources", "requests").(obj)["cpu"]; !ok {
				t.Error("no CPU request (GOMAXPROCS and the HPA derive from it)")
			}
			limit := memBytes(t, str(t, c, "resources", "limits", "memory"), "i")
			if soft := memBytes(t, str(t, env["GOMEMLIMIT"], "value"), "iB"); soft <= 0 || float64(soft) > 0.85*float64(limit) {
				t.Errorf("GOMEMLIMIT %d bytes is not within 85%% of the memory limit %d (ONNX Runtime allocates outside the Go heap)", soft, limit)
			}
		})
	}
}

// memBytes parses "768Mi" (Kubernetes, suffix "i") or "768MiB" (Go's
// GOMEMLIMIT, suffix "iB") with a K, M or G binary prefix.
func memBytes(t *testing.T, s, suffix string) int64 {
	t.Helper()
	for i, p := range []string{"K", "M", "G"} {
		if num, ok := strings.CutSuffix(s, p+suffix); ok {
			n, err := strconv.ParseInt(num, 10, 64)
			if err != nil {
				t.Fatalf("memory quantity %q: %v", s, err)
			}
			return n << (10 * (i + 1))
		}
	}
	t.Fatalf("memory quantity %q: want a number with Ki/Mi/Gi (%s)", s, suffix)
	return 0
}

func TestServiceHPAAndPDBSelectThePods(t *testing.T) {
	m := manifests(t)
	dep := m["Deployment/signalforge"]
	podLabels := get(t, dep, "spec", "template", "metadata", "labels").(obj)
	matches := func(sel obj) bool {
		for k, v := range sel {
			if podLabels[k] != v {
				return false
			}
		}
		return len(sel) > 0
	}
	if sel := get(t, dep, "spec", "selector", "matchLabels").(obj); !matches(sel) {
		t.Errorf("Deployment selector %v does not match its pods %v", sel, podLabels)
	}
	svc := m["Service/signalforge"]
	if sel := get(t, svc, "spec", "selector").(obj); !matches(sel) {
		t.Errorf("Service selector %v does not match the pods %v", sel, podLabels)
	}
	if tp := get(t, svc, "spec", "ports", 0, "targetPort"); tp != "http" {
		t.Errorf("Service targetPort %v, want the container port name http", tp)
	}
	if sel := get(t, m["PodDisruptionBudget/signalforge"], "spec", "selector", "matchLabels").(obj); !matches(sel) {
		t.Errorf("PDB selector %v does not match the pods", sel)
	}
	hpa := m["HorizontalPodAutoscaler/signalforge"]
	if k, n := str(t, hpa, "spec", "scaleTargetRef", "kind"), str(t, hpa, "spec", "scaleTargetRef", "name"); k != "Deployment" || n != "signalforge" {
		t.Errorf("HPA targets %s/%s", k, n)
	}
	if _, ok := get(t, dep, "spec").(obj)["replicas"]; ok {
		t.Error("the Deployment sets replicas, fighting the HPA on every apply")
	}
	if min := num(t, hpa, "spec", "minReplicas"); min < 2 {
		t.Errorf("HPA minReplicas %d: one replica is not highly available", min)
	}
}

func TestDockerfileMatchesTheManifests(t *testing.T) {
	b, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	df := string(b)
	for _, want := range []string{
		`ENTRYPOINT ["/usr/local/bin/signalforge"]`,
		`CMD ["serve", "--config", "` + wantConfigPath + `"]`,
		fmt.Sprintf("EXPOSE %d", wantPort),
		"USER 65532:65532",
		"ENV SIGNALFORGE_ORT_LIB=/usr/local/lib/libonnxruntime.so.1",
		"CGO_ENABLED=1",
	} {
		if !strings.Contains(df, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
	// The pinned ONNX Runtime must be the one scripts/deps.sh pins.
	deps, err := os.ReadFile("../scripts/deps.sh")
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"ORT_VERSION", "ORT_TGZ_SHA256", "ORT_LIB_SHA256"} {
		val := ""
		for line := range strings.Lines(string(deps)) {
			if after, ok := strings.CutPrefix(line, v+"="); ok {
				val = strings.TrimSpace(after)
			}
		}
		if val == "" || !strings.Contains(df, "ARG "+v+"="+val+"\n") {
			t.Errorf("Dockerfile's %s differs from scripts/deps.sh (%q)", v, val)
		}
	}
}
