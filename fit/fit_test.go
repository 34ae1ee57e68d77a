package fit_test

import (
	"bytes"
	"context"
	"log/slog"
	"math"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/transformaly/transformaly/detector"
	"github.com/transformaly/transformaly/fit"
	"github.com/transformaly/transformaly/internal/synth"
	"github.com/transformaly/transformaly/models"
)

// With a learning rate far too large the held-out loss stops improving at
// once: training ends Patience epochs after the last improvement, not at
// Epochs; without patience it runs them all.
func TestFitStopsWhenHeldOutLossStalls(t *testing.T) {
	dir := t.TempDir()
	v, err := models.RandomViT(models.Config{Dim: 32, Depth: 3, Heads: 2, Patch: 8, ImageSize: 32}, 5)
	if err != nil {
		t.Fatal(err)
	}
	normal := filepath.Join(dir, "normal")
	if _, err := synth.WriteParts(normal, 32, synth.Normal, 24, 2); err != nil {
		t.Fatal(err)
	}
	run := func(name string, epochs, patience int) models.BundleInfo {
		info, err := fit.Run(context.Background(), fit.Options{Teacher: v, NormalDir: normal, Blocks: []int{1, 2}, ValFraction: 0.25,
			Epochs: epochs, Patience: patience, BatchSize: 6, LR: 0.5, Whitening: 0.9, Quantile: 0.99, Out: filepath.Join(dir, name)})
		if err != nil {
			t.Fatal(err)
		}
		return info
	}
	info := run("patient.tfy", 30, 2)
	last := slices.Max(info.Training.BestEpochs)
	if info.Training.EpochsRun != last+2 || info.Training.EpochsRun >= 30 {
		t.Errorf("ran %d of 30 epochs with the last improvement at %d and patience 2", info.Training.EpochsRun, last)
	}
	if info := run("all.tfy", 4, 0); info.Training.EpochsRun != 4 {
		t.Errorf("without patience ran %d of 4 epochs", info.Training.EpochsRun)
	}
}

// Training on the teacher's cached activations (in memory, or spilled to a
// file past the memory budget) gives the students the same held-out losses
// and the bundle the same threshold as running the teacher in every step;
// a cache over its limit falls back to that, saying why.
func TestActivationCacheTrainsAsTheTeacherDoes(t *testing.T) {
	dir := t.TempDir()
	v, err := models.RandomViT(models.Config{Dim: 32, Depth: 4, Heads: 2, Patch: 8, ImageSize: 32}, 6)
	if err != nil {
		t.Fatal(err)
	}
	normal := filepath.Join(dir, "normal")
	if _, err := synth.WriteParts(normal, 32, synth.Normal, 20, 3); err != nil {
		t.Fatal(err)
	}
	// 20 images of 32x32 take 60 KB; their activations at boundaries 1..4
	// (students on blocks 1 and 3) 170 KB.
	run := func(name string, cache, memory int64) (models.BundleInfo, string) {
		var logs bytes.Buffer
		defer slog.SetDefault(slog.Default())
		slog.SetDefault(slog.New(slog.NewTextHandler(&logs, nil)))
		info, err := fit.Run(context.Background(), fit.Options{Teacher: v, NormalDir: normal, Blocks: []int{1, 3}, ValFraction: 0.25,
			Epochs: 3, BatchSize: 4, LR: 1e-3, Whitening: 0.9, Quantile: 0.99, ActivationCache: cache, MemoryBudget: memory,
			Out: filepath.Join(dir, name)})
		if err != nil {
			t.Fatal(err)
		}
		return info, logs.String()
	}
	want, _ := run("every-step.tfy", -1, 0)
	for _, tc := range []struct {
		name          string
		cache, memory int64
		log           string
	}{
		{"in-memory", 0, 0, "in_memory=true"},
		{"spilled", 0, 100 << 10, "in_memory=false"},
		{"over-limit", 100 << 10, 0, "would need more than the limit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, logs := run(tc.name+".tfy", tc.cache, tc.memory)
			if !strings.Contains(logs, tc.log) {
				t.Errorf("logs lack %q:\n%s", tc.log, logs)
			}
			for i, w := range want.Training.ValLosses {
				if g := got.Training.ValLosses[i]; math.Abs(g-w) > 1e-5*math.Abs(w) {
					t.Errorf("block %d: held-out loss %g, with the teacher in every step %g", i, g, w)
				}
			}
			if math.Abs(got.Threshold-want.Threshold) > 1e-4*math.Abs(want.Threshold) {
				t.Errorf("threshold %g, with the teacher in every step %g", got.Threshold, want.Threshold)
			}
			if left, _ := filepath.Glob(filepath.Join(dir, ".transformaly-*")); len(left) > 0 {
				t.Errorf("temporary files left behind: %v", left)
			}
		})
	}
}

// An output folder that cannot be written, or blocks the teacher does not
// have, are reported before any work (they were found by the first epoch's
// state save, and after decoding every image).
func TestFitRefusesBadSettingsAtOnce(t *testing.T) {
	v, err := models.RandomViT(models.Config{Dim: 32, Depth: 3, Heads: 2, Patch: 8, ImageSize: 32}, 5)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		out    string
		blocks []int
		want   string
	}{
		{filepath.Join(t.TempDir(), "missing", "line.tfy"), nil, "cannot be written"},
		{t.TempDir(), nil, "is a folder"},
		{filepath.Join(t.TempDir(), "line.tfy"), []int{1, 3}, "blocks: block 3 is outside"},
	} {
		// An empty image folder: reaching it would fail otherwise.
		_, err = fit.Run(context.Background(), fit.Options{Teacher: v, NormalDir: t.TempDir(), Blocks: c.blocks, Epochs: 2, BatchSize: 4, LR: 1e-4,
			ValFraction: 0.25, Whitening: 0.9, Quantile: 0.99, Out: c.out})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s, blocks %v: %v, want %q", c.out, c.blocks, err, c.want)
		}
	}
	// NaN passed every range check: --val-fraction NaN panicked, the others
	// failed after training, writing JSON.
	nan := math.NaN()
	for _, c := range []struct {
		set  func(*fit.Options)
		want string
	}{
		{func(o *fit.Options) { o.ValFraction = nan }, "--val-fraction"},
		{func(o *fit.Options) { o.Whitening = nan }, "--whitening"},
		{func(o *fit.Options) { o.Whitening = 0 }, "--whitening"},
		{func(o *fit.Options) { o.Quantile = nan }, "--threshold-quantile"},
		{func(o *fit.Options) { o.LR = nan }, "--lr"},
		{func(o *fit.Options) { o.LR = 1e30 }, "--lr"},
	} {
		o := fit.Options{Teacher: v, NormalDir: t.TempDir(), Epochs: 2, BatchSize: 4, LR: 1e-4,
			ValFraction: 0.25, Whitening: 0.9, Quantile: 0.99, Out: filepath.Join(t.TempDir(), "line.tfy")}
		c.set(&o)
		if _, err := fit.Run(context.Background(), o); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v, want an error naming %s", err, c.want)
		}
	}
}

// A fit whose losses stop being finite (a teacher with a NaN weight here;
// a learning rate too high in practice) stops saying so, in its first
// epoch, instead of ending in a JSON error after all of them.
func TestFitStopsWhenTrainingDiverges(t *testing.T) {
	dir := t.TempDir()
	v, err := models.RandomViT(models.Config{Dim: 32, Depth: 3, Heads: 2, Patch: 8, ImageSize: 32}, 5)
	if err != nil {
		t.Fatal(err)
	}
	v.Blocks[0].QKVW[0] = float32(math.NaN())
	normal := filepath.Join(dir, "normal")
	if _, err := synth.WriteParts(normal, 32, synth.Normal, 12, 2); err != nil {
		t.Fatal(err)
	}
	_, err = fit.Run(context.Background(), fit.Options{Teacher: v, NormalDir: normal, Blocks: []int{1, 2}, ValFraction: 0.25,
		Epochs: 5, BatchSize: 4, LR: 1e-3, Whitening: 0.9, Quantile: 0.99, Out: filepath.Join(dir, "line.tfy")})
	if err == nil || !strings.Contains(err.Error(), "training diverged in epoch 1") {
		t.Errorf("fit with a NaN teacher: %v", err)
	}
}

// Training provably learns: each student's held-out loss after a short fit
// is far below an untrained student's on the same images (a broken hand-over
// of parameters between Go and ONNX Runtime passed every other test). The
// untrained loss is measured apart from fit, through the detector graph with
// freshly initialised students.
func TestTrainingLowersTheHeldOutLoss(t *testing.T) {
	dir := t.TempDir()
	v, err := models.RandomViT(models.Config{Dim: 32, Depth: 3, Heads: 2, Patch: 8, ImageSize: 32}, 5)
	if err != nil {
		t.Fatal(err)
	}
	normal := filepath.Join(dir, "normal")
	paths, err := synth.WriteParts(normal, 32, synth.Normal, 40, 2)
	if err != nil {
		t.Fatal(err)
	}
	blocks := []int{1, 2}
	info, err := fit.Run(context.Background(), fit.Options{Teacher: v, NormalDir: normal, Blocks: blocks, ValFraction: 0.25,
		Epochs: 8, BatchSize: 8, LR: 1e-3, Seed: 3, Whitening: 0.9, Quantile: 0.99, NoPatch: true, Out: filepath.Join(dir, "b.tfy")})
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(9, 9))
	untrained := []models.Block{models.XavierBlock(v.Config, rng), models.XavierBlock(v.Config, rng)}
	graph, err := models.DetectorGraph(v, blocks, untrained)
	if err != nil {
		t.Fatal(err)
	}
	model, err := models.Serialize(graph)
	if err != nil {
		t.Fatal(err)
	}
	r, err := detector.NewRunner(model, 32, []string{models.OutputBlockErrors}, detector.RunnerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	images, _, err := fit.LoadImages(context.Background(), paths, 32, 1<<30, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer images.Close()
	idx := make([]int, images.Len())
	for i := range idx {
		idx[i] = i
	}
	buf, err := images.Batch(idx, nil)
	if err != nil {
		t.Fatal(err)
	}
	out, err := r.Run(buf, len(idx))
	if err != nil {
		t.Fatal(err)
	}
	before := make([]float64, len(blocks))
	for i, e := range out[0].Data {
		before[i%len(blocks)] += float64(e) / float64(len(idx))
	}
	for k := range blocks {
		after := info.Training.ValLosses[k]
		t.Logf("block %d: held-out loss %.4g untrained, %.4g trained", blocks[k], before[k], after)
		if !(after < 0.2*before[k]) {
			t.Errorf("block %d: held-out loss %.4g after training, untrained %.4g: not well below", blocks[k], after, before[k])
		}
	}
}
