package convert

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/big"
	"sort"
	"strings"

	"github.com/nlpodyssey/gopickle/types"
)

// ErrRefused is wrapped by the error returned when a pickle references a
// class or function outside the set this package knows how to rebuild as
// plain data. The error message names the class.
var ErrRefused = errors.New("convert: pickle references a class that is not allowed")

// ErrFormat is wrapped by errors about malformed or unsupported PyTorch files.
var ErrFormat = errors.New("convert: malformed PyTorch file")

// Supported torch.nn module classes. A whole-model pickle or TorchScript
// archive may reference these (and nothing else of torch.nn).
var moduleClasses = map[string]bool{
	"Sequential": true, "Linear": true, "Identity": true, "ReLU": true,
	"LeakyReLU": true, "GELU": true, "SiLU": true, "Tanh": true,
	"Sigmoid": true, "Softmax": true, "Dropout": true, "Flatten": true,
	"BatchNorm1d": true, "LayerNorm": true, "Conv1d": true, "LSTM": true,
	"GRU": true,
}

// moduleFiles maps the torch.nn.modules sub-module that defines each class;
// a pickle must reference the class where PyTorch defines it.
var moduleFiles = map[string]string{
	"Sequential": "container", "Linear": "linear", "Identity": "linear",
	"ReLU": "activation", "LeakyReLU": "activation", "GELU": "activation",
	"SiLU": "activation", "Tanh": "activation", "Sigmoid": "activation",
	"Softmax": "activation", "Dropout": "dropout", "Flatten": "flatten",
	"BatchNorm1d": "batchnorm", "LayerNorm": "normalization", "Conv1d": "conv",
	"LSTM": "rnn", "GRU": "rnn",
}

// SupportedModules lists the torch.nn classes the converter maps to ONNX, in
// a stable order, for error messages and documentation.
func SupportedModules() []string {
	out := make([]string, 0, len(moduleClasses))
	for k := range moduleClasses {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// storageDTypes maps the torch storage classes to element types.
var storageDTypes = map[string]DType{
	"FloatStorage": Float32, "DoubleStorage": Float64, "HalfStorage": Float16,
	"BFloat16Storage": BFloat16, "LongStorage": Int64, "IntStorage": Int32,
	"ShortStorage": Int16, "CharStorage": Int8, "ByteStorage": Uint8,
	"BoolStorage": Bool,
}

// pyClass is a module class found in a pickle. Instantiating it (NEWOBJ)
// makes an empty *Object; BUILD fills its attributes. No code runs.
type pyClass struct{ name string }

func (c *pyClass) PyNew(args ...interface{}) (interface{}, error) {
	return &Object{Class: c.name, Attrs: map[string]any{}, raw: map[string]interface{}{}}, nil
}

// Call is how protocol-0/1 pickles instantiate classes (REDUCE); treat it
// like __new__ with no arguments.
func (c *pyClass) Call(args ...interface{}) (interface{}, error) { return c.PyNew() }

// PySetState implements BUILD: the state is the instance __dict__, or a
// (dict, slots) pair.
func (o *Object) PySetState(state interface{}) error {
	if t, ok := state.(*types.Tuple); ok && t.Len() == 2 {
		state = t.Get(0)
	}
	switch d := state.(type) {
	case *types.Dict:
		for _, e := range *d {
			k, ok := e.Key.(string)
			if !ok {
				return fmt.Errorf("%w: %s state has a non-string key", ErrFormat, o.Class)
			}
			o.raw[k] = e.Value
		}
	case *types.OrderedDict:
		for el := d.List.Front(); el != nil; el = el.Next() {
			e := el.Value.(*types.OrderedDictEntry)
			k, ok := e.Key.(string)
			if !ok {
				return fmt.Errorf("%w: %s state has a non-string key", ErrFormat, o.Class)
			}
			o.raw[k] = e.Value
		}
	case nil:
	default:
		return fmt.Errorf("%w: %s state is a %T, not a dict", ErrFormat, o.Class, state)
	}
	return nil
}

// storageClass is torch.FloatStorage and friends: only ever an argument of
// a persistent id.
type storageClass struct{ dtype DType }

// storageRef is what a persistent id resolves to: a typed storage in the
// archive, read lazily when a tensor uses it.
type storageRef struct {
	dtype DType
	key   string
	numel int64
}

// funcRebuildTensor is torch._utils._rebuild_tensor_v2 (and _rebuild_tensor).
type funcRebuildTensor struct{ l *loader }

func (f funcRebuildTensor) Call(args ...interface{}) (interface{}, error) {
	if len(args) < 4 {
		return nil, fmt.Errorf("%w: _rebuild_tensor_v2 with %d arguments", ErrFormat, len(args))
	}
	st, ok := args[0].(*storageRef)
	if !ok {
		return nil, fmt.Errorf("%w: _rebuild_tensor_v2 storage is a %T", ErrFormat, args[0])
	}
	off, err := toInt(args[1])
	if err != nil {
		return nil, fmt.Errorf("%w: storage offset: %v", ErrFormat, err)
	}
	size, err := toInts(args[2])
	if err != nil {
		return nil, fmt.Errorf("%w: tensor size: %v", ErrFormat, err)
	}
	stride, err := toInts(args[3])
	if err != nil {
		return nil, fmt.Errorf("%w: tensor stride: %v", ErrFormat, err)
	}
	return f.l.materialize(st, off, size, stride)
}

// funcRebuildParameter is torch._utils._rebuild_parameter(data, requires_grad,
// backward_hooks): the parameter is its data.
type funcRebuildParameter struct{}

func (funcRebuildParameter) Call(args ...interface{}) (interface{}, error) {
	if len(args) < 1 {
		return nil, fmt.Errorf("%w: _rebuild_parameter without data", ErrFormat)
	}
	t, ok := args[0].(*Tensor)
	if !ok {
		return nil, fmt.Errorf("%w: _rebuild_parameter data is a %T", ErrFormat, args[0])
	}
	return t, nil
}

// setClass is __builtin__.set / builtins.set, called with one list.
type setClass struct{}

func (setClass) Call(args ...interface{}) (interface{}, error) {
	s := types.NewSet()
	if len(args) == 1 {
		if l, ok := args[0].(*types.List); ok {
			for _, v := range *l {
				if !hashable(v) {
					return nil, fmt.Errorf("%w: unhashable set element %T", ErrFormat, v)
				}
				s.Add(v)
			}
		}
	}
	return s, nil
}

// passThrough is one of TorchScript's type-tag helpers
// (torch.jit._pickle.restore_type_tag, build_intlist, …) that return their
// first argument as data.
type passThrough struct{ name string }

func (p passThrough) Call(args ...interface{}) (interface{}, error) {
	if len(args) == 0 {
		return nil, fmt.Errorf("%w: %s without arguments", ErrFormat, p.name)
	}
	return args[0], nil
}

// hashable reports whether v can be a Go map key (gopickle keys sets and
// ordered dicts by value; an unhashable key would panic).
func hashable(v interface{}) bool {
	switch v.(type) {
	case nil, bool, int, int64, float64, string, *big.Int, *types.Tuple, *Tensor, *Object:
		return true
	}
	return false
}

// findClass is the allow-list: everything a supported file may reference.
// Anything else is refused by name; nothing is ever imported or executed.
func (l *loader) findClass(module, name string) (interface{}, error) {
	switch module {
	case "torch._utils":
		switch name {
		case "_rebuild_tensor_v2", "_rebuild_tensor":
			return funcRebuildTensor{l}, nil
		case "_rebuild_parameter":
			return funcRebuildParameter{}, nil
		}
	case "torch":
		if dt, ok := storageDTypes[name]; ok {
			return &storageClass{dt}, nil
		}
	case "__builtin__", "builtins":
		if name == "set" {
			return setClass{}, nil
		}
	case "torch.jit._pickle":
		switch name {
		case "restore_type_tag", "build_intlist", "build_floatlist", "build_boollist",
			"build_tensorlist", "build_doublelist":
			return passThrough{name}, nil
		}
	}
	const torchNN = "torch.nn.modules."
	for _, prefix := range []string{torchNN, "__torch__." + torchNN} {
		if file, ok := moduleFiles[name]; ok && (module == prefix+file ||
			strings.HasPrefix(module, prefix+file+".___torch_mangle_") &&
				isDigits(strings.TrimPrefix(module, prefix+file+".___torch_mangle_"))) {
			return &pyClass{name: name}, nil
		}
	}
	full := module + "." + name
	for _, c := range l.opts.AllowClasses {
		if c == full {
			return &pyClass{name: full}, nil
		}
	}
	if checkAllowClass(full) != nil {
		// Never suggest allowing a function or a system class: the name
		// is what a hostile pickle would want reached.
		return nil, fmt.Errorf("%w: %s (loading never runs code; a pickle may reference only the supported modules %v "+
			"and classes of your own code)", ErrRefused, full, SupportedModules())
	}
	return nil, fmt.Errorf("%w: %s (loading never runs code; supported modules: %v; "+
		"if it is your own nn.Module saved with torch.save(model), allow it with --allow-class %s "+
		"(its state is read as data, never run) and give an architecture spec, or use --exporter torch)",
		ErrRefused, full, SupportedModules(), full)
}

// systemModules are top-level Python packages whose names are never the
// user's own model code: a class or function of one of them is not
// allowed (LoadOptions.Validate) nor suggested. It lists the standard
// library modules a pickle can reach to run commands, import, read or
// write files, open sockets or call arbitrary functions, and the
// scientific packages around PyTorch.
var systemModules = map[string]bool{
	"__builtin__": true, "builtins": true, "os": true, "posix": true, "nt": true, "posixpath": true,
	"ntpath": true, "sys": true, "subprocess": true, "shutil": true, "socket": true, "ssl": true,
	"http": true, "urllib": true, "urllib2": true, "importlib": true, "imp": true, "runpy": true,
	"pickle": true, "_pickle": true, "cPickle": true, "copyreg": true, "copy_reg": true, "marshal": true,
	"ctypes": true, "cffi": true, "code": true, "codeop": true, "pdb": true, "bdb": true, "io": true,
	"_io": true, "pty": true, "commands": true, "platform": true, "webbrowser": true,
	"multiprocessing": true, "threading": true, "_thread": true, "thread": true, "signal": true,
	"tempfile": true, "pathlib": true, "glob": true, "functools": true, "operator": true, "types": true,
	"inspect": true, "gc": true, "weakref": true, "asyncio": true, "concurrent": true, "ftplib": true,
	"smtplib": true, "telnetlib": true, "xmlrpc": true, "zipimport": true, "pkgutil": true, "site": true,
	"sysconfig": true, "distutils": true, "setuptools": true, "pip": true, "pydoc": true, "timeit": true,
	"trace": true, "profile": true, "cProfile": true, "zipfile": true, "tarfile": true, "shelve": true,
	"dbm": true, "sqlite3": true, "logging": true, "collections": true, "typing": true, "copy": true,
	"builtin": true, "exec": true, "eval": true, "numpy": true, "scipy": true, "pandas": true,
	"torch": true, "torchvision": true, "torchaudio": true, "onnx": true, "dill": true, "joblib": true,
	"_posixsubprocess": true, "_winapi": true, "msvcrt": true, "winreg": true, "select": true,
	"selectors": true, "mmap": true, "fcntl": true, "resource": true, "atexit": true, "abc": true,
	"contextlib": true, "itertools": true, "string": true, "re": true, "json": true, "yaml": true,
}

// checkAllowClass accepts "module.Class" naming a class of the user's own
// code: a dotted path of identifiers whose top-level package is not a
// system module (systemModules), ending in a class name that starts with
// an upper-case letter (functions such as os.system or builtins.eval are
// not classes).
func checkAllowClass(full string) error {
	parts := strings.Split(full, ".")
	refuse := func(why string) error {
		return fmt.Errorf("%w: --allow-class %s: %s; only classes of your own code (such as __main__.Forecaster) can be allowed",
			ErrRefused, full, why)
	}
	if len(parts) < 2 {
		return refuse("want module.Class")
	}
	for _, p := range parts {
		if !isIdentifier(p) {
			return refuse(fmt.Sprintf("%q is not a Python identifier", p))
		}
	}
	if systemModules[parts[0]] {
		return refuse(fmt.Sprintf("%s is a system or library module, not your own code", parts[0]))
	}
	if c := parts[len(parts)-1][0]; c < 'A' || c > 'Z' {
		return refuse(fmt.Sprintf("%s is not a class name (want one starting with an upper-case letter)", parts[len(parts)-1]))
	}
	return nil
}

func isIdentifier(s string) bool {
	for i, c := range s {
		switch {
		case c == '_', 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z':
		case '0' <= c && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return s != ""
}

// persistentLoad resolves ('storage', StorageClass, key, location, numel).
func (l *loader) persistentLoad(pid interface{}) (interface{}, error) {
	t, ok := pid.(*types.Tuple)
	if !ok || t.Len() < 5 {
		return nil, fmt.Errorf("%w: persistent id %T", ErrFormat, pid)
	}
	if s, _ := t.Get(0).(string); s != "storage" {
		return nil, fmt.Errorf("%w: persistent id kind %v", ErrFormat, t.Get(0))
	}
	sc, ok := t.Get(1).(*storageClass)
	if !ok {
		return nil, fmt.Errorf("%w: storage type %T", ErrFormat, t.Get(1))
	}
	key, ok := t.Get(2).(string)
	if !ok {
		return nil, fmt.Errorf("%w: storage key %T", ErrFormat, t.Get(2))
	}
	n, err := toInt(t.Get(4))
	if err != nil || n < 0 || n > math.MaxInt64/8 {
		return nil, fmt.Errorf("%w: storage size %v", ErrFormat, t.Get(4))
	}
	// Every storage named must be in the archive with at least its bytes,
	// used by a tensor or not: PyTorch reads each one it is given.
	f, ok := l.files[l.dataDir+key]
	if !ok {
		return nil, fmt.Errorf("%w: storage %q missing from the archive", ErrFormat, key)
	}
	if f.UncompressedSize64 < uint64(n)*uint64(sc.dtype.Size()) {
		return nil, fmt.Errorf("%w: storage %s has %d bytes, needs %d", ErrFormat, key, f.UncompressedSize64, n*int64(sc.dtype.Size()))
	}
	return &storageRef{dtype: sc.dtype, key: key, numel: n}, nil
}

func toInt(v interface{}) (int64, error) {
	switch x := v.(type) {
	case int:
		return int64(x), nil
	case int64:
		return x, nil
	case bool:
		if x {
			return 1, nil
		}
		return 0, nil
	case *big.Int:
		if x.IsInt64() {
			return x.Int64(), nil
		}
	}
	return 0, fmt.Errorf("not an int: %T", v)
}

func toInts(v interface{}) ([]int64, error) {
	var items []interface{}
	switch x := v.(type) {
	case *types.Tuple:
		items = *x
	case *types.List:
		items = *x
	default:
		return nil, fmt.Errorf("not a tuple: %T", v)
	}
	out := make([]int64, len(items))
	for i, it := range items {
		n, err := toInt(it)
		if err != nil {
			return nil, err
		}
		out[i] = n
	}
	return out, nil
}

// scanPickle walks the opcodes of a pickle without building anything. It
// rejects one whose length fields point past its end (gopickle allocates a
// buffer of the declared length before reading), and tracks what the
// unpickler would hold: the MARK nesting, the items on the stack (those
// put aside under MARKs included), the memo entries and the values
// created, refusing a pickle over opts' limits before gopickle (or
// PyTorch's unpickler, which the bridge runs on the same bytes) sees it.
// Every opcode creates at most one value, so with these limits the
// unpickled objects are bounded whatever the pickle's size.
func scanPickle(p []byte, opts *LoadOptions) error {
	i := 0
	need := func(n uint64) error {
		if n > uint64(len(p)-i) {
			return fmt.Errorf("%w: pickle truncated or length field too large at offset %d", ErrFormat, i)
		}
		return nil
	}
	line := func() error {
		for j := i; j < len(p); j++ {
			if p[j] == '\n' {
				i = j + 1
				return nil
			}
		}
		return fmt.Errorf("%w: unterminated line in pickle at offset %d", ErrFormat, i)
	}
	var (
		marks  []int64 // stack heights put aside by MARK
		stack  int64   // items above the last MARK
		below  int64   // items put aside under MARKs
		memo   int64
		values int64
	)
	limit := func(field string, value int64, what string) error {
		return &LimitError{Limit: field, Value: value, What: fmt.Sprintf("%s at offset %d", what, i-1)}
	}
	underflow := func() error {
		return fmt.Errorf("%w: pickle pops an empty stack at offset %d", ErrFormat, i-1)
	}
	// pop removes n items above the last MARK; popMark removes everything
	// above it and the MARK. push adds one item (a new value if fresh).
	pop := func(n int64) error {
		if stack < n {
			return underflow()
		}
		stack -= n
		return nil
	}
	popMark := func() error {
		if len(marks) == 0 {
			return fmt.Errorf("%w: pickle has no MARK to pop at offset %d", ErrFormat, i-1)
		}
		stack = marks[len(marks)-1]
		below -= stack
		marks = marks[:len(marks)-1]
		return nil
	}
	push := func(fresh bool) error {
		stack++
		if stack+below > opts.MaxPickleStack {
			return limit("MaxPickleStack", opts.MaxPickleStack, "stack items")
		}
		if fresh {
			if values++; values > opts.MaxPickleValues {
				return limit("MaxPickleValues", opts.MaxPickleValues, "values created")
			}
		}
		return nil
	}
	for i < len(p) {
		op := p[i]
		i++
		var n uint64
		// Operands.
		switch op {
		case 0x80, 'K', 'h', 'q', 0x82:
			n = 1
		case 'M', 0x83:
			n = 2
		case 'J', 'j', 'r', 0x84:
			n = 4
		case 'G', 0x95:
			n = 8
		case 'C', 0x8c, 'U', 0x8a:
			if err := need(1); err != nil {
				return err
			}
			n = uint64(p[i]) + 1
		case 'B', 'X', 'T', 0x8b:
			if err := need(4); err != nil {
				return err
			}
			v := binary.LittleEndian.Uint32(p[i:])
			if (op == 'T' || op == 0x8b) && v > math.MaxInt32 {
				return fmt.Errorf("%w: negative length in pickle at offset %d", ErrFormat, i)
			}
			n = uint64(v) + 4
		case 0x8e, 0x8d, 0x96:
			if err := need(8); err != nil {
				return err
			}
			v := binary.LittleEndian.Uint64(p[i:])
			if v > uint64(len(p)) {
				return fmt.Errorf("%w: length field too large in pickle at offset %d", ErrFormat, i)
			}
			n = v + 8
		case 'I', 'L', 'F', 'S', 'V', 'P', 'g', 'p':
			if err := line(); err != nil {
				return err
			}
		case 'c', 'i':
			if err := line(); err != nil {
				return err
			}
			if err := line(); err != nil {
				return err
			}
		case '(', '.', '0', '1', '2', 'N', 0x88, 0x89, 'R', ']', 'a', 'e', '}', 's', 'u', ')',
			't', 0x85, 0x86, 0x87, 'l', 'd', 'b', 0x81, 0x92, 0x93, 0x94, 'Q', 0x8f, 0x90,
			0x91, 0x97, 0x98, 'o':
		default:
			return fmt.Errorf("%w: unknown pickle opcode 0x%02x at offset %d", ErrFormat, op, i-1)
		}
		if n > 0 {
			if err := need(n); err != nil {
				return err
			}
			if op == 0x95 {
				if v := binary.LittleEndian.Uint64(p[i:]); v > uint64(len(p)) {
					return fmt.Errorf("%w: frame size too large in pickle at offset %d", ErrFormat, i)
				}
			}
			i += int(n)
		}
		// Stack effects, as pickletools documents them.
		var err error
		switch op {
		case '.':
			return nil
		case 0x80, 0x95:
		case '(':
			if int64(len(marks)) >= opts.MaxPickleDepth {
				return limit("MaxPickleDepth", opts.MaxPickleDepth, "MARK nesting")
			}
			marks = append(marks, stack)
			below += stack
			stack = 0
		case '0': // POP; on an empty stack gopickle pops the MARK
			if stack == 0 {
				err = popMark()
			} else {
				err = pop(1)
			}
		case '1', 'e', 'u', 0x90: // POP_MARK, APPENDS, SETITEMS, ADDITEMS
			err = popMark()
			if err == nil && op != '1' && stack < 1 {
				err = underflow()
			}
		case 't', 'l', 'd', 0x91, 'o', 'i': // to the MARK, one new value
			if err = popMark(); err == nil {
				err = push(true)
			}
		case '2', 'g', 'h', 'j': // DUP and memo gets: an existing value
			if op == '2' && stack < 1 {
				err = underflow()
			} else {
				err = push(false)
			}
		case 'p', 'q', 'r', 0x94: // memo puts
			if stack < 1 {
				err = underflow()
			} else if memo++; memo > opts.MaxPickleMemo {
				err = limit("MaxPickleMemo", opts.MaxPickleMemo, "memo entries")
			}
		case 'a', 'b': // APPEND, BUILD
			if stack < 2 {
				err = underflow()
			} else {
				err = pop(1)
			}
		case 's': // SETITEM
			if stack < 3 {
				err = underflow()
			} else {
				err = pop(2)
			}
		case 'Q', 0x85, 0x98: // one in, one new out
			if err = pop(1); err == nil {
				err = push(true)
			}
		case 'R', 0x81, 0x86, 0x93:
			if err = pop(2); err == nil {
				err = push(true)
			}
		case 0x87, 0x92:
			if err = pop(3); err == nil {
				err = push(true)
			}
		default: // every other opcode pushes one new value
			err = push(true)
		}
		if err != nil {
			return err
		}
	}
	return fmt.Errorf("%w: pickle has no STOP opcode", ErrFormat)
}
