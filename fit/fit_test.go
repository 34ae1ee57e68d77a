package fit_test

import (
	"context"
	"path/filepath"
	"slices"
	"testing"

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
