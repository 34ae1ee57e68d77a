package detector_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"

	"github.com/transformaly/transformaly/detector"
	"github.com/transformaly/transformaly/internal/synth"
	"github.com/transformaly/transformaly/models"
)

// int8Detector is a random detector for the int8 tests: a plain ViT, or one with
// outlier channels (a few LayerNorm channels scaled x25, as trained ViTs'
// LayerNorms amplify a few channels, and a few residual-stream channels
// far from zero, as the massive activations of trained ViTs and DINOv2's
// registers) and LayerScale.
func int8Detector(t testing.TB, outliers bool) (*models.ViT, []int, []models.Block, models.Scoring) {
	t.Helper()
	c := models.Config{Dim: 192, Depth: 6, Heads: 3, Patch: 16, ImageSize: 112}
	if outliers {
		c.Registers = 4
	}
	v, err := models.RandomViT(c, 5)
	if err != nil {
		t.Fatal(err)
	}
	if outliers {
		v.RandomLayerScale(5)
		injectOutliers(v)
	}
	blocks := []int{2, 3, 4, 5}
	rng := rand.New(rand.NewPCG(6, 6))
	var students []models.Block
	for _, b := range blocks {
		// Students that mimic their block roughly, as trained ones do: the
		// teacher's block with noise on its weights.
		s := cloneBlock(v.Blocks[b])
		for _, w := range [][]float32{s.QKVW, s.ProjW, s.FC1W, s.FC2W} {
			for i := range w {
				w[i] += float32(0.02 * rng.NormFloat64())
			}
		}
		students = append(students, s)
	}
	scoring := identityScoring(v.Dim, len(blocks))
	patch := &models.PatchScore{PatchFeatures: models.PatchFeatures{Blocks: []int{1}, Neighbourhood: 3, Pooling: models.PoolMean}, D: v.Dim, M: 300}
	for range patch.M * patch.D {
		patch.Bank = append(patch.Bank, float32(rng.NormFloat64()))
	}
	scoring.Patch = patch
	return v, blocks, students, scoring
}

// injectOutliers scales 4 channels of every LayerNorm by 25, and puts 2
// residual-stream channels at 30 and -20 in every token.
func injectOutliers(v *models.ViT) {
	ln := []int{7, 50, 111, 160}
	for i := range v.Blocks {
		b := &v.Blocks[i]
		for _, j := range ln {
			b.Norm1W[j] *= 25
			b.Norm1B[j] *= 25
			b.Norm2W[j] *= 25
			b.Norm2B[j] *= 25
		}
	}
	d := v.Dim
	for tok := range len(v.PosEmbed) / d {
		v.PosEmbed[tok*d+30] += 30
		v.PosEmbed[tok*d+90] -= 20
	}
	for r := range v.Registers {
		v.RegTokens[r*d+30] += 30
		v.RegTokens[r*d+90] -= 20
	}
	v.ClsToken[30] += 30
	v.ClsToken[90] -= 20
}

func cloneBlock(b models.Block) models.Block {
	c := b
	c.QKVW = append([]float32(nil), b.QKVW...)
	c.ProjW = append([]float32(nil), b.ProjW...)
	c.FC1W = append([]float32(nil), b.FC1W...)
	c.FC2W = append([]float32(nil), b.FC2W...)
	return c
}

func partImages(size, n int, seed uint64) []byte {
	out := make([]byte, 0, n*size*size*3)
	for i := range n {
		kinds := []string{synth.Normal, synth.Missing, synth.Foreign, synth.Recolored, synth.Crack, synth.Normal}
		img := synth.Part(size, kinds[i%len(kinds)], seed+uint64(i))
		for p := 0; p < len(img.Pix); p += 4 {
			out = append(out, img.Pix[p], img.Pix[p+1], img.Pix[p+2])
		}
	}
	return out
}

// TestInt8MatchesFP32 loads random detectors as the daemon does, at fp32
// and at int8, and compares what they compute on synthetic parts of every
// gross kind and a crack: the CLS embedding (cosine, and the cosine of its
// deviations from the images' float32 mean, which is what the whitened
// Gaussian sees), the block errors and the patch distances. On this
// machine (AVX2 without VNNI: uint8 weights) a plain ViT gave a cosine of
// 0.9998 (deviations 0.992), block errors within 0.8% and patch distances
// within 0.13% of their largest; the ViT with outlier channels, LayerScale
// and registers 0.9998 (deviations 0.993; 0.960 without smoothing), 3.5%
// and 0.16%.
func TestInt8MatchesFP32(t *testing.T) {
	for _, outliers := range []bool{false, true} {
		t.Run(fmt.Sprintf("outliers=%v", outliers), func(t *testing.T) {
			v, blocks, students, scoring := int8Detector(t, outliers)
			info := models.BundleInfo{Format: models.BundleFormat, ImageSize: v.ImageSize, Blocks: blocks, Threshold: 1}
			info.Teacher.Config = v.Config
			p := scoring.Patch
			info.Patch = &models.PatchInfo{Blocks: p.Blocks, Neighbourhood: p.Neighbourhood, Pooling: p.Pooling, FeatureWidth: p.D, BankEntries: p.M, Combination: spreadCombination(1)}
			m, err := models.ScoredDetectorGraph(v, blocks, students, scoring, info, models.FP32)
			if err != nil {
				t.Fatal(err)
			}
			bundle := filepath.Join(t.TempDir(), "int8.tfy")
			if err := models.WriteBundle(bundle, m); err != nil {
				t.Fatal(err)
			}
			const n = 6
			images := partImages(v.ImageSize, n, 100)
			score := func(precision string) []detector.Result {
				d, err := detector.Load(bundle, detector.RunnerOptions{Provider: "auto", Precision: precision})
				if err != nil {
					t.Fatal(err)
				}
				defer d.Close()
				if d.Provider() != "cpu" {
					t.Fatalf("%s ran on %s", precision, d.Provider())
				}
				res, err := d.Score(images, n, d.Info.Threshold)
				if err != nil {
					t.Fatal(err)
				}
				return res
			}
			want, got := score(models.FP32), score(models.INT8)
			var wantEmb, gotEmb, wantBlock, gotBlock, wantPatch, gotPatch []float32
			for i := range n {
				wantEmb, gotEmb = append(wantEmb, want[i].Embedding...), append(gotEmb, got[i].Embedding...)
				wantBlock, gotBlock = append(wantBlock, want[i].BlockErrors...), append(gotBlock, got[i].BlockErrors...)
				wantPatch, gotPatch = append(wantPatch, want[i].PatchDistances...), append(gotPatch, got[i].PatchDistances...)
			}
			cos, dev := 1.0, centred(wantEmb, gotEmb, v.Dim)
			for i := range n {
				cos = math.Min(cos, cosine(want[i].Embedding, got[i].Embedding))
			}
			blockErr, patchErr := relErr(wantBlock, gotBlock), relErr(wantPatch, gotPatch)
			t.Logf("CLS cosine min %.5f (deviations from the mean %.4f), block errors within %.2g, patch distances within %.2g of their largest", cos, dev, blockErr, patchErr)
			minCos := 0.999
			if outliers {
				minCos = 0.99
			}
			if cos < minCos || dev < 0.98 || blockErr > 0.06 || patchErr > 0.005 {
				t.Errorf("int8 strays from fp32: cosine %.5f (at least %g), deviations %.4f (0.98), block errors %.3g (0.06), patch distances %.3g (0.005)", cos, minCos, dev, blockErr, patchErr)
			}
			if outliers {
				// The smoothing is what holds the outlier case: without it the
				// same graph strays further.
				ranges, err := detector.ActivationRanges(v, blocks, students, 0)
				if err != nil {
					t.Fatal(err)
				}
				plain := int8Embeddings(t, v, blocks, students, scoring, models.Int8Options{UnsignedWeights: detector.Int8UnsignedWeights()}, images, n)
				smoothed := int8Embeddings(t, v, blocks, students, scoring, models.Int8Options{Ranges: ranges, UnsignedWeights: detector.Int8UnsignedWeights()}, images, n)
				unsmoothedDev, smoothedDev := centred(wantEmb, plain, v.Dim), centred(wantEmb, smoothed, v.Dim)
				t.Logf("deviations' cosine without smoothing %.4f, with %.4f", unsmoothedDev, smoothedDev)
				if !(smoothedDev > unsmoothedDev) {
					t.Errorf("smoothing did not help: %.4f without, %.4f with", unsmoothedDev, smoothedDev)
				}
			}
		})
	}
}

// int8Embeddings runs an int8 detector graph made with q and returns its
// CLS embeddings.
func int8Embeddings(t *testing.T, v *models.ViT, blocks []int, students []models.Block, s models.Scoring, q models.Int8Options, images []byte, n int) []float32 {
	t.Helper()
	m, err := models.ScoredDetectorGraphInt8(v, blocks, students, s, models.BundleInfo{}, q)
	if err != nil {
		t.Fatal(err)
	}
	model, err := models.Serialize(m)
	if err != nil {
		t.Fatal(err)
	}
	r, err := detector.NewRunner(model, v.ImageSize, []string{models.OutputEmbedding}, detector.RunnerOptions{Provider: "cpu"})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	out, err := r.Run(images, n)
	if err != nil {
		t.Fatal(err)
	}
	return out[0].Data
}

// TestInt8GraphShape holds the int8 detector to what makes it fast: every
// block's four linear layers (teacher and students) in the node chain ONNX
// Runtime fuses into DynamicQuantizeMatMul, with int8 weights, and no
// float Gemm left but the scoring's; and the weights stored only as int8.
func TestInt8GraphShape(t *testing.T) {
	v, blocks, students, scoring := int8Detector(t, false)
	m, err := models.ScoredDetectorGraphInt8(v, blocks, students, scoring, models.BundleInfo{}, models.Int8Options{})
	if err != nil {
		t.Fatal(err)
	}
	count := map[string]int{}
	for _, node := range m.GetGraph().GetNode() {
		count[node.GetOpType()]++
	}
	layers := 4 * (v.Depth + len(blocks))
	if count["MatMulInteger"] != layers || count["DynamicQuantizeLinear"] != layers || count["Gemm"] != 2 {
		t.Errorf("%d MatMulInteger and %d DynamicQuantizeLinear nodes (want %d each), %d Gemm (want the scoring's 2)", count["MatMulInteger"], count["DynamicQuantizeLinear"], layers, count["Gemm"])
	}
	for _, init := range m.GetGraph().GetInitializer() {
		if strings.HasSuffix(init.GetName(), "qkv.weight") || strings.HasSuffix(init.GetName(), "fc1.weight") {
			t.Errorf("float weight %s kept beside its int8 copy", init.GetName())
		}
	}
}

// TestInt8RefusesGPUProviders: int8 runs on the CPU provider only.
func TestInt8RefusesGPUProviders(t *testing.T) {
	for _, p := range []string{"cuda", "tensorrt"} {
		if _, err := detector.Int8Provider(p); err == nil || !strings.Contains(err.Error(), "CPU provider only") {
			t.Errorf("%s: %v", p, err)
		}
	}
	for _, p := range []string{"", "cpu", "auto"} {
		if got, err := detector.Int8Provider(p); got != "cpu" || err != nil {
			t.Errorf("%q: %q, %v", p, got, err)
		}
	}
}

func cosine(a, b []float32) float64 {
	var ab, aa, bb float64
	for i := range a {
		ab += float64(a[i]) * float64(b[i])
		aa += float64(a[i]) * float64(a[i])
		bb += float64(b[i]) * float64(b[i])
	}
	return ab / math.Sqrt(aa*bb)
}

// relErr is the largest difference over the largest magnitude.
func relErr(want, got []float32) float64 {
	worst, peak := 0.0, 0.0
	for i := range want {
		worst = math.Max(worst, math.Abs(float64(want[i]-got[i])))
		peak = math.Max(peak, math.Abs(float64(want[i])))
	}
	return worst / peak
}

func centred(want, got []float32, d int) float64 {
	n := len(want) / d
	mean := make([]float32, d)
	for i := range n {
		for j := range d {
			mean[j] += want[i*d+j] / float32(n)
		}
	}
	ccos := 1.0
	for i := range n {
		a, b := make([]float32, d), make([]float32, d)
		for j := range d {
			a[j], b[j] = want[i*d+j]-mean[j], got[i*d+j]-mean[j]
		}
		ccos = math.Min(ccos, cosine(a, b))
	}
	return ccos
}
