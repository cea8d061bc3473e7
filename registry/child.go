package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/signalforge/signalforge/infer"
)

// DefaultChildMemory is ChildCheck's default memory budget: 4 GiB of
// address space for the model in the child, beyond the child's own
// overhead (ChildOverhead). A SignalForge model needs a few megabytes at
// batch 32.
const DefaultChildMemory int64 = 4 << 30

// ChildOverhead is the address space a child check needs for itself, on
// top of what the Go runtime had reserved when it started (VmSize in
// /proc/self/status, about 1.3 GiB of mostly untouched reservations): the
// ONNX Runtime library and environment (about 60 MiB), the stacks of the
// runtime's and ONNX Runtime's threads (8 MiB of address space each) and
// glibc's malloc arenas (the child runs with MALLOC_ARENA_MAX=2 and
// GOMAXPROCS=2 to keep these few). Measured with ONNX Runtime 1.30 for the
// demo MLP: the child's peak is 100 MiB above its start with 1 intra-op
// thread, 115 MiB with 4. So the child's RLIMIT_AS is its start + 256 MiB
// + the memory budget, and a model may use up to about 140 MiB more than
// its budget before it is refused.
const ChildOverhead int64 = 256 << 20

// ErrChildCheck is wrapped by the errors of a child check that could not
// be run at all (the command is missing, its answer cannot be read): not
// a verdict on the model.
var ErrChildCheck = errors.New("registry: admission check process failed")

// BudgetError is a model that exhausted the memory budget of a child
// check: the child could not allocate (or was killed for lack of memory)
// while loading or warming the model. It unwraps to
// infer.ErrWarmupMemory, so servers do not retry the artifact.
type BudgetError struct {
	// Budget is ChildCheck.MemoryBudget.
	Budget int64
	// Batch is the warm-up batch size the child was running, or 0 if it
	// was loading the model.
	Batch int
	// Detail is what the child reported (the engine's error or the end
	// of its stderr).
	Detail string
}

func (e *BudgetError) Error() string {
	at := "while loading it"
	if e.Batch > 0 {
		at = "while warming at batch " + strconv.Itoa(e.Batch)
	}
	return fmt.Sprintf("the model exhausted the admission memory budget of %s %s: %s", sizeString(e.Budget), at, e.Detail)
}

// Unwrap returns infer.ErrWarmupMemory.
func (e *BudgetError) Unwrap() error { return infer.ErrWarmupMemory }

// ChildCheck runs the engine part of admission in a child process under a
// hard memory limit, so that a model whose intermediate tensors need tens
// of gigabytes (small declared inputs and outputs, an Expand to
// [batch, 1e8] inside) exhausts the child, not the registering CLI or a
// server. The child is a signalforge binary's hidden `internal-admit`
// command (ServeChildCheck): it sets its own RLIMIT_AS, loads the model
// file in ONNX Runtime, warms it at the admission's batch sizes and prints
// the result as JSON lines on stdout.
//
// Cost: one process start, one ONNX Runtime environment and one load and
// warm-up per check (0.36 s median for the demo MLP on 2 busy CPUs).
type ChildCheck struct {
	// Command is the executable to run, with Args before the check's own
	// arguments: os.Executable() and {"internal-admit"} for the
	// signalforge binary. Required.
	Command string
	Args    []string
	// Env is added to the parent's environment for the child (e.g.
	// SIGNALFORGE_ORT_LIB, to load the same ONNX Runtime library).
	Env []string
	// MemoryBudget is the address space the model may take in the child:
	// its weights, the engine's arenas and every intermediate tensor of a
	// warm-up run. The child's RLIMIT_AS is its address space at start +
	// ChildOverhead + MemoryBudget. If zero, DefaultChildMemory.
	MemoryBudget int64
}

// NewChildValidator returns a Validator that admits a model as
// NewEngineValidator does — CheckAdmission first, then a load and warm-up
// at cfg.WarmupBatchSizes within cfg.Timeout from a file holding exactly
// the artifact's bytes alone in a fresh folder — but with the load and
// warm-up in a child process under cc's memory budget (ChildCheck.CheckFile).
// The registering process never loads the model.
func NewChildValidator(cc ChildCheck, cfg AdmissionConfig) Validator {
	cfg.setDefaults()
	return admitFromFile(cfg, func(ctx context.Context, path string) (ModelInfo, error) {
		info, err := cc.CheckFile(ctx, path, cfg)
		if err != nil && !errors.Is(err, ErrChildCheck) && ctx.Err() == nil {
			err = fmt.Errorf("%w: %w", ErrInvalidArtifact, err)
		}
		return info, err
	})
}

// childLine is one JSON line the child prints: progress (Stage "load" or
// "warm" with its Batch) and, last, the result (Stage "done").
type childLine struct {
	Stage  string `json:"stage"`
	Engine string `json:"engine,omitempty"` // Stage "load": the engine's name
	Batch  int    `json:"batch,omitempty"`
	// Result (Stage "done").
	OK     bool   `json:"ok,omitempty"`
	Error  string `json:"error,omitempty"`
	Memory bool   `json:"memory,omitempty"` // Error is a lack of memory
	Info   *struct {
		Inputs   []infer.IOInfo    `json:"inputs"`
		Outputs  []infer.IOInfo    `json:"outputs"`
		Metadata map[string]string `json:"metadata"`
	} `json:"info,omitempty"`
}

// maxChildOutput caps what is read of the child's stdout (its result
// carries the model's metadata) and stderr (only its end is reported).
const (
	maxChildOutput = 64 << 20
	maxChildStderr = 2 << 10
)

// CheckFile loads and warms the model file at path in a child process as
// cfg says (batch sizes, MaxWarmupBytes, Session threads; within
// cfg.Timeout, after which the child is killed) under cc.MemoryBudget, and
// returns the session's inputs, outputs and metadata. A model the engine
// refuses returns its error; one that exhausts the budget (the engine
// cannot allocate, or the child dies for lack of memory) a *BudgetError;
// one that crashes the child or overruns the timeout an error saying so.
// Errors that are no verdict on the model (the command cannot run, ctx is
// done) wrap ErrChildCheck or are ctx.Err().
func (cc ChildCheck) CheckFile(ctx context.Context, path string, cfg AdmissionConfig) (ModelInfo, error) {
	cfg.setDefaults()
	if cc.Command == "" {
		return ModelInfo{}, fmt.Errorf("%w: ChildCheck.Command is empty", ErrChildCheck)
	}
	budget := cc.MemoryBudget
	if budget <= 0 {
		budget = DefaultChildMemory
	}
	sizes := make([]string, len(cfg.WarmupBatchSizes))
	for i, b := range cfg.WarmupBatchSizes {
		sizes[i] = strconv.Itoa(b)
	}
	args := append(append([]string(nil), cc.Args...),
		"--memory-budget", strconv.FormatInt(budget, 10),
		"--batch-sizes", strings.Join(sizes, ","),
		"--max-warmup-bytes", strconv.FormatInt(cfg.MaxWarmupBytes, 10),
		"--intra-op-threads", strconv.Itoa(cfg.Session.IntraOpThreads),
		"--inter-op-threads", strconv.Itoa(cfg.Session.InterOpThreads),
		"--graph-optimization", strconv.Itoa(int(cfg.Session.GraphOptimization)),
		"--", path)
	tctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	cmd := exec.CommandContext(tctx, cc.Command, args...)
	// glibc reserves 64 MiB of address space per malloc arena and Go may
	// start a thread (8 MiB of stack) per CPU: two of each are plenty for
	// one load and warm-up, and keep ChildOverhead small and the same on
	// every machine.
	cmd.Env = append(append(os.Environ(), "MALLOC_ARENA_MAX=2", "GOMAXPROCS=2"), cc.Env...)
	cmd.SysProcAttr = childSysProcAttr()
	cmd.WaitDelay = 5 * time.Second
	var stdout limitedBuffer
	stdout.max = maxChildOutput
	stderr := &stderrBuffer{max: maxChildStderr}
	cmd.Stdout, cmd.Stderr = &stdout, stderr
	start := time.Now()
	// The child dies with the thread that started it (Pdeathsig): keep
	// this goroutine on that thread until the child has exited.
	runtime.LockOSThread()
	runErr := cmd.Run()
	runtime.UnlockOSThread()
	elapsed := time.Since(start)

	var last, done childLine
	gotDone, engine := false, "the engine"
	for _, line := range bytes.Split(stdout.buf.Bytes(), []byte("\n")) {
		var l childLine
		if len(bytes.TrimSpace(line)) == 0 || json.Unmarshal(line, &l) != nil {
			continue
		}
		if l.Engine != "" {
			engine = l.Engine
		}
		if l.Stage == "done" {
			done, gotDone = l, true
		} else {
			last = l
		}
	}
	switch {
	case ctx.Err() != nil:
		return ModelInfo{}, ctx.Err()
	case tctx.Err() != nil:
		return ModelInfo{}, fmt.Errorf("%s did not load and warm it (batch sizes %v) within %v (the admission check was stopped %s, after %v)", engine, cfg.WarmupBatchSizes, cfg.Timeout, last.where(), elapsed.Round(time.Millisecond))
	case gotDone && done.OK && runErr == nil:
		if done.Info == nil {
			return ModelInfo{}, fmt.Errorf("%w: %s answered without the model's description", ErrChildCheck, cc.Command)
		}
		return ModelInfo{Inputs: done.Info.Inputs, Outputs: done.Info.Outputs, Metadata: done.Info.Metadata}, nil
	case gotDone && done.Memory:
		return ModelInfo{}, &BudgetError{Budget: budget, Batch: done.Batch, Detail: done.Error}
	case gotDone && !done.OK:
		return ModelInfo{}, fmt.Errorf("%s cannot load and warm it (batch sizes %v): %s", engine, cfg.WarmupBatchSizes, done.Error)
	}
	var ee *exec.ExitError
	if !errors.As(runErr, &ee) {
		if runErr == nil {
			return ModelInfo{}, fmt.Errorf("%w: %s exited without a result", ErrChildCheck, cc.Command)
		}
		return ModelInfo{}, fmt.Errorf("%w: %w", ErrChildCheck, runErr)
	}
	if last.Stage == "" {
		// It died before it started the model: not the model's doing.
		return ModelInfo{}, fmt.Errorf("%w: %s: %v: %s", ErrChildCheck, cc.Command, runErr, stderr.summary())
	}
	if outOfMemory(stderr.all()) {
		return ModelInfo{}, &BudgetError{Budget: budget, Batch: last.Batch, Detail: fmt.Sprintf("the admission check process died (%v): %s", runErr, stderr.summary())}
	}
	return ModelInfo{}, fmt.Errorf("loading it crashed the admission check process %s (%v): %s", last.where(), runErr, stderr.summary())
}

func (l childLine) where() string {
	if l.Stage == "warm" {
		return "while warming at batch " + strconv.Itoa(l.Batch)
	}
	return "while loading it"
}

// outOfMemory tells, from the end of a dead child's stderr, that it died
// for lack of memory: the C++ runtime's std::bad_alloc, the Go runtime's
// fatal out of memory, a thread that could not be created.
func outOfMemory(stderr string) bool {
	s := strings.ToLower(stderr)
	for _, m := range []string{"bad_alloc", "out of memory", "cannot allocate memory", "failed to allocate", "pthread_create failed", "resource temporarily unavailable"} {
		if strings.Contains(s, m) {
			return true
		}
	}
	return false
}

// engineOutOfMemory tells that an engine error is an allocation failure.
func engineOutOfMemory(err error) bool {
	s := strings.ToLower(err.Error())
	return strings.Contains(s, "bad_alloc") || strings.Contains(s, "failed to allocate") || strings.Contains(s, "out of memory")
}

// limitedBuffer keeps the first max bytes written and drops the rest.
type limitedBuffer struct {
	buf bytes.Buffer
	max int
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if room := b.max - b.buf.Len(); room > 0 {
		b.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

// stderrBuffer keeps the first and the last max bytes written: a crash
// says what happened at the start (a Go panic or fatal error, a C++
// terminate) and may end with pages of stack traces.
type stderrBuffer struct {
	head, tail []byte
	max        int
}

func (b *stderrBuffer) Write(p []byte) (int, error) {
	n := len(p)
	if room := b.max - len(b.head); room > 0 {
		k := min(len(p), room)
		b.head = append(b.head, p[:k]...)
		p = p[k:]
	}
	b.tail = append(b.tail, p...)
	if len(b.tail) > 2*b.max {
		b.tail = append(b.tail[:0], b.tail[len(b.tail)-b.max:]...)
	}
	return n, nil
}

// all is everything kept, for classification.
func (b *stderrBuffer) all() string { return string(b.head) + string(b.tail) }

// summary is the first lines of what the child wrote.
func (b *stderrBuffer) summary() string {
	var lines []string
	for _, l := range strings.Split(string(b.head), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "goroutine ") && !strings.HasPrefix(l, "[signal ") {
			lines = append(lines, l)
		}
		if len(lines) == 2 {
			break
		}
	}
	return strings.Join(lines, " | ")
}

// ServeChildCheck is the child side of ChildCheck: the body of a
// process's hidden `internal-admit` command, given the arguments
// ChildCheck.CheckFile passes (after ChildCheck.Args). It must run in a
// process of its own, made for this check: it sets the process's RLIMIT_AS
// to the address space it has now + ChildOverhead + the memory budget,
// then opens the engine (newEngine), loads the model file, warms it at the
// given batch sizes, and prints JSON lines on stdout: progress before each
// step, then the result. It returns an error (after printing the result)
// when the model was not admitted, and the process should then exit with
// a non-zero status.
func ServeChildCheck(ctx context.Context, args []string, stdout io.Writer, newEngine func() (infer.Engine, error)) error {
	fs := flag.NewFlagSet("internal-admit", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	budget := fs.Int64("memory-budget", DefaultChildMemory, "")
	sizes := fs.String("batch-sizes", "1,32", "")
	var opts infer.Options
	fs.Int64Var(&opts.MaxWarmupBytes, "max-warmup-bytes", 0, "")
	fs.IntVar(&opts.IntraOpThreads, "intra-op-threads", 0, "")
	fs.IntVar(&opts.InterOpThreads, "inter-op-threads", 0, "")
	graphOpt := fs.Int("graph-optimization", 0, "")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("internal-admit: %w", err)
	}
	if fs.NArg() != 1 || *budget <= 0 {
		return fmt.Errorf("internal-admit: want --memory-budget BYTES (positive) and one model file, got %q", args)
	}
	opts.GraphOptimization = infer.GraphOptLevel(*graphOpt)
	var batches []int
	for _, s := range strings.Split(*sizes, ",") {
		b, err := strconv.Atoi(s)
		if err != nil || b <= 0 {
			return fmt.Errorf("internal-admit: --batch-sizes %q: want positive integers", *sizes)
		}
		batches = append(batches, b)
	}
	enc := json.NewEncoder(stdout)
	emit := func(l childLine) { _ = enc.Encode(l) }
	fail := func(batch int, err error) error {
		emit(childLine{Stage: "done", Batch: batch, Error: err.Error(), Memory: engineOutOfMemory(err) || errors.Is(err, infer.ErrWarmupMemory)})
		return err
	}
	if err := limitAddressSpace(*budget); err != nil {
		return fmt.Errorf("internal-admit: %w", err)
	}
	eng, err := newEngine()
	if err != nil {
		return fmt.Errorf("internal-admit: %w", err)
	}
	defer eng.Close()
	emit(childLine{Stage: "load", Engine: eng.Name()})
	sess, err := eng.LoadFile(ctx, fs.Arg(0), opts)
	if err != nil {
		return fail(0, err)
	}
	defer sess.Close()
	if err := infer.CheckWarmupMemory(sess.Inputs(), sess.Outputs(), batches, opts.MaxWarmupBytes); err != nil {
		return fail(0, err)
	}
	for _, b := range batches {
		emit(childLine{Stage: "warm", Batch: b})
		if err := infer.Warmup(ctx, sess, []int{b}, opts.MaxWarmupBytes); err != nil {
			return fail(b, err)
		}
	}
	done := childLine{Stage: "done", OK: true}
	done.Info = &struct {
		Inputs   []infer.IOInfo    `json:"inputs"`
		Outputs  []infer.IOInfo    `json:"outputs"`
		Metadata map[string]string `json:"metadata"`
	}{sess.Inputs(), sess.Outputs(), sess.Metadata()}
	emit(done)
	return nil
}

// sizeString formats n as "4294967296 bytes (4.0 GiB)".
func sizeString(n int64) string {
	v, u := float64(n), ""
	for _, unit := range []string{"KiB", "MiB", "GiB", "TiB"} {
		if v < 1024 {
			break
		}
		v /= 1024
		u = unit
	}
	if u == "" {
		return strconv.FormatInt(n, 10) + " bytes"
	}
	return fmt.Sprintf("%d bytes (%.1f %s)", n, v, u)
}
