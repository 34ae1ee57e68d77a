package detector_test

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/transformaly/transformaly/detector"
	"github.com/transformaly/transformaly/models"
)

// A bundle's weights are read by ONNX Runtime from the bundle file itself,
// whatever it is called now and wherever the process runs: scores equal
// those of the same graph opened from memory.
func TestLoadReadsWeightsFromTheBundleFile(t *testing.T) {
	v, err := models.RandomViT(models.Config{Dim: 64, Depth: 3, Heads: 4, Patch: 8, ImageSize: 32}, 4)
	if err != nil {
		t.Fatal(err)
	}
	blocks := []int{1, 2}
	rng := rand.New(rand.NewPCG(9, 9))
	students := []models.Block{models.XavierBlock(v.Config, rng), models.XavierBlock(v.Config, rng)}
	info := models.BundleInfo{Format: models.BundleFormat, ImageSize: v.ImageSize, Blocks: blocks, Threshold: 1}
	info.Teacher.Config = v.Config
	m, err := models.ScoredDetectorGraph(v, blocks, students, identityScoring(v.Dim, len(blocks)), info, models.FP32)
	if err != nil {
		t.Fatal(err)
	}
	inline, err := models.Serialize(m)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := models.WriteBundle(filepath.Join(dir, "first.tfy"), m); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "second.tfy")
	if err := os.Rename(filepath.Join(dir, "first.tfy"), path); err != nil {
		t.Fatal(err)
	}
	t.Chdir(t.TempDir()) // the bundle's folder is not the working directory

	images := make([]byte, 3*32*32*3)
	for i := range images {
		images[i] = byte(rng.IntN(256))
	}
	r, err := detector.NewRunner(inline, 32, []string{models.OutputScore}, detector.RunnerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	want, err := r.Run(images, 3)
	if err != nil {
		t.Fatal(err)
	}
	d, err := detector.Load(path, detector.RunnerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	got, err := d.Score(images, 3, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i := range got {
		if float32(got[i].Score) != want[0].Data[i] {
			t.Errorf("image %d: score %g from the file, %g from memory", i, got[i].Score, want[0].Data[i])
		}
	}

	// A format 1 bundle (weights inline, as the first release wrote them)
	// still loads; a format from the future does not.
	for _, format := range []int{1, models.BundleFormat + 1} {
		info.Format = format
		old, err := models.ScoredDetectorGraph(v, blocks, students, identityScoring(v.Dim, len(blocks)), info, models.FP32)
		if err != nil {
			t.Fatal(err)
		}
		data, err := models.Serialize(old)
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, fmt.Sprintf("format%d.tfy", format))
		os.WriteFile(path, data, 0o644)
		d, err := detector.Load(path, detector.RunnerOptions{})
		if format > models.BundleFormat {
			if err == nil || !strings.Contains(err.Error(), "fit it again") {
				t.Errorf("format %d: %v", format, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("format %d: %v", format, err)
		}
		res, err := d.Score(images, 3, 0)
		d.Close()
		if err != nil || float32(res[0].Score) != want[0].Data[0] {
			t.Errorf("format %d: score %v (%v), want %g", format, res, err, want[0].Data[0])
		}
	}
}
