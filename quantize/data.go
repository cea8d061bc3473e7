package quantize

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/signalforge/signalforge/infer"
	"github.com/signalforge/signalforge/onnx"
	"github.com/signalforge/signalforge/tensor"
)

// Dataset is calibration or evaluation data: batches of model inputs. Each
// may be called more than once (the accuracy gate evaluates repeatedly);
// file datasets re-read their file each time, so memory stays bounded.
type Dataset interface {
	// Each calls fn with successive batches of at most batch rows, one
	// tensor per model input in the model's input order. It stops at the
	// first error from fn or when ctx is done.
	Each(ctx context.Context, batch int, fn func(inputs []tensor.Tensor) error) error
	// Hash identifies the data (hex sha256), for lineage.
	Hash() string
}

// Tensors returns an in-memory Dataset over full input tensors (one per
// model input, all with the same batch size on axis 0).
func Tensors(inputs ...tensor.Tensor) Dataset { return tensorData(inputs) }

type tensorData []tensor.Tensor

func (d tensorData) Each(ctx context.Context, batch int, fn func([]tensor.Tensor) error) error {
	if len(d) == 0 {
		return fmt.Errorf("%w: no input tensors", ErrData)
	}
	n := d[0].Len()
	for lo := 0; lo < n; lo += batch {
		if err := ctx.Err(); err != nil {
			return err
		}
		hi := min(lo+batch, n)
		b := make([]tensor.Tensor, len(d))
		for i, t := range d {
			s, err := t.Slice(lo, hi)
			if err != nil {
				return fmt.Errorf("%w: %v", ErrData, err)
			}
			b[i] = s
		}
		if err := fn(b); err != nil {
			return err
		}
	}
	return nil
}

func (d tensorData) Hash() string {
	h := sha256.New()
	for _, t := range d {
		fmt.Fprint(h, t.DType(), t.Shape())
		if f := tensor.Data[float32](t); f != nil {
			_ = binary.Write(h, binary.LittleEndian, f)
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}

// DataOptions configure OpenDataset. The zero value is a good default.
type DataOptions struct {
	// Progress, if set, is called after each batch with the number of
	// samples read so far in this pass.
	Progress func(samples int64)
	// MaxSamples stops each pass after this many samples. If zero, no limit.
	MaxSamples int64
	// Stride is the step in rows between the windows of a sequence model
	// when CSV/JSONL rows are time steps. If zero, the window length
	// (non-overlapping windows).
	Stride int
}

// Schema is what a file dataset needs to know about the model's single
// input: its shape without the batch axis ([F] or [T, F]) and the ordered
// feature names (from metadata_props "signalforge.features"; empty means the
// file's columns in order).
type Schema struct {
	Shape    []int64
	Features []string
}

// SchemaOf reads the schema of a model with one float32 input of shape
// [batch, F] or [batch, T, F] with T and F fixed.
func SchemaOf(m *onnx.ModelProto) (Schema, error) {
	in := graphInputs(m.GetGraph())
	if len(in) != 1 {
		return Schema{}, fmt.Errorf("%w: file datasets need a model with one input, this one has %d", ErrData, len(in))
	}
	shape := inputShape(in[0])
	if len(shape) < 2 || len(shape) > 3 {
		return Schema{}, fmt.Errorf("%w: input %q has rank %d, want 2 ([batch, features]) or 3 ([batch, steps, features])", ErrData, in[0].GetName(), len(shape))
	}
	for _, d := range shape[1:] {
		if d <= 0 {
			return Schema{}, fmt.Errorf("%w: input %q has a dynamic non-batch dimension", ErrData, in[0].GetName())
		}
	}
	s := Schema{Shape: shape[1:]}
	if f := getMeta(m, infer.FeaturesMetadataKey); f != "" {
		for _, name := range strings.Split(f, ",") {
			s.Features = append(s.Features, strings.TrimSpace(name))
		}
		if int64(len(s.Features)) != s.Shape[len(s.Shape)-1] {
			return Schema{}, fmt.Errorf("%w: model lists %d features for an input of %d", ErrModel, len(s.Features), s.Shape[len(s.Shape)-1])
		}
	}
	return s, nil
}

// OpenDataset opens a CSV (.csv), JSON Lines (.jsonl, .ndjson) or NumPy
// (.npy) file as calibration data for model. CSV and JSONL columns are
// matched to the model's features by name; other columns are ignored.
// For a sequence model ([batch, T, F]) CSV rows and JSONL rows of scalars
// are time steps cut into windows of T; a JSONL row whose values are arrays
// of T numbers is one sample. A .npy array must be float32 or float64 with
// shape [N, F] or [N, T, F].
func OpenDataset(path string, model *onnx.ModelProto, opts DataOptions) (Dataset, error) {
	s, err := SchemaOf(model)
	if err != nil {
		return nil, err
	}
	return OpenFile(path, s, opts)
}

// OpenFile is OpenDataset with an explicit schema.
func OpenFile(path string, s Schema, opts DataOptions) (Dataset, error) {
	kind := strings.ToLower(filepath.Ext(path))
	switch kind {
	case ".csv", ".jsonl", ".ndjson", ".npy":
	default:
		return nil, fmt.Errorf("%w: %s: unknown data format %q (want .csv, .jsonl or .npy)", ErrData, path, kind)
	}
	// Only regular files: /dev/zero named calib.csv would be hashed
	// forever, and opening a FIFO blocks. Data files are streamed, so no
	// size cap.
	f, _, err := onnx.OpenFileLimited(path, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return nil, err
	}
	return &fileData{path: path, kind: kind, schema: s, opts: opts, hash: hex.EncodeToString(h.Sum(nil))}, nil
}

type fileData struct {
	path, kind string
	schema     Schema
	opts       DataOptions
	hash       string
}

func (d *fileData) Hash() string { return d.hash }

func (d *fileData) Each(ctx context.Context, batch int, fn func([]tensor.Tensor) error) error {
	f, _, err := onnx.OpenFileLimited(d.path, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	b := &batcher{shape: d.schema.Shape, batch: batch, fn: fn, ctx: ctx, opts: d.opts}
	b.sample = 1
	for _, x := range d.schema.Shape {
		b.sample *= int(x)
	}
	feat := int(d.schema.Shape[len(d.schema.Shape)-1])
	switch d.kind {
	case ".csv":
		err = ReadCSV(f, d.schema.Features, feat, b.step)
	case ".jsonl", ".ndjson":
		err = ReadJSONL(f, d.schema.Features, feat, func(v []float32, steps int) error {
			if steps == 0 {
				return b.step(v)
			}
			if len(d.schema.Shape) != 2 || steps != int(d.schema.Shape[0]) {
				return fmt.Errorf("%w: row has sequences of %d steps, model wants shape %v", ErrData, steps, d.schema.Shape)
			}
			return b.add(v)
		})
	case ".npy":
		err = ReadNPY(f, func(shape []int64, v []float32) error {
			if len(shape) != len(d.schema.Shape)+1 || !equalDims(shape[1:], d.schema.Shape) {
				return fmt.Errorf("%w: .npy shape %v, model wants [N %v]", ErrData, shape, d.schema.Shape)
			}
			return b.add(v)
		})
	}
	if errors.Is(err, errStop) {
		err = nil
	}
	if err != nil {
		return fmt.Errorf("%s: %w", d.path, err)
	}
	return b.flush()
}

var errStop = errors.New("stop")

func equalDims(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// batcher assembles rows into samples and samples into batches.
type batcher struct {
	ctx    context.Context
	shape  []int64
	sample int // floats per sample
	batch  int
	fn     func([]tensor.Tensor) error
	opts   DataOptions

	window []float32 // time steps of a sequence sample
	since  int       // rows since the last window was emitted
	buf    []float32
	n      int64 // samples emitted in this pass
}

// step adds one row of features: a whole sample for [F] models, one time
// step for [T, F] models.
func (b *batcher) step(row []float32) error {
	if len(b.shape) == 1 {
		return b.add(row)
	}
	t := int(b.shape[0])
	b.window = append(b.window, row...)
	if len(b.window) > b.sample {
		b.window = b.window[len(b.window)-b.sample:]
	}
	b.since++
	stride := b.opts.Stride
	if stride <= 0 {
		stride = t
	}
	if len(b.window) == b.sample && b.since >= stride {
		b.since = 0
		return b.add(b.window)
	}
	return nil
}

func (b *batcher) add(sample []float32) error {
	if len(sample) != b.sample {
		return fmt.Errorf("%w: sample has %d values, want %d", ErrData, len(sample), b.sample)
	}
	if b.opts.MaxSamples > 0 && b.n >= b.opts.MaxSamples {
		return errStop
	}
	b.buf = append(b.buf, sample...)
	b.n++
	if len(b.buf) == b.batch*b.sample {
		return b.flush()
	}
	return nil
}

func (b *batcher) flush() error {
	if len(b.buf) == 0 {
		if b.n == 0 {
			return fmt.Errorf("%w: no samples", ErrData)
		}
		return nil
	}
	if err := b.ctx.Err(); err != nil {
		return err
	}
	rows := len(b.buf) / b.sample
	shape := append(tensor.Shape{int64(rows)}, b.shape...)
	t, err := tensor.New(shape, b.buf)
	if err != nil {
		return err
	}
	b.buf = nil // the tensor owns the old buffer
	if err := b.fn([]tensor.Tensor{t}); err != nil {
		return err
	}
	if b.opts.Progress != nil {
		b.opts.Progress(b.n)
	}
	return nil
}

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

// ReadCSV streams a CSV file with a header row, calling fn with the values
// of the named feature columns of each row, in features order. With no
// feature names, all columns are used in file order and there must be
// nFeatures of them. Values must be finite numbers. fn's slice is reused.
func ReadCSV(r io.Reader, features []string, nFeatures int, fn func([]float32) error) error {
	cr := csv.NewReader(bufio.NewReader(r))
	cr.ReuseRecord = true
	header, err := cr.Read()
	if err == io.EOF {
		return fmt.Errorf("%w: empty CSV", ErrData)
	}
	if err != nil {
		return fmt.Errorf("%w: %v", ErrData, err)
	}
	header = slices.Clone(header) // ReuseRecord: the next Read overwrites it
	cols, err := columns(header, features, nFeatures)
	if err != nil {
		return err
	}
	row := make([]float32, len(cols))
	for line := 2; ; line++ {
		rec, err := cr.Read()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%w: %v", ErrData, err)
		}
		for i, c := range cols {
			v, err := strconv.ParseFloat(strings.TrimSpace(rec[c]), 64)
			if err != nil || !finite(v) {
				return fmt.Errorf("%w: line %d column %q: %q is not a finite number", ErrData, line, header[c], rec[c])
			}
			row[i] = float32(v)
		}
		if err := fn(row); err != nil {
			return err
		}
	}
}

func columns(header, features []string, n int) ([]int, error) {
	if len(features) == 0 {
		if len(header) != n {
			return nil, fmt.Errorf("%w: model has no feature names and the file has %d columns for %d features", ErrData, len(header), n)
		}
		cols := make([]int, n)
		for i := range cols {
			cols[i] = i
		}
		return cols, nil
	}
	idx := map[string]int{}
	for i, h := range header {
		if i == 0 {
			h = strings.TrimPrefix(h, "\ufeff") // a UTF-8 byte-order mark from spreadsheet exports
		}
		idx[strings.TrimSpace(h)] = i
	}
	cols := make([]int, len(features))
	for i, f := range features {
		c, ok := idx[f]
		if !ok {
			return nil, fmt.Errorf("%w: missing feature column %q", ErrData, f)
		}
		cols[i] = c
	}
	return cols, nil
}

// ReadJSONL streams JSON Lines, one object per line mapping feature names
// to numbers (steps == 0) or to arrays of numbers of equal length (steps ==
// that length; values time-major, [steps, features]). Other keys are
// ignored; blank lines are skipped. fn's slice is reused.
func ReadJSONL(r io.Reader, features []string, nFeatures int, fn func(v []float32, steps int) error) error {
	if len(features) == 0 {
		return fmt.Errorf("%w: JSON Lines data needs a model with feature names (metadata %q)", ErrData, infer.FeaturesMetadataKey)
	}
	if len(features) != nFeatures {
		return fmt.Errorf("%w: %d feature names for %d features", ErrData, len(features), nFeatures)
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	var buf []float32
	for line := 1; sc.Scan(); line++ {
		text := bytes.TrimSpace(sc.Bytes())
		if len(text) == 0 {
			continue
		}
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(text, &obj); err != nil {
			return fmt.Errorf("%w: line %d: %v", ErrData, line, err)
		}
		steps := -1
		buf = buf[:0]
		for fi, f := range features {
			raw, ok := obj[f]
			if !ok {
				return fmt.Errorf("%w: line %d: missing feature %q", ErrData, line, f)
			}
			var vals []float64
			s := 0
			if t := bytes.TrimSpace(raw); len(t) > 0 && t[0] == '[' {
				if err := json.Unmarshal(raw, &vals); err != nil {
					return fmt.Errorf("%w: line %d feature %q: %v", ErrData, line, f, err)
				}
				s = len(vals)
				if s == 0 {
					return fmt.Errorf("%w: line %d feature %q: empty sequence", ErrData, line, f)
				}
			} else {
				var v float64
				if err := json.Unmarshal(raw, &v); err != nil {
					return fmt.Errorf("%w: line %d feature %q: %v", ErrData, line, f, err)
				}
				vals = []float64{v}
			}
			if steps >= 0 && s != steps {
				return fmt.Errorf("%w: line %d: features have different sequence lengths", ErrData, line)
			}
			if steps < 0 {
				steps = s
				buf = append(buf, make([]float32, max(s, 1)*nFeatures)...)
			}
			for t, v := range vals {
				if !finite(v) {
					return fmt.Errorf("%w: line %d feature %q: not finite", ErrData, line, f)
				}
				buf[t*nFeatures+fi] = float32(v)
			}
		}
		if err := fn(buf, steps); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("%w: %v", ErrData, err)
	}
	return nil
}

var npyHeader = regexp.MustCompile(`'descr':\s*'([<>|=]?[a-z]\d+)'.*'fortran_order':\s*(True|False).*'shape':\s*\(([\d,\s]*)\)`)

// ReadNPY streams a NumPy .npy array of float32 or float64 in C order,
// calling fn with its shape and the values of one leading-axis row at a
// time (converted to float32; fn's slice is reused).
func ReadNPY(r io.Reader, fn func(shape []int64, row []float32) error) error {
	br := bufio.NewReader(r)
	magic := make([]byte, 8)
	if _, err := io.ReadFull(br, magic); err != nil || string(magic[:6]) != "\x93NUMPY" {
		return fmt.Errorf("%w: not a .npy file", ErrData)
	}
	var hlen int
	switch magic[6] {
	case 1:
		var b [2]byte
		if _, err := io.ReadFull(br, b[:]); err != nil {
			return fmt.Errorf("%w: truncated .npy header", ErrData)
		}
		hlen = int(binary.LittleEndian.Uint16(b[:]))
	case 2, 3:
		var b [4]byte
		if _, err := io.ReadFull(br, b[:]); err != nil {
			return fmt.Errorf("%w: truncated .npy header", ErrData)
		}
		hlen = int(binary.LittleEndian.Uint32(b[:]))
	default:
		return fmt.Errorf("%w: .npy version %d", ErrData, magic[6])
	}
	if hlen > 1<<16 {
		return fmt.Errorf("%w: .npy header of %d bytes", ErrData, hlen)
	}
	hdr := make([]byte, hlen)
	if _, err := io.ReadFull(br, hdr); err != nil {
		return fmt.Errorf("%w: truncated .npy header", ErrData)
	}
	mt := npyHeader.FindSubmatch(hdr)
	if mt == nil {
		return fmt.Errorf("%w: unreadable .npy header %q", ErrData, hdr)
	}
	descr, fortran := string(mt[1]), string(mt[2]) == "True"
	if fortran {
		return fmt.Errorf("%w: Fortran-order .npy arrays are not supported", ErrData)
	}
	var size int
	switch strings.TrimLeft(descr, "<|=") {
	case "f4":
		size = 4
	case "f8":
		size = 8
	default:
		return fmt.Errorf("%w: .npy dtype %s (want little-endian float32 or float64)", ErrData, descr)
	}
	if strings.HasPrefix(descr, ">") {
		return fmt.Errorf("%w: big-endian .npy arrays are not supported", ErrData)
	}
	var shape []int64
	for _, p := range strings.Split(string(mt[3]), ",") {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		d, err := strconv.ParseInt(p, 10, 64)
		if err != nil || d < 0 || d > 1<<40 {
			return fmt.Errorf("%w: .npy shape %q", ErrData, mt[3])
		}
		shape = append(shape, d)
	}
	if len(shape) < 1 {
		return fmt.Errorf("%w: .npy array is a scalar", ErrData)
	}
	rowLen := int64(1)
	for _, d := range shape[1:] {
		rowLen *= d
		if rowLen > 1<<26 {
			return fmt.Errorf("%w: .npy rows of more than 2^26 values", ErrData)
		}
	}
	if rowLen == 0 {
		return fmt.Errorf("%w: .npy array has empty rows", ErrData)
	}
	raw := make([]byte, rowLen*int64(size))
	row := make([]float32, rowLen)
	for range shape[0] {
		if _, err := io.ReadFull(br, raw); err != nil {
			return fmt.Errorf("%w: .npy data truncated", ErrData)
		}
		for i := range row {
			var v float64
			if size == 4 {
				v = float64(math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:])))
			} else {
				v = math.Float64frombits(binary.LittleEndian.Uint64(raw[8*i:]))
			}
			if !finite(v) {
				return fmt.Errorf("%w: .npy value is not finite", ErrData)
			}
			row[i] = float32(v)
		}
		if err := fn(shape, row); err != nil {
			return err
		}
	}
	return nil
}
