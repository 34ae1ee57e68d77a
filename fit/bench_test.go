package fit_test

import (
	"context"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	onnx "github.com/yalue/onnxruntime_go"

	"github.com/transformaly/transformaly/detector"
	"github.com/transformaly/transformaly/fit"
	"github.com/transformaly/transformaly/internal/ort/orttest"
	"github.com/transformaly/transformaly/internal/synth"
	"github.com/transformaly/transformaly/models"
)

func TestMain(m *testing.M) { orttest.Main(m) }

func peak(b *testing.B) float64 {
	p, err := detector.MeasureSgemmPeak(2048)
	if err != nil {
		b.Fatal(err)
	}
	return p
}

// BenchmarkTrainingStep reports GFLOP/s of one fit step for a ViT-S-shaped
// student block (batch 8, 197 tokens), fed images (the teacher's embedding
// and block 0 run in the step) or the teacher's cached activations, then
// the student's forward and backward pass (3 forwards' worth) and Adam.
func BenchmarkTrainingStep(b *testing.B) {
	cfg := models.Config{Dim: 384, Depth: 1, Heads: 6, MLPDim: 1536, Patch: 16, ImageSize: 224, Eps: 1e-6}
	v, err := models.RandomViT(cfg, 1)
	if err != nil {
		b.Fatal(err)
	}
	const batch = 8
	teacherFLOPs, blockFLOPs := v.ForwardFLOPs()
	p := peak(b)
	rng := rand.New(rand.NewPCG(1, 1))
	pixels := make([]byte, batch*224*224*3)
	for i := range pixels {
		pixels[i] = byte(rng.IntN(256))
	}
	images, err := onnx.NewTensor(onnx.NewShape(batch, 224, 224, 3), pixels)
	if err != nil {
		b.Fatal(err)
	}
	defer images.Destroy()
	values := make([]float32, batch*2*v.Tokens()*v.Dim)
	for i := range values {
		values[i] = float32(rng.NormFloat64())
	}
	activations, err := onnx.NewTensor(onnx.NewShape(batch, 2, int64(v.Tokens()), int64(v.Dim)), values)
	if err != nil {
		b.Fatal(err)
	}
	defer activations.Destroy()
	for _, bc := range []struct {
		name  string
		input models.TrainingInput
		batch onnx.Value
		flops float64
	}{
		{"input=images", models.FromImages, images, batch * (teacherFLOPs + 3*blockFLOPs)},
		{"input=activations", models.FromActivations, activations, batch * 3 * blockFLOPs},
	} {
		b.Run(bc.name, func(b *testing.B) {
			student := models.XavierBlock(v.Config, rand.New(rand.NewPCG(1, 1)))
			tr, err := fit.NewTrainer(v, []int{0}, []models.Block{student}, 1e-4, detector.RunnerOptions{}, bc.input)
			if err != nil {
				b.Fatal(err)
			}
			defer tr.Close()
			// ORT plans its memory on the first run and first touches the
			// planned arena on the second: warm up with both.
			for range 2 {
				if _, err := tr.Step(bc.batch); err != nil {
					b.Fatal(err)
				}
			}
			b.ResetTimer()
			for range b.N {
				if _, err := tr.Step(bc.batch); err != nil {
					b.Fatal(err)
				}
			}
			perStep := b.Elapsed().Seconds() / float64(b.N)
			b.ReportMetric(perStep*1e3, "ms/step")
			b.ReportMetric(bc.flops/perStep/1e9, "GFLOP/s")
			b.ReportMetric(p, "peak-GFLOP/s")
			b.ReportMetric(bc.flops/perStep/1e9/p, "of-peak")
		})
	}
}

// BenchmarkFit runs a whole fit (a ViT-Ti-shaped teacher at 224, students on
// blocks 2..11, 48 synthetic images, 8 epochs: fixed costs such as decoding
// and the feature pass weigh as they would in a short real fit) and reports
// images/s and the whole fit's time over the time its training steps alone
// took, with the teacher's activations cached once (its pass then counts
// outside the steps) and with the teacher run in every step.
func BenchmarkFit(b *testing.B) {
	for _, bc := range []struct {
		name  string
		cache int64
	}{{"teacher=cached", 0}, {"teacher=every-step", -1}} {
		b.Run(bc.name, func(b *testing.B) { benchmarkFit(b, bc.cache) })
	}
}

func benchmarkFit(b *testing.B, activationCache int64) {
	cfg := models.Config{Dim: 192, Depth: 12, Heads: 3, MLPDim: 768, Patch: 16, ImageSize: 224, Eps: 1e-6}
	dir := b.TempDir()
	v, err := models.RandomViT(cfg, 1)
	if err != nil {
		b.Fatal(err)
	}
	v.Checksum = "bench"
	normal := filepath.Join(dir, "normal")
	if _, err := synth.WriteParts(normal, 224, synth.Normal, 48, 1); err != nil {
		b.Fatal(err)
	}
	const epochs = 8
	// Logs would split the benchmark's result line for benchreport.
	defer slog.SetDefault(slog.Default())
	slog.SetDefault(slog.New(slog.NewTextHandler(io.Discard, nil)))
	for i := range b.N {
		out := filepath.Join(dir, "b.tfy")
		os.Remove(out)
		info, err := fit.Run(context.Background(), fit.Options{Teacher: v, NormalDir: normal, ValFraction: 0.1,
			Epochs: epochs, BatchSize: 16, LR: 1e-4, Seed: uint64(i), Whitening: 0.9, Quantile: 0.995, ActivationCache: activationCache, Out: out})
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(info.Training.TrainImages*epochs)/info.Training.Seconds, "train-images/s")
		b.ReportMetric(info.Training.Seconds/info.Training.StepSeconds, "fit/steps")
	}
}
