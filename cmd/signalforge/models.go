package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"os/user"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/signalforge/signalforge/infer"
	"github.com/signalforge/signalforge/infer/ort"
	"github.com/signalforge/signalforge/onnx"
	"github.com/signalforge/signalforge/registry"
)

// modelsEnvRegistry names the environment variable holding the default
// registry folder (the same default `signalforge serve` uses).
const modelsEnvRegistry = "SIGNALFORGE_REGISTRY"

// modelsDefaultDir is the registry folder when neither --registry nor
// $SIGNALFORGE_REGISTRY is set, as the seed's ModelRegistry("models/").
const modelsDefaultDir = "models"

type modelsSub struct {
	name, synopsis, summary string
	// mutates marks the commands that change the registry: only they take
	// -actor, the name recorded in the audit log.
	mutates bool
	run     func(ctx context.Context, e *env, mc *modelsCmd, args []string) error
}

func modelsSubs() []modelsSub {
	return []modelsSub{
		{"register", "[flags] MODEL.onnx", "validate an ONNX model (it must load in ONNX Runtime) and register it as a new version", true, modelsRegister},
		{"list", "[flags] [NAME]", "list models and versions with status, traffic, metrics and tags", false, modelsList},
		{"show", "[flags] NAME:VERSION", "show one version: features, inputs, metrics, lineage, artifact", false, modelsShow},
		{"promote", "--traffic PCT [flags] NAME:VERSION", "move a staging version to production with a share of traffic", true, modelsPromote},
		{"traffic", "[flags] NAME:VERSION PCT | NAME VERSION=PCT,... | --rollback [--to SEQ] [--allow-empty] NAME", "set one version's traffic, a whole split, or roll back to the previous split", true, modelsTraffic},
		{"archive", "[--force [--allow-empty]] [flags] NAME:VERSION", "archive a version (one still serving needs --force)", true, modelsArchive},
		{"history", "[flags] NAME", "the audit log of a model: who changed what, and which version served what share when", false, modelsHistory},
		{"repair", "[--dry-run] [--force] [flags]", "rebuild state.json from the audit log and the artifacts (after it was lost, damaged or hand-edited)", false, modelsRepair},
		{"migrate", "--from SRC --to DST [--dry-run] [--json]", "copy a whole registry (versions, artifacts, audit log) into an empty one, verified", false, modelsMigrate},
	}
}

// modelsCmd holds the flags every subcommand shares.
type modelsCmd struct {
	dir     string
	json    bool
	actor   string
	mutates bool // the subcommand changes the registry (and took -actor)
	noCheck bool // register only
}

// commonFlags adds the flags of every subcommand. The usage strings name
// where a default comes from; the flag package prints the value itself,
// once.
func (mc *modelsCmd) commonFlags(e *env, fs *flag.FlagSet) {
	fs.StringVar(&mc.dir, "registry", modelsDefaultRegistry(e), "registry: a folder, or a postgres://user@host:5432/db URL (or $"+modelsEnvRegistry+")")
	fs.BoolVar(&mc.json, "json", false, "print JSON instead of a table")
}

// modelsDefaultRegistry is the registry folder when no --registry is
// given: $SIGNALFORGE_REGISTRY, else modelsDefaultDir.
func modelsDefaultRegistry(e *env) string {
	if dir := e.getenv(modelsEnvRegistry); dir != "" {
		return dir
	}
	return modelsDefaultDir
}

// actorFlag adds -actor, for the subcommands that change the registry.
func (mc *modelsCmd) actorFlag(e *env, fs *flag.FlagSet) {
	fs.StringVar(&mc.actor, "actor", modelsDefaultActor(e), "who makes the change, recorded in the audit log; if not given, $USER or the OS account")
}

// modelsUnknownActor is recorded when no actor can be found, so the audit
// log never has a blank "who".
const modelsUnknownActor = "unknown"

// modelsDefaultActor returns $USER, else the OS account's user name (os/user
// works without $USER, e.g. under cron or in a container), else "unknown".
func modelsDefaultActor(e *env) string {
	if u := strings.TrimSpace(e.getenv("USER")); u != "" {
		return u
	}
	if u, err := user.Current(); err == nil && strings.TrimSpace(u.Username) != "" {
		return u.Username
	}
	return modelsUnknownActor
}

// open opens the registry (through openStoreURL). Only register creates
// one (v != nil or --skip-engine-check); the other commands refuse a folder
// that holds no registry rather than leave an empty one behind. The
// returned func closes it.
func (mc *modelsCmd) open(ctx context.Context, v registry.Validator) (*registry.Registry, context.Context, func(), error) {
	r, closeFn, err := openRegistry(ctx, mc.dir, v != nil || mc.noCheck, registry.Config{Validator: v})
	if nr := (*noRegistryError)(nil); errors.As(err, &nr) {
		return nil, ctx, nil, fmt.Errorf("%w (register a model first, or pass --registry or set $%s)", err, modelsEnvRegistry)
	}
	if err != nil {
		return nil, ctx, nil, modelsRepairHint(err, mc.dir)
	}
	if mc.mutates {
		actor := strings.TrimSpace(mc.actor)
		if actor == "" {
			actor = modelsUnknownActor
		}
		ctx = registry.WithActor(ctx, actor)
	}
	return r, ctx, closeFn, nil
}

// modelsRepairHint adds the exact repair command for dir to an error saying
// the registry's state is missing or invalid; other errors are returned as
// they are.
func modelsRepairHint(err error, dir string) error {
	if errors.Is(err, registry.ErrStateMissing) || errors.Is(err, registry.ErrInvalidState) {
		return fmt.Errorf("%w\n(run: signalforge models repair --registry %s --dry-run, then without --dry-run)", err, dir)
	}
	return err
}

// with opens the registry as open does (with no Validator: it never
// creates one), runs fn on it with the actor's ctx and closes it.
func (mc *modelsCmd) with(ctx context.Context, fn func(ctx context.Context, r *registry.Registry) error) error {
	r, ctx, closeFn, err := mc.open(ctx, nil)
	if err != nil {
		return err
	}
	defer closeFn()
	return modelsRepairHint(fn(ctx, r), mc.dir)
}

// print prints v: as indented JSON with --json, else as the lines table
// writes, its tab-separated columns aligned.
func (mc *modelsCmd) print(e *env, v any, table func(tw io.Writer)) error {
	if mc.json {
		return modelsJSON(e.stdout, v)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	table(tw)
	return tw.Flush()
}

// cmdModels dispatches `signalforge models <sub>`.
func cmdModels(ctx context.Context, e *env, args []string) error {
	subs := modelsSubs()
	usage := func(w io.Writer) {
		fmt.Fprintln(w, "Usage: signalforge models <command> [flags]\n\nCommands:")
		for _, s := range subs {
			fmt.Fprintf(w, "  %-9s %s\n", s.name, s.summary)
		}
		fmt.Fprintln(w, "\nRun `signalforge models <command> -h` for a command's flags. Traffic is in percent (5 = 5%).")
	}
	return dispatch(e, "models", args, usage, func(name string) bool {
		return slices.ContainsFunc(subs, func(s modelsSub) bool { return s.name == name })
	}, func(name string, rest []string) error {
		i := slices.IndexFunc(subs, func(s modelsSub) bool { return s.name == name })
		return subs[i].run(ctx, e, &modelsCmd{}, rest)
	})
}

// dispatch runs `signalforge CMD SUB …` for a command made of
// subcommands: no argument prints usage to stderr and is a usage error,
// -h/--help/help prints it to stdout, a name for which known reports false is a
// usage error naming it; otherwise run gets the subcommand's name and the
// arguments after it.
func dispatch(e *env, cmd string, args []string, usage func(io.Writer), known func(name string) bool, run func(name string, rest []string) error) error {
	if len(args) == 0 {
		usage(e.stderr)
		return errUsage
	}
	if args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(e.stdout)
		return nil
	}
	if !known(args[0]) {
		fmt.Fprintf(e.stderr, "signalforge %s: unknown command %q\n\n", cmd, args[0])
		usage(e.stderr)
		return errUsage
	}
	return run(args[0], args[1:])
}

// modelsParse parses flags that may come before, between or after the
// positional arguments ("promote m:v2 --traffic 5" works) and checks the
// number of positional arguments.
func modelsParse(fs *flag.FlagSet, args []string, minPos, maxPos int) ([]string, error) {
	var pos []string
	for {
		if err := parseFlags(fs, args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
	if len(pos) < minPos || len(pos) > maxPos {
		fmt.Fprintf(fs.Output(), "%s: wrong number of arguments\n", fs.Name())
		fs.Usage()
		return nil, errUsage
	}
	return pos, nil
}

// modelsParseRef parses flags and the one positional argument, a
// NAME:VERSION.
func modelsParseRef(fs *flag.FlagSet, args []string) (registry.Ref, error) {
	pos, err := modelsParse(fs, args, 1, 1)
	if err != nil {
		return registry.Ref{}, err
	}
	return registry.ParseRef(pos[0])
}

func modelsFlagSet(e *env, mc *modelsCmd, sub string) *flag.FlagSet {
	for _, s := range modelsSubs() {
		if s.name == sub {
			fs := newFlagSet(e, "models "+sub, s.synopsis)
			mc.commonFlags(e, fs)
			if s.mutates {
				mc.mutates = true
				mc.actorFlag(e, fs)
			}
			return fs
		}
	}
	panic("unknown models subcommand " + sub)
}

// kvStrings is a repeatable key=value flag.
type kvStrings map[string]string

func (m kvStrings) String() string { return fmt.Sprint(map[string]string(m)) }
func (m kvStrings) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("want key=value, have %q", s)
	}
	m[k] = v
	return nil
}

// kvFloats is a repeatable key=number flag.
type kvFloats map[string]float64

func (m kvFloats) String() string { return fmt.Sprint(map[string]float64(m)) }
func (m kvFloats) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("want key=number, have %q", s)
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil {
		return fmt.Errorf("%q: %v", s, err)
	}
	m[k] = f
	return nil
}

func modelsRegister(ctx context.Context, e *env, mc *modelsCmd, args []string) error {
	fs := modelsFlagSet(e, mc, "register")
	var req registry.RegisterRequest
	metrics, tags := kvFloats{}, kvStrings{}
	conv, quant, bench := kvStrings{}, kvStrings{}, kvFloats{}
	var features, status string
	fs.StringVar(&req.Name, "name", "", "model name (required)")
	fs.StringVar(&req.Version, "version", "", "version; if empty, one above the highest vN or vN.x registered (v1, v2, …; v4 after v3.0)")
	fs.StringVar(&features, "features", "", "comma-separated input feature names, in order; if empty, the model's signalforge.features metadata")
	fs.Var(metrics, "metric", "an evaluation metric, key=number (repeatable)")
	fs.Var(tags, "tag", "a tag, key=value (repeatable)")
	fs.StringVar(&req.Description, "description", "", "free text")
	fs.StringVar(&status, "status", "staging", "initial status: staging or production")
	fs.Float64Var(&req.Traffic, "traffic", 0, "traffic percentage when --status production")
	fs.StringVar(&req.Lineage.Parent, "parent", "", "lineage: the version this one derives from")
	fs.StringVar(&req.Lineage.SourceCheckpoint, "source", "", "lineage: the training checkpoint (its sha256 is computed if the file exists)")
	fs.StringVar(&req.Lineage.SourceSHA256, "source-sha256", "", "lineage: the checkpoint's sha256")
	fs.Var(conv, "conversion", "lineage: a conversion parameter, key=value (repeatable)")
	fs.Var(quant, "quantization", "lineage: a quantization parameter, key=value (repeatable)")
	fs.StringVar(&req.Lineage.CalibrationSHA256, "calibration-sha256", "", "lineage: sha256 of the calibration set")
	fs.Var(bench, "bench", "lineage: a benchmark result, key=number (repeatable)")
	fs.BoolVar(&mc.noCheck, "skip-engine-check", false, "check the file without ONNX Runtime (it parses as ONNX, is self-contained, and its declared tensors fit --max-warmup-bytes); do not load and warm it")
	var adm registry.AdmissionConfig
	maxBatch := fs.Int("max-batch", 32, "the largest batch the servers run (serve --max-batch): the model is loaded and warmed at batch 1 and this before it is admitted")
	fs.Int64Var(&adm.MaxWarmupBytes, "max-warmup-bytes", infer.DefaultMaxWarmupBytes, "memory the input and output tensors of one warm-up run may need at the largest batch (the servers' session.max_warmup_bytes)")
	admMemory := fs.Int64("max-admission-memory", registry.DefaultChildMemory, "memory the model may take while it is loaded and warmed, in a child process that is killed beyond it (the servers' session.max_admission_memory)")
	pos, err := modelsParse(fs, args, 1, 1)
	if err != nil {
		return err
	}
	if req.Name == "" {
		fmt.Fprintln(e.stderr, "signalforge models register: --name is required")
		fs.Usage()
		return errUsage
	}
	// Refuse bad names before paying for the engine.
	if err := registry.ValidateName(req.Name); err != nil {
		return fmt.Errorf("model name: %w", err)
	}
	if req.Version != "" {
		if err := registry.ValidateName(req.Version); err != nil {
			return fmt.Errorf("version: %w", err)
		}
	}
	req.ONNXPath = pos[0]
	req.Status = registry.Status(status)
	if features != "" {
		for _, f := range strings.Split(features, ",") {
			req.Features = append(req.Features, strings.TrimSpace(f))
		}
	}
	req.Metrics, req.Tags = metrics, tags
	req.Lineage.Conversion, req.Lineage.Quantization, req.Lineage.Benchmarks = conv, quant, bench
	if src := req.Lineage.SourceCheckpoint; src != "" && req.Lineage.SourceSHA256 == "" {
		if sum, err := modelsFileSHA256(src); err == nil {
			req.Lineage.SourceSHA256 = sum
		} else if !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	if *maxBatch < 1 || adm.MaxWarmupBytes < 1 || *admMemory < 1 {
		return fmt.Errorf("--max-batch %d, --max-warmup-bytes %d and --max-admission-memory %d must be positive", *maxBatch, adm.MaxWarmupBytes, *admMemory)
	}
	adm.WarmupBatchSizes = []int{1, *maxBatch}
	// Without the engine, the static part of admission still runs.
	v := registry.Validator(registry.ValidatorFunc(func(_ context.Context, data []byte) (registry.ModelInfo, error) {
		return registry.CheckAdmission(data, adm)
	}))
	if !mc.noCheck {
		val, err := modelsEngineValidator(e, adm, *admMemory)
		if err != nil {
			return err
		}
		v = val
	}
	r, ctx, closeFn, err := mc.open(ctx, v)
	if err != nil {
		return err
	}
	defer closeFn()
	ver, err := r.Register(ctx, req)
	if err != nil {
		return err
	}
	if mc.json {
		return modelsJSON(e.stdout, ver)
	}
	fmt.Fprintf(e.stdout, "registered %s (%s", ver.Ref(), ver.Status)
	if ver.Status == registry.StatusProduction {
		fmt.Fprintf(e.stdout, ", %s%% of traffic", registry.FormatPercent(ver.Traffic))
	}
	fmt.Fprintf(e.stdout, ")\nfeatures: %s\nartifact: %s\n", strings.Join(ver.Features, ", "), ver.Artifact.Path)
	return nil
}

func modelsFileSHA256(path string) (string, error) {
	// Regular files only: a FIFO or /dev/zero would block or never end.
	f, _, err := onnx.OpenFileLimited(path, 0)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func modelsList(ctx context.Context, e *env, mc *modelsCmd, args []string) error {
	fs := modelsFlagSet(e, mc, "list")
	prod := fs.Bool("production", false, "only production versions")
	all := fs.Bool("all", false, "include archived versions")
	tag := fs.String("tag", "", "only versions with this tag: key or key=value")
	pos, err := modelsParse(fs, args, 0, 1)
	if err != nil {
		return err
	}
	var vs []registry.Version
	err = mc.with(ctx, func(ctx context.Context, r *registry.Registry) (err error) {
		if len(pos) == 1 {
			vs, err = r.Versions(ctx, pos[0])
			return err
		}
		ms, err := r.Models(ctx)
		for _, m := range ms {
			vs = append(vs, m.Versions...)
		}
		return err
	})
	if err != nil {
		return err
	}
	tk, tv, _ := strings.Cut(*tag, "=")
	vs = slices.DeleteFunc(vs, func(v registry.Version) bool {
		switch {
		case *prod && v.Status != registry.StatusProduction:
			return true
		case !*all && !*prod && *tag == "" && len(pos) == 0 && v.Status == registry.StatusArchived:
			return true
		case *tag != "":
			got, ok := v.Tags[tk]
			return !ok || tv != "" && got != tv
		}
		return false
	})
	if vs == nil {
		vs = []registry.Version{}
	}
	if len(vs) == 0 && !mc.json {
		fmt.Fprintf(e.stdout, "no versions in %s\n", mc.dir)
		return nil
	}
	return mc.print(e, vs, func(tw io.Writer) {
		fmt.Fprintln(tw, "MODEL\tVERSION\tSTATUS\tTRAFFIC\tFEATURES\tMETRICS\tTAGS\tCREATED")
		for _, v := range vs {
			traffic := "-"
			if v.Status == registry.StatusProduction {
				traffic = registry.FormatPercent(v.Traffic) + "%"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", v.Name, v.Version, v.Status, traffic,
				modelsClip(strings.Join(v.Features, ","), 32), modelsFloats(v.Metrics), modelsStrings(v.Tags), v.CreatedAt.Local().Format("2006-01-02 15:04"))
		}
	})
}

func modelsClip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-1] + "…"
}

func modelsFloats(m map[string]float64) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, k+"="+strconv.FormatFloat(m[k], 'g', 6, 64))
	}
	return modelsDash(strings.Join(parts, " "))
}

func modelsStrings(m map[string]string) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, k+"="+m[k])
	}
	return modelsDash(strings.Join(parts, " "))
}

func modelsDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func modelsJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func modelsShow(ctx context.Context, e *env, mc *modelsCmd, args []string) error {
	fs := modelsFlagSet(e, mc, "show")
	ref, err := modelsParseRef(fs, args)
	if err != nil {
		return err
	}
	return mc.with(ctx, func(ctx context.Context, r *registry.Registry) error {
		v, err := r.Get(ctx, ref)
		if err != nil {
			return err
		}
		return mc.print(e, v, func(tw io.Writer) { modelsShowTable(tw, v) })
	})
}

// modelsShowTable writes one version as "key:  value" lines, leaving out
// empty values.
func modelsShowTable(tw io.Writer, v registry.Version) {
	row := func(k, v string) {
		if v != "" {
			fmt.Fprintf(tw, "%s:\t%s\n", k, v)
		}
	}
	row("model", v.Ref().String())
	row("status", string(v.Status))
	if v.Status == registry.StatusProduction {
		row("traffic", registry.FormatPercent(v.Traffic)+"%")
	}
	row("features", strings.Join(v.Features, ", "))
	for _, in := range v.Inputs {
		row("input", fmt.Sprintf("%s %s %v", in.Name, in.DType, in.Shape))
	}
	row("metrics", modelsFloats(v.Metrics))
	row("tags", modelsStrings(v.Tags))
	row("description", v.Description)
	row("created", v.CreatedAt.Local().Format(time.RFC3339)+modelsBy(v.CreatedBy))
	row("updated", v.UpdatedAt.Local().Format(time.RFC3339))
	row("artifact", v.Artifact.Path)
	row("sha256", v.Artifact.SHA256)
	row("size", strconv.FormatInt(v.Artifact.Size, 10)+" bytes")
	l := v.Lineage
	row("parent", l.Parent)
	row("source", l.SourceCheckpoint)
	row("source sha256", l.SourceSHA256)
	if len(l.Conversion) > 0 {
		row("conversion", modelsStrings(l.Conversion))
	}
	if len(l.Quantization) > 0 {
		row("quantization", modelsStrings(l.Quantization))
	}
	row("calibration sha256", l.CalibrationSHA256)
	if len(l.Benchmarks) > 0 {
		row("benchmarks", modelsFloats(l.Benchmarks))
	}
}

func modelsBy(actor string) string {
	if actor == "" {
		return ""
	}
	return " by " + actor
}

// modelsPrintSplit prints the outcome of a traffic change, the model's
// split s, or returns err if the change failed.
func modelsPrintSplit(e *env, mc *modelsCmd, what, name string, s registry.Split, err error) error {
	if err != nil {
		return err
	}
	if mc.json {
		return modelsJSON(e.stdout, map[string]any{"model": name, "split": s})
	}
	fmt.Fprintf(e.stdout, "%s\n%s traffic: %s\n", what, name, s)
	return nil
}

func modelsPromote(ctx context.Context, e *env, mc *modelsCmd, args []string) error {
	fs := modelsFlagSet(e, mc, "promote")
	pct := fs.Float64("traffic", -1, "percentage of the model's traffic, 0–100 (required; the first serving version gets 100)")
	pos, err := modelsParse(fs, args, 1, 1)
	if err != nil {
		return err
	}
	if *pct < 0 {
		fmt.Fprintln(e.stderr, "signalforge models promote: --traffic is required")
		fs.Usage()
		return errUsage
	}
	ref, err := registry.ParseRef(pos[0])
	if err != nil {
		return err
	}
	return mc.with(ctx, func(ctx context.Context, r *registry.Registry) error {
		s, err := r.Promote(ctx, ref, *pct)
		return modelsPrintSplit(e, mc, "promoted "+ref.String()+" to production", ref.Name, s, err)
	})
}

func modelsTraffic(ctx context.Context, e *env, mc *modelsCmd, args []string) error {
	fs := modelsFlagSet(e, mc, "traffic")
	rollback := fs.Bool("rollback", false, "go back to the split before the model's last traffic change")
	to := fs.Uint64("to", 0, "with --rollback: restore the split right after this audit-log event (see history)")
	allowEmpty := fs.Bool("allow-empty", false, "with --rollback: allow restoring a split in which no version serves, taking the model offline")
	pos, err := modelsParse(fs, args, 1, 2)
	if err != nil {
		return err
	}
	if *rollback {
		if len(pos) != 1 {
			fmt.Fprintln(e.stderr, "signalforge models traffic: --rollback takes just the model name")
			return errUsage
		}
		return mc.with(ctx, func(ctx context.Context, r *registry.Registry) error {
			s, err := r.Rollback(ctx, pos[0], *to, modelsChangeOptions(*allowEmpty)...)
			return modelsPrintSplit(e, mc, "rolled back", pos[0], s, modelsOfflineHint(err, pos[0]))
		})
	}
	if *allowEmpty || *to != 0 {
		fmt.Fprintln(e.stderr, "signalforge models traffic: --to and --allow-empty go with --rollback")
		return errUsage
	}
	if len(pos) != 2 {
		fs.Usage()
		return errUsage
	}
	return mc.with(ctx, func(ctx context.Context, r *registry.Registry) error {
		if strings.Contains(pos[0], ":") { // NAME:VERSION PCT
			ref, err := registry.ParseRef(pos[0])
			if err != nil {
				return err
			}
			pct, err := strconv.ParseFloat(strings.TrimSuffix(pos[1], "%"), 64)
			if err != nil {
				return fmt.Errorf("traffic %q is not a percentage", pos[1])
			}
			s, err := r.SetTraffic(ctx, ref, pct)
			return modelsPrintSplit(e, mc, "set "+ref.String()+" to "+registry.FormatPercent(pct)+"%", ref.Name, s, err)
		}
		split := registry.Split{} // NAME v1=50,v2=50
		for _, part := range strings.Split(pos[1], ",") {
			k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
			pct, err := strconv.ParseFloat(strings.TrimSuffix(v, "%"), 64)
			if !ok || err != nil {
				return fmt.Errorf("split %q: want VERSION=PCT,…", pos[1])
			}
			split[k] = pct
		}
		s, err := r.SetSplit(ctx, pos[0], split)
		return modelsPrintSplit(e, mc, "split set", pos[0], s, err)
	})
}

func modelsArchive(ctx context.Context, e *env, mc *modelsCmd, args []string) error {
	fs := modelsFlagSet(e, mc, "archive")
	force := fs.Bool("force", false, "archive even if it serves traffic; its share is rescaled onto the other production versions")
	allowEmpty := fs.Bool("allow-empty", false, "with --force: allow archiving the only version that serves, taking the model offline")
	ref, err := modelsParseRef(fs, args)
	if err != nil {
		return err
	}
	return mc.with(ctx, func(ctx context.Context, r *registry.Registry) error {
		s, err := r.Archive(ctx, ref, *force, modelsChangeOptions(*allowEmpty)...)
		return modelsPrintSplit(e, mc, "archived "+ref.String(), ref.Name, s, modelsOfflineHint(err, ref.Name))
	})
}

// modelsChangeOptions are the registry options of --allow-empty.
func modelsChangeOptions(allowEmpty bool) []registry.ChangeOption {
	if allowEmpty {
		return []registry.ChangeOption{registry.AllowEmpty()}
	}
	return nil
}

// modelsOfflineHint adds the CLI's way out to a refusal to take a model
// offline; other errors, and nil, are returned as they are.
func modelsOfflineHint(err error, name string) error {
	if errors.Is(err, registry.ErrNoServing) {
		return fmt.Errorf("%w (pass --allow-empty to take %s offline anyway)", err, name)
	}
	return err
}

func modelsHistory(ctx context.Context, e *env, mc *modelsCmd, args []string) error {
	fs := modelsFlagSet(e, mc, "history")
	pos, err := modelsParse(fs, args, 1, 1)
	if err != nil {
		return err
	}
	return mc.with(ctx, func(ctx context.Context, r *registry.Registry) error {
		h, err := r.History(ctx, pos[0])
		if err != nil {
			return err
		}
		return mc.print(e, h, func(tw io.Writer) {
			fmt.Fprintln(tw, "SEQ\tTIME\tACTOR\tACTION\tVERSION\tTRAFFIC AFTER\tDETAIL")
			for _, ev := range h {
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", ev.Seq, ev.Time.Local().Format("2006-01-02 15:04:05"),
					modelsActor(ev.Actor), ev.Action, modelsDash(ev.Version), ev.SplitAfter, modelsDash(ev.Detail))
			}
		})
	})
}

// modelsActor shows an event's actor; events written without one (by an
// older CLI, or a library caller that set none) show as "unknown".
func modelsActor(a string) string {
	if a == "" {
		return modelsUnknownActor
	}
	return a
}

// modelsEngineValidator returns a Validator that admits a model as adm
// says, loading and warming it in ONNX Runtime in a child process of this
// executable (internal-admit) limited to memory bytes beyond its own
// needs, so a model that would exhaust memory takes down the child, not
// this command. The library is found here first (ort.FindLibrary, reading
// the environment through e), for an early, clear error, and the child
// loads that same file.
func modelsEngineValidator(e *env, adm registry.AdmissionConfig, memory int64) (registry.Validator, error) {
	cc, err := childCheck(e, ort.Config{}, memory)
	if err != nil {
		return nil, fmt.Errorf("%w (or pass --skip-engine-check to register without loading the model in ONNX Runtime)", err)
	}
	return registry.NewChildValidator(cc, adm), nil
}

func modelsRepair(ctx context.Context, e *env, mc *modelsCmd, args []string) error {
	fs := modelsFlagSet(e, mc, "repair")
	var opts registry.RepairOptions
	fs.BoolVar(&opts.DryRun, "dry-run", false, "report what would be rebuilt; write nothing")
	fs.BoolVar(&opts.Force, "force", false, "replace a state.json that is valid but differs from the audit log's replay")
	if _, err := modelsParse(fs, args, 0, 0); err != nil {
		return err
	}
	rep, err := registry.Repair(ctx, mc.dir, opts)
	if err != nil {
		return err
	}
	if mc.json {
		if err := modelsJSON(e.stdout, rep); err != nil {
			return err
		}
	} else {
		modelsRepairReport(e.stdout, rep)
	}
	switch {
	case rep.Differs && !rep.Wrote && !opts.DryRun:
		return fmt.Errorf("state.json in %s is valid but differs from the audit log's replay; it was left alone (compare with --dry-run --json, then pass --force to replace it)", rep.Dir)
	case len(rep.Problems) > 0:
		return fmt.Errorf("%s: what could not be rebuilt is listed above", modelsCount(len(rep.Problems), "problem"))
	}
	return nil
}

// modelsRepairReport prints what Repair rebuilt (models, versions, splits),
// what it could not, and what it wrote.
func modelsRepairReport(w io.Writer, rep *registry.RepairReport) {
	fmt.Fprintf(w, "registry %s: state.json %s\n", rep.Dir, rep.OldState)
	fmt.Fprintf(w, "replayed %s of the audit log: %s, %s (artifacts verified by sha256)\n",
		modelsCount(rep.Events, "event"), modelsCount(len(rep.Models), "model"), modelsCount(rep.Versions(), "version"))
	if len(rep.Models) > 0 {
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  MODEL\tVERSION\tSTATUS\tTRAFFIC\tSHA256")
		for _, m := range rep.Models {
			for _, v := range m.Versions {
				traffic := "-"
				if v.Status == registry.StatusProduction {
					traffic = registry.FormatPercent(v.Traffic) + "%"
				}
				fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", m.Name, v.Version, v.Status, traffic, modelsClip(v.Artifact.SHA256, 13))
			}
		}
		tw.Flush()
		fmt.Fprintln(w, "splits:")
		for _, m := range rep.Models {
			fmt.Fprintf(w, "  %s: %s\n", m.Name, m.Split())
		}
	}
	if len(rep.Notes) > 0 {
		fmt.Fprintln(w, "rebuilt from the old state.json:")
		for _, p := range rep.Notes {
			fmt.Fprintf(w, "  %s\n", p)
		}
	}
	if len(rep.Problems) > 0 {
		fmt.Fprintln(w, "could not rebuild:")
		for _, p := range rep.Problems {
			fmt.Fprintf(w, "  %s\n", p)
		}
	}
	if rep.Tail > 0 {
		fmt.Fprintf(w, "left out the last %d bytes of the audit log: an uncommitted write\n", rep.Tail)
	}
	if n := len(rep.Unreferenced); n > 0 {
		fmt.Fprintf(w, "%s stored belong to no rebuilt version (left in place)\n", modelsCount(n, "artifact"))
	}
	switch {
	case rep.Unchanged:
		fmt.Fprintln(w, "state.json already matches the audit log; nothing written")
	case rep.Wrote:
		if rep.KeptAs != "" {
			fmt.Fprintf(w, "kept the old state.json as %s\n", rep.KeptAs)
		}
		fmt.Fprintln(w, "wrote state.json")
	case rep.Differs:
		fmt.Fprintln(w, "state.json is valid but differs from the replay; nothing written")
	default:
		fmt.Fprintln(w, "dry run: nothing written")
	}
}

// modelsCount writes "1 model", "2 models".
func modelsCount(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return strconv.Itoa(n) + " " + noun + "s"
}
