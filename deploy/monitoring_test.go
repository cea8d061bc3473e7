package deploy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/signalforge/signalforge/api"
	"github.com/signalforge/signalforge/cache"
	"github.com/signalforge/signalforge/infer/ort"
	"github.com/signalforge/signalforge/internal/demo"
	"github.com/signalforge/signalforge/registry"
	"github.com/signalforge/signalforge/server"
)

const dashboardFile = "dashboards/signalforge.json"

// The alerts operators rely on; renaming one breaks their routing.
var wantAlerts = []string{
	"SignalForgeHighErrorRate", "SignalForgeHighP99Latency", "SignalForgeQueueBacklog",
	"SignalForgeCanaryStuck", "SignalForgeRegistryDown",
}

// targetLabels are the labels Prometheus adds to every series it scrapes
// from a pod through a ServiceMonitor: expressions may name them although
// the server does not export them.
var targetLabels = []string{"instance", "job", "namespace", "pod", "service", "container", "endpoint"}

func TestServiceMonitorScrapesTheService(t *testing.T) {
	m := manifests(t)
	sm, svc := m["ServiceMonitor/signalforge"], m["Service/signalforge"]
	if sm == nil {
		t.Fatal("no ServiceMonitor/signalforge")
	}
	if v := str(t, sm, "apiVersion"); v != "monitoring.coreos.com/v1" {
		t.Errorf("ServiceMonitor apiVersion %q", v)
	}
	svcLabels := get(t, svc, "metadata", "labels").(obj)
	sel := get(t, sm, "spec", "selector", "matchLabels").(obj)
	for k, v := range sel {
		if svcLabels[k] != v {
			t.Errorf("ServiceMonitor selects %s=%v; the Service's labels are %v", k, v, svcLabels)
		}
	}
	if len(sel) == 0 {
		t.Error("ServiceMonitor selects every Service")
	}
	var ports []string
	for _, p := range get(t, svc, "spec", "ports").([]any) {
		ports = append(ports, p.(obj)["name"].(string))
	}
	eps := get(t, sm, "spec", "endpoints").([]any)
	if len(eps) == 0 {
		t.Fatal("ServiceMonitor has no endpoints")
	}
	for i := range eps {
		if p := str(t, sm, "spec", "endpoints", i, "port"); !slices.Contains(ports, p) {
			t.Errorf("endpoint %d scrapes port %q; the Service's ports are %v", i, p, ports)
		}
		if p := str(t, sm, "spec", "endpoints", i, "path"); p != "/metrics" {
			t.Errorf("endpoint %d scrapes %q, want /metrics", i, p)
		}
	}
}

// alertRules returns the PrometheusRule's rules by alert name.
func alertRules(t *testing.T, m map[string]obj) map[string]obj {
	t.Helper()
	pr := m["PrometheusRule/signalforge"]
	if pr == nil {
		t.Fatal("no PrometheusRule/signalforge")
	}
	out := map[string]obj{}
	for gi := range get(t, pr, "spec", "groups").([]any) {
		for _, r := range get(t, pr, "spec", "groups", gi, "rules").([]any) {
			name := str(t, r, "alert")
			if _, dup := out[name]; dup {
				t.Errorf("alert %s defined twice", name)
			}
			out[name] = r.(obj)
		}
	}
	return out
}

func TestPrometheusRuleAlerts(t *testing.T) {
	rules := alertRules(t, manifests(t))
	for _, name := range wantAlerts {
		if _, ok := rules[name]; !ok {
			t.Errorf("no alert %s", name)
		}
	}
	for name, r := range rules {
		if sev, _ := get(t, r, "labels").(obj)["severity"].(string); sev != "warning" && sev != "critical" {
			t.Errorf("%s: severity %q, want warning or critical", name, sev)
		}
		if s, _ := get(t, r, "annotations").(obj)["summary"].(string); s == "" {
			t.Errorf("%s has no summary", name)
		}
	}
}

// dashboard returns the Grafana dashboard the kustomization turns into a
// ConfigMap, checking the generator that does.
func dashboard(t *testing.T) obj {
	t.Helper()
	k := loadDocs(t, "kustomization.yaml")[0]
	found := false
	for _, g := range get(t, k, "configMapGenerator").([]any) {
		files, _ := g.(obj)["files"].([]any)
		if !slices.Contains(files, any(dashboardFile)) {
			continue
		}
		found = true
		if l := get(t, g, "options", "labels").(obj)["grafana_dashboard"]; l != "1" {
			t.Errorf("the dashboard's ConfigMap has grafana_dashboard %v, want \"1\" (what Grafana's sidecar looks for)", l)
		}
		if get(t, g, "options", "disableNameSuffixHash") != true {
			t.Error("the dashboard's ConfigMap name gets a hash suffix: every edit would leave the old dashboard behind")
		}
	}
	if !found {
		t.Fatalf("kustomization.yaml generates no ConfigMap from %s", dashboardFile)
	}
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d obj
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	if str(t, d, "uid") == "" || str(t, d, "title") == "" {
		t.Error("dashboard without uid or title")
	}
	return d
}

// dashboardExprs returns every PromQL expression of the dashboard's panels
// by "panel title/refId", and its variables' label_values queries.
func dashboardExprs(t *testing.T, d obj) (exprs map[string]string, labelValues []string) {
	t.Helper()
	exprs = map[string]string{}
	for _, p := range get(t, d, "panels").([]any) {
		targets, _ := p.(obj)["targets"].([]any)
		for _, tg := range targets {
			key := fmt.Sprintf("%s/%s", p.(obj)["title"], tg.(obj)["refId"])
			if _, dup := exprs[key]; dup {
				t.Errorf("dashboard target %s twice", key)
			}
			exprs[key] = str(t, tg, "expr")
		}
	}
	for _, v := range get(t, d, "templating", "list").([]any) {
		if q, ok := v.(obj)["query"].(obj); ok {
			labelValues = append(labelValues, q["query"].(string))
		}
	}
	return exprs, labelValues
}

func TestDashboardPanels(t *testing.T) {
	exprs, _ := dashboardExprs(t, dashboard(t))
	all := strings.Join(slices.Collect(maps.Values(exprs)), "\n")
	// What an operator comparing a canary with its baseline looks for.
	for what, want := range map[string]string{
		"request rate":          "rate(signalforge_requests_total",
		"error rate":            "signalforge_version_errors_total",
		"p99 by version":        "histogram_quantile(0.99, sum by (le, model, version) (rate(signalforge_request_duration_seconds_bucket",
		"p50 by version":        "histogram_quantile(0.5, sum by (le, model, version) (rate(signalforge_request_duration_seconds_bucket",
		"queue depth":           "signalforge_queue_depth_rows",
		"batch size":            "signalforge_batch_size_bucket",
		"cache hit ratio":       "signalforge_cache_hits_total",
		"canary state":          "signalforge_canary_state",
		"batch execution times": "signalforge_batch_exec_seconds_bucket",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("the dashboard shows no %s (%q)", what, want)
		}
	}
}

// scraped is what one /metrics scrape exported: each series name (a
// histogram's _bucket, _sum and _count included) and its label names.
type scraped map[string]map[string]bool

// scrapeMetrics parses the Prometheus text format.
func scrapeMetrics(t *testing.T, text string) scraped {
	t.Helper()
	out := scraped{}
	for line := range strings.Lines(text) {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		end := strings.IndexAny(line, "{ ")
		if end <= 0 {
			t.Fatalf("scrape line %q", line)
		}
		name := line[:end]
		if out[name] == nil {
			out[name] = map[string]bool{}
		}
		if line[end] != '{' {
			continue
		}
		rest := line[end+1:]
		for len(rest) > 0 && rest[0] != '}' {
			eq := strings.Index(rest, `="`)
			if eq <= 0 {
				t.Fatalf("scrape line %q: labels", line)
			}
			out[name][strings.TrimPrefix(rest[:eq], ",")] = true
			i := eq + 2
			for ; i < len(rest) && rest[i] != '"'; i++ {
				if rest[i] == '\\' {
					i++
				}
			}
			rest = strings.TrimPrefix(rest[i+1:], ",")
		}
	}
	return out
}

// promqlRefs returns the metric names and label names a PromQL expression
// refers to: metric names are the identifiers that are not functions,
// aggregations or keywords, outside label matchers, ranges and strings;
// label names those of matchers and of by, without, on, ignoring,
// group_left and group_right lists.
func promqlRefs(expr string) (metrics, labels []string, err error) {
	grouping := map[string]bool{"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true}
	keywords := map[string]bool{"bool": true, "and": true, "or": true, "unless": true, "offset": true, "atan2": true, "inf": true, "nan": true}
	// Aggregations may come before their by or without list, not "(".
	for _, a := range []string{"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk", "quantile", "limitk", "limit_ratio"} {
		keywords[a] = true
	}
	isIdent := func(c byte, first bool) bool {
		return c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || !first && c >= '0' && c <= '9'
	}
	skipSpace := func(i int) int {
		for i < len(expr) && strings.IndexByte(" \t\r\n", expr[i]) >= 0 {
			i++
		}
		return i
	}
	// skipString returns the index after the string literal at i.
	skipString := func(i int) (int, error) {
		q := expr[i]
		for j := i + 1; j < len(expr); j++ {
			switch {
			case expr[j] == '\\' && q != '`':
				j++
			case expr[j] == q:
				return j + 1, nil
			}
		}
		return 0, fmt.Errorf("unterminated string at %d", i)
	}
	for i := 0; i < len(expr); {
		c := expr[i]
		switch {
		case c == '"' || c == '\'' || c == '`':
			if i, err = skipString(i); err != nil {
				return nil, nil, err
			}
		case c == '#':
			nl := strings.IndexByte(expr[i:], '\n')
			if nl < 0 {
				nl = len(expr) - i
			}
			i += nl
		case c == '[':
			end := strings.IndexByte(expr[i:], ']')
			if end < 0 {
				return nil, nil, fmt.Errorf("unclosed [ at %d", i)
			}
			i += end + 1
		case c == '{': // label matchers: name op "value", …
			i = skipSpace(i + 1)
			for i < len(expr) && expr[i] != '}' {
				j := i
				for j < len(expr) && isIdent(expr[j], j == i) {
					j++
				}
				if j == i {
					return nil, nil, fmt.Errorf("label name expected at %d", i)
				}
				label := expr[i:j]
				j = skipSpace(j)
				for j < len(expr) && strings.IndexByte("=!~", expr[j]) >= 0 {
					j++
				}
				j = skipSpace(j)
				if j >= len(expr) || strings.IndexByte("\"'`", expr[j]) < 0 {
					return nil, nil, fmt.Errorf("label value expected at %d", j)
				}
				end, err := skipString(j)
				if err != nil {
					return nil, nil, err
				}
				if label == "__name__" {
					metrics = append(metrics, strings.Trim(expr[j:end], "\"'`"))
				} else {
					labels = append(labels, label)
				}
				i = skipSpace(end)
				if i < len(expr) && expr[i] == ',' {
					i = skipSpace(i + 1)
				}
			}
			if i >= len(expr) {
				return nil, nil, errors.New("unclosed {")
			}
			i++
		case c >= '0' && c <= '9' || c == '.': // a number or a duration
			for i < len(expr) && (isIdent(expr[i], false) || expr[i] == '.') {
				i++
			}
		case isIdent(c, true):
			j := i
			for j < len(expr) && isIdent(expr[j], false) {
				j++
			}
			word, next := expr[i:j], skipSpace(j)
			i = j
			switch {
			case grouping[word]:
				if next < len(expr) && expr[next] == '(' {
					end := strings.IndexByte(expr[next:], ')')
					if end < 0 {
						return nil, nil, fmt.Errorf("unclosed %s (", word)
					}
					for l := range strings.SplitSeq(expr[next+1:next+end], ",") {
						if l = strings.TrimSpace(l); l != "" {
							labels = append(labels, l)
						}
					}
					i = next + end + 1
				}
			case keywords[strings.ToLower(word)]:
			case next < len(expr) && expr[next] == '(': // a function or an aggregation
			default:
				metrics = append(metrics, word)
			}
		default:
			i++
		}
	}
	return metrics, labels, nil
}

func TestPromQLRefs(t *testing.T) {
	for _, tc := range []struct {
		expr            string
		metrics, labels []string
	}{
		{`up`, []string{"up"}, nil},
		{`sum by (model, version) (rate(a_total{model=~"$model", x!="a}b"}[$__rate_interval])) / sum(rate(b_total[5m])) by (le)`,
			[]string{"a_total", "b_total"}, []string{"model", "version", "model", "x", "le"}},
		{"histogram_quantile(0.99, sum by (le) (rate(h_bucket{cached=\"false\"}[5m]))) > 0.5 and on (model) c == 1",
			[]string{"h_bucket", "c"}, []string{"le", "cached", "model"}},
		{`time() - max without (pod) (ts_seconds offset 1h) > bool 1e3 unless {__name__="d"} # comment name`,
			[]string{"ts_seconds", "d"}, []string{"pod"}},
		{`x * on (a) group_left (b) y`, []string{"x", "y"}, []string{"a", "b"}},
	} {
		m, l, err := promqlRefs(tc.expr)
		if err != nil || !slices.Equal(m, tc.metrics) || !slices.Equal(l, tc.labels) {
			t.Errorf("%s:\n metrics %q, labels %q, %v\n want %q, %q", tc.expr, m, l, err, tc.metrics, tc.labels)
		}
	}
	for _, bad := range []string{`a{x="y"`, `a{x=y}`, `rate(a[5m)`, `a{x="y}`} {
		if _, _, err := promqlRefs(bad); err == nil {
			t.Errorf("%s: no error", bad)
		}
	}
}

// startServer runs the server in-process on the demo models with a
// memory cache, and returns its URL and registry.
func startServer(t *testing.T) (string, *registry.Registry) {
	t.Helper()
	ctx := t.Context()
	eng, err := ort.New(ort.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eng.Close() })
	reg, err := registry.Open(ctx, registry.Config{Dir: t.TempDir(), Validator: registry.EngineValidator(eng), PollInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	if _, err := demo.Seed(ctx, reg); err != nil {
		t.Fatal(err)
	}
	store, err := cache.NewMemory(cache.MemoryConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	c, err := cache.New(store, cache.Config{})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Config{Registry: reg, Engine: eng, Cache: c, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(sctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	for deadline := time.Now().Add(30 * time.Second); !srv.Ready(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("server not ready after 30s")
		}
	}
	return "http://" + ln.Addr().String(), reg
}

func getMetrics(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("/metrics: %d %v", resp.StatusCode, err)
	}
	return string(b)
}

// readmeExprs returns the example queries of the README's promql blocks:
// one per paragraph, comments included.
func readmeExprs(t *testing.T) map[string]string {
	t.Helper()
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	blocks := strings.Split(string(b), "```promql\n")[1:]
	if len(blocks) == 0 {
		t.Fatal("README.md has no promql examples")
	}
	for bi, blk := range blocks {
		blk, _, _ = strings.Cut(blk, "```")
		for pi, e := range strings.Split(strings.TrimSpace(blk), "\n\n") {
			out[fmt.Sprintf("README block %d query %d", bi, pi)] = e
		}
	}
	return out
}

// TestPromQLNamesExportedMetrics: every metric the alerts, the dashboard
// and the README's examples name is one a server exports after serving a
// request with a canary plan on its model, and every label they name is
// one of those metrics' labels (or one Prometheus adds to a scraped
// target).
func TestPromQLNamesExportedMetrics(t *testing.T) {
	exprs := readmeExprs(t)
	for name, r := range alertRules(t, manifests(t)) {
		exprs["alert "+name] = str(t, r, "expr")
	}
	dashExprs, labelValues := dashboardExprs(t, dashboard(t))
	for k, e := range dashExprs {
		exprs["dashboard "+k] = e
	}
	lv := regexp.MustCompile(`^label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)$`)
	for _, q := range labelValues {
		sub := lv.FindStringSubmatch(q)
		if sub == nil {
			t.Errorf("dashboard variable query %q: want label_values(metric, label)", q)
			continue
		}
		exprs["dashboard variable "+q] = fmt.Sprintf("%s{%s!=\"\"}", sub[1], sub[2])
	}

	url, reg := startServer(t)
	ctx := t.Context()
	c := &api.Client{BaseURL: url}
	f := api.Features{}
	for i, name := range demo.Features {
		f[name] = api.Scalar(float64(i) / 10)
	}
	if _, err := c.Predict(ctx, demo.ModelName, &api.PredictRequest{RequestID: "monitoring", Features: f}); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.StartCanary(ctx, demo.ModelName, registry.CanaryPlan{Canary: "v2.0", Baseline: "v1.0", Interval: time.Hour}); err != nil {
		t.Fatal(err)
	}
	var text string
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if text = getMetrics(t, url); strings.Contains(text, "signalforge_canary_state{") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the server does not report the canary plan after 20s")
		}
	}
	have := scrapeMetrics(t, text)

	for key, e := range exprs {
		metrics, labels, err := promqlRefs(e)
		if err != nil {
			t.Errorf("%s: %v in %q", key, err, e)
			continue
		}
		if !slices.ContainsFunc(metrics, func(m string) bool { return strings.HasPrefix(m, "signalforge_") }) {
			t.Errorf("%s names no signalforge_ metric: %q", key, e)
		}
		known := map[string]bool{}
		for _, l := range targetLabels {
			known[l] = true
		}
		for _, m := range metrics {
			ls, ok := have[m]
			if !ok {
				t.Errorf("%s: the server exports no %s", key, m)
			}
			for l := range ls {
				known[l] = true
			}
		}
		for _, l := range labels {
			if !known[l] {
				t.Errorf("%s: label %q is on none of %v", key, l, metrics)
			}
		}
	}
}

// grafanaVars replaces the dashboard's variables with what Grafana would
// put there, for promtool.
var grafanaVars = strings.NewReplacer("$__rate_interval", "5m", "$model", ".*")

// TestPromtoolChecksRules runs promtool, where it is installed (Debian:
// apt-get install prometheus), on the PrometheusRule's groups and on the
// dashboard's and the README's expressions, and runs the alerts' unit tests in
// testdata/alerts_test.yaml.
func TestPromtoolChecksRules(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not installed (Debian: apt-get install prometheus)")
	}
	dir := t.TempDir()
	m := manifests(t)
	groups := get(t, m["PrometheusRule/signalforge"], "spec", "groups").([]any)
	exprs, _ := dashboardExprs(t, dashboard(t))
	var dash []any
	for _, k := range slices.Sorted(maps.Keys(exprs)) {
		dash = append(dash, obj{"record": fmt.Sprintf("dashboard:expr_%d", len(dash)), "expr": grafanaVars.Replace(exprs[k])})
	}
	write := func(name string, v any) string {
		b, err := yaml.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	rules := write("rules.yaml", obj{"groups": groups})
	dashRules := write("dashboard.yaml", obj{"groups": []any{obj{"name": "dashboard", "rules": dash}}})
	unit, err := os.ReadFile("testdata/alerts_test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	unitPath := filepath.Join(dir, "alerts_test.yaml")
	if err := os.WriteFile(unitPath, unit, 0o644); err != nil {
		t.Fatal(err)
	}
	var examples []any
	readme := readmeExprs(t)
	for _, k := range slices.Sorted(maps.Keys(readme)) {
		examples = append(examples, obj{"record": fmt.Sprintf("readme:expr_%d", len(examples)), "expr": readme[k]})
	}
	readmeRules := write("readme.yaml", obj{"groups": []any{obj{"name": "readme", "rules": examples}}})
	for _, args := range [][]string{{"check", "rules", rules, dashRules, readmeRules}, {"test", "rules", unitPath}} {
		out, err := exec.Command(promtool, args...).CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s %s: %v\n%s", args[0], args[1], err, out)
		}
	}
}
