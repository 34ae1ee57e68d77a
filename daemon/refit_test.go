package daemon

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/transformaly/transformaly/models"
)

// A refit's fit flags repeat the live bundle's settings, and find its
// teacher beside the bundle when the recorded path is relative to where
// fit ran; a teacher that is gone is named.
func TestRefitArgsFollowTheLiveBundle(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "vit.safetensors"), []byte("x"), 0o644)
	live := filepath.Join(dir, "line.tfy")
	var info models.BundleInfo
	info.Teacher.Path = "vit.safetensors"
	info.Teacher.Normalization = &models.Normalization{Rescale: 1.0 / 255, Mean: [3]float64{0.485, 0.456, 0.406}, Std: [3]float64{0.229, 0.224, 0.225}}
	info.Blocks = []int{2, 3}
	info.Training = models.TrainingInfo{Epochs: 8, BatchSize: 16, LR: 1e-4, Seed: 3, ValFraction: 0.1, Whitening: 0.9}
	info.ThresholdQuantile = 0.995
	args, err := refitArgs(live, info)
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(args, " ")
	for _, want := range []string{"--teacher " + filepath.Join(dir, "vit.safetensors"), "--blocks 2,3", "--epochs 8", "--seed 3", "--lr 0.0001",
		"--patch-blocks none", "--threshold-quantile 0.995", "--mean 0.485,0.456,0.406", "--std 0.229,0.224,0.225"} {
		if !strings.Contains(got, want) {
			t.Errorf("fit flags %q lack %q", got, want)
		}
	}
	if strings.Contains(got, "--tile") {
		t.Errorf("an untiled bundle refits tiled: %q", got)
	}
	info.Patch = &models.PatchInfo{Blocks: []int{2}, Neighbourhood: 3, Pooling: models.PoolMean, Coreset: 0.1, Combination: models.Combination{ImageWeight: 0.2}}
	if args, _ = refitArgs(live, info); !strings.Contains(strings.Join(args, " "), "--patch-blocks 2 --patch-neighbourhood 3 --patch-pooling mean --coreset 0.1 --image-weight 0.2") {
		t.Errorf("patch space flags: %q", args)
	}
	info.Teacher.Path = "/nowhere/vit.safetensors"
	if _, err := refitArgs(live, info); err == nil || !strings.Contains(err.Error(), "/nowhere/vit.safetensors") {
		t.Errorf("a missing teacher: %v", err)
	}
}

// Every fifth image is held out, the same ones each time.
func TestSplitImagesHoldsOutEveryFifth(t *testing.T) {
	dir := t.TempDir()
	var images []string
	for i := range 12 {
		p := filepath.Join(dir, "src", strings.Repeat("a", i+1)+".png")
		os.MkdirAll(filepath.Dir(p), 0o750)
		os.WriteFile(p, []byte("png"), 0o644)
		images = append(images, p)
	}
	train, holdout := filepath.Join(dir, "train"), filepath.Join(dir, "holdout")
	nTrain, nHoldout, err := splitImages(images, train, holdout)
	if err != nil || nTrain != 10 || nHoldout != 2 {
		t.Fatalf("%d train, %d held out, %v; want 10 and 2", nTrain, nHoldout, err)
	}
	held, _ := listImages(holdout)
	if len(held) != 2 || filepath.Base(held[0]) != "00004.png" || filepath.Base(held[1]) != "00009.png" {
		t.Errorf("held out %v", held)
	}
	if data, err := os.ReadFile(held[0]); err != nil || string(data) != "png" {
		t.Errorf("a held-out link: %q %v", data, err)
	}
}
