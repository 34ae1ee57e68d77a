package fit_test

import (
	"context"
	"math"
	"path/filepath"
	"testing"

	"github.com/transformaly/transformaly/detector"
	"github.com/transformaly/transformaly/fit"
	"github.com/transformaly/transformaly/internal/synth"
	"github.com/transformaly/transformaly/models"
)

// The FP16 variant, rebuilt from an FP32 bundle, scores like it on CPU:
// differences small against the spread of normal scores, and the same
// verdicts on clear cases.
func TestFP16VariantMatchesFP32(t *testing.T) {
	dir := t.TempDir()
	v, err := models.RandomViT(models.Config{Dim: 64, Depth: 4, Heads: 4, Patch: 8, ImageSize: 32}, 2)
	if err != nil {
		t.Fatal(err)
	}
	v.Checksum = "test"
	normal := filepath.Join(dir, "normal")
	if _, err := synth.WriteParts(normal, 32, synth.Normal, 40, 1); err != nil {
		t.Fatal(err)
	}
	bundle := filepath.Join(dir, "b.tfy")
	if _, err := fit.Run(context.Background(), fit.Options{Teacher: v, NormalDir: normal, ValFraction: 0.2, Epochs: 2,
		BatchSize: 8, LR: 1e-4, Whitening: 0.9, Quantile: 0.995, Out: bundle}); err != nil {
		t.Fatal(err)
	}
	var images []byte
	for i, kind := range []string{synth.Normal, synth.Normal, synth.Missing, synth.Recolored} {
		img := synth.Part(32, kind, uint64(100+i))
		for p := 0; p < len(img.Pix); p += 4 {
			images = append(images, img.Pix[p], img.Pix[p+1], img.Pix[p+2])
		}
	}
	score := func(precision string) []detector.Result {
		d, err := detector.Load(bundle, detector.RunnerOptions{Precision: precision})
		if err != nil {
			t.Fatalf("%s: %v", precision, err)
		}
		defer d.Close()
		r, err := d.Score(images, 4, d.Info.Threshold)
		if err != nil {
			t.Fatalf("%s: %v", precision, err)
		}
		return r
	}
	full, half := score(models.FP32), score(models.FP16)
	info, _, _ := models.ReadBundle(bundle)
	spread := info.ScoreQuantiles["0.99"] - info.ScoreQuantiles["0.5"]
	for i := range full {
		d := math.Abs(full[i].Score - half[i].Score)
		t.Logf("image %d: fp32 %.4f fp16 %.4f", i, full[i].Score, half[i].Score)
		if d > 0.1*math.Max(spread, 1) && d > 0.01*math.Abs(full[i].Score) {
			t.Errorf("image %d: fp32 score %g, fp16 %g (normal spread %g)", i, full[i].Score, half[i].Score, spread)
		}
		if i >= 2 && full[i].Anomalous != half[i].Anomalous {
			t.Errorf("image %d: verdicts differ between fp32 and fp16", i)
		}
	}
}
