package fit

import (
	"fmt"
	"image/color"
	"io"
	"math"
	"slices"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"

	"github.com/transformaly/transformaly/internal/atomicfile"
)

var (
	normalColor    = color.NRGBA{R: 31, G: 119, B: 180, A: 255}
	anomalousColor = color.NRGBA{R: 214, G: 39, B: 40, A: 255}
	thresholdColor = color.NRGBA{A: 255}
)

// chartBins is the number of histogram bins across the shown score range.
const chartBins = 40

// WriteEvalChart writes a PNG with what an engineer needs to pick a
// threshold: the ROC curve with the threshold's operating point, and the
// score distributions of normal and anomalous images with the threshold
// (on a symmetric log axis: scores of gross anomalies can be orders of
// magnitude above the normal ones).
func WriteEvalChart(path string, normal, anomalous []float64, threshold float64) error {
	if len(normal) == 0 || len(anomalous) == 0 {
		return fmt.Errorf("evaluation chart: need normal and anomalous scores")
	}
	roc := rocPlot(normal, anomalous, threshold)
	hist := histogramPlot(normal, anomalous, threshold)
	const width, height = 12 * vg.Inch, 4.5 * vg.Inch
	img := vgimg.NewWith(vgimg.UseWH(width, height), vgimg.UseDPI(100))
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 1, Cols: 2, PadX: 8 * vg.Millimeter, PadTop: 3 * vg.Millimeter, PadBottom: 3 * vg.Millimeter,
		PadLeft: 3 * vg.Millimeter, PadRight: 3 * vg.Millimeter}
	roc.Draw(tiles.At(dc, 0, 0))
	hist.Draw(tiles.At(dc, 1, 0))
	err := atomicfile.WriteFunc(path, func(w io.Writer) error {
		_, err := vgimg.PngCanvas{Canvas: img}.WriteTo(w)
		return err
	})
	if err != nil {
		return fmt.Errorf("evaluation chart: %w", err)
	}
	return nil
}

func rocPlot(normal, anomalous []float64, threshold float64) *plot.Plot {
	tpr, fpr := roc(normal, anomalous)
	p := plot.New()
	p.Title.Text = fmt.Sprintf("ROC: AUROC %.4f (%d normal, %d anomalous images)", AUROC(normal, anomalous), len(normal), len(anomalous))
	p.X.Label.Text, p.Y.Label.Text = "false alarm rate", "detection rate"
	p.X.Min, p.X.Max, p.Y.Min, p.Y.Max = 0, 1, 0, 1
	p.Add(plotter.NewGrid())
	chance, _ := plotter.NewLine(plotter.XYs{{X: 0, Y: 0}, {X: 1, Y: 1}})
	chance.Color, chance.Dashes = color.Gray{Y: 160}, []vg.Length{vg.Points(4), vg.Points(4)}
	curve := make(plotter.XYs, len(tpr))
	for i := range tpr {
		curve[i] = plotter.XY{X: fpr[i], Y: tpr[i]}
	}
	line, _ := plotter.NewLine(curve)
	line.Color, line.Width = anomalousColor, vg.Points(1.5)
	far, dr := FractionAbove(normal, threshold), FractionAbove(anomalous, threshold)
	point, _ := plotter.NewScatter(plotter.XYs{{X: far, Y: dr}})
	point.Color, point.Shape, point.Radius = thresholdColor, draw.CircleGlyph{}, vg.Points(4)
	p.Add(chance, line, point)
	p.Title.Text += fmt.Sprintf("\nthe dot: threshold %.4g, false alarm rate %.3f, detection rate %.3f", threshold, far, dr)
	return p
}

func histogramPlot(normal, anomalous []float64, threshold float64) *plot.Plot {
	// Bins and axis are on symlog(score), labelled with scores.
	all := append(slices.Clone(normal), anomalous...)
	lo := symlog(math.Min(slices.Min(all), threshold))
	hi := symlog(math.Max(slices.Max(all), threshold))
	if hi <= lo {
		hi = lo + 1
	}
	width := (hi - lo) / chartBins
	bins := func(xs []float64) []plotter.HistogramBin {
		b := make([]plotter.HistogramBin, chartBins)
		for i := range b {
			b[i].Min, b[i].Max = lo+float64(i)*width, lo+float64(i+1)*width
		}
		for _, x := range xs {
			i := min(int((symlog(x)-lo)/width), chartBins-1)
			b[max(i, 0)].Weight += 1 / float64(len(xs)) // shares, so unequal set sizes compare
		}
		return b
	}
	p := plot.New()
	p.Title.Text = "score distributions"
	p.X.Label.Text, p.Y.Label.Text = "anomaly score (log scale both ways from 0)", "share of images"
	p.X.Tick.Marker = symlogTicks{}
	p.Add(plotter.NewGrid())
	top := 0.0
	for _, set := range []struct {
		name   string
		scores []float64
		color  color.NRGBA
	}{{"normal", normal, normalColor}, {"anomalous", anomalous, anomalousColor}} {
		h := &plotter.Histogram{Bins: bins(set.scores), Width: width}
		fill := set.color
		fill.A = 110
		h.FillColor, h.LineStyle = fill, draw.LineStyle{Color: set.color, Width: vg.Points(0.5)}
		for _, b := range h.Bins {
			top = math.Max(top, b.Weight)
		}
		p.Add(h)
		p.Legend.Add(set.name, h)
	}
	t := symlog(threshold)
	line, _ := plotter.NewLine(plotter.XYs{{X: t, Y: 0}, {X: t, Y: top * 1.05}})
	line.Color, line.Width, line.Dashes = thresholdColor, vg.Points(1.5), []vg.Length{vg.Points(5), vg.Points(3)}
	p.Add(line)
	p.Legend.Add(fmt.Sprintf("threshold %.4g", threshold), line)
	p.Legend.Top = true
	return p
}

// symlog is a logarithm both ways from zero: scores of normal images sit
// near zero or below it (they are negative log-likelihoods), those of gross
// anomalies can be thousands.
func symlog(x float64) float64 {
	return math.Copysign(math.Log10(1+math.Abs(x)), x)
}

// symlogTicks labels a symlog axis with scores at 0, ±1, ±10, ±100, ...
// (and ±3, ±30, ... where few decades are shown).
type symlogTicks struct{}

func (symlogTicks) Ticks(lo, hi float64) []plot.Tick {
	decades := math.Max(math.Abs(lo), math.Abs(hi))
	var ticks []plot.Tick
	add := func(v float64, major bool) {
		if x := symlog(v); x >= lo && x <= hi {
			t := plot.Tick{Value: x}
			if major {
				t.Label = strconv.FormatFloat(v, 'g', -1, 64)
			}
			ticks = append(ticks, t)
		}
	}
	add(0, true)
	for v := 1.0; symlog(v) <= decades+1; v *= 10 {
		for _, s := range []float64{1, -1} {
			add(s*v, true)
			add(s*3*v, decades < 4)
		}
	}
	return ticks
}
