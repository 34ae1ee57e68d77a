package detector_test

import (
	"fmt"
	"math/rand/v2"
	"os"
	"testing"

	"github.com/transformaly/transformaly/detector"
	"github.com/transformaly/transformaly/internal/ort"
	"github.com/transformaly/transformaly/models"
)

func TestMain(m *testing.M) {
	if err := ort.Init(""); err != nil {
		println("ONNX Runtime is needed for these tests:", err.Error())
		os.Exit(1)
	}
	os.Exit(m.Run())
}

func sgemmPeak(b *testing.B) float64 {
	b.Helper()
	peak, err := detector.MeasureSgemmPeak(2048)
	if err != nil {
		b.Fatal(err)
	}
	return peak
}

var benchShapes = []struct {
	name string
	cfg  models.Config
}{
	{"ViT-S16-224", models.Config{Dim: 384, Depth: 12, Heads: 6, MLPDim: 1536, Patch: 16, ImageSize: 224, Eps: 1e-6}},
	{"ViT-B16-224", models.Config{Dim: 768, Depth: 12, Heads: 12, MLPDim: 3072, Patch: 16, ImageSize: 224, Eps: 1e-6}},
}

// BenchmarkGraphs reports per-image latency, GFLOP/s and the fraction of
// the sgemm peak for the teacher and the detector (students on blocks
// 2..11) at batch 1 and 8.
func BenchmarkGraphs(b *testing.B) {
	for _, shape := range benchShapes {
		v, err := models.RandomViT(shape.cfg, 1)
		if err != nil {
			b.Fatal(err)
		}
		blocks := []int{2, 3, 4, 5, 6, 7, 8, 9, 10, 11}
		rng := rand.New(rand.NewPCG(1, 1))
		students := make([]models.Block, len(blocks))
		for i := range students {
			students[i] = models.XavierBlock(v.Config, rng)
		}
		teacherFLOPs, blockFLOPs := v.ForwardFLOPs()
		teacher, err := models.TeacherGraph(v, nil)
		if err != nil {
			b.Fatal(err)
		}
		det, err := models.DetectorGraph(v, blocks, students)
		if err != nil {
			b.Fatal(err)
		}
		graphs := []struct {
			kind    string
			model   []byte
			outputs []string
			flops   float64
		}{
			{"teacher", teacher, []string{models.OutputEmbedding}, teacherFLOPs},
			{"detector", det, []string{models.OutputEmbedding, models.OutputBlockErrors, models.OutputTokenErrors}, teacherFLOPs + float64(len(blocks))*blockFLOPs},
		}
		for _, g := range graphs {
			for _, batch := range []int{1, 8} {
				b.Run(fmt.Sprintf("%s/%s/batch%d", shape.name, g.kind, batch), func(b *testing.B) {
					peak := sgemmPeak(b)
					r, err := detector.NewRunner(g.model, v.ImageSize, g.outputs, detector.RunnerOptions{})
					if err != nil {
						b.Fatal(err)
					}
					defer r.Close()
					images := make([]byte, batch*v.ImageSize*v.ImageSize*3)
					for i := range images {
						images[i] = byte(i * 7)
					}
					// ORT plans its memory on the first run and first touches
					// the planned arena on the second: warm up with both.
					for range 2 {
						if _, err := r.Run(images, batch); err != nil {
							b.Fatal(err)
						}
					}
					b.ResetTimer()
					for range b.N {
						if _, err := r.Run(images, batch); err != nil {
							b.Fatal(err)
						}
					}
					perImage := b.Elapsed().Seconds() / float64(b.N*batch)
					gflops := g.flops / perImage / 1e9
					b.ReportMetric(perImage*1e3, "ms/image")
					b.ReportMetric(g.flops/1e9, "GFLOP/image")
					b.ReportMetric(gflops, "GFLOP/s")
					b.ReportMetric(peak, "peak-GFLOP/s")
					b.ReportMetric(gflops/peak, "of-peak")
				})
			}
		}
	}
}
