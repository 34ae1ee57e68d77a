package fit

import (
	"image/png"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// The chart is a real PNG of the expected size whose histogram half shows
// both score sets, apart, on an axis labelled from the negative normal
// scores to the thousands of gross anomalies.
func TestEvalChart(t *testing.T) {
	rng := rand.New(rand.NewPCG(6, 6))
	var normal, anomalous []float64
	for range 200 {
		normal = append(normal, -10+2*rng.NormFloat64())
		anomalous = append(anomalous, 300+1000*rng.Float64())
	}
	path := filepath.Join(t.TempDir(), "eval.png")
	if err := WriteEvalChart(path, normal, anomalous, -3); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("not a PNG: %v", err)
	}
	b := img.Bounds()
	if b.Dx() != 1200 || b.Dy() != 450 {
		t.Errorf("chart is %dx%d, want 1200x450", b.Dx(), b.Dy())
	}
	// Columns holding each set's bars: the right (histogram) half, low rows
	// (the legend's swatches are at the top).
	var blue, red []int
	for x := b.Dx() / 2; x < b.Dx(); x++ {
		for y := b.Dy() * 6 / 10; y < b.Dy()*85/100; y++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			r, g, bl = r>>8, g>>8, bl>>8
			switch {
			case bl > r+40 && bl > g+20:
				blue = append(blue, x)
			case r > bl+40 && r > g+40:
				red = append(red, x)
			}
		}
	}
	if len(blue) < 500 || len(red) < 500 {
		t.Fatalf("histogram pixels: %d normal-coloured, %d anomalous-coloured", len(blue), len(red))
	}
	if slices.Max(blue) >= slices.Min(red) {
		t.Errorf("normal bars reach x=%d, anomalous ones start at x=%d: the sets overlap on the chart", slices.Max(blue), slices.Min(red))
	}

	var labels []string
	for _, tk := range (symlogTicks{}).Ticks(symlog(-20), symlog(1500)) {
		if tk.Label != "" {
			labels = append(labels, tk.Label)
		}
	}
	for _, want := range []string{"-10", "-1", "0", "1", "10", "100", "1000"} {
		if !slices.Contains(labels, want) {
			t.Errorf("axis labels %v lack %s", labels, want)
		}
	}
	if err := WriteEvalChart(path, nil, anomalous, 0); err == nil {
		t.Error("a chart without normal scores")
	}
}
