package fit

import (
	"context"
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/transformaly/transformaly/detector"
	"github.com/transformaly/transformaly/internal/synth"
	"github.com/transformaly/transformaly/models"
)

// TestPromiseHoldsOnVariedParts fits three bundles (other seeds, other
// normal images) on 200 synthetic parts with a real line's variety
// (synth.VariedPart: exposures, textures, part sizes and aspects, crops
// resized to the input) and scores 500 unseen normal parts of the same
// kind with each. The threshold promises 0.5% false alarms: at most 1% on
// average and 2% in any fit. And each feature space's out-of-sample scores
// on the fit's own images (what the threshold is calibrated on) must be
// distributed as the unseen images' scores: their medians and 95th
// percentiles agree within sampling error, pooled over the fits.
//
// Measured: 0 of 1,500 flagged; pooled gaps (standard errors) pretrained
// 0.3 and 0.9, students 2.9 and 1.1, patch 1.8 and 1.3. Before the
// calibration was cross-fitted (students scoring their own training
// images, folds' PCA keeping their own number of components) it flagged
// 0 of 1,500 too, but its medians were 3.2 (pretrained) and 3.3 (students)
// standard errors from unseen images', and it failed here.
func TestPromiseHoldsOnVariedParts(t *testing.T) {
	if testing.Short() {
		t.Skip("three fits on varied parts")
	}
	const size, fits, fitImages, unseenImages = 64, 3, 200, 500
	dir := t.TempDir()
	type gap struct{ median, p95 float64 } // standardised differences, summed over fits
	gaps := map[string]*gap{"pretrained": {}, "student": {}, "patch": {}}
	sum := 0.0
	for seed := uint64(1); seed <= fits; seed++ {
		normal := filepath.Join(dir, fmt.Sprintf("normal%d", seed))
		if _, err := synth.WriteVariedParts(normal, size, synth.Normal, fitImages, seed); err != nil {
			t.Fatal(err)
		}
		// Unseen images of its own for each fit, so that the fits' gaps
		// are independent.
		unseen, err := synth.WriteVariedParts(filepath.Join(dir, fmt.Sprintf("unseen%d", seed)), size, synth.Normal, unseenImages, 100+seed)
		if err != nil {
			t.Fatal(err)
		}
		v, err := models.RandomViT(models.Config{Dim: 96, Depth: 6, Heads: 4, Patch: 8, ImageSize: size}, seed)
		if err != nil {
			t.Fatal(err)
		}
		out := filepath.Join(dir, fmt.Sprintf("b%d.tfy", seed))
		start := time.Now()
		info, oos, err := run(context.Background(), Options{Teacher: v, NormalDir: normal, ValFraction: 0.1, Epochs: 10, Patience: 3,
			BatchSize: 16, LR: 1e-4, Seed: seed, Whitening: 0.9, Quantile: 0.995, Out: out})
		if err != nil {
			t.Fatal(err)
		}
		took := time.Since(start)
		res := scoreFiles(t, out, unseen, size, info.Threshold)
		flagged := 0
		var pre, stu, patch []float64
		for _, r := range res {
			if r.Score > info.Threshold {
				flagged++
			}
			pre, stu, patch = append(pre, -r.LLPretrained), append(stu, -r.LLStudent), append(patch, r.PatchScore)
		}
		far := float64(flagged) / float64(len(res))
		sum += far
		t.Logf("seed %d: fit %.1f s (%d epochs), %d of %d unseen normal parts flagged (%.2f%%; promised %.2f%%, 95%% interval %.2f-%.2f%%)",
			seed, took.Seconds(), info.Training.EpochsRun, flagged, len(res), 100*far,
			100*info.Calibration.ExpectedFalseAlarms, 100*info.Calibration.FalseAlarms95[0], 100*info.Calibration.FalseAlarms95[1])
		if far > 0.02 {
			t.Errorf("seed %d: %.2f%% false alarms, over 2%%", seed, 100*far)
		}
		// Negative log-likelihoods, so that the 95th percentile is toward
		// the unusual, as the patch score's is.
		gaussFolds := make([][]int, gaussianFolds)
		for i := range fitImages {
			gaussFolds[i%gaussianFolds] = append(gaussFolds[i%gaussianFolds], i)
		}
		for name, space := range map[string]struct {
			fit, unseen []float64
			folds       [][]int
		}{"pretrained": {negated(oos.pretrained), pre, gaussFolds}, "student": {negated(oos.student), stu, oos.studentFolds}, "patch": {oos.patch, patch, oos.bankFolds}} {
			pair := [2][]float64{space.fit, space.unseen}
			m, p := quantileGap(pair[0], pair[1], space.folds, 0.5), quantileGap(pair[0], pair[1], space.folds, 0.95)
			t.Logf("seed %d: %s: fit's images median %.3f p95 %.3f, unseen median %.3f p95 %.3f (standard errors apart: %.1f, %.1f)",
				seed, name, quantile(sorted(pair[0]), 0.5), quantile(sorted(pair[0]), 0.95), quantile(sorted(pair[1]), 0.5), quantile(sorted(pair[1]), 0.95), m, p)
			gaps[name].median += m
			gaps[name].p95 += p
		}
	}
	if mean := sum / fits; mean > 0.01 {
		t.Errorf("%.2f%% false alarms on average, over 1%% (0.5%% promised)", 100*mean)
	}
	for name, g := range gaps {
		// The sum of fits independent standard normals, over sqrt(fits).
		m, p := g.median/math.Sqrt(fits), g.p95/math.Sqrt(fits)
		t.Logf("%s: pooled standardised gaps: median %.1f, p95 %.1f", name, m, p)
		if math.Abs(m) > 3 || math.Abs(p) > 3 {
			t.Errorf("%s: the fit's out-of-sample scores are not distributed as unseen images' (pooled standardised gaps: median %.1f, p95 %.1f; beyond 3 is not sampling error)", name, m, p)
		}
	}
}

// scoreFiles scores image files with a bundle.
func scoreFiles(t *testing.T, bundle string, paths []string, size int, threshold float64) []detector.Result {
	t.Helper()
	d, err := detector.Load(bundle, detector.RunnerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	im, _, err := LoadImages(context.Background(), paths, size, 1<<30, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	var out []detector.Result
	for b := 0; b < im.Len(); b += 32 {
		idx := make([]int, 0, 32)
		for i := b; i < min(b+32, im.Len()); i++ {
			idx = append(idx, i)
		}
		buf, err := im.Batch(idx, nil)
		if err != nil {
			t.Fatal(err)
		}
		res, err := d.Score(buf, len(idx), threshold)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, res...)
	}
	return out
}

func negated(xs []float64) []float64 {
	out := make([]float64, len(xs))
	for i, x := range xs {
		out[i] = -x
	}
	return out
}

func sorted(xs []float64) []float64 { return slices.Sorted(slices.Values(xs)) }

// quantileGap is the difference of the q-quantiles of the fit's
// out-of-sample scores a and of unseen images' scores b, in standard
// errors. Each sample's own standard error comes from the order statistics
// around its quantile (the distribution-free interval of a sample
// quantile, ranks n q +- 1.96 sqrt(n q (1-q)), is about 2 x 1.96 of them
// wide). And a learned part is one draw of its training: the fit's scores
// come from the folds' parts (the average of len(folds) draws), the unseen
// images' from the bundle's (one draw), so the spread of the folds'
// quantiles beyond their sampling error counts too.
func quantileGap(a, b []float64, folds [][]int, q float64) float64 {
	se := func(xs []float64) float64 {
		s := sorted(xs)
		n := float64(len(s))
		d := 1.96 * math.Sqrt(q*(1-q)/n)
		return (quantile(s, min(1, q+d)) - quantile(s, max(0, q-d))) / (2 * 1.96)
	}
	seA, seB := se(a), se(b)
	k := float64(len(folds))
	var perFold []float64
	for _, f := range folds {
		xs := make([]float64, len(f))
		for j, i := range f {
			xs[j] = a[i]
		}
		perFold = append(perFold, quantile(sorted(xs), q))
	}
	m := 0.0
	for _, x := range perFold {
		m += x / k
	}
	v := 0.0
	for _, x := range perFold {
		v += (x - m) * (x - m) / (k - 1)
	}
	// The folds' quantiles vary by k seA^2 by sampling alone.
	between := max(0, v-k*seA*seA)
	return (quantile(sorted(a), q) - quantile(sorted(b), q)) / math.Sqrt(seA*seA+seB*seB+between/k+between)
}
