package quantize_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/signalforge/signalforge/onnx"
	"github.com/signalforge/signalforge/quantize"
	"github.com/signalforge/signalforge/tensor"
)

// collect reads every batch of d.
func collect(t *testing.T, d quantize.Dataset, batch int) []tensor.Tensor {
	t.Helper()
	var out []tensor.Tensor
	err := d.Each(context.Background(), batch, func(in []tensor.Tensor) error {
		out = append(out, in[0])
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func writeFile(t *testing.T, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// npy encodes a float32 or float64 array in NumPy's format.
func npy(shape []int, descr string, vals []float64) []byte {
	dims := make([]string, len(shape))
	for i, d := range shape {
		dims[i] = fmt.Sprint(d)
	}
	tuple := strings.Join(dims, ", ")
	if len(shape) == 1 {
		tuple += ","
	}
	hdr := fmt.Sprintf("{'descr': '%s', 'fortran_order': False, 'shape': (%s), }", descr, tuple)
	for (10+len(hdr)+1)%64 != 0 {
		hdr += " "
	}
	hdr += "\n"
	var b bytes.Buffer
	b.WriteString("\x93NUMPY\x01\x00")
	binary.Write(&b, binary.LittleEndian, uint16(len(hdr)))
	b.WriteString(hdr)
	for _, v := range vals {
		if descr == "<f4" {
			binary.Write(&b, binary.LittleEndian, float32(v))
		} else {
			binary.Write(&b, binary.LittleEndian, v)
		}
	}
	return b.Bytes()
}

func TestFileDatasets(t *testing.T) {
	mlp := loadFixture(t, "mlp_small.onnx") // features rsi_14, macd, macd_signal, bb_width, atr_14, obv_z, ret_1, ret_5
	s, err := quantize.SchemaOf(mlp)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Features) != 8 || s.Features[0] != "rsi_14" {
		t.Fatalf("schema %+v", s)
	}
	// Columns in another order plus extra ones: matched by name.
	var csv strings.Builder
	// A byte-order mark, as spreadsheets write it.
	csv.WriteString("\ufeffrsi_14,ticker,ret_5,ret_1,obv_z,atr_14,bb_width,macd_signal,macd\n")
	var jsonl strings.Builder
	var want []float32
	for r := range 5 {
		row := make([]float32, 8)
		for i := range row {
			row[i] = float32(r*10 + i)
		}
		want = append(want, row...)
		fmt.Fprintf(&csv, "%v,AAPL,%v,%v,%v,%v,%v,%v,%v\n", row[0], row[7], row[6], row[5], row[4], row[3], row[2], row[1])
		fmt.Fprintf(&jsonl, `{"ticker":"AAPL","rsi_14":%v,"macd":%v,"macd_signal":%v,"bb_width":%v,"atr_14":%v,"obv_z":%v,"ret_1":%v,"ret_5":%v}`+"\n",
			row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7])
	}
	vals := make([]float64, len(want))
	for i, v := range want {
		vals[i] = float64(v)
	}
	files := map[string][]byte{
		"data.csv":   []byte(csv.String()),
		"data.jsonl": []byte(jsonl.String()),
		"f4.npy":     npy([]int{5, 8}, "<f4", vals),
		"f8.npy":     npy([]int{5, 8}, "<f8", vals),
	}
	for name, content := range files {
		t.Run(name, func(t *testing.T) {
			var progress []int64
			d, err := quantize.OpenDataset(writeFile(t, name, content), mlp, quantize.DataOptions{Progress: func(n int64) { progress = append(progress, n) }})
			if err != nil {
				t.Fatal(err)
			}
			batches := collect(t, d, 2)
			if len(batches) != 3 || batches[2].Len() != 1 {
				t.Fatalf("got %d batches, want 2+2+1 rows", len(batches))
			}
			all, _ := tensor.Concat(batches)
			if !all.Shape().Equal(tensor.Shape{5, 8}) {
				t.Fatalf("shape %v", all.Shape())
			}
			for i, v := range all.Float32s() {
				if v != want[i] {
					t.Fatalf("value %d = %v, want %v", i, v, want[i])
				}
			}
			if fmt.Sprint(progress) != "[2 4 5]" {
				t.Errorf("progress %v, want [2 4 5]", progress)
			}
			if len(d.Hash()) != 64 {
				t.Errorf("hash %q", d.Hash())
			}
		})
	}

	lstm := loadFixture(t, "lstm.onnx") // [batch, 32, 16]
	t.Run("sequence-windows", func(t *testing.T) {
		ls, _ := quantize.SchemaOf(lstm)
		var b strings.Builder
		b.WriteString(strings.Join(ls.Features, ",") + "\n")
		for r := range 70 {
			for i := range 16 {
				if i > 0 {
					b.WriteByte(',')
				}
				fmt.Fprint(&b, r)
			}
			b.WriteByte('\n')
		}
		d, err := quantize.OpenDataset(writeFile(t, "seq.csv", []byte(b.String())), lstm, quantize.DataOptions{Stride: 8})
		if err != nil {
			t.Fatal(err)
		}
		all, _ := tensor.Concat(collect(t, d, 64))
		// Windows of 32 rows every 8 rows: starts 0, 8, 16, 24, 32 (ends <= 70).
		if !all.Shape().Equal(tensor.Shape{5, 32, 16}) {
			t.Fatalf("shape %v", all.Shape())
		}
		if v := all.Float32s(); v[0] != 0 || v[32*16] != 8 || v[4*32*16+31*16] != 63 {
			t.Errorf("window starts wrong: %v %v %v", v[0], v[32*16], v[4*32*16+31*16])
		}
	})
	t.Run("sequence-jsonl-arrays", func(t *testing.T) {
		ls, _ := quantize.SchemaOf(lstm)
		var parts []string
		for i, f := range ls.Features {
			steps := make([]string, 32)
			for s := range steps {
				steps[s] = fmt.Sprint(s*100 + i)
			}
			parts = append(parts, fmt.Sprintf("%q:[%s]", f, strings.Join(steps, ",")))
		}
		line := "{" + strings.Join(parts, ",") + "}\n"
		d, err := quantize.OpenDataset(writeFile(t, "seq.jsonl", []byte(line+line)), lstm, quantize.DataOptions{})
		if err != nil {
			t.Fatal(err)
		}
		all, _ := tensor.Concat(collect(t, d, 64))
		if !all.Shape().Equal(tensor.Shape{2, 32, 16}) || all.Float32s()[5*16+3] != 503 {
			t.Fatalf("shape %v value %v", all.Shape(), all.Float32s()[5*16+3])
		}
	})

	bad := map[string]string{
		"missing.csv":   "rsi_14,macd\n1,2\n",
		"nan.csv":       "rsi_14,macd,macd_signal,bb_width,atr_14,obv_z,ret_1,ret_5\n1,2,3,NaN,5,6,7,8\n",
		"text.csv":      "rsi_14,macd,macd_signal,bb_width,atr_14,obv_z,ret_1,ret_5\n1,2,3,x,5,6,7,8\n",
		"missing.jsonl": `{"rsi_14": 1}` + "\n",
		"wrong.npy":     string(npy([]int{2, 3}, "<f4", []float64{1, 2, 3, 4, 5, 6})),
		"int.npy":       strings.Replace(string(npy([]int{1, 8}, "<f4", make([]float64, 8))), "<f4", "<i4", 1),
	}
	for name, content := range bad {
		t.Run("bad/"+name, func(t *testing.T) {
			d, err := quantize.OpenDataset(writeFile(t, name, []byte(content)), mlp, quantize.DataOptions{})
			if err == nil {
				err = d.Each(context.Background(), 4, func([]tensor.Tensor) error { return nil })
			}
			if !errors.Is(err, quantize.ErrData) {
				t.Errorf("err = %v, want ErrData", err)
			}
			t.Log(err)
		})
	}
}

func FuzzReadCSV(f *testing.F) {
	f.Add([]byte("a,b\n1,2\n3,4\n"))
	f.Add([]byte("b,a\n1e3,-2\n"))
	f.Add([]byte("a,\"b\"\n1,\"2\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		_ = quantize.ReadCSV(bytes.NewReader(data), []string{"a", "b"}, 2, func(row []float32) error {
			if len(row) != 2 {
				t.Fatalf("row of %d", len(row))
			}
			for _, v := range row {
				if math.IsNaN(float64(v)) {
					t.Fatal("NaN accepted")
				}
			}
			return nil
		})
	})
}

func FuzzReadJSONL(f *testing.F) {
	f.Add([]byte(`{"a":1,"b":2}` + "\n" + `{"a":[1,2],"b":[3,4]}`))
	f.Add([]byte(`{"a":[],"b":[]}`))
	f.Add([]byte(`{"a":1e999,"b":2}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		_ = quantize.ReadJSONL(bytes.NewReader(data), []string{"a", "b"}, 2, func(v []float32, steps int) error {
			if len(v) != 2*max(steps, 1) {
				t.Fatalf("%d values for %d steps", len(v), steps)
			}
			return nil
		})
	})
}

func FuzzReadNPY(f *testing.F) {
	f.Add(npy([]int{2, 3}, "<f4", []float64{1, 2, 3, 4, 5, 6}))
	f.Add(npy([]int{1, 2}, "<f8", []float64{1, 2}))
	f.Add(npy([]int{4}, "<f4", []float64{1, 2, 3, 4}))
	f.Fuzz(func(t *testing.T, data []byte) {
		_ = quantize.ReadNPY(bytes.NewReader(data), func(shape []int64, row []float32) error {
			n := int64(1)
			for _, d := range shape[1:] {
				n *= d
			}
			if int64(len(row)) != n {
				t.Fatalf("row of %d for shape %v", len(row), shape)
			}
			return nil
		})
	})
}

// The committed fixtures must be exactly what the script makes with real
// PyTorch (Debian's /usr/bin/python3 with torch 1.13 and onnx; make test
// installs them). This keeps the fixtures honest and the script working.
func TestFixturesReproducible(t *testing.T) {
	if testing.Short() {
		t.Skip("runs PyTorch (about 5 s)")
	}
	dir := t.TempDir()
	cmd := exec.Command("/usr/bin/python3", "testdata/make_fixtures.py", "--out", dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make_fixtures.py needs Debian's python3-torch and python3-onnx: %v\n%s", err, out)
	}
	made, err := filepath.Glob(filepath.Join(dir, "*.onnx"))
	if err != nil || len(made) < 7 {
		t.Fatalf("script made %v (%v)", made, err)
	}
	csvs, err := filepath.Glob(filepath.Join(dir, "*.csv"))
	if err != nil || len(csvs) == 0 {
		t.Fatalf("script made no calibration CSV (%v)", err)
	}
	made = append(made, csvs...)
	for _, p := range made {
		got, _ := os.ReadFile(p)
		want, err := os.ReadFile(filepath.Join("testdata", filepath.Base(p)))
		if err != nil {
			t.Errorf("%s is made by the script but not committed", filepath.Base(p))
			continue
		}
		if !bytes.Equal(got, want) {
			t.Errorf("testdata/%s differs from the script's output; regenerate with /usr/bin/python3 quantize/testdata/make_fixtures.py", filepath.Base(p))
		}
	}
}

// Calibration files must be regular files: a FIFO named calib.csv used to
// block OpenFile, and /dev/zero behind a .csv link to be hashed forever.
func TestOpenFileRefusesNonRegularFiles(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "calib.csv")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	zero := filepath.Join(dir, "zero.npy")
	if err := os.Symlink("/dev/zero", zero); err != nil {
		t.Fatal(err)
	}
	s := quantize.Schema{Shape: []int64{2}, Features: []string{"a", "b"}}
	for _, p := range []string{fifo, zero} {
		_, err := quantize.OpenFile(p, s, quantize.DataOptions{})
		if !errors.Is(err, onnx.ErrFileRefused) || !strings.Contains(err.Error(), p+": not a regular file") {
			t.Errorf("OpenFile(%s): error %v; want %q", p, err, p+": not a regular file")
		}
	}
}
