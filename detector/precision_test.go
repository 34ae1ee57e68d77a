package detector_test

import (
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/transformaly/transformaly/detector"
	"github.com/transformaly/transformaly/models"
)

// TestGPUMatchesCPU runs only on a GPU box (TRANSFORMALY_GPU=1, see
// scripts/gpu-check.sh): each GPU provider that opens must score a random
// detector like the CPU provider, within 1e-3 of the score spread in fp32
// (TF32 and kernel choices differ) and 5e-2 in fp16.
func TestGPUMatchesCPU(t *testing.T) {
	if os.Getenv("TRANSFORMALY_GPU") == "" {
		t.Skip("set TRANSFORMALY_GPU=1 on a GPU box (scripts/gpu-check.sh)")
	}
	v, err := models.RandomViT(models.Config{Dim: 192, Depth: 6, Heads: 3, Patch: 16, ImageSize: 224}, 3)
	if err != nil {
		t.Fatal(err)
	}
	blocks := []int{2, 3, 4, 5}
	rng := rand.New(rand.NewPCG(4, 4))
	var students []models.Block
	for range blocks {
		students = append(students, models.XavierBlock(v.Config, rng))
	}
	images := make([]byte, 8*224*224*3)
	for i := range images {
		images[i] = byte(rng.IntN(256))
	}
	// Through a bundle file, as the daemon loads it: weights as external
	// data, the FP16 variant rebuilt from them.
	info := models.BundleInfo{Format: models.BundleFormat, ImageSize: v.ImageSize, Blocks: blocks, Threshold: 1}
	info.Teacher.Config = v.Config
	m, err := models.ScoredDetectorGraph(v, blocks, students, identityScoring(v.Dim, len(blocks)), info, models.FP32)
	if err != nil {
		t.Fatal(err)
	}
	bundle := filepath.Join(t.TempDir(), "gpu.tfy")
	if err := models.WriteBundle(bundle, m); err != nil {
		t.Fatal(err)
	}
	run := func(provider, precision string) []float64 {
		d, err := detector.Load(bundle, detector.RunnerOptions{Provider: provider, Precision: precision, MaxBatch: 8,
			CacheDir: t.TempDir(), ProviderLibrary: os.Getenv("TRANSFORMALY_PROVIDER_LIBRARY")})
		if err != nil {
			t.Logf("%s %s: not usable: %v", provider, precision, err)
			return nil
		}
		defer d.Close()
		res, err := d.Score(images, 8, 0)
		if err != nil {
			t.Fatalf("%s %s: %v", provider, precision, err)
		}
		scores := make([]float64, len(res))
		for i, r := range res {
			scores[i] = r.Score
		}
		return scores
	}
	want := run("cpu", models.FP32)
	spread := 0.0
	for _, x := range want {
		spread = math.Max(spread, math.Abs(x-want[0]))
	}
	usable := 0
	for _, provider := range []string{"cuda", "tensorrt"} {
		for _, c := range []struct {
			precision string
			tol       float64
		}{{models.FP32, 1e-3}, {models.FP16, 5e-2}} {
			got := run(provider, c.precision)
			if got == nil {
				continue
			}
			usable++
			worst := 0.0
			for i := range want {
				worst = math.Max(worst, math.Abs(got[i]-want[i]))
			}
			t.Logf("%s %s: max score difference %.3g (score spread %.3g, tolerance %.0e of it)", provider, c.precision, worst, spread, c.tol)
			if worst > c.tol*math.Max(spread, 1) {
				t.Errorf("%s %s: scores differ from the CPU by %g", provider, c.precision, worst)
			}
		}
	}
	if usable == 0 {
		t.Error("TRANSFORMALY_GPU is set but no GPU provider could be used (see the reasons above, or transformaly doctor)")
	}
}
