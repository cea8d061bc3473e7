package convert

import (
	"archive/zip"
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

func TestLoadViews(t *testing.T) {
	cp, err := LoadFile("testdata/views.pt", LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if cp.Format != FormatStateDict {
		t.Fatalf("format %v, want state dict", cp.Format)
	}
	raw, err := os.ReadFile("testdata/views.json")
	if err != nil {
		t.Fatal(err)
	}
	var want map[string]struct {
		Shape []int64
		Data  []float64
	}
	if err := json.Unmarshal(raw, &want); err != nil {
		t.Fatal(err)
	}
	if len(cp.Names) != len(want) {
		t.Fatalf("names %v, want %d tensors", cp.Names, len(want))
	}
	dtypes := map[string]DType{"half": Float16, "bfloat16": BFloat16, "int64": Int64, "float64": Float64, "transposed": Float32}
	for name, w := range want {
		got, ok := cp.Params[name]
		if !ok {
			t.Fatalf("tensor %q missing", name)
		}
		if dt, ok := dtypes[name]; ok && got.DType != dt {
			t.Errorf("%s: dtype %v, want %v", name, got.DType, dt)
		}
		if !equalInts(got.Shape, w.Shape) {
			t.Errorf("%s: shape %v, want %v", name, got.Shape, w.Shape)
		}
		f := got.Float32s()
		for i := range w.Data {
			if float64(f[i]) != float64(float32(w.Data[i])) {
				t.Errorf("%s[%d] = %v, want %v", name, i, f[i], w.Data[i])
			}
		}
	}
}

func equalInts(a, b []int64) bool {
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

func TestLoadFormats(t *testing.T) {
	tests := []struct {
		file   string
		format Format
		names  []string
		root   string
	}{
		{"relu.pt", FormatModel, []string{"0.weight", "0.bias", "2.weight", "2.bias"}, "Sequential"},
		{"batchnorm1d.pt", FormatModel, []string{"0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked", "3.weight", "3.bias"}, "Sequential"},
		{"mlp_state.pt", FormatStateDict, []string{"0.weight", "0.bias", "2.weight", "2.bias"}, ""},
		{"mlp_script.pt", FormatTorchScript, []string{"0.bias", "0.weight", "2.bias", "2.weight"}, "Sequential"},
		{"lstm_bidir.pt", FormatStateDict, []string{"rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.bias_ih_l0", "rnn.bias_hh_l0",
			"rnn.weight_ih_l0_reverse", "rnn.weight_hh_l0_reverse", "rnn.bias_ih_l0_reverse", "rnn.bias_hh_l0_reverse", "head.weight", "head.bias"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			cp, err := LoadFile(filepath.Join("testdata", tt.file), LoadOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if cp.Format != tt.format {
				t.Errorf("format %v, want %v", cp.Format, tt.format)
			}
			if strings.Join(cp.Names, " ") != strings.Join(tt.names, " ") {
				t.Errorf("names %v, want %v", cp.Names, tt.names)
			}
			if tt.root != "" && (cp.Root == nil || cp.Root.Class != tt.root) {
				t.Errorf("root %+v, want %s", cp.Root, tt.root)
			}
		})
	}
	cp, err := LoadFile("testdata/leakyrelu.pt", LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	subs := cp.Root.Submodules()
	if len(subs) != 3 || subs[1].Class != "LeakyReLU" || subs[1].Attrs["negative_slope"] != 0.2 {
		t.Fatalf("submodules %+v", subs)
	}
}

// pickleZip wraps a data.pkl (and a 64-byte storage "0") in a zip archive
// the way torch.save lays it out.
func pickleZip(t testing.TB, pkl []byte) []byte {
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for name, data := range map[string][]byte{"archive/data.pkl": pkl, "archive/data/0": make([]byte, 64)} {
		w, err := zw.CreateHeader(&zip.FileHeader{Name: name, Method: zip.Store})
		if err != nil {
			t.Fatal(err)
		}
		w.Write(data)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestRefuseUnknownClass(t *testing.T) {
	tests := map[string]string{
		// os.system("ls"): the classic code-execution pickle.
		"os.system": "\x80\x02cos\nsystem\nq\x00X\x02\x00\x00\x00lsq\x01\x85q\x02Rq\x03.",
		// A custom model class pickled by torch.save(model).
		"__main__.Forecaster": "\x80\x02c__main__\nForecaster\nq\x00)\x81q\x01}q\x02b.",
		// A torch.nn module outside the supported set.
		"torch.nn.modules.conv.Conv2d": "\x80\x02ctorch.nn.modules.conv\nConv2d\nq\x00)\x81q\x01}q\x02b.",
	}
	for class, pkl := range tests {
		t.Run(class, func(t *testing.T) {
			data := pickleZip(t, []byte(pkl))
			_, err := Load(bytes.NewReader(data), int64(len(data)), LoadOptions{})
			if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), class) {
				t.Fatalf("err = %v, want ErrRefused naming %s", err, class)
			}
		})
	}
}

func TestLoadMalformed(t *testing.T) {
	tensor := func(numel, off, size, stride string) []byte {
		// {"w": _rebuild_tensor_v2(storage('0', numel), off, (size,), (stride,), False, OrderedDict())}
		return []byte("\x80\x02}q\x00X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpu" +
			numel + "tQ" + off + "(" + size + "t(" + stride + "t\x89ccollections\nOrderedDict\n)RtRs.")
	}
	ok := tensor("K\x10", "K\x00", "K\x04", "K\x01")
	data := pickleZip(t, ok)
	cp, err := Load(bytes.NewReader(data), int64(len(data)), LoadOptions{})
	if err != nil || len(cp.Params["w"].Shape) != 1 || cp.Params["w"].Shape[0] != 4 {
		t.Fatalf("well-formed hand-made pickle: %v %+v", err, cp)
	}
	tests := map[string][]byte{
		"not a zip":         []byte("hello"),
		"legacy format":     {0x80, 0x02, 0x8a, 0x0a},
		"storage too small": tensor("J\x00\x00\x00\x01", "K\x00", "K\x04", "K\x01"),
		"view past storage": tensor("K\x10", "K\x0e", "K\x04", "K\x01"),
		"broadcast view":    tensor("K\x01", "K\x00", "J\x00\x00\x00\x40", "K\x00"),
		"huge length field": []byte("\x80\x02X\xff\xff\xff\x7f."),
		"no STOP":           []byte("\x80\x02N"),
		"unknown opcode":    []byte("\x80\x02\xff."),
		// Found by FuzzLoad: gopickle indexes out of range inside DICT.
		"gopickle panic": []byte("ctorch._utils\n_rebuild_tensor\n0(B\a\x00\x00\x000000000d."),
	}
	for name, pkl := range tests {
		t.Run(name, func(t *testing.T) {
			data := pkl
			if name != "not a zip" && name != "legacy format" {
				data = pickleZip(t, pkl)
			}
			_, err := Load(bytes.NewReader(data), int64(len(data)), LoadOptions{})
			if !errors.Is(err, ErrFormat) {
				t.Fatalf("err = %v, want ErrFormat", err)
			}
		})
	}
}

// FuzzLoad feeds arbitrary pickles (wrapped in a valid archive, so the
// mutations reach the unpickler rather than failing the zip CRC) to Load:
// it must return an error or a checkpoint, never panic, and never allocate
// beyond the input size and the tensor limit.
func FuzzLoad(f *testing.F) {
	for _, name := range []string{"relu.pt", "mlp_state.pt", "mlp_script.pt", "lstm.pt", "views.pt"} {
		data, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			f.Fatal(err)
		}
		zr, err := zip.NewReader(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			f.Fatal(err)
		}
		for _, zf := range zr.File {
			if strings.HasSuffix(zf.Name, "/data.pkl") {
				rc, _ := zf.Open()
				var b bytes.Buffer
				b.ReadFrom(rc)
				rc.Close()
				f.Add(b.Bytes())
			}
		}
	}
	f.Add([]byte("\x80\x02cos\nsystem\nq\x00X\x02\x00\x00\x00lsq\x01\x85q\x02Rq\x03."))
	// The hostile pickles of TestMemoryBombs and TestAllowClassNeverSystem.
	f.Add([]byte("\x80\x02" + strings.Repeat("(", 300) + "."))
	f.Add([]byte("\x80\x02]" + strings.Repeat("]a", 200) + "."))
	f.Add(aliasPickle(8, 16))
	f.Add(systemPickle("touch /nonexistent/x"))
	strictPanics = true
	f.Cleanup(func() { strictPanics = false })
	f.Fuzz(func(t *testing.T, pkl []byte) {
		data := pickleZip(t, pkl)
		var cp *Checkpoint
		err := fuzzMemBound(t, len(data), func() (err error) {
			cp, err = Load(bytes.NewReader(data), int64(len(data)), LoadOptions{MaxTensorBytes: 1 << 20})
			return err
		})
		if err != nil {
			return
		}
		for _, p := range cp.Params {
			_ = p.Float32s()
		}
		// Converting whatever loaded must not panic either.
		_, _ = Convert(cp, Options{})
	})
}

// fuzzMemBound runs load and fails if it allocated more than 64 MiB plus
// 64 bytes per input byte: the fuzzers check the loading limits hold.
func fuzzMemBound(t *testing.T, size int, load func() error) error {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	err := load()
	runtime.ReadMemStats(&after)
	if got, bound := after.TotalAlloc-before.TotalAlloc, uint64(64<<20+64*size); got > bound {
		t.Fatalf("loading a %d-byte input allocated %d bytes, over %d", size, got, bound)
	}
	return err
}

// FuzzLoadArchive feeds whole archives to Load and CheckArchive, seeded
// with the committed fixtures and the hostile archives of the tests
// (duplicate and case-folded entries, a second top-level folder, aliasing
// views, a small zip bomb): never a panic, never more memory than the
// limits allow. Its inputs are kilobytes, so keep the fuzzer's
// minimisation short:
//
//	go test ./convert -run '^$' -fuzz '^FuzzLoadArchive$' -fuzzminimizetime 200x -fuzztime 10m
func FuzzLoadArchive(f *testing.F) {
	names, err := filepath.Glob("testdata/*.pt")
	if err != nil || len(names) == 0 {
		f.Fatalf("fixtures: %v", err)
	}
	for _, name := range names {
		data, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	base := fixtureEntries(f, "mlp_state.pt", "archive")
	f.Add(duplicateDataPkl(f, "/nonexistent/x"))
	f.Add(makeZip(f, append([]zipEntry{{name: "archive/DATA.pkl", data: base[0].data}}, base...)))
	f.Add(makeZip(f, append([]zipEntry{{name: "other/data.pkl", data: base[0].data}}, base...)))
	f.Add(makeZip(f, []zipEntry{{name: "archive/data.pkl", data: aliasPickle(8, 1<<10)}, {name: "archive/data/0", data: make([]byte, 4<<10)}}))
	f.Add(makeZip(f, []zipEntry{{name: "archive/data.pkl", data: aliasPickle(1, 1<<19)}, {name: "archive/data/0", data: make([]byte, 2<<20), deflate: true}}))
	strictPanics = true
	f.Cleanup(func() { strictPanics = false })
	f.Fuzz(func(t *testing.T, data []byte) {
		opts := LoadOptions{MaxTensorBytes: 1 << 20}
		err := fuzzMemBound(t, len(data), func() error {
			_, err := Load(bytes.NewReader(data), int64(len(data)), opts)
			return err
		})
		cerr := CheckArchive(bytes.NewReader(data), int64(len(data)), opts)
		// What Load accepts, CheckArchive accepts.
		if err == nil && cerr != nil {
			t.Fatalf("Load accepted what CheckArchive refused: %v", cerr)
		}
	})
}

// FuzzReadSpec: a spec file is outside input too.
func FuzzReadSpec(f *testing.F) {
	for _, name := range []string{"lstm_2layer_bidir.spec.json", "mlp_state.spec.json"} {
		data, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte("layers: [{type: Sequential, layers: [{type: Linear, param: a}]}]"))
	cp, err := LoadFile("testdata/mlp_state.pt", LoadOptions{})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		spec, err := ReadSpec(bytes.NewReader(data))
		if err != nil {
			return
		}
		_, _ = Convert(cp, Options{Spec: spec})
	})
}

// FuzzReadReference: reference files are outside input.
func FuzzReadReference(f *testing.F) {
	data, err := os.ReadFile("testdata/linear.ref.json")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(data)
	f.Add([]byte(`{"cases":[{"inputs":[{"shape":[-1,-1],"data":[1]}],"outputs":[{"shape":[1],"data":[1]}]}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		ref, err := ReadReference(bytes.NewReader(data))
		if err != nil {
			return
		}
		for _, c := range ref.Cases {
			for _, in := range c.Inputs {
				if len(in.Shape) > 0 {
					_, _ = repeatBatch(in, 0, 2)
				}
			}
		}
	})
}

// TestInconsistentWeights: weights that contradict each other (here the two
// directions of a bidirectional LSTM disagree on the input size) give an
// error, never a panic.
func TestInconsistentWeights(t *testing.T) {
	w := func(shape ...int64) *Tensor {
		n := int64(1)
		for _, d := range shape {
			n *= d
		}
		return &Tensor{DType: Float32, Shape: shape, Data: make([]byte, 4*n)}
	}
	cp := &Checkpoint{Format: FormatStateDict, Params: map[string]*Tensor{
		"rnn.weight_ih_l0":         w(8, 3),
		"rnn.weight_hh_l0":         w(8, 2),
		"rnn.weight_ih_l0_reverse": w(8, 4),
		"rnn.weight_hh_l0_reverse": w(8, 2),
		"rnn.bias_ih_l0":           w(7),
	}}
	for n := range cp.Params {
		cp.Names = append(cp.Names, n)
	}
	spec, err := ReadSpec(strings.NewReader("layers: [{type: LSTM, param: rnn, batch_first: true}, {type: LastStep}]"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Convert(cp, Options{Spec: spec}); err == nil || !strings.Contains(err.Error(), "bias_ih_l0") {
		t.Fatalf("bad bias: err = %v", err)
	}
	delete(cp.Params, "rnn.bias_ih_l0")
	cp.Names = nil
	for n := range cp.Params {
		cp.Names = append(cp.Names, n)
	}
	if _, err := Convert(cp, Options{Spec: spec}); err == nil || !strings.Contains(err.Error(), "do not fit") {
		t.Fatalf("directions disagree: err = %v", err)
	}
}
