package server

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/signalforge/signalforge/manager"
	"github.com/signalforge/signalforge/tensor"
)

// execute runs a model version on its inputs — the one execution path of
// the native API and OIP v2. The runner is the version's batcher when the
// model's first input has its batch on axis 0 (so requests can share a
// run), else its session. Outputs JSON cannot carry (NaN, ±Inf) are
// refused: with out >= 0 only output out is checked and a refusal names
// the row and the output within it (the native API's predictions);
// otherwise every output is, named with its element (OIP v2). Errors are
// returned as they are: settle maps them.
func execute(ctx context.Context, l *manager.Version, ins []tensor.Tensor, out int) ([]tensor.Tensor, error) {
	var outs []tensor.Tensor
	var err error
	if in := l.Session().Inputs(); len(in) > 0 && in[0].BatchAxis == 0 {
		outs, err = l.Batcher().Predict(ctx, ins)
	} else {
		outs, err = l.Session().Run(ctx, ins)
	}
	if err != nil {
		return nil, err
	}
	if err := checkFinite(l, outs, out); err != nil {
		return nil, err
	}
	return outs, nil
}

// settle ends a request that ran (or tried to run) version l of model:
// it maps err to the client's HTTP error and records the outcome in the
// router's stats, which drive the canary judge and automatic rollback. A
// cached answer says nothing about the version's speed or health and is
// not recorded; a failure is recorded only if it is the version's fault.
func (s *Server) settle(model string, l *manager.Version, err error, timeout, lat time.Duration, cached bool) error {
	if err != nil {
		herr := modelError(err, l)
		if s.versionsFault(herr, timeout) {
			s.router.Record(model, l.Ref().Version, lat, err)
		}
		return herr
	}
	if !cached {
		s.router.Record(model, l.Ref().Version, lat, nil)
	}
	return nil
}

// checkFinite refuses outputs JSON cannot carry (NaN, ±Inf): they come
// from inputs outside the model's range, or from an unstable model. See
// execute for out.
func checkFinite(l *manager.Version, outs []tensor.Tensor, out int) error {
	for i, t := range outs {
		if out >= 0 && i != out {
			continue
		}
		data := t.Float32s()
		for j, v := range data {
			if f := float64(v); !math.IsNaN(f) && !math.IsInf(f, 0) {
				continue
			}
			if out >= 0 {
				width := len(data) / max(t.Len(), 1)
				return nonFiniteError(l, v, fmt.Sprintf("for row %d, output %d", j/width, j%width))
			}
			name := fmt.Sprint(i)
			if i < len(l.Session().Outputs()) {
				name = l.Session().Outputs()[i].Name
			}
			return nonFiniteError(l, v, fmt.Sprintf("in output %q, element %d", name, j))
		}
	}
	return nil
}
