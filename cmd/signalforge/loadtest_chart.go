package main

import (
	"fmt"
	"image/color"
	"math"
	"os"
	"slices"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgsvg"
)

// Chart labels; tests look for them in the SVG.
const (
	chartThroughput = "throughput (req/s)"
	chartP99        = "p99 latency (ms)"
)

// writeLoadChart draws the report's throughput and p99 latency against
// the steps' concurrency (or offered rate) as two aligned panels sharing
// the x axis, and writes the SVG to path.
func writeLoadChart(path string, r *loadtestReport) error {
	top, bottom, err := loadPanels(r)
	if err != nil {
		return err
	}
	c := vgsvg.New(7*vg.Inch, 7*vg.Inch)
	drawLoadPanels(c, top, bottom)
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := c.WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// loadPanels builds the two panels: throughput above, p99 latency below.
func loadPanels(r *loadtestReport) (top, bottom *plot.Plot, err error) {
	if len(r.Steps) == 0 {
		return nil, nil, fmt.Errorf("no step to draw")
	}
	xs := make([]float64, len(r.Steps))
	tput := make(plotter.XYs, len(r.Steps))
	p99 := make(plotter.XYs, len(r.Steps))
	for i, s := range r.Steps {
		xs[i] = float64(s.Concurrency)
		if r.Mode == "rate" {
			xs[i] = s.Rate
		}
		tput[i] = plotter.XY{X: xs[i], Y: s.RPS}
		p99[i] = plotter.XY{X: xs[i], Y: s.P99MS}
	}
	xLabel := "concurrency (requests in flight)"
	if r.Mode == "rate" {
		xLabel = "offered load (req/s)"
	}
	model := r.Model
	if r.Version != "" {
		model += ":" + r.Version
	}
	// A log x axis when the steps span a factor of 4 or more (1, 4, 16,
	// 64 are then evenly spaced); ticks at the steps themselves.
	lo, hi := slices.Min(xs), slices.Max(xs)
	logX := lo > 0 && hi/lo >= 4
	var ticks plot.ConstantTicks
	for _, x := range xs {
		ticks = append(ticks, plot.Tick{Value: x, Label: strconv.FormatFloat(x, 'g', 6, 64)})
	}

	panel := func(title string, pts plotter.XYs, c color.Color) (*plot.Plot, error) {
		p := plot.New()
		p.Title.Text = title
		p.X.Label.Text = xLabel
		p.Y.Label.Text = title
		top := 0.0
		for _, q := range pts {
			top = max(top, q.Y)
		}
		step := niceCeil(top * 1.1 / 5)
		p.Y.Min, p.Y.Max = 0, math.Max(1, math.Ceil(top*1.1/step))*step
		p.Y.Tick.Marker = niceTicks(p.Y.Max, step)
		p.X.Tick.Marker = ticks
		if logX {
			p.X.Scale = plot.LogScale{}
		}
		line, points, err := plotter.NewLinePoints(pts)
		if err != nil {
			return nil, err
		}
		line.Color, points.Color = c, c
		points.Shape = draw.CircleGlyph{}
		p.Add(plotter.NewGrid(), line, points)
		p.Legend.Add(title, line, points)
		p.Legend.Top, p.Legend.Left = true, true
		p.Legend.XOffs, p.Legend.YOffs = vg.Millimeter*5, -vg.Millimeter*2
		return p, nil
	}
	pt, err := panel(chartThroughput, tput, color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff})
	if err != nil {
		return nil, nil, err
	}
	pt.Title.Text = fmt.Sprintf("signalforge loadtest: %s (%s API) — %s", model, r.API, chartThroughput)
	pl, err := panel(chartP99, p99, color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff})
	if err != nil {
		return nil, nil, err
	}
	// Same x range in both panels, with a margin so the end points show.
	for _, p := range []*plot.Plot{pt, pl} {
		if logX {
			p.X.Min, p.X.Max = lo/1.25, hi*1.25
		} else if lo == hi {
			p.X.Min, p.X.Max = lo-1, hi+1
		}
	}

	return pt, pl, nil
}

// drawLoadPanels draws top above bottom on c, their axes aligned.
func drawLoadPanels(c vg.CanvasSizer, top, bottom *plot.Plot) {
	dc := draw.New(c)
	tiles := draw.Tiles{Rows: 2, Cols: 1, PadX: vg.Millimeter * 4, PadY: vg.Millimeter * 6,
		PadTop: vg.Millimeter * 3, PadBottom: vg.Millimeter * 3, PadLeft: vg.Millimeter * 3, PadRight: vg.Millimeter * 5}
	canvases := plot.Align([][]*plot.Plot{{top}, {bottom}}, tiles, dc)
	top.Draw(canvases[0][0])
	bottom.Draw(canvases[1][0])
}

// niceCeil rounds v up to 1, 2, 2.5 or 5 times a power of ten (1 for v ≤ 0).
func niceCeil(v float64) float64 {
	if !(v > 0) || math.IsInf(v, 0) {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if v <= m*p {
			return m * p
		}
	}
	return 10 * p
}

// niceTicks marks 0 to top in round steps, labelled without needless
// decimals.
func niceTicks(top, step float64) plot.ConstantTicks {
	var ts plot.ConstantTicks
	for v := 0.0; v <= top*(1+1e-9); v += step {
		ts = append(ts, plot.Tick{Value: v, Label: strconv.FormatFloat(v, 'f', -1, 64)})
		if v+step/2 <= top {
			ts = append(ts, plot.Tick{Value: v + step/2}) // a minor tick
		}
	}
	return ts
}
