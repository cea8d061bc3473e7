package convert

import (
	"archive/zip"
	"bytes"
	"compress/flate"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// zipEntry is one entry of an archive made by a test.
type zipEntry struct {
	name    string
	data    []byte
	deflate bool
}

// makeZip writes the entries in order; equal names are written as given
// (archive/zip does not refuse them), which is what a hostile file does.
func makeZip(t testing.TB, entries []zipEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	zw.RegisterCompressor(zip.Deflate, func(w io.Writer) (io.WriteCloser, error) {
		return flate.NewWriter(w, flate.BestCompression)
	})
	for _, e := range entries {
		m := zip.Store
		if e.deflate {
			m = zip.Deflate
		}
		w, err := zw.CreateHeader(&zip.FileHeader{Name: e.name, Method: m})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(e.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// fixtureEntries returns a committed fixture's entries renamed under
// folder ("archive/data.pkl", …).
func fixtureEntries(t testing.TB, name, folder string) []zipEntry {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	zr, err := zip.NewReader(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	var out []zipEntry
	for _, f := range zr.File {
		rc, err := f.Open()
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		_, rest, _ := strings.Cut(f.Name, "/")
		out = append(out, zipEntry{name: folder + "/" + rest, data: b})
	}
	return out
}

// systemPickle is os.system(cmd) as a protocol-2 pickle: what loading it
// with an unrestricted unpickler runs.
func systemPickle(cmd string) []byte {
	var b bytes.Buffer
	b.WriteString("\x80\x02cos\nsystem\nX")
	binary.Write(&b, binary.LittleEndian, uint32(len(cmd)))
	b.WriteString(cmd)
	b.WriteString("\x85R.")
	return b.Bytes()
}

// duplicateDataPkl is the D1 archive: two entries named archive/data.pkl,
// the first running `touch marker`, the last mlp_state's benign state dict.
func duplicateDataPkl(t testing.TB, marker string) []byte {
	entries := []zipEntry{{name: "archive/data.pkl", data: systemPickle("touch " + marker)}}
	return makeZip(t, append(entries, fixtureEntries(t, "mlp_state.pt", "archive")...))
}

func writeTemp(t *testing.T, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func assertNoFile(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s exists (err %v): the file's payload ran", path, err)
	}
}

// unsafeTorchLoad loads path with torch.load(weights_only=False), as the
// bridge did before: the control showing a test's payload is live.
func unsafeTorchLoad(t *testing.T, path string) {
	t.Helper()
	torchBridgeInternal(t)
	out, _ := exec.Command(DefaultPython, "-c",
		"import sys, torch\ntry:\n  torch.load(sys.argv[1], weights_only=False)\nexcept Exception as e:\n  print(e)", path).CombinedOutput()
	t.Logf("unsafe torch.load: %s", bytes.TrimSpace(out))
}

// torchBridgeInternal fails the test when PyTorch is missing (as
// torchBridge does in the external tests).
func torchBridgeInternal(t *testing.T) *Bridge {
	t.Helper()
	if os.Getenv("SIGNALFORGE_NO_TORCH") == "1" {
		t.Skip("SIGNALFORGE_NO_TORCH=1: skipping the comparison with live PyTorch")
	}
	b := &Bridge{}
	if _, err := b.Check(context.Background()); err != nil {
		t.Fatal(err)
	}
	return b
}

// runBridgeScript runs bridge.py on path directly, without the Go checks
// Bridge makes first: what PyTorch's side does on its own.
func runBridgeScript(t *testing.T, req bridgeRequest) bridgeReply {
	t.Helper()
	req.Modules = moduleFiles
	in, _ := json.Marshal(req)
	cmd := exec.Command(DefaultPython, "-c", string(bridgeScript))
	cmd.Stdin = bytes.NewReader(in)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("bridge.py: %v", err)
	}
	var rep bridgeReply
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("bridge.py reply %q: %v", out, err)
	}
	return rep
}

var mlpInput = [][]RefTensor{{{Name: "input", Shape: []int64{1, 8}, Data: make([]float64, 8)}}}

// TestDuplicateEntryPayloadNeverRuns is D1: a zip with two entries named
// archive/data.pkl, the first (the one torch.load took) running os.system,
// the last a benign state dict (the one the Go reader took). Conversion
// and every bridge path refuse it and the payload never runs; bridge.py
// on its own refuses it too.
func TestDuplicateEntryPayloadNeverRuns(t *testing.T) {
	b := torchBridgeInternal(t)
	ctx := context.Background()
	marker := filepath.Join(t.TempDir(), "pwned")
	path := writeTemp(t, "hostile.pt", duplicateDataPkl(t, marker))
	spec, err := ReadSpecFile("testdata/mlp_state.spec.json")
	if err != nil {
		t.Fatal(err)
	}

	_, err = ConvertFile(path, Options{Spec: spec})
	if !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), `two entries named "archive/data.pkl"`) {
		t.Errorf("ConvertFile: %v; want the ambiguous archive refused", err)
	}
	for _, bb := range []*Bridge{b, {TrustPickle: true}} {
		_, err = bb.Reference(ctx, path, spec, mlpInput)
		if !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), "two entries named") {
			t.Errorf("Reference (trust %v): %v; want the ambiguous archive refused", bb.TrustPickle, err)
		}
		_, err = bb.Export(ctx, path, []int64{-1, 8}, 0, Options{Spec: spec})
		if !errors.Is(err, ErrFormat) {
			t.Errorf("Export (trust %v): %v; want the ambiguous archive refused", bb.TrustPickle, err)
		}
		_, err = bb.TorchTimes(ctx, path, spec, []Case{{Inputs: mlpInput[0]}}, 1, 0)
		if !errors.Is(err, ErrFormat) {
			t.Errorf("TorchTimes (trust %v): %v; want the ambiguous archive refused", bb.TrustPickle, err)
		}
	}
	// bridge.py by itself (no Go check in front) refuses it as well.
	rep := runBridgeScript(t, bridgeRequest{Cmd: "reference", Model: path, Spec: specJSON(spec), Inputs: mlpInput[0], Threads: 1})
	if !strings.Contains(rep.Error, "ambiguous archive") {
		t.Errorf("bridge.py alone: %+v; want the ambiguous archive refused", rep)
	}
	assertNoFile(t, marker)
}

// makeWholeModelPayload saves, with real PyTorch, an nn.Sequential carrying
// an attribute whose __reduce__ runs `touch marker`: a whole-model pickle
// (torch.save(model)) that runs code when torch.load unpickles it.
func makeWholeModelPayload(t *testing.T, marker string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "model.pt")
	script := `import os, sys, torch
class Payload:
    def __reduce__(self):
        return (os.system, ("touch " + sys.argv[2],))
m = torch.nn.Sequential(torch.nn.Linear(8, 4))
m.payload = Payload()
torch.save(m, sys.argv[1])`
	if out, err := exec.Command(DefaultPython, "-c", script, path, marker).CombinedOutput(); err != nil {
		t.Fatalf("making the payload: %v\n%s", err, out)
	}
	return path
}

// TestWholeModelPayloadNeedsTrust: a whole-model pickle whose pickle runs
// code reaches PyTorch's unrestricted unpickler only with TrustPickle.
// Without it the bridge refuses it (with the reason and the flag), through
// the Go checks and in bridge.py alone, and the payload never runs. The
// control at the end shows the payload is live.
func TestWholeModelPayloadNeedsTrust(t *testing.T) {
	b := torchBridgeInternal(t)
	ctx := context.Background()
	marker := filepath.Join(t.TempDir(), "pwned")
	path := makeWholeModelPayload(t, marker)
	spec, err := ReadSpec(strings.NewReader(`{"layers": [{"type": "Linear", "param": "0"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []*Spec{nil, spec} {
		_, err := b.Reference(ctx, path, s, mlpInput)
		if !errors.Is(err, ErrUntrusted) || !errors.Is(err, ErrRefused) ||
			!strings.Contains(err.Error(), "posix.system") || !strings.Contains(err.Error(), "--trust-pickle") ||
			strings.Contains(err.Error(), "--allow-class posix.system") {
			t.Errorf("Reference (spec %v): %v; want ErrUntrusted naming posix.system and --trust-pickle", s != nil, err)
		}
		_, err = b.Export(ctx, path, []int64{-1, 8}, 0, Options{Spec: s})
		if !errors.Is(err, ErrUntrusted) {
			t.Errorf("Export (spec %v): %v; want ErrUntrusted", s != nil, err)
		}
		// bridge.py alone: the restricted unpickler refuses it.
		rep := runBridgeScript(t, bridgeRequest{Cmd: "reference", Model: path, Spec: specJSON(s), Inputs: mlpInput[0], Threads: 1})
		if !rep.Refused || rep.RefusedClass != "posix.system" {
			t.Errorf("bridge.py alone (spec %v): %+v; want refused posix.system", s != nil, rep)
		}
	}
	assertNoFile(t, marker)
	unsafeTorchLoad(t, path)
	if _, err := os.Stat(marker); err != nil {
		t.Fatalf("control: unrestricted torch.load did not run the payload (%v), so the test proves nothing", err)
	}
}

// TestTorchScriptDispatchPayload: torch.load hands any archive holding a
// constants.pkl to torch.jit.load, whatever weights_only says. bridge.py
// must not take that route: an archive with a constants.pkl whose data.pkl
// runs os.system is refused and the payload never runs.
func TestTorchScriptDispatchPayload(t *testing.T) {
	torchBridgeInternal(t)
	marker := filepath.Join(t.TempDir(), "pwned")
	entries := []zipEntry{
		{name: "archive/data.pkl", data: systemPickle("touch " + marker)},
		{name: "archive/constants.pkl", data: []byte("\x80\x02).")},
		{name: "archive/version", data: []byte("3\n")},
	}
	path := writeTemp(t, "script.pt", makeZip(t, entries))
	spec := map[string]any{"layers": []any{map[string]any{"type": "Linear", "param": "0"}}}
	for _, s := range []map[string]any{nil, spec} {
		rep := runBridgeScript(t, bridgeRequest{Cmd: "reference", Model: path, Spec: s, Inputs: mlpInput[0], Threads: 1})
		if rep.Error == "" {
			t.Errorf("bridge.py (spec %v): no error", s != nil)
		}
	}
	assertNoFile(t, marker)
}

// TestBridgeTrust: the trusted paths still work for files one made (a
// custom class through PyTorch's own unpickler, a TorchScript archive run
// for its code), and a TorchScript archive without a spec is refused
// untrusted, since its forward is code from the file.
func TestBridgeTrust(t *testing.T) {
	b := torchBridgeInternal(t)
	ctx := context.Background()
	want, err := ReadReferenceFile("testdata/mlp_script.ref.json")
	if err != nil {
		t.Fatal(err)
	}
	in := [][]RefTensor{want.Cases[0].Inputs}
	_, err = b.Reference(ctx, "testdata/mlp_script.pt", nil, in)
	if !errors.Is(err, ErrUntrusted) || !strings.Contains(err.Error(), "TorchScript code") {
		t.Errorf("TorchScript without spec, untrusted: %v; want ErrUntrusted", err)
	}
	trusted := &Bridge{TrustPickle: true}
	got, err := trusted.Reference(ctx, "testdata/mlp_script.pt", nil, in)
	if err != nil {
		t.Fatal(err)
	}
	if g, w := got.Cases[0].Outputs[0].Data, want.Cases[0].Outputs[0].Data; len(g) != len(w) || fmt.Sprintf("%.5f", g) != fmt.Sprintf("%.5f", w) {
		t.Errorf("trusted TorchScript: %v, want %v", g, w)
	}
	cref, err := ReadReferenceFile("testdata/custom_class.ref.json")
	if err != nil {
		t.Fatal(err)
	}
	trusted.TorchModule = "testdata/make_fixtures.py"
	if _, err := trusted.Reference(ctx, "testdata/custom_class.pt", nil, [][]RefTensor{cref.Cases[0].Inputs}); err != nil {
		t.Errorf("trusted custom class: %v", err)
	}
	// Untrusted, the custom class is refused by name, with both remedies.
	b.TorchModule = "testdata/make_fixtures.py"
	_, err = b.Reference(ctx, "testdata/custom_class.pt", nil, [][]RefTensor{cref.Cases[0].Inputs})
	if !errors.Is(err, ErrUntrusted) || !strings.Contains(err.Error(), "--allow-class __main__.Forecaster") {
		t.Errorf("untrusted custom class: %v", err)
	}
	// An allowed class of the user's must not reach beyond __main__ and
	// the user's modules.
	b.Load.AllowClasses = []string{"os.system"}
	if _, err := b.Reference(ctx, "testdata/custom_class.pt", nil, [][]RefTensor{cref.Cases[0].Inputs}); !errors.Is(err, ErrRefused) {
		t.Errorf("AllowClasses os.system: %v; want it refused", err)
	}
}

// TestArchiveAmbiguity: every archive two zip readers could read
// differently is refused before anything is unpickled.
func TestArchiveAmbiguity(t *testing.T) {
	base := fixtureEntries(t, "mlp_state.pt", "archive")
	with := func(extra ...zipEntry) []zipEntry { return append(append([]zipEntry{}, extra...), base...) }
	rename := func(from, to string) []zipEntry {
		out := append([]zipEntry{}, base...)
		for i := range out {
			if out[i].name == from {
				out[i].name = to
			}
		}
		return out
	}
	pkl := base[0].data
	tests := map[string]struct {
		entries []zipEntry
		want    string
	}{
		"duplicate data.pkl":    {with(zipEntry{name: "archive/data.pkl", data: pkl}), "two entries named"},
		"duplicate storage":     {with(zipEntry{name: "archive/data/0", data: make([]byte, 192)}), "two entries named"},
		"case duplicate":        {with(zipEntry{name: "archive/DATA.pkl", data: pkl}), "differ only in case"},
		"second folder":         {with(zipEntry{name: "other/data.pkl", data: pkl}), "two top-level folders"},
		"root entry":            {with(zipEntry{name: "data.pkl", data: pkl}), "outside a top-level folder"},
		"dot-dot":               {with(zipEntry{name: "archive/../archive/data.pkl", data: pkl}), `".." component`},
		"dot":                   {rename("archive/data/0", "archive/./data/0"), `".." component`},
		"leading slash":         {with(zipEntry{name: "/archive/x", data: pkl}), "empty path component"},
		"doubled slash":         {rename("archive/data/0", "archive/data//0"), "empty path component"},
		"backslash":             {with(zipEntry{name: `archive/data\0`, data: pkl}), "backslash"},
		"folder entry":          {with(zipEntry{name: "archive/data/"}), "is a folder"},
		"control character":     {with(zipEntry{name: "archive/data.pkl\x00", data: pkl}), "control character"},
		"prefix and other root": {with(zipEntry{name: "archive2/data.pkl", data: pkl}), "two top-level folders"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			data := makeZip(t, tt.entries)
			_, err := Load(bytes.NewReader(data), int64(len(data)), LoadOptions{})
			if !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Load: %v; want ErrFormat with %q", err, tt.want)
			}
			if err := CheckArchive(bytes.NewReader(data), int64(len(data)), LoadOptions{}); !errors.Is(err, ErrFormat) {
				t.Fatalf("CheckArchive: %v; want ErrFormat", err)
			}
		})
	}
	// The fixture itself, re-made the same way, loads.
	data := makeZip(t, base)
	if _, err := Load(bytes.NewReader(data), int64(len(data)), LoadOptions{}); err != nil {
		t.Fatalf("rebuilt fixture: %v", err)
	}
}

// TestAllowClassNeverSystem is D11: the "class not allowed" hint suggests
// --allow-class only for a class of the user's own code, and
// LoadOptions.AllowClasses refuses system modules and functions outright.
func TestAllowClassNeverSystem(t *testing.T) {
	classPickle := func(module, name string) []byte {
		return []byte("\x80\x02c" + module + "\n" + name + "\nq\x00)\x81q\x01}q\x02b.")
	}
	for _, full := range []string{"os.system", "posix.system", "builtins.eval", "__builtin__.exec", "subprocess.Popen",
		"subprocess.check_output", "torch.nn.modules.conv.Conv2d", "shutil.rmtree", "runpy.run_path", "importlib.import_module"} {
		mod, name := full[:strings.LastIndexByte(full, '.')], full[strings.LastIndexByte(full, '.')+1:]
		data := pickleZip(t, classPickle(mod, name))
		_, err := Load(bytes.NewReader(data), int64(len(data)), LoadOptions{})
		if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), full) || strings.Contains(err.Error(), "--allow-class") {
			t.Errorf("%s: %v; want refused without an --allow-class hint", full, err)
		}
		opts := LoadOptions{AllowClasses: []string{full}}
		if err := opts.Validate(); !errors.Is(err, ErrRefused) {
			t.Errorf("AllowClasses %s: Validate %v; want ErrRefused", full, err)
		}
		if _, err := Load(bytes.NewReader(data), int64(len(data)), opts); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "only classes of your own code") {
			t.Errorf("AllowClasses %s: Load %v; want it refused", full, err)
		}
	}
	for _, full := range []string{"__main__.Forecaster", "mymodels.nets.Forecaster"} {
		mod, name := full[:strings.LastIndexByte(full, '.')], full[strings.LastIndexByte(full, '.')+1:]
		data := pickleZip(t, classPickle(mod, name))
		_, err := Load(bytes.NewReader(data), int64(len(data)), LoadOptions{})
		if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "--allow-class "+full) {
			t.Errorf("%s: %v; want the --allow-class hint", full, err)
		}
		opts := LoadOptions{AllowClasses: []string{full}}
		if err := opts.Validate(); err != nil {
			t.Errorf("AllowClasses %s: %v", full, err)
		}
	}
}

// memBound runs load and fails the test if it allocated more than 64 MiB
// plus k times size (runtime.MemStats.TotalAlloc: every byte allocated,
// freed or not, so the bound holds for the peak too). Tests using it do
// not run in parallel.
func memBound(t *testing.T, size int64, k int64, load func() error) error {
	t.Helper()
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	err := load()
	runtime.ReadMemStats(&after)
	got := after.TotalAlloc - before.TotalAlloc
	bound := uint64(64<<20 + k*size)
	t.Logf("file %d bytes: allocated %d bytes (bound %d)", size, got, bound)
	if got > bound {
		t.Errorf("allocated %d bytes for a %d-byte file, over %d", got, size, bound)
	}
	return err
}

// aliasPickle is a state dict of n tensors, each a full view of one
// storage "0" of numel float32s.
func aliasPickle(n int, numel uint32) []byte {
	var b bytes.Buffer
	b.WriteString("\x80\x02}(")
	for i := 0; i < n; i++ {
		b.WriteString(fmt.Sprintf("X%sctorch._utils\n_rebuild_tensor_v2\n(", le32str(fmt.Sprintf("w%d", i))))
		b.WriteString("(X" + le32str("storage") + "ctorch\nFloatStorage\nX" + le32str("0") + "X" + le32str("cpu") + "J")
		binary.Write(&b, binary.LittleEndian, numel)
		b.WriteString("tQK\x00(J")
		binary.Write(&b, binary.LittleEndian, numel)
		b.WriteString("t(K\x01t\x89ccollections\nOrderedDict\n)RtR")
	}
	b.WriteString("u.")
	return b.Bytes()
}

func le32str(s string) string {
	var n [4]byte
	binary.LittleEndian.PutUint32(n[:], uint32(len(s)))
	return string(n[:]) + s
}

// TestMemoryBombs is D5: files whose loading used to take gigabytes are
// refused with a LimitError naming the limit, and loading them stays
// within 64 MiB plus a small multiple of the file's size.
func TestMemoryBombs(t *testing.T) {
	const storage = 16 << 20 // float32s: 64 MiB
	tests := []struct {
		name  string
		data  func() []byte
		opts  LoadOptions
		limit string
	}{
		{"MARK bomb", func() []byte {
			return pickleZip(t, []byte("\x80\x02"+strings.Repeat("(", 60000)+"."))
		}, LoadOptions{}, "MaxPickleDepth"},
		{"stack bomb", func() []byte {
			return pickleZip(t, []byte("\x80\x02"+strings.Repeat("N", 1<<17)+"."))
		}, LoadOptions{}, "MaxPickleStack"},
		{"memo bomb", func() []byte {
			var b bytes.Buffer
			b.WriteString("\x80\x02N")
			for i := 0; i < 1<<16+1; i++ {
				b.WriteByte('r')
				binary.Write(&b, binary.LittleEndian, uint32(i))
			}
			b.WriteString(".")
			return pickleZip(t, b.Bytes())
		}, LoadOptions{MaxPickleMemo: 1 << 16}, "MaxPickleMemo"},
		{"values bomb", func() []byte {
			return pickleZip(t, []byte("\x80\x02]"+strings.Repeat("]a", 1<<16)+"."))
		}, LoadOptions{MaxPickleValues: 1 << 16}, "MaxPickleValues"},
		// 64 views of one 64 MiB storage, deflated: a 66 KB file that
		// materialised 4 GiB.
		{"aliasing views, deflated", func() []byte {
			return makeZip(t, []zipEntry{{name: "archive/data.pkl", data: aliasPickle(64, storage)},
				{name: "archive/data/0", data: make([]byte, 4*storage), deflate: true}})
		}, LoadOptions{}, "MaxExpansion"},
		// The same stored (as torch.save does): the views are the bomb.
		{"aliasing views, stored", func() []byte {
			return makeZip(t, []zipEntry{{name: "archive/data.pkl", data: aliasPickle(64, storage/4)},
				{name: "archive/data/0", data: make([]byte, storage)}})
		}, LoadOptions{}, "MaxExpansion"},
		{"aliasing views, explicit cap", func() []byte {
			return makeZip(t, []zipEntry{{name: "archive/data.pkl", data: aliasPickle(64, storage/4)},
				{name: "archive/data/0", data: make([]byte, storage)}})
		}, LoadOptions{MaxExpansion: 1 << 20, MaxTensorBytes: 40 << 20}, "MaxTensorBytes"},
		// A zip bomb: 256 MiB of zeros deflated to about 256 KB.
		{"zip bomb", func() []byte {
			return makeZip(t, []zipEntry{{name: "archive/data.pkl", data: aliasPickle(1, 1<<26)},
				{name: "archive/data/0", data: make([]byte, 1<<28), deflate: true}})
		}, LoadOptions{}, "MaxExpansion"},
		{"pickle zip bomb", func() []byte {
			return makeZip(t, []zipEntry{{name: "archive/data.pkl", data: append([]byte("\x80\x02N"), append(bytes.Repeat([]byte{'2', '0'}, 30<<20), '.')...), deflate: true}})
		}, LoadOptions{}, "MaxExpansion"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := tt.data()
			err := memBound(t, int64(len(data)), 10, func() error {
				_, err := Load(bytes.NewReader(data), int64(len(data)), tt.opts)
				return err
			})
			var le *LimitError
			if !errors.As(err, &le) || !errors.Is(err, ErrLimit) || le.Limit != tt.limit ||
				!strings.Contains(err.Error(), "-load-limit "+tt.limit+"=") {
				t.Fatalf("err = %v; want a LimitError on %s", err, tt.limit)
			}
			t.Log(err)
		})
	}
}
