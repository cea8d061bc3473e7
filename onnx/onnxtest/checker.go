package onnxtest

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// Python is the interpreter CheckModel uses: Debian's /usr/bin/python3,
// which sees the python3-onnx package (the python3 first on PATH may be a
// different interpreter). $SIGNALFORGE_PYTHON overrides it.
const Python = "/usr/bin/python3"

const checkScript = `
import sys
try:
    import onnx
except ImportError as e:
    print("MISSING: " + str(e))
    sys.exit(3)
m = onnx.load(sys.argv[1])
onnx.checker.check_model(m, full_check=True)
print("ok onnx", onnx.__version__)
`

// CheckModel runs the reference ONNX checker (onnx.checker.check_model with
// full_check, which includes shape inference) on the model file at path and
// fails the test if the model is invalid. If the interpreter or its onnx
// module is missing the test fails, never skips: `make test` installs them.
func CheckModel(tb testing.TB, path string) {
	tb.Helper()
	py := Python
	if p := os.Getenv("SIGNALFORGE_PYTHON"); p != "" {
		py = p
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, py, "-c", checkScript, path).CombinedOutput()
	text := strings.TrimSpace(string(out))
	if err != nil {
		if ee, ok := err.(*exec.ExitError); (ok && ee.ExitCode() == 3) || !ok {
			tb.Fatalf("onnxtest: the ONNX checker needs %s with the onnx module (run `make deps-test`, or apt-get install python3-onnx): %v %s", py, err, text)
		}
		tb.Fatalf("onnxtest: onnx.checker rejected %s: %v\n%s", path, err, text)
	}
}
