package quantize

import (
	"context"
	"fmt"
	"math"

	"google.golang.org/protobuf/proto"

	"github.com/signalforge/signalforge/infer"
	"github.com/signalforge/signalforge/onnx"
	"github.com/signalforge/signalforge/tensor"
)

// Range is a calibrated activation range. It always contains 0 (so that 0
// is exactly representable, as padding and ReLU need).
type Range struct {
	Min, Max float32
}

// calibrate runs the fp32 model with the selected nodes' activations as extra
// outputs over calib and returns a range per activation tensor.
func (q *Quantizer) calibrate(ctx context.Context, model *onnx.ModelProto, sel []*onnx.NodeProto, calib Dataset) (map[string]Range, error) {
	gr, err := newGraph(proto.Clone(model).(*onnx.ModelProto))
	if err != nil {
		return nil, err
	}
	var acts []string
	seen := map[string]bool{}
	for _, n := range sel {
		taps := activationInputs(gr, n)
		if dst, _ := q.convOutput(gr, n); dst != "" {
			taps = append(taps, dst)
		}
		for _, a := range taps {
			if !seen[a] {
				seen[a] = true
				acts = append(acts, a)
			}
		}
	}
	sess, err := loadModel(ctx, q.cfg.Engine, withOutputs(gr.m, acts))
	if err != nil {
		return nil, err
	}
	defer sess.Close()
	cols := map[string]collector{}
	for _, a := range acts {
		if q.cfg.Calibration == MinMax {
			cols[a] = &minMax{min: math.MaxFloat32, max: -math.MaxFloat32}
		} else {
			cols[a] = &histogram{bins: make([]float64, q.cfg.Bins), min: math.MaxFloat32, max: -math.MaxFloat32}
		}
	}
	err = calib.Each(ctx, q.cfg.BatchSize, func(in []tensor.Tensor) error {
		vals, err := runNamed(ctx, sess, in)
		if err != nil {
			return err
		}
		for i, info := range sess.Inputs() {
			vals[info.Name] = in[i] // graph inputs are activations too
		}
		for _, a := range acts {
			t, ok := vals[a]
			if !ok || t.DType() != tensor.Float32 {
				return fmt.Errorf("%w: activation %q is not a float32 tensor", ErrModel, a)
			}
			cols[a].add(t.Float32s())
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("calibration: %w", err)
	}
	ranges := map[string]Range{}
	for _, a := range acts {
		var r Range
		switch c := cols[a].(type) {
		case *minMax:
			r = Range{c.min, c.max}
		case *histogram:
			var t float32
			if q.cfg.Calibration == Percentile {
				t = c.percentile(q.cfg.Percentile)
			} else {
				t = c.entropy(128)
			}
			r = Range{max(c.min, -t), min(c.max, t)}
		}
		r.Min, r.Max = min(r.Min, 0), max(r.Max, 0)
		ranges[a] = r
	}
	return ranges, nil
}

// activationInputs are the inputs of n that get QDQ pairs: every input that
// is not an initializer, except a Gemm/Conv bias.
func activationInputs(gr *graph, n *onnx.NodeProto) []string {
	var a []string
	for i, in := range n.Input {
		if in == "" || gr.inits[in] != nil {
			continue
		}
		if i >= 2 && (n.GetOpType() == "Gemm" || n.GetOpType() == "Conv") {
			continue
		}
		if n.GetOpType() == "LSTM" && i > 0 {
			continue
		}
		a = append(a, in)
	}
	return a
}

type collector interface{ add([]float32) }

type minMax struct{ min, max float32 }

func (c *minMax) add(v []float32) {
	for _, x := range v {
		c.min, c.max = min(c.min, x), max(c.max, x)
	}
}

// histogram collects a histogram of |x| over [0, top], widening (and
// re-binning the counts so far) when a larger value arrives, so calibration
// streams in one pass.
type histogram struct {
	bins     []float64
	top      float32
	min, max float32
}

func (h *histogram) add(v []float32) {
	var m float32
	for _, x := range v {
		h.min, h.max = min(h.min, x), max(h.max, x)
		m = max(m, float32(math.Abs(float64(x))))
	}
	if m > h.top {
		if h.top > 0 {
			old := h.bins
			h.bins = make([]float64, len(old))
			ow := float64(h.top) / float64(len(old))
			nw := float64(m) / float64(len(old))
			for i, c := range old {
				j := min(int((float64(i)+0.5)*ow/nw), len(old)-1)
				h.bins[j] += c
			}
		}
		h.top = m
	}
	if h.top == 0 {
		h.bins[0] += float64(len(v))
		return
	}
	w := float64(h.top) / float64(len(h.bins))
	for _, x := range v {
		j := min(int(math.Abs(float64(x))/w), len(h.bins)-1)
		h.bins[j]++
	}
}

// percentile returns the |x| below which p percent of the values lie.
func (h *histogram) percentile(p float64) float32 {
	var total float64
	for _, c := range h.bins {
		total += c
	}
	want := total * p / 100
	var cum float64
	w := float64(h.top) / float64(len(h.bins))
	for i, c := range h.bins {
		cum += c
		if cum >= want {
			return float32(float64(i+1) * w)
		}
	}
	return h.top
}

// entropy returns the clipping threshold of |x| that minimises
// KL(P‖Q) where P is the clipped reference distribution (outliers folded
// into the last bin) and Q is P quantized to levels bins and expanded back
// (the TensorRT calibration algorithm).
//
// Bin 0 is left out of the comparison: values near zero (all of a ReLU's
// negative half) are represented well at any threshold, and their mass would
// otherwise pull the threshold far too low for post-ReLU activations.
func (h *histogram) entropy(levels int) float32 {
	nb := len(h.bins)
	if h.top == 0 || nb <= levels {
		return h.top
	}
	w := float64(h.top) / float64(nb)
	var tail float64
	for _, c := range h.bins[levels:] {
		tail += c
	}
	best, bestKL := nb, math.Inf(1)
	p := make([]float64, nb)
	qd := make([]float64, nb)
	// Try about 256 thresholds: finer steps do not change the result
	// measurably and the search is quadratic in the bins.
	stride := max(1, (nb-levels)/256)
	for i := levels; i <= nb; i++ {
		copy(p, h.bins[:i])
		p[i-1] += tail // values beyond the threshold clip to it
		if i < nb {
			tail -= h.bins[i]
		}
		if (i-levels)%stride != 0 && i != nb {
			continue
		}
		// Q: merge bins[:i] into levels chunks, spread each chunk's mass
		// evenly over the chunk's non-empty bins.
		for j := range levels {
			lo, hi := j*i/levels, (j+1)*i/levels
			var sum float64
			nz := 0
			for k := lo; k < hi; k++ {
				sum += h.bins[k]
				if h.bins[k] > 0 {
					nz++
				}
			}
			for k := lo; k < hi; k++ {
				qd[k] = 0
				if h.bins[k] > 0 {
					qd[k] = sum / float64(nz)
				}
			}
		}
		kl := klDiv(p[1:i], qd[1:i])
		if kl < bestKL {
			best, bestKL = i, kl
		}
	}
	return float32(float64(best) * w)
}

func klDiv(p, q []float64) float64 {
	var sp, sq float64
	for i := range p {
		sp += p[i]
		sq += q[i]
	}
	if sp == 0 || sq == 0 {
		return math.Inf(1)
	}
	var kl float64
	for i := range p {
		if p[i] == 0 {
			continue
		}
		pi := p[i] / sp
		qi := q[i] / sq
		if qi == 0 {
			qi = 1e-12
		}
		kl += pi * math.Log(pi/qi)
	}
	return kl
}

// loadModel serializes m and loads it into eng.
func loadModel(ctx context.Context, eng infer.Engine, m *onnx.ModelProto) (infer.Session, error) {
	if eng == nil {
		return nil, fmt.Errorf("%w: no Engine", ErrConfig)
	}
	b, err := proto.Marshal(m)
	if err != nil {
		return nil, err
	}
	return eng.LoadBytes(ctx, b, infer.Options{})
}

// runNamed runs sess and returns its outputs by name.
func runNamed(ctx context.Context, sess infer.Session, in []tensor.Tensor) (map[string]tensor.Tensor, error) {
	out, err := sess.Run(ctx, in)
	if err != nil {
		return nil, err
	}
	m := make(map[string]tensor.Tensor, len(out))
	for i, o := range sess.Outputs() {
		m[o.Name] = out[i]
	}
	return m, nil
}
