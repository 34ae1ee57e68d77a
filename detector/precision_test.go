package detector_test

import (
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	onnx "github.com/yalue/onnxruntime_go"

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
		// Options users set, so ONNX Runtime confirms their names.
		d, err := detector.Load(bundle, detector.RunnerOptions{Provider: provider, Precision: precision, MaxBatch: 8,
			CacheDir: t.TempDir(), ProviderLibrary: os.Getenv("TRANSFORMALY_PROVIDER_LIBRARY"),
			CUDAOptions:     map[string]string{"device_id": "0", "arena_extend_strategy": "kSameAsRequested", "cudnn_conv_algo_search": "HEURISTIC"},
			TensorRTOptions: map[string]string{"trt_max_workspace_size": "2147483648"}})
		if err != nil {
			t.Logf("%s %s: not usable: %v", provider, precision, err)
			return nil
		}
		defer d.Close()
		res, err := d.Score(images, 8, d.Info.Threshold)
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

// TestGPUTrainingStepMatchesCPU runs only on a GPU box (TRANSFORMALY_GPU=1):
// fit's training-step graph (forward, loss and backward) gives the CUDA
// provider the same losses and gradients as the CPU, within what TF32
// matmuls change (1e-3 of the losses, 1e-2 of each gradient's largest
// entry), and logs the time of a step on each.
func TestGPUTrainingStepMatchesCPU(t *testing.T) {
	if os.Getenv("TRANSFORMALY_GPU") == "" {
		t.Skip("set TRANSFORMALY_GPU=1 on a GPU box (scripts/gpu-check.sh)")
	}
	v, err := models.RandomViT(models.Config{Dim: 384, Depth: 4, Heads: 6, Patch: 16, ImageSize: 224}, 7)
	if err != nil {
		t.Fatal(err)
	}
	blocks := []int{2, 3}
	graph, err := models.TrainingGraph(v, blocks, true, models.FromImages)
	if err != nil {
		t.Fatal(err)
	}
	const batch = 8
	rng := rand.New(rand.NewPCG(8, 8))
	images := make([]byte, batch*224*224*3)
	for i := range images {
		images[i] = byte(rng.IntN(256))
	}
	inputs := []string{models.InputImages}
	outputs := []string{models.OutputLosses}
	img, err := onnx.NewTensor(onnx.NewShape(batch, 224, 224, 3), images)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Destroy()
	values := []onnx.Value{img}
	for _, b := range blocks {
		student := models.XavierBlock(v.Config, rng)
		for _, p := range student.Params(v.Config) {
			name := models.StudentParamName(b, p.Name)
			dims := make(onnx.Shape, len(p.Shape))
			for i, d := range p.Shape {
				dims[i] = int64(d)
			}
			tensor, err := onnx.NewTensor(dims, *p.Data)
			if err != nil {
				t.Fatal(err)
			}
			defer tensor.Destroy()
			inputs, outputs, values = append(inputs, name), append(outputs, models.GradName(name)), append(values, tensor)
		}
	}
	run := func(provider string) [][]float32 {
		var out [][]float32
		_, err := detector.OpenOnProvider(detector.RunnerOptions{Provider: provider, ProviderLibrary: os.Getenv("TRANSFORMALY_PROVIDER_LIBRARY")},
			func(so *onnx.SessionOptions, _ string) error {
				s, err := onnx.NewDynamicAdvancedSessionWithONNXData(graph, inputs, outputs, so)
				if err != nil {
					return err
				}
				defer s.Destroy()
				var took time.Duration
				for range 3 { // the first two plan and touch memory
					res := make([]onnx.Value, len(outputs))
					start := time.Now()
					if err := s.Run(values, res); err != nil {
						return err
					}
					took = time.Since(start)
					out = out[:0]
					for _, r := range res {
						out = append(out, slices.Clone(r.(*onnx.Tensor[float32]).GetData()))
						r.Destroy()
					}
				}
				t.Logf("%s: training step of 2 ViT-S blocks, batch %d: %s", provider, batch, took)
				return nil
			})
		if err != nil {
			t.Logf("%s: not usable: %v", provider, err)
			return nil
		}
		return out
	}
	want := run("cpu")
	got := run("cuda")
	if got == nil {
		t.Fatal("TRANSFORMALY_GPU is set but the CUDA provider could not be used (see above, or transformaly doctor)")
	}
	for i, name := range outputs {
		worst, scale := 0.0, 0.0
		for j := range want[i] {
			worst = math.Max(worst, math.Abs(float64(got[i][j]-want[i][j])))
			scale = math.Max(scale, math.Abs(float64(want[i][j])))
		}
		tol := 1e-2
		if name == models.OutputLosses {
			tol = 1e-3
		}
		if worst > tol*scale {
			t.Errorf("%s: CUDA differs from the CPU by %.3g (largest entry %.3g)", name, worst, scale)
		}
	}
}
