package main

import (
	"context"
	"flag"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/signalforge/signalforge/infer/ort"
	"github.com/signalforge/signalforge/registry"
)

// registerFlags are --register and --registry, shared by convert and
// quantize.
type registerFlags struct {
	target string // NAME[:VERSION]
	dir    string
	name   string // parsed from target
	ver    string // "" for the next vN
}

func addRegisterFlags(e *env, fs *flag.FlagSet) *registerFlags {
	rf := &registerFlags{}
	fs.StringVar(&rf.target, "register", "", "after success, register the output in the registry as NAME or NAME:VERSION (default version: the next vN), with its lineage")
	fs.StringVar(&rf.dir, "registry", modelsDefaultRegistry(e), "registry for --register: a folder or a postgres:// URL (default $"+modelsEnvRegistry+", else "+modelsDefaultDir+")")
	return rf
}

// parse validates --register before any work is done.
func (rf *registerFlags) parse() error {
	if rf.target == "" {
		return nil
	}
	rf.name, rf.ver, _ = strings.Cut(rf.target, ":")
	if err := registry.ValidateName(rf.name); err != nil {
		return fmt.Errorf("--register %s: model name: %w", rf.target, err)
	}
	if strings.Contains(rf.target, ":") {
		if err := registry.ValidateName(rf.ver); err != nil {
			return fmt.Errorf("--register %s: version: %w", rf.target, err)
		}
	}
	return nil
}

// register adds the ONNX bytes to the registry as a staging version,
// admitted like `signalforge models register` with the servers' default
// settings: loaded and warmed in ONNX Runtime in a child process under the
// default memory budget (registry.DefaultChildMemory), so a model that
// would exhaust memory cannot take this command down. It prints the new
// version's id.
func (rf *registerFlags) register(ctx context.Context, e *env, data []byte, lineage registry.Lineage, description string) (registry.Version, error) {
	cc, err := childCheck(e, ort.Config{}, 0)
	if err != nil {
		return registry.Version{}, fmt.Errorf("the model was written, but it cannot be checked for registration: %w", err)
	}
	r, closeFn, err := openRegistry(ctx, rf.dir, true, registry.Config{Validator: registry.NewChildValidator(cc, registry.AdmissionConfig{})})
	if err != nil {
		return registry.Version{}, err
	}
	defer closeFn()
	if actor := e.getenv("USER"); actor != "" {
		ctx = registry.WithActor(ctx, actor)
	}
	v, err := r.Register(ctx, registry.RegisterRequest{
		Name: rf.name, Version: rf.ver, ONNX: data, Description: description, Lineage: lineage,
	})
	if err != nil {
		return registry.Version{}, fmt.Errorf("the model was written, but registering it in %s failed: %w", rf.dir, err)
	}
	fmt.Fprintf(e.stdout, "registered %s (%s) in %s\n", v.Ref(), v.Status, rf.dir)
	return v, nil
}

// parseModelArgs parses the flags and the one positional argument, the
// input file, of a command that writes a model derived from it (convert,
// quantize), and checks them before any work: -o (*out) defaults to the
// input with its extension replaced by ext and may not be the input
// itself, and --register must name a valid NAME[:VERSION]. It returns the
// input path.
func parseModelArgs(fs *flag.FlagSet, args []string, out *string, ext string, reg *registerFlags) (string, error) {
	if err := parseFlags(fs, args); err != nil {
		return "", err
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return "", errUsage
	}
	in := fs.Arg(0)
	if *out == "" {
		*out = strings.TrimSuffix(in, filepath.Ext(in)) + ext
	}
	if err := checkOutput(in, *out); err != nil {
		return "", err
	}
	if err := reg.parse(); err != nil {
		return "", err
	}
	return in, nil
}
