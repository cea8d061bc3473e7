package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/signalforge/signalforge/api"
	"github.com/signalforge/signalforge/registry"
)

// `signalforge judge` and `signalforge stats` read a running server's
// admin API: the fleet's counters are not registry state, they are what
// the replicas publish while they serve.

// adminEnvToken names the environment variable with the admin token, the
// same one `signalforge serve` reads.
const adminEnvToken = "SIGNALFORGE_ADMIN_TOKEN"

// adminCmd holds the flags of the commands that call a server's admin API.
type adminCmd struct {
	server  string
	token   string
	format  string
	timeout time.Duration
}

func (ac *adminCmd) flags(e *env, fs *flag.FlagSet) {
	server := e.getenv(predictEnvServer)
	if server == "" {
		server = predictDefaultServer
	}
	fs.StringVar(&ac.server, "server", server, "server base `URL` ($"+predictEnvServer+" sets the default)")
	fs.StringVar(&ac.token, "token", "", "the server's admin `TOKEN` (default $"+adminEnvToken+")")
	fs.StringVar(&ac.format, "format", "table", "`FORMAT`: table, or json for the server's answer")
	fs.DurationVar(&ac.timeout, "timeout", 10*time.Second, "give up on the server after this `DURATION`")
	// Set after the flag, so that -h never prints the token.
	ac.token = e.getenv(adminEnvToken)
}

// check validates the shared flags after parsing.
func (ac *adminCmd) check() error {
	if ac.format != "table" && ac.format != "json" {
		return fmt.Errorf("--format %q: want table or json", ac.format)
	}
	if ac.timeout <= 0 {
		return fmt.Errorf("--timeout %v must be positive", ac.timeout)
	}
	if u, err := url.Parse(ac.server); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("--server %q: want a URL like %s", ac.server, predictDefaultServer)
	}
	return nil
}

// get GETs path into out, explaining failures in the CLI's terms.
func (ac *adminCmd) get(ctx context.Context, path string, out any) error {
	ctx, cancel := context.WithTimeout(ctx, ac.timeout)
	defer cancel()
	c := &api.Client{BaseURL: ac.server, Token: ac.token, HTTP: &http.Client{}}
	err := c.Do(ctx, http.MethodGet, path, nil, out)
	var ae *api.Error
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ae) && ae.Status == http.StatusUnauthorized:
		return fmt.Errorf("%w (pass the server's admin token: --token or $%s)", err, adminEnvToken)
	case errors.As(err, &ae) && ae.Status == http.StatusForbidden:
		return fmt.Errorf("%w (the server's admin API is closed: start it with --admin-token)", err)
	case errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil:
		return fmt.Errorf("no answer from %s within %v (--timeout)", ac.server, ac.timeout)
	}
	pc := &predictCmd{server: ac.server, timeout: ac.timeout}
	return pc.explain(ctx, err)
}

// printRaw writes a JSON answer indented.
func printRaw(w io.Writer, raw json.RawMessage) error {
	var buf bytes.Buffer
	if json.Indent(&buf, raw, "", "  ") != nil {
		buf.Reset()
		buf.Write(raw)
	}
	buf.WriteByte('\n')
	_, err := w.Write(buf.Bytes())
	return err
}

// adminUsage sets fs's usage text: synopsis, what it does, examples.
func adminUsage(e *env, fs *flag.FlagSet, name, synopsis, about string, examples ...string) {
	fs.Usage = func() {
		fmt.Fprintf(e.stderr, "Usage: signalforge %s %s\n\n%s\n\nExamples:\n", name, synopsis, about)
		for _, ex := range examples {
			fmt.Fprintf(e.stderr, "  %s\n", ex)
		}
		fmt.Fprintln(e.stderr, "\nFlags:")
		fs.PrintDefaults()
	}
}

// judgeAnswer is the answer of GET /v1/admin/models/{name}/judge.
type judgeAnswer struct {
	Model string `json:"model"`
	registry.CanaryVerdict
}

func cmdJudge(ctx context.Context, e *env, args []string) error {
	ac := &adminCmd{}
	fs := flag.NewFlagSet("signalforge judge", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	adminUsage(e, fs, "judge", "--canary VERSION --baseline VERSION [flags] MODEL",
		"Judge a canary against its baseline now, on the counters the whole fleet published, through a\n"+
			"running server's admin API; nothing changes. While a canary plan on these two versions is active,\n"+
			"the evidence is what the fleet served since the plan's current step began, judged with the plan's\n"+
			"settings; otherwise everything the replicas counted since they started, with the judge's defaults.\n"+
			"The --min-samples, --max-p99-ratio, --max-error-rate-pct and --margin-pct flags override the settings.",
		"signalforge judge forecast_mlp --canary v2.0 --baseline v1.0",
		"signalforge judge forecast_mlp --canary v2.0 --baseline v1.0 --server http://10.0.0.5:8080 --format json",
		"SIGNALFORGE_ADMIN_TOKEN=TOKEN signalforge judge forecast_mlp --canary v2.0 --baseline v1.0 --min-samples 50")
	ac.flags(e, fs)
	canaryV := fs.String("canary", "", "the `VERSION` being tried (required)")
	baseline := fs.String("baseline", "", "the `VERSION` it is judged against (required)")
	minSamples := fs.Int("min-samples", -1, "the fewest requests each side needs before a verdict (default: the plan's, else the judge's)")
	maxP99 := fs.Float64("max-p99-ratio", 0, "the largest canary/baseline p99 ratio tolerated; negative disables the latency check (default: the plan's, else the judge's)")
	maxErr := fs.Float64("max-error-rate-pct", -1, "also call for a rollback when the canary's own error rate exceeds this percentage (default: the plan's, else off)")
	margin := fs.Float64("margin-pct", -1, "the largest error-rate excess over the baseline, in percentage points, still called healthy (default: the plan's, else 0.5)")
	pos, err := modelsParse(fs, args, 1, 1)
	if err != nil {
		return err
	}
	name := pos[0]
	if *canaryV == "" || *baseline == "" {
		fmt.Fprintln(e.stderr, "signalforge judge: --canary and --baseline are required")
		fs.Usage()
		return errUsage
	}
	for _, n := range []string{name, *canaryV, *baseline} {
		if err := registry.ValidateName(n); err != nil {
			return err
		}
	}
	if err := ac.check(); err != nil {
		return err
	}
	q := url.Values{"canary": {*canaryV}, "baseline": {*baseline}}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if set["min-samples"] {
		if *minSamples < 0 {
			return fmt.Errorf("--min-samples %d must not be negative", *minSamples)
		}
		q.Set("min_samples", strconv.Itoa(*minSamples))
	}
	if set["max-p99-ratio"] {
		q.Set("max_p99_ratio", strconv.FormatFloat(*maxP99, 'g', -1, 64))
	}
	if set["max-error-rate-pct"] {
		if *maxErr < 0 || *maxErr > 100 {
			return fmt.Errorf("--max-error-rate-pct %v must be within [0, 100]", *maxErr)
		}
		q.Set("max_error_rate_pct", strconv.FormatFloat(*maxErr, 'g', -1, 64))
	}
	if set["margin-pct"] {
		if !(*margin >= 0 && *margin < 100) {
			return fmt.Errorf("--margin-pct %v must be within [0, 100)", *margin)
		}
		q.Set("margin_pct", strconv.FormatFloat(*margin, 'g', -1, 64))
	}
	var raw json.RawMessage
	if err := ac.get(ctx, "/v1/admin/models/"+url.PathEscape(name)+"/judge?"+q.Encode(), &raw); err != nil {
		return err
	}
	if ac.format == "json" {
		return printRaw(e.stdout, raw)
	}
	var v judgeAnswer
	if err := json.Unmarshal(raw, &v); err != nil {
		return fmt.Errorf("the server's answer is not a verdict: %w", err)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, v) }
	row("model", name)
	row("decision", v.Decision)
	row("reason", v.Reason)
	row("canary", *canaryV+": "+sideText(v.Canary.Requests, v.Canary.Errors, v.Canary.NonFinite, v.Canary.P99Ms))
	row("baseline", *baseline+": "+sideText(v.Baseline.Requests, v.Baseline.Errors, v.Baseline.NonFinite, v.Baseline.P99Ms))
	stat := fmt.Sprintf("p-value %.4g, error-rate excess upper bound %.3g%%", v.PValue, v.UpperBound*100)
	if v.P99Ratio > 0 {
		stat += fmt.Sprintf(", p99 ratio %.3g", v.P99Ratio)
	}
	row("statistics", stat)
	row("judged at", v.At.Local().Format(time.RFC3339))
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(v.Replicas) == 0 {
		fmt.Fprintln(e.stdout, "\nno replica published counters for this model")
		return nil
	}
	fmt.Fprintln(e.stdout)
	tw = tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "REPLICA\tCANARY REQ\tERR\tP99 MS\tBASELINE REQ\tERR\tP99 MS\tAGE")
	for _, r := range v.Replicas {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%d\t%d\t%s\t%s\n", r.Replica, r.Canary.Requests, r.Canary.Errors, msText(r.Canary.P99Ms),
			r.Baseline.Requests, r.Baseline.Errors, msText(r.Baseline.P99Ms), r.Age.Round(time.Millisecond))
	}
	return tw.Flush()
}

// sideText describes one side of a verdict.
func sideText(req, errs, nonFinite int64, p99 float64) string {
	s := fmt.Sprintf("%d requests, %d errors", req, errs)
	if req > 0 {
		s += fmt.Sprintf(" (%.2f%%)", 100*float64(errs)/float64(req))
	}
	if nonFinite > 0 {
		s += fmt.Sprintf(", %d non-finite", nonFinite)
	}
	if req > 0 {
		s += ", p99 " + msText(p99) + " ms"
	}
	return s
}

func msText(v float64) string { return strconv.FormatFloat(v, 'f', 2, 64) }

// fleetCounters are one version's counters in GET …/fleet.
type fleetCounters struct {
	Requests     int64   `json:"requests"`
	Errors       int64   `json:"errors"`
	NonFinite    int64   `json:"non_finite"`
	ErrorRatePct float64 `json:"error_rate_pct"`
	AvgMS        float64 `json:"avg_ms"`
	P50MS        float64 `json:"p50_ms"`
	P99MS        float64 `json:"p99_ms"`
}

// fleetAnswer is the answer of GET /v1/admin/models/{name}/fleet.
type fleetAnswer struct {
	Model       string                   `json:"model"`
	At          time.Time                `json:"at"`
	ThisReplica string                   `json:"this_replica"`
	Versions    map[string]fleetCounters `json:"versions"`
	Replicas    []struct {
		Replica  string                   `json:"replica"`
		Started  time.Time                `json:"started"`
		At       time.Time                `json:"at"`
		AgeMS    float64                  `json:"age_ms"`
		Versions map[string]fleetCounters `json:"versions"`
	} `json:"replicas"`
	Stale []string `json:"stale"`
}

func cmdStats(ctx context.Context, e *env, args []string) error {
	ac := &adminCmd{}
	fs := flag.NewFlagSet("signalforge stats", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	adminUsage(e, fs, "stats", "[flags] [MODEL]",
		"Show the fleet's request counters per version and per replica — requests, errors, error rate,\n"+
			"p50 and p99 latency — as the replicas published them, through a running server's admin API.\n"+
			"Counters are cumulative since each replica started; without MODEL, every model the server lists.\n"+
			"With --format json, a JSON array with the server's answer for each model.",
		"signalforge stats",
		"signalforge stats forecast_mlp --server http://10.0.0.5:8080 --token TOKEN",
		"signalforge stats forecast_mlp --format json")
	ac.flags(e, fs)
	pos, err := modelsParse(fs, args, 0, 1)
	if err != nil {
		return err
	}
	if err := ac.check(); err != nil {
		return err
	}
	var names []string
	if len(pos) == 1 {
		if err := registry.ValidateName(pos[0]); err != nil {
			return err
		}
		names = pos
	} else {
		var list struct {
			Models []struct {
				Name string `json:"name"`
			} `json:"models"`
		}
		if err := ac.get(ctx, "/v1/models", &list); err != nil {
			return err
		}
		for _, m := range list.Models {
			names = append(names, m.Name)
		}
	}
	raws := make([]json.RawMessage, 0, len(names))
	fleets := make([]fleetAnswer, 0, len(names))
	for _, name := range names {
		var raw json.RawMessage
		if err := ac.get(ctx, "/v1/admin/models/"+url.PathEscape(name)+"/fleet", &raw); err != nil {
			return err
		}
		var f fleetAnswer
		if err := json.Unmarshal(raw, &f); err != nil {
			return fmt.Errorf("the server's answer for %s is not the fleet's counters: %w", name, err)
		}
		raws, fleets = append(raws, raw), append(fleets, f)
	}
	if ac.format == "json" {
		b, err := json.Marshal(raws)
		if err != nil {
			return err
		}
		return printRaw(e.stdout, b)
	}
	if len(fleets) == 0 {
		fmt.Fprintln(e.stdout, "the server lists no models")
		return nil
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "MODEL\tVERSION\tREPLICA\tREQUESTS\tERRORS\tERROR %\tP50 MS\tP99 MS")
	line := func(model, version, replica string, c fleetCounters) {
		rate, p50, p99 := "-", "-", "-" // nothing to measure without requests
		if c.Requests > 0 {
			rate, p50, p99 = strconv.FormatFloat(c.ErrorRatePct, 'f', 2, 64), msText(c.P50MS), msText(c.P99MS)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\n", model, version, replica, c.Requests, c.Errors, rate, p50, p99)
	}
	var notes []string
	for _, f := range fleets {
		if len(f.Replicas) == 0 {
			notes = append(notes, f.Model+": no replica published counters yet")
		}
		for _, v := range slices.Sorted(maps.Keys(f.Versions)) {
			line(f.Model, v, fmt.Sprintf("fleet (%d)", len(f.Replicas)), f.Versions[v])
			for _, r := range f.Replicas {
				if c, ok := r.Versions[v]; ok {
					line("", "", r.Replica, c)
				}
			}
		}
		if len(f.Stale) > 0 {
			notes = append(notes, fmt.Sprintf("%s: left out, their counters are stale: %v", f.Model, f.Stale))
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, n := range notes {
		fmt.Fprintln(e.stdout, n)
	}
	return nil
}
