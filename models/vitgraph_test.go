package models_test

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/transformaly/transformaly/internal/vitref"
	"github.com/transformaly/transformaly/models"
)

const tolerance = 1e-4

func TestTeacherGraphMatchesReference(t *testing.T) {
	for _, cfg := range []models.Config{
		smallConfig,
		{Dim: 48, Depth: 2, Heads: 3, Patch: 4, ImageSize: 16, MLPDim: 96}, // 65 tokens, non-4x MLP
	} {
		t.Run(cfg.Describe(), func(t *testing.T) {
			v, err := models.RandomViT(cfg, 7)
			if err != nil {
				t.Fatal(err)
			}
			graph, err := models.TeacherGraph(v)
			if err != nil {
				t.Fatal(err)
			}
			const n = 3
			size := v.ImageSize
			images := randomImages(n, size, 11)
			got := runGraph(t, graph, images, n, size, models.OutputEmbedding)
			for img := range n {
				ref := vitref.Forward(v, images[img*size*size*3:(img+1)*size*size*3])
				if e := relErr(got[0][img*v.Dim:(img+1)*v.Dim], ref.Embedding); e > tolerance {
					t.Errorf("image %d: embedding relative error %.2g > %g", img, e, tolerance)
				}
			}
		})
	}
}

// TestTeacherActivationsMatchReference checks the residual stream a fit
// caches: every boundary a set of student blocks reads, in order, and no
// other.
func TestTeacherActivationsMatchReference(t *testing.T) {
	v, err := models.RandomViT(models.Config{Dim: 32, Depth: 4, Heads: 2, Patch: 8, ImageSize: 16, MLPDim: 64}, 5)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		blocks, bounds []int
	}{
		{[]int{0, 1, 2, 3}, []int{0, 1, 2, 3, 4}},
		{[]int{2, 0}, []int{0, 1, 2, 3}},
		{[]int{1}, []int{1, 2}},
	} {
		if got := models.ActivationBoundaries(tc.blocks); !slices.Equal(got, tc.bounds) {
			t.Fatalf("blocks %v: boundaries %v, want %v", tc.blocks, got, tc.bounds)
		}
		graph, err := models.TeacherActivationsGraph(v, tc.blocks)
		if err != nil {
			t.Fatal(err)
		}
		const n = 2
		size := v.ImageSize
		images := randomImages(n, size, 13)
		got := runGraph(t, graph, images, n, size, models.Activations)[0]
		td := v.Tokens() * v.Dim
		if len(got) != n*len(tc.bounds)*td {
			t.Fatalf("blocks %v: %d activation values, want %d", tc.blocks, len(got), n*len(tc.bounds)*td)
		}
		for img := range n {
			ref := vitref.Forward(v, images[img*size*size*3:(img+1)*size*size*3])
			for j, k := range tc.bounds {
				at := (img*len(tc.bounds) + j) * td
				if e := relErr(got[at:at+td], ref.BlockIO[k]); e > tolerance {
					t.Errorf("blocks %v, image %d: boundary %d relative error %.2g", tc.blocks, img, k, e)
				}
			}
		}
	}
}

func TestDetectorGraphMatchesReference(t *testing.T) {
	v, err := models.RandomViT(smallConfig, 3)
	if err != nil {
		t.Fatal(err)
	}
	checkDetectorMatchesReference(t, v, v)
}

// checkDetectorMatchesReference runs the detector graph of loaded (with two
// random students) and compares its embedding, block errors and token
// errors with the float64 reference of want, the same model as written.
func checkDetectorMatchesReference(t *testing.T, want, loaded *models.ViT) {
	t.Helper()
	blocks := []int{0, 2}
	rng := rand.New(rand.NewPCG(5, 5))
	students := []models.Block{models.XavierBlock(want.Config, rng), models.XavierBlock(want.Config, rng)}
	m, err := models.DetectorGraph(loaded, blocks, students)
	if err != nil {
		t.Fatal(err)
	}
	graph, err := models.Serialize(m)
	if err != nil {
		t.Fatal(err)
	}
	const n = 2
	size := want.ImageSize
	images := randomImages(n, size, 12)
	got := runGraph(t, graph, images, n, size, models.OutputEmbedding, models.OutputBlockErrors, models.OutputTokenErrors)
	tokens := want.ImageTokens()
	for img := range n {
		ref := vitref.Forward(want, images[img*size*size*3:(img+1)*size*size*3])
		if e := relErr(got[0][img*want.Dim:(img+1)*want.Dim], ref.Embedding); e > tolerance {
			t.Errorf("image %d: embedding relative error %.2g", img, e)
		}
		var wantBlock, wantTokens []float64
		for k, i := range blocks {
			student := vitref.Block(want.Config, students[k], ref.BlockIO[i])
			tok := vitref.TokenErrors(want.Config, student, ref.BlockIO[i+1])
			mean := 0.0
			for _, x := range tok {
				mean += x
			}
			wantTokens = append(wantTokens, tok...)
			wantBlock = append(wantBlock, mean/float64(tokens))
		}
		if e := relErr(got[1][img*len(blocks):(img+1)*len(blocks)], wantBlock); e > tolerance {
			t.Errorf("image %d: block errors %v, want %v (relative error %.2g)", img, got[1][img*len(blocks):(img+1)*len(blocks)], wantBlock, e)
		}
		if e := relErr(got[2][img*len(blocks)*tokens:(img+1)*len(blocks)*tokens], wantTokens); e > tolerance {
			t.Errorf("image %d: token errors relative error %.2g", img, e)
		}
	}
}

func TestLayerScaleMatchesReference(t *testing.T) {
	v, err := models.RandomViT(smallConfig, 9)
	if err != nil {
		t.Fatal(err)
	}
	for i := range v.Blocks {
		v.Blocks[i].LayerScale1 = randomScale(v.Dim, uint64(i))
		v.Blocks[i].LayerScale2 = randomScale(v.Dim, uint64(i+10))
	}
	path := filepath.Join(t.TempDir(), "model.safetensors")
	if err := v.SaveTimm(path); err != nil {
		t.Fatal(err)
	}
	loaded, err := models.LoadViT(path, models.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	graph, err := models.TeacherGraph(loaded)
	if err != nil {
		t.Fatal(err)
	}
	images := randomImages(1, v.ImageSize, 2)
	got := runGraph(t, graph, images, 1, v.ImageSize, models.OutputEmbedding)
	if e := relErr(got[0], vitref.Forward(v, images).Embedding); e > tolerance {
		t.Errorf("layer-scale embedding relative error %.2g", e)
	}
}

// randomScale gives n values in [0.5, 1.5).
func randomScale(n int, seed uint64) []float32 {
	out := make([]float32, n)
	rng := rand.New(rand.NewPCG(seed, 2))
	for i := range out {
		out[i] = float32(0.5 + rng.Float64())
	}
	return out
}

func randomQuadratic(in, k int, rng *rand.Rand) models.QuadraticScore {
	q := models.QuadraticScore{In: in, K: k, W: make([]float32, in*k), B: make([]float32, k), Const: -3.5}
	for i := range q.W {
		q.W[i] = float32(rng.NormFloat64())
	}
	for i := range q.B {
		q.B[i] = float32(rng.NormFloat64())
	}
	return q
}

// The scored detector's outputs are the two quadratic log-likelihoods of its
// own features, evaluated here in float64, and the bundle reads back.
func TestScoredDetectorGraphAndBundle(t *testing.T) {
	v, _ := models.RandomViT(smallConfig, 6)
	blocks := []int{1, 2}
	rng := rand.New(rand.NewPCG(2, 2))
	students := []models.Block{models.XavierBlock(v.Config, rng), models.XavierBlock(v.Config, rng)}
	scoring := models.Scoring{Pretrained: randomQuadratic(v.Dim, 5, rng), Student: randomQuadratic(2, 2, rng)}
	info := models.BundleInfo{Format: models.BundleFormat, ImageSize: v.ImageSize, Blocks: blocks, Threshold: 1.5}
	info.Teacher.Config = v.Config
	m, graph := scoredGraph(t, v, blocks, students, scoring, info)
	const n = 3
	images := randomImages(n, v.ImageSize, 8)
	got := runGraph(t, graph, images, n, v.ImageSize, models.OutputEmbedding, models.OutputBlockErrors,
		models.OutputLLPretrained, models.OutputLLStudent, models.OutputScore)
	for i := range n {
		pre := scoring.Pretrained.LogLikelihood(got[0][i*v.Dim : (i+1)*v.Dim])
		stu := scoring.Student.LogLikelihood(got[1][i*2 : (i+1)*2])
		if e := relErr(got[2][i:i+1], []float64{pre}); e > 1e-5 {
			t.Errorf("image %d: ll_pretrained %g, want %g", i, got[2][i], pre)
		}
		if e := relErr(got[3][i:i+1], []float64{stu}); e > 1e-5 {
			t.Errorf("image %d: ll_student %g, want %g", i, got[3][i], stu)
		}
		if e := relErr(got[4][i:i+1], []float64{-(pre + stu)}); e > 1e-5 {
			t.Errorf("image %d: score %g, want %g", i, got[4][i], -(pre + stu))
		}
	}
	path := filepath.Join(t.TempDir(), "b.tfy")
	if err := models.WriteBundle(path, m); err != nil {
		t.Fatal(err)
	}
	back, _, err := models.ReadBundle(path)
	if err != nil || back.Threshold != 1.5 || back.Blocks[1] != 2 {
		t.Errorf("read back %+v, err %v", back, err)
	}
	plain, _ := models.TeacherGraph(v)
	os.WriteFile(path, plain, 0o644)
	if _, _, err := models.ReadBundle(path); err == nil || !strings.Contains(err.Error(), "not a transformaly bundle") {
		t.Errorf("a plain ONNX graph read as a bundle: %v", err)
	}
}
