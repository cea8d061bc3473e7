package ort

import (
	"testing"

	"github.com/signalforge/signalforge/infer"
	"github.com/signalforge/signalforge/onnx/onnxtest"
	"github.com/signalforge/signalforge/tensor"
)

var infertestOpts = infer.Options{}

var smokeMLP = onnxtest.MustMLP(5, 3, 4, 2)

func smokeInput() []tensor.Tensor { return []tensor.Tensor{smokeMLP.RandomInput(2, 1)} }

// infertestSmoke loads a tiny MLP in eng, checks one run against the Go
// reference and returns the session (closed with the test).
func infertestSmoke(t *testing.T, eng *Engine) infer.Session {
	t.Helper()
	data, err := smokeMLP.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	sess, err := eng.LoadBytes(t.Context(), data, infertestOpts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sess.Close() })
	in := smokeInput()
	out, err := sess.Run(t.Context(), in)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := smokeMLP.Forward(in[0])
	got, w := out[0].Float32s(), want.Float32s()
	for i := range w {
		if d := got[i] - w[i]; d > 1e-5 || d < -1e-5 {
			t.Fatalf("output %v, want %v", got, w)
		}
	}
	return sess
}
