package fit

import (
	"context"
	"fmt"
	"math"
	"path/filepath"
	"testing"

	"github.com/transformaly/transformaly/detector"
	"github.com/transformaly/transformaly/internal/synth"
	"github.com/transformaly/transformaly/models"
)

// TestInt8KeepsThePromise fits two bundles at int8 (the threshold set on
// int8 scores) on 200 synthetic normal parts each and scores 1,000 unseen
// normal ones at int8: the threshold promising 0.5% false alarms must give
// at most 1% on average and 2% in any fit. Fitted at fp32 instead, three
// such bundles' fp32 thresholds gave 0.6%, 0.2% and 1.4% at int8 (0.73% on
// average; 0.0%, 0.2% and 1.1% at fp32), int8 scores being 0.2-1.4 higher
// on average and up to 19 for one part: measured with the spaces summed
// (bundle format 2). Combined by their surprises: 0.0% and 0.3% at int8,
// scores 0.06 apart on average and up to 1.4, against thresholds 5.0-6.0.
// (Two fits, not three: the suite's time; each is about 100 s on 2 cores.)
func TestInt8KeepsThePromise(t *testing.T) {
	if testing.Short() {
		t.Skip("two fits")
	}
	const size, fits = 64, 2
	dir := t.TempDir()
	unseen, err := synth.WriteParts(filepath.Join(dir, "unseen"), size, synth.Normal, 1000, 99)
	if err != nil {
		t.Fatal(err)
	}
	im, _, err := LoadImages(context.Background(), unseen, size, 1<<30, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	all := make([]int, im.Len())
	for i := range all {
		all[i] = i
	}
	images, err := im.Batch(all, nil)
	if err != nil {
		t.Fatal(err)
	}
	sum := map[string]float64{} // int8's false alarm rate; fp32's with the int8 threshold, for the log
	for seed := uint64(1); seed <= fits; seed++ {
		normal := filepath.Join(dir, fmt.Sprintf("normal%d", seed))
		if _, err := synth.WriteParts(normal, size, synth.Normal, 200, seed); err != nil {
			t.Fatal(err)
		}
		v, err := models.RandomViT(models.Config{Dim: 96, Depth: 6, Heads: 4, Patch: 8, ImageSize: size}, seed)
		if err != nil {
			t.Fatal(err)
		}
		out := filepath.Join(dir, fmt.Sprintf("b%d.tfy", seed))
		info, err := Run(context.Background(), Options{Teacher: v, NormalDir: normal, ValFraction: 0.1, Epochs: 20, Patience: 5,
			BatchSize: 16, LR: 1e-4, Seed: seed, Whitening: 0.9, Quantile: 0.995, Out: out, Precision: models.INT8})
		if err != nil {
			t.Fatal(err)
		}
		if c := info.Calibration; c.Precision != models.INT8 || c.Provider != "cpu" {
			t.Errorf("calibrated on %s %s, want cpu int8", c.Provider, c.Precision)
		}
		scores := map[string][]float64{}
		for _, precision := range []string{models.FP32, models.INT8} {
			d, err := detector.Load(out, detector.RunnerOptions{Precision: precision})
			if err != nil {
				t.Fatal(err)
			}
			n := len(images) / (size * size * 3)
			for b := 0; b < n; b += 50 {
				res, err := d.Score(images[b*size*size*3:min(b+50, n)*size*size*3], min(b+50, n)-b, info.Threshold)
				if err != nil {
					t.Fatal(err)
				}
				for _, r := range res {
					scores[precision] = append(scores[precision], r.Score)
				}
			}
			d.Close()
			far := FractionAbove(scores[precision], info.Threshold)
			sum[precision] += far / fits
			t.Logf("seed %d %s: %.2f%% false alarms on 1,000 unseen normal parts", seed, precision, 100*far)
			if far > 0.02 && precision == models.INT8 {
				t.Errorf("seed %d %s: %.1f%% false alarms, over 2%%", seed, precision, 100*far)
			}
		}
		shift, spread := 0.0, 0.0
		for i, s := range scores[models.FP32] {
			shift += (scores[models.INT8][i] - s) / float64(len(scores[models.FP32]))
			spread = math.Max(spread, math.Abs(scores[models.INT8][i]-s))
		}
		t.Logf("seed %d: int8 scores moved by %.3g on average, %.3g at most; threshold %.3g, normal median %.3g", seed, shift, spread, info.Threshold, info.ScoreQuantiles["0.5"])
	}
	t.Logf("%.2f%% false alarms on average at int8 (0.5%% promised; fp32 scores against the int8 threshold %.2f%%)", 100*sum[models.INT8], 100*sum[models.FP32])
	if sum[models.INT8] > 0.01 {
		t.Errorf("%.2f%% false alarms on average at int8, over 1%%", 100*sum[models.INT8])
	}
}
