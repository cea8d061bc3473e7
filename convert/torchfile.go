package convert

import (
	"archive/zip"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/big"
	"runtime"
	"sort"
	"strings"
	"unicode/utf8"

	"github.com/nlpodyssey/gopickle/pickle"
	"github.com/nlpodyssey/gopickle/types"

	"github.com/signalforge/signalforge/onnx"
)

// DType is the element type of a tensor read from a PyTorch file.
type DType uint8

// Element types of PyTorch storages.
const (
	Float32 DType = iota + 1
	Float64
	Float16
	BFloat16
	Int64
	Int32
	Int16
	Int8
	Uint8
	Bool
)

var dtypeNames = map[DType]string{
	Float32: "float32", Float64: "float64", Float16: "float16", BFloat16: "bfloat16",
	Int64: "int64", Int32: "int32", Int16: "int16", Int8: "int8", Uint8: "uint8", Bool: "bool",
}

func (d DType) String() string {
	if s, ok := dtypeNames[d]; ok {
		return s
	}
	return fmt.Sprintf("dtype(%d)", uint8(d))
}

// Size is the byte size of one element.
func (d DType) Size() int {
	switch d {
	case Float64, Int64:
		return 8
	case Float32, Int32:
		return 4
	case Float16, BFloat16, Int16:
		return 2
	case Int8, Uint8, Bool:
		return 1
	}
	return 0
}

// Tensor is a tensor read from a PyTorch file, materialised contiguous
// (row-major) whatever its stride and storage offset were in the file.
type Tensor struct {
	DType DType
	Shape []int64
	// Data is the little-endian row-major element bytes.
	Data []byte
}

// NumElements is the product of the shape (1 for a scalar).
func (t *Tensor) NumElements() int64 {
	n := int64(1)
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// Float32s returns the elements converted to float32 (exact for float32,
// float16, bfloat16 and small integers).
func (t *Tensor) Float32s() []float32 {
	n := int(t.NumElements())
	out := make([]float32, n)
	b := t.Data
	for i := range out {
		switch t.DType {
		case Float32:
			out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
		case Float64:
			out[i] = float32(math.Float64frombits(binary.LittleEndian.Uint64(b[8*i:])))
		case Float16:
			out[i] = halfToFloat(binary.LittleEndian.Uint16(b[2*i:]))
		case BFloat16:
			out[i] = math.Float32frombits(uint32(binary.LittleEndian.Uint16(b[2*i:])) << 16)
		case Int64:
			out[i] = float32(int64(binary.LittleEndian.Uint64(b[8*i:])))
		case Int32:
			out[i] = float32(int32(binary.LittleEndian.Uint32(b[4*i:])))
		case Int16:
			out[i] = float32(int16(binary.LittleEndian.Uint16(b[2*i:])))
		case Int8:
			out[i] = float32(int8(b[i]))
		case Uint8, Bool:
			out[i] = float32(b[i])
		}
	}
	return out
}

func halfToFloat(h uint16) float32 {
	sign := uint32(h>>15) << 31
	exp := uint32(h>>10) & 0x1f
	frac := uint32(h) & 0x3ff
	switch {
	case exp == 0 && frac == 0:
		return math.Float32frombits(sign)
	case exp == 0: // subnormal
		f := float32(frac) / 1024 / 16384
		if sign != 0 {
			f = -f
		}
		return f
	case exp == 0x1f:
		return math.Float32frombits(sign | 0xff<<23 | frac<<13)
	}
	return math.Float32frombits(sign | (exp+112)<<23 | frac<<13)
}

// Object is an instance of a supported torch.nn class, rebuilt as data.
// Attrs holds its __dict__ converted to plain Go values: nil, bool, int64,
// float64, string, []any (lists and tuples), map[string]any (dicts with
// string keys, ordered keys lost), *Tensor and *Object.
type Object struct {
	// Class is the class name without its module for torch.nn classes
	// ("Linear"), with it for LoadOptions.AllowClasses ("__main__.Forecaster").
	Class string
	Attrs map[string]any
	raw   map[string]interface{}
	seen  bool
}

// Format is the kind of PyTorch file.
type Format int

// The file formats Load recognises.
const (
	// FormatStateDict is torch.save(model.state_dict()) (or a checkpoint
	// dict holding one under "state_dict" / "model_state_dict").
	FormatStateDict Format = iota + 1
	// FormatModel is torch.save(model): a pickled module tree.
	FormatModel
	// FormatTorchScript is torch.jit.save / ScriptModule.save: parameters
	// and the module class tree. Hyper-parameters live in TorchScript
	// code, which is never run, so converting one needs a Spec.
	FormatTorchScript
)

func (f Format) String() string {
	switch f {
	case FormatStateDict:
		return "state dict"
	case FormatModel:
		return "whole-model pickle"
	case FormatTorchScript:
		return "TorchScript archive"
	}
	return "unknown"
}

// Checkpoint is the content of a PyTorch file.
type Checkpoint struct {
	Format Format
	// Names lists the state-dict keys in file order; Params maps them to
	// tensors. For a module tree they are derived the way
	// Module.state_dict() names them ("0.weight", "rnn.weight_ih_l0").
	Names  []string
	Params map[string]*Tensor
	// Root is the module tree of a whole-model pickle or TorchScript
	// archive, nil for a state dict.
	Root *Object
	// Constants are the tensors of a TorchScript archive's constants.pkl.
	Constants []*Tensor
}

// LoadOptions bound what loading may allocate. The zero value is safe for
// untrusted input: with the defaults, Load holds at most about
// 2×MaxExpansion times the file's size in pickles, storages and
// materialised tensors (ConvertFile also holds the file itself), plus a
// fixed amount for the unpickled objects (MaxPickleValues and
// MaxPickleMemo bound them to about 200 MiB). Each limit, when exceeded,
// gives a *LimitError naming it.
type LoadOptions struct {
	// MaxPickleBytes caps the size of a pickle inside the archive. If zero,
	// 64 MiB.
	MaxPickleBytes int64
	// MaxTensorBytes caps the total bytes of the tensors Load
	// materialises, counting every tensor: several views of one storage
	// count once each, as they are each copied. If zero, 4 GiB.
	MaxTensorBytes int64
	// MaxExpansion caps what one byte of the file may become: every
	// archive entry's uncompressed size against its compressed size (for
	// entries over 1 MiB; torch.save stores entries uncompressed, a ratio
	// of 1), the archive's total uncompressed size against the file's
	// size, and the materialised tensors against the file's size. If zero,
	// 4.
	MaxExpansion int64
	// MaxPickleDepth caps the nesting of MARK opcodes in a pickle (the
	// depth of containers being built). If zero, 256.
	MaxPickleDepth int64
	// MaxPickleStack caps the items on the unpickler's stack, those put
	// aside under MARKs included. If zero, 65536.
	MaxPickleStack int64
	// MaxPickleMemo caps the memo entries a pickle stores. If zero, 1<<20.
	MaxPickleMemo int64
	// MaxPickleValues caps the values a pickle creates (each opcode that
	// pushes a new value). If zero, 1<<21.
	MaxPickleValues int64
	// AllowClasses lists further classes ("__main__.Forecaster") a
	// whole-model pickle may reference: the user's own nn.Module
	// subclasses. Their instances are rebuilt as data (an Object holding
	// their __dict__); their code is never run, so converting them needs a
	// Spec. Names of system modules (os.system, builtins.eval,
	// subprocess.Popen, …) are refused: see Validate.
	AllowClasses []string
}

// Default loading limits (see LoadOptions).
const (
	DefaultMaxPickleBytes  = 64 << 20
	DefaultMaxTensorBytes  = 4 << 30
	DefaultMaxExpansion    = 4
	DefaultMaxPickleDepth  = 256
	DefaultMaxPickleStack  = 1 << 16
	DefaultMaxPickleMemo   = 1 << 20
	DefaultMaxPickleValues = 1 << 21
)

// expansionFloor is the entry size up to which MaxExpansion does not apply
// to an entry's compression ratio (small text entries compress well).
const expansionFloor = 1 << 20

func (o *LoadOptions) defaults() {
	set := func(v *int64, d int64) {
		if *v <= 0 {
			*v = d
		}
	}
	set(&o.MaxPickleBytes, DefaultMaxPickleBytes)
	set(&o.MaxTensorBytes, DefaultMaxTensorBytes)
	set(&o.MaxExpansion, DefaultMaxExpansion)
	set(&o.MaxPickleDepth, DefaultMaxPickleDepth)
	set(&o.MaxPickleStack, DefaultMaxPickleStack)
	set(&o.MaxPickleMemo, DefaultMaxPickleMemo)
	set(&o.MaxPickleValues, DefaultMaxPickleValues)
}

// Validate checks AllowClasses: each entry must name a class
// ("module.Class", the class name starting with an upper-case letter) of
// the user's own code, such as __main__.Forecaster or
// mymodels.Forecaster. Functions and classes of Python's system modules
// and of torch (os.system, builtins.eval, subprocess.Popen,
// torch.nn.modules.conv.Conv2d, …) are refused with ErrRefused: allowing
// one would let a pickle reach it. Load calls Validate.
func (o *LoadOptions) Validate() error {
	for _, c := range o.AllowClasses {
		if err := checkAllowClass(c); err != nil {
			return err
		}
	}
	return nil
}

// LimitError reports a file refused by one of the LoadOptions limits. It
// wraps ErrLimit.
type LimitError struct {
	// Limit is the LoadOptions field ("MaxPickleDepth").
	Limit string
	// Value is the limit in force.
	Value int64
	// What says what exceeded it, naming the archive entry when there is one.
	What string
}

func (e *LimitError) Error() string {
	return fmt.Sprintf("convert: %s: over the %s limit of %d (raise LoadOptions.%s, or signalforge convert -load-limit %s=N)",
		e.What, e.Limit, e.Value, e.Limit, e.Limit)
}

// Unwrap returns ErrLimit.
func (e *LimitError) Unwrap() error { return ErrLimit }

// ErrLimit is wrapped by the errors of files refused by a LoadOptions
// limit (see LimitError).
var ErrLimit = errors.New("convert: PyTorch file over a loading limit")

// MaxFileSize is the largest PyTorch file ConvertFile, LoadFile and the
// torch bridge accept: 4 GiB of tensor data (the default
// LoadOptions.MaxTensorBytes, which is also the most float64 weights that
// can become a float32 model below onnx.MaxModelSize) plus 256 MiB for
// pickles and archive headers. ConvertFile holds the whole file in memory
// (to hash what it converts), so this also bounds its memory. Paths that
// are not regular files (devices such as /dev/zero, FIFOs, directories)
// are refused before anything is read.
const MaxFileSize = 4<<30 + 256<<20

// LoadFile reads a PyTorch file (a zip archive as written by torch.save
// since PyTorch 1.6, or a TorchScript archive). Loading never executes
// code: pickles may only reference the supported torch.nn classes and
// tensor helpers, anything else is refused with ErrRefused naming it.
func LoadFile(path string, opts LoadOptions) (*Checkpoint, error) {
	f, st, err := onnx.OpenFileLimited(path, MaxFileSize)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return Load(f, st.Size(), opts)
}

// Load reads a PyTorch file of the given size from r. See LoadFile.
func Load(r io.ReaderAt, size int64, opts LoadOptions) (cp *Checkpoint, err error) {
	opts.defaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	ar, err := openArchive(r, size, &opts)
	if err != nil {
		return nil, err
	}
	l := &loader{opts: opts, files: ar.files}
	l.maxTensor, l.maxTensorField = materializeLimit(&opts, size)
	prefix := ar.prefix
	// gopickle is not hardened against every hostile pickle (for example
	// unhashable dict keys panic inside it); a panic there is malformed
	// input, not a bug of ours.
	defer func() {
		if p := recover(); p != nil {
			if strictPanics && !panickedInGopickle() {
				panic(p) // under fuzzing, a panic of ours must surface
			}
			cp, err = nil, fmt.Errorf("%w: %v", ErrFormat, p)
		}
	}()
	_, torchScript := l.files[prefix+"constants.pkl"]
	for name := range l.files {
		if strings.HasPrefix(name, prefix+"code/") {
			torchScript = true
			break
		}
	}
	l.dataDir = prefix + "data/"
	root, err := l.unpickle(prefix + "data.pkl")
	if err != nil {
		return nil, err
	}
	cp, err = l.checkpoint(root, torchScript)
	if err != nil {
		return nil, err
	}
	if _, ok := l.files[prefix+"constants.pkl"]; ok {
		l.dataDir = prefix + "constants/"
		l.storages = nil
		c, err := l.unpickle(prefix + "constants.pkl")
		if err != nil {
			return nil, fmt.Errorf("constants.pkl: %w", err)
		}
		pc, err := plain(c, 0)
		if err != nil {
			return nil, err
		}
		if list, ok := pc.([]any); ok {
			for _, v := range list {
				if t, ok := v.(*Tensor); ok {
					cp.Constants = append(cp.Constants, t)
				}
			}
		}
	}
	return cp, nil
}

// materializeLimit is the most tensor bytes Load may materialise for a
// file of the given size: MaxTensorBytes, and MaxExpansion times the size.
func materializeLimit(o *LoadOptions, size int64) (limit int64, field string) {
	limit, field = o.MaxTensorBytes, "MaxTensorBytes"
	if size > 0 && size <= math.MaxInt64/o.MaxExpansion && o.MaxExpansion*size < limit {
		limit, field = o.MaxExpansion*size, "MaxExpansion"
	}
	return limit, field
}

// CheckArchive checks the structure of a PyTorch file without building
// anything from it: the checks Load makes on the zip archive (one entry
// per name, all under one top-level folder, sizes and compression ratios
// within opts) and on the opcodes of its data.pkl and constants.pkl
// (MARK depth, stack, memo and value counts). The torch bridge runs it
// before PyTorch sees a file, so that PyTorch and Load read the same
// entries and PyTorch's unpickler works within the same bounds.
func CheckArchive(r io.ReaderAt, size int64, opts LoadOptions) error {
	opts.defaults()
	ar, err := openArchive(r, size, &opts)
	if err != nil {
		return err
	}
	l := &loader{opts: opts, files: ar.files}
	for _, name := range []string{"data.pkl", "constants.pkl"} {
		if _, ok := ar.files[ar.prefix+name]; ok {
			if _, err := l.readPickle(ar.prefix + name); err != nil {
				return err
			}
		}
	}
	return nil
}

// archive is a checked PyTorch zip archive.
type archive struct {
	files  map[string]*zip.File
	prefix string // the top-level folder with its slash: "model/"
}

// openArchive opens the zip archive and refuses anything two zip readers
// could read differently: PyTorch's reader (miniz) looks entries up by
// name case-insensitively and takes one of several equal names, Go's
// archive/zip and Python's zipfile take others, so duplicate names (also
// differing only in ASCII case), names that are not plain relative paths
// ("..", ".", empty components, a leading or doubled slash, backslashes,
// control characters) and entries outside the single top-level folder
// torch.save writes are all refused. It also applies the MaxExpansion
// limits to the entries' declared sizes (which archive/zip enforces when
// reading).
func openArchive(r io.ReaderAt, size int64, opts *LoadOptions) (*archive, error) {
	zr, err := zip.NewReader(r, size)
	if err != nil && !(errors.Is(err, zip.ErrInsecurePath) && zr != nil) {
		var magic [2]byte
		if n, _ := r.ReadAt(magic[:], 0); n == 2 && magic[0] == 0x80 {
			return nil, fmt.Errorf("%w: legacy (pre-1.6) torch.save format; re-save it with a newer PyTorch", ErrFormat)
		}
		return nil, fmt.Errorf("%w: not a zip archive: %v", ErrFormat, err)
	}
	ar := &archive{files: make(map[string]*zip.File, len(zr.File))}
	folded := make(map[string]string, len(zr.File))
	var total uint64
	for _, f := range zr.File {
		if err := checkEntryName(f.Name); err != nil {
			return nil, err
		}
		top := f.Name[:strings.IndexByte(f.Name, '/')+1]
		if ar.prefix == "" {
			ar.prefix = top
		} else if top != ar.prefix {
			return nil, fmt.Errorf("%w: ambiguous archive: entries under two top-level folders (%q and %q)", ErrFormat, ar.prefix, top)
		}
		key := asciiLower(f.Name)
		if prev, dup := folded[key]; dup {
			if prev == f.Name {
				return nil, fmt.Errorf("%w: ambiguous archive: two entries named %q (readers disagree on which one counts)", ErrFormat, f.Name)
			}
			return nil, fmt.Errorf("%w: ambiguous archive: entries %q and %q differ only in case (PyTorch's reader does not tell them apart)", ErrFormat, prev, f.Name)
		}
		folded[key] = f.Name
		ar.files[f.Name] = f
		if f.UncompressedSize64 > expansionFloor && f.UncompressedSize64/uint64(opts.MaxExpansion) > f.CompressedSize64 {
			return nil, &LimitError{Limit: "MaxExpansion", Value: opts.MaxExpansion,
				What: fmt.Sprintf("%s expands from %d to %d bytes", f.Name, f.CompressedSize64, f.UncompressedSize64)}
		}
		total += f.UncompressedSize64
		if total < f.UncompressedSize64 {
			total = math.MaxUint64
		}
	}
	if ar.prefix == "" || ar.files[ar.prefix+"data.pkl"] == nil {
		return nil, fmt.Errorf("%w: no <name>/data.pkl in the archive", ErrFormat)
	}
	if max := uint64(opts.MaxExpansion) * uint64(size); size > 0 && total > max+expansionFloor {
		return nil, &LimitError{Limit: "MaxExpansion", Value: opts.MaxExpansion,
			What: fmt.Sprintf("the archive's entries total %d bytes uncompressed, from a %d-byte file", total, size)}
	}
	return ar, nil
}

// checkEntryName accepts what torch.save writes: "folder/path", relative,
// with non-empty components other than "." and "..", and no backslashes or
// control characters.
func checkEntryName(name string) error {
	bad := func(why string) error {
		return fmt.Errorf("%w: ambiguous archive: entry %q %s", ErrFormat, name, why)
	}
	if !strings.Contains(name, "/") {
		return bad("is outside a top-level folder")
	}
	if strings.HasSuffix(name, "/") {
		return bad("is a folder")
	}
	for _, c := range name {
		if c < 0x20 || c == 0x7f || c == '\\' || c == utf8.RuneError {
			return bad("has a backslash, a control character or invalid UTF-8")
		}
	}
	for _, part := range strings.Split(name, "/") {
		switch part {
		case "":
			return bad("has an empty path component (a leading or doubled slash)")
		case ".", "..":
			return bad("has a \".\" or \"..\" component")
		}
	}
	return nil
}

// asciiLower folds ASCII letters only, as miniz compares names.
func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// strictPanics is set by FuzzLoad: Load then re-raises panics that did
// not start inside gopickle, so the fuzzer finds our bugs instead of the
// recover hiding them.
var strictPanics = false

// panickedInGopickle reports, from a deferred recover, whether the panic
// was raised by gopickle's code (hostile pickles make it index out of
// range or hash unhashable keys) rather than ours.
func panickedInGopickle() bool {
	pcs := make([]uintptr, 64)
	frames := runtime.CallersFrames(pcs[:runtime.Callers(0, pcs)])
	afterPanic := false
	for {
		f, more := frames.Next()
		if afterPanic && !strings.HasPrefix(f.Function, "runtime.") {
			return strings.Contains(f.Function, "nlpodyssey/gopickle")
		}
		if f.Function == "runtime.gopanic" {
			afterPanic = true
		}
		if !more {
			return false
		}
	}
}

type loader struct {
	opts     LoadOptions
	files    map[string]*zip.File
	dataDir  string
	storages map[string][]byte
	read     int64 // storage bytes read so far
	// maxTensor bounds the bytes materialised (every view counted), set
	// by the field maxTensorField names.
	maxTensor      int64
	maxTensorField string
	materialized   int64
}

// readPickle reads a pickle entry and checks its opcodes (scanPickle)
// within the limits.
func (l *loader) readPickle(name string) ([]byte, error) {
	f := l.files[name]
	if f.UncompressedSize64 > uint64(l.opts.MaxPickleBytes) {
		return nil, &LimitError{Limit: "MaxPickleBytes", Value: l.opts.MaxPickleBytes,
			What: fmt.Sprintf("%s is %d bytes", name, f.UncompressedSize64)}
	}
	rc, err := f.Open()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrFormat, err)
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, l.opts.MaxPickleBytes))
	if err != nil {
		return nil, fmt.Errorf("%w: reading %s: %v", ErrFormat, name, err)
	}
	if err := scanPickle(data, &l.opts); err != nil {
		var le *LimitError
		if errors.As(err, &le) {
			le.What = name + ": " + le.What
			return nil, le
		}
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return data, nil
}

func (l *loader) unpickle(name string) (interface{}, error) {
	data, err := l.readPickle(name)
	if err != nil {
		return nil, err
	}
	u := pickle.NewUnpickler(bytes.NewReader(data))
	u.FindClass = l.findClass
	u.PersistentLoad = l.persistentLoad
	v, err := u.Load()
	if err != nil {
		if errors.Is(err, ErrRefused) || errors.Is(err, ErrFormat) || errors.Is(err, ErrLimit) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %s: %v", ErrFormat, name, err)
	}
	return v, nil
}

// storage returns the bytes of one storage, reading it on first use.
func (l *loader) storage(st *storageRef) ([]byte, error) {
	if b, ok := l.storages[st.key]; ok {
		if int64(len(b)) < st.numel*int64(st.dtype.Size()) {
			return nil, fmt.Errorf("%w: storage %s used with two sizes", ErrFormat, st.key)
		}
		return b, nil
	}
	f, ok := l.files[l.dataDir+st.key]
	if !ok {
		return nil, fmt.Errorf("%w: storage %q missing from the archive", ErrFormat, st.key)
	}
	if st.numel > math.MaxInt64/8 {
		return nil, fmt.Errorf("%w: storage %s too large", ErrFormat, st.key)
	}
	need := st.numel * int64(st.dtype.Size())
	if need > l.opts.MaxTensorBytes-l.read {
		return nil, &LimitError{Limit: "MaxTensorBytes", Value: l.opts.MaxTensorBytes,
			What: fmt.Sprintf("storage %s needs %d bytes after %d bytes of other storages", st.key, need, l.read)}
	}
	if f.UncompressedSize64 < uint64(need) {
		return nil, fmt.Errorf("%w: storage %s has %d bytes, needs %d", ErrFormat, st.key, f.UncompressedSize64, need)
	}
	rc, err := f.Open()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrFormat, err)
	}
	defer rc.Close()
	// ReadAll grows with the bytes actually present, so a lying size
	// field cannot make us allocate more than the archive holds.
	b, err := io.ReadAll(io.LimitReader(rc, need))
	if err != nil {
		return nil, fmt.Errorf("%w: reading storage %s: %v", ErrFormat, st.key, err)
	}
	if int64(len(b)) != need {
		return nil, fmt.Errorf("%w: storage %s is truncated", ErrFormat, st.key)
	}
	l.read += need
	if l.storages == nil {
		l.storages = map[string][]byte{}
	}
	l.storages[st.key] = b
	return b, nil
}

// materialize builds the contiguous tensor for a view (offset, size,
// stride) of a storage. Views with more elements than their storage
// (stride-0 broadcasts) are refused: they would let a tiny file demand a
// huge allocation, and PyTorch never saves parameters that way.
func (l *loader) materialize(st *storageRef, off int64, size, stride []int64) (*Tensor, error) {
	if len(size) != len(stride) || len(size) > 16 {
		return nil, fmt.Errorf("%w: tensor with %d sizes and %d strides", ErrFormat, len(size), len(stride))
	}
	if off < 0 || off > st.numel {
		return nil, fmt.Errorf("%w: storage offset %d outside a storage of %d elements", ErrFormat, off, st.numel)
	}
	numel := int64(1)
	last := off
	for i, d := range size {
		if d < 0 || stride[i] < 0 {
			return nil, fmt.Errorf("%w: negative size or stride", ErrFormat)
		}
		if d == 0 {
			numel = 0
			continue
		}
		if numel > st.numel || d > st.numel || (numel != 0 && numel*d > st.numel) {
			return nil, fmt.Errorf("%w: tensor of size %v larger than its storage (%d elements)", ErrFormat, size, st.numel)
		}
		numel *= d
		if stride[i] > st.numel {
			return nil, fmt.Errorf("%w: stride %d outside a storage of %d elements", ErrFormat, stride[i], st.numel)
		}
		last += (d - 1) * stride[i]
	}
	if numel > 0 && last >= st.numel {
		return nil, fmt.Errorf("%w: tensor view ends at element %d of a storage of %d", ErrFormat, last, st.numel)
	}
	t := &Tensor{DType: st.dtype, Shape: append([]int64{}, size...)}
	if numel == 0 {
		return t, nil
	}
	// Every view is copied, so every view counts against the limit (64
	// views of one 64 MiB storage are 4 GiB), checked before allocating.
	es := int64(st.dtype.Size())
	if numel*es > l.maxTensor-l.materialized {
		return nil, &LimitError{Limit: l.maxTensorField, Value: l.limitValue(),
			What: fmt.Sprintf("tensors materialised (every view of a storage counted) need %d bytes after %d, over %d bytes", numel*es, l.materialized, l.maxTensor)}
	}
	src, err := l.storage(st)
	if err != nil {
		return nil, err
	}
	l.materialized += numel * es
	t.Data = make([]byte, numel*es)
	// Walk the indices in row-major order.
	idx := make([]int64, len(size))
	for n := int64(0); n < numel; n++ {
		pos := off
		for i := range idx {
			pos += idx[i] * stride[i]
		}
		copy(t.Data[n*es:(n+1)*es], src[pos*es:(pos+1)*es])
		for i := len(idx) - 1; i >= 0; i-- {
			idx[i]++
			if idx[i] < size[i] {
				break
			}
			idx[i] = 0
		}
	}
	return t, nil
}

// limitValue is the value of the field maxTensorField names.
func (l *loader) limitValue() int64 {
	if l.maxTensorField == "MaxExpansion" {
		return l.opts.MaxExpansion
	}
	return l.opts.MaxTensorBytes
}

// maxDepth bounds the nesting of pickled containers and modules (a hostile
// pickle can make cycles through its memo).
const maxDepth = 64

// maxNodes bounds the pickled values converted per file; with maxDepth it
// keeps a hostile pickle (shared sub-lists through the memo make a DAG
// whose paths grow exponentially) from costing more than linear work.
const maxNodes = 1 << 20

// plainer converts gopickle values to the plain values documented on
// Object, converting each shared container once.
type plainer struct {
	memo  map[interface{}]any
	nodes int
}

func plain(v interface{}, depth int) (any, error) {
	p := &plainer{memo: map[interface{}]any{}}
	return p.conv(v, depth)
}

func (p *plainer) conv(v interface{}, depth int) (any, error) {
	if depth > maxDepth {
		return nil, fmt.Errorf("%w: objects nested deeper than %d", ErrFormat, maxDepth)
	}
	if p.nodes++; p.nodes > maxNodes {
		return nil, fmt.Errorf("%w: more than %d pickled values", ErrFormat, maxNodes)
	}
	switch v.(type) {
	case *types.Tuple, *types.List, *types.Dict, *types.OrderedDict:
		if r, ok := p.memo[v]; ok {
			return r, nil
		}
		r, err := p.convContainer(v, depth)
		if err != nil {
			return nil, err
		}
		p.memo[v] = r
		return r, nil
	}
	switch x := v.(type) {
	case nil, bool, string, float64, *Tensor:
		return x, nil
	case int:
		return int64(x), nil
	case int64:
		return x, nil
	case *big.Int:
		if x.IsInt64() {
			return x.Int64(), nil
		}
		return nil, fmt.Errorf("%w: integer out of range", ErrFormat)
	case *Object:
		if x.seen {
			return x, nil // already converted (shared through the memo)
		}
		x.seen = true
		for k, rv := range x.raw {
			pv, err := p.conv(rv, depth+1)
			if err != nil {
				return nil, err
			}
			x.Attrs[k] = pv
		}
		return x, nil
	case *types.Set:
		return nil, nil // only _non_persistent_buffers_set; its content is irrelevant
	}
	return nil, fmt.Errorf("%w: unexpected pickled value %T", ErrFormat, v)
}

func (p *plainer) convContainer(v interface{}, depth int) (any, error) {
	switch x := v.(type) {
	case *types.Tuple:
		return p.list(*x, depth)
	case *types.List:
		return p.list(*x, depth)
	case *types.Dict:
		m := map[string]any{}
		for _, e := range *x {
			if err := p.convEntry(m, e.Key, e.Value, depth); err != nil {
				return nil, err
			}
		}
		return m, nil
	case *types.OrderedDict:
		m := map[string]any{}
		for el := x.List.Front(); el != nil; el = el.Next() {
			e := el.Value.(*types.OrderedDictEntry)
			if err := p.convEntry(m, e.Key, e.Value, depth); err != nil {
				return nil, err
			}
		}
		return m, nil
	}
	return nil, fmt.Errorf("%w: unexpected pickled value %T", ErrFormat, v)
}

func (p *plainer) list(items []interface{}, depth int) ([]any, error) {
	out := make([]any, len(items))
	for i, it := range items {
		pv, err := p.conv(it, depth+1)
		if err != nil {
			return nil, err
		}
		out[i] = pv
	}
	return out, nil
}

// orderedTensors returns the string-keyed tensors of a (possibly ordered)
// dict in order, or ok=false if it has other values.
func orderedTensors(v interface{}) (names []string, params map[string]*Tensor, ok bool) {
	params = map[string]*Tensor{}
	add := func(k, val interface{}) bool {
		s, isStr := k.(string)
		t, isT := val.(*Tensor)
		if !isStr || !isT {
			return false
		}
		if _, dup := params[s]; !dup {
			names = append(names, s)
		}
		params[s] = t
		return true
	}
	switch d := v.(type) {
	case *types.OrderedDict:
		for el := d.List.Front(); el != nil; el = el.Next() {
			e := el.Value.(*types.OrderedDictEntry)
			if !add(e.Key, e.Value) {
				return nil, nil, false
			}
		}
	case *types.Dict:
		for _, e := range *d {
			if !add(e.Key, e.Value) {
				return nil, nil, false
			}
		}
	default:
		return nil, nil, false
	}
	return names, params, true
}

func lookup(v interface{}, key string) (interface{}, bool) {
	switch d := v.(type) {
	case *types.OrderedDict:
		return d.Get(key)
	case *types.Dict:
		for _, e := range *d {
			if e.Key == key {
				return e.Value, true
			}
		}
	}
	return nil, false
}

func (l *loader) checkpoint(root interface{}, torchScript bool) (*Checkpoint, error) {
	if obj, ok := root.(*Object); ok {
		if _, err := plain(obj, 0); err != nil {
			return nil, err
		}
		cp := &Checkpoint{Format: FormatModel, Root: obj, Params: map[string]*Tensor{}}
		if torchScript {
			cp.Format = FormatTorchScript
		}
		visits := 0
		if err := collectParams(cp, obj, "", 0, &visits); err != nil {
			return nil, err
		}
		return cp, nil
	}
	if names, params, ok := orderedTensors(root); ok {
		return &Checkpoint{Format: FormatStateDict, Names: names, Params: params}, nil
	}
	for _, key := range []string{"state_dict", "model_state_dict", "model"} {
		if sub, ok := lookup(root, key); ok {
			if names, params, ok := orderedTensors(sub); ok {
				return &Checkpoint{Format: FormatStateDict, Names: names, Params: params}, nil
			}
		}
	}
	return nil, fmt.Errorf("%w: top-level object is a %T, not a module or a state dict of tensors", ErrFormat, root)
}

// collectParams names parameters and buffers the way state_dict() does:
// torch.save(model) keeps them in _parameters/_buffers/_modules, a
// TorchScript archive as plain attributes.
func collectParams(cp *Checkpoint, o *Object, prefix string, depth int, visits *int) error {
	if depth > maxDepth {
		return fmt.Errorf("%w: modules nested deeper than %d", ErrFormat, maxDepth)
	}
	if *visits++; *visits > maxNodes {
		return fmt.Errorf("%w: more than %d module paths", ErrFormat, maxNodes)
	}
	add := func(name string, t *Tensor) {
		if _, dup := cp.Params[prefix+name]; !dup {
			cp.Names = append(cp.Names, prefix+name)
		}
		cp.Params[prefix+name] = t
	}
	if _, ok := o.Attrs["_modules"]; ok {
		for _, group := range []string{"_parameters", "_buffers"} {
			for _, k := range orderedKeys(o.raw[group]) {
				if t, ok := o.Attrs[group].(map[string]any)[k].(*Tensor); ok {
					add(k, t)
				}
			}
		}
		mods, _ := o.Attrs["_modules"].(map[string]any)
		for _, k := range orderedKeys(o.raw["_modules"]) {
			if sub, ok := mods[k].(*Object); ok {
				if err := collectParams(cp, sub, prefix+k+".", depth+1, visits); err != nil {
					return err
				}
			}
		}
		return nil
	}
	keys := make([]string, 0, len(o.Attrs))
	for k := range o.Attrs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		switch v := o.Attrs[k].(type) {
		case *Tensor:
			add(k, v)
		case *Object:
			if err := collectParams(cp, v, prefix+k+".", depth+1, visits); err != nil {
				return err
			}
		}
	}
	return nil
}

// orderedKeys returns the string keys of a pickled dict in insertion order.
func orderedKeys(v interface{}) []string {
	var out []string
	switch d := v.(type) {
	case *types.OrderedDict:
		for el := d.List.Front(); el != nil; el = el.Next() {
			if s, ok := el.Value.(*types.OrderedDictEntry).Key.(string); ok {
				out = append(out, s)
			}
		}
	case *types.Dict:
		for _, e := range *d {
			if s, ok := e.Key.(string); ok {
				out = append(out, s)
			}
		}
	}
	return out
}

// Submodules returns the child modules of o in definition order (the
// _modules dict of a pickled module; numerically sorted attributes of a
// TorchScript Sequential).
func (o *Object) Submodules() []NamedObject {
	var out []NamedObject
	if mods, ok := o.Attrs["_modules"].(map[string]any); ok {
		for _, k := range orderedKeys(o.raw["_modules"]) {
			if sub, ok := mods[k].(*Object); ok {
				out = append(out, NamedObject{k, sub})
			}
		}
		return out
	}
	for k, v := range o.Attrs {
		if sub, ok := v.(*Object); ok {
			out = append(out, NamedObject{k, sub})
		}
	}
	sort.Slice(out, func(i, j int) bool { return natLess(out[i].Name, out[j].Name) })
	return out
}

// NamedObject is a child module and its attribute name.
type NamedObject struct {
	Name string
	*Object
}

// natLess orders "2" before "10".
func natLess(a, b string) bool {
	if len(a) != len(b) && isDigits(a) && isDigits(b) {
		return len(a) < len(b)
	}
	return a < b
}

func isDigits(s string) bool {
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return s != ""
}

// convEntry converts one dictionary entry into m; entries whose key is not
// a string are left out.
func (p *plainer) convEntry(m map[string]any, key, value any, depth int) error {
	k, ok := key.(string)
	if !ok {
		return nil
	}
	v, err := p.conv(value, depth+1)
	if err != nil {
		return err
	}
	m[k] = v
	return nil
}
