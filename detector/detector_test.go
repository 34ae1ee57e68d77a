package detector_test

import (
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/transformaly/transformaly/detector"
	"github.com/transformaly/transformaly/models"
)

// A bundle loads under whatever name it has now and wherever the process
// runs, inline or (past protobuf's 2 GiB) through a private copy, and scores
// as the same graph opened from memory. Either way ONNX Runtime does not
// depend on the user's file afterwards: a new bundle copied over it in
// place (truncating the same file) once crashed the process with SIGBUS.
func TestLoadedBundleOutlivesItsFile(t *testing.T) {
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
	path := filepath.Join(dir, "second.tfy")
	for _, viaCopy := range []bool{false, true} {
		if err := models.WriteBundle(filepath.Join(dir, "first.tfy"), m); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(filepath.Join(dir, "first.tfy"), path); err != nil {
			t.Fatal(err)
		}
		restore := detector.SetInlineFits(func(models.ModelFile) bool { return !viaCopy })
		d, err := detector.Load(path, detector.RunnerOptions{})
		restore()
		if err != nil {
			t.Fatalf("private copy %v: %v", viaCopy, err)
		}
		// cp new.tfy second.tfy: the same file, truncated and rewritten.
		if err := os.WriteFile(path, []byte("a new bundle on its way"), 0o644); err != nil {
			t.Fatal(err)
		}
		got, err := d.Score(images, 3, d.Info.Threshold)
		d.Close()
		if err != nil {
			t.Fatalf("private copy %v: %v", viaCopy, err)
		}
		for i := range got {
			if float32(got[i].Score) != want[0].Data[i] {
				t.Errorf("private copy %v, image %d: score %g from the file, %g from memory", viaCopy, i, got[i].Score, want[0].Data[i])
			}
		}
	}
	if left, _ := filepath.Glob(filepath.Join(os.TempDir(), "transformaly-model-*")); len(left) > 0 {
		t.Errorf("private copies left behind: %v", left)
	}

	// A bundle whose threshold cannot keep its promise (fitted on too few
	// normal images) says so when loaded, as fit did.
	unkept := info
	unkept.Calibration.Unkept = "40 normal images cannot keep a promise of 0.5% false alarms"
	m2, err := models.ScoredDetectorGraph(v, blocks, students, identityScoring(v.Dim, len(blocks)), unkept, models.FP32)
	if err != nil {
		t.Fatal(err)
	}
	if err := models.WriteBundle(path, m2); err != nil {
		t.Fatal(err)
	}
	var log strings.Builder
	defer slog.SetDefault(slog.Default())
	slog.SetDefault(slog.New(slog.NewTextHandler(&log, nil)))
	unkeptDet, err := detector.Load(path, detector.RunnerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	unkeptDet.Close()
	if !strings.Contains(log.String(), "level=WARN") || !strings.Contains(log.String(), "cannot keep its promise: 40 normal images") {
		t.Errorf("loading a bundle whose promise is unkept logged %q", log.String())
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
		res, err := d.Score(images, 3, d.Info.Threshold)
		d.Close()
		if err != nil || float32(res[0].Score) != want[0].Data[0] {
			t.Errorf("format %d: score %v (%v), want %g", format, res, err, want[0].Data[0])
		}
	}
}

// A bundle whose graph emits NaN or infinite scores (here its scoring
// weights are) judges every image anomalous and says the result is not
// finite: NaN > threshold is false, and such images were called normal.
func TestNonFiniteScoresAreAnomalous(t *testing.T) {
	v, err := models.RandomViT(models.Config{Dim: 16, Depth: 2, Heads: 2, Patch: 8, ImageSize: 16}, 4)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(3, 3))
	for _, bad := range []float32{float32(math.NaN()), float32(math.Inf(1))} {
		scoring := identityScoring(v.Dim, 1)
		scoring.Pretrained.W[0] = bad
		info := models.BundleInfo{Format: models.BundleFormat, ImageSize: v.ImageSize, Blocks: []int{1}, Threshold: 1}
		info.Teacher.Config = v.Config
		m, err := models.ScoredDetectorGraph(v, []int{1}, []models.Block{models.XavierBlock(v.Config, rng)}, scoring, info, models.FP32)
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(t.TempDir(), "nan.tfy")
		if err := models.WriteBundle(path, m); err != nil {
			t.Fatal(err)
		}
		d, err := detector.Load(path, detector.RunnerOptions{})
		if err != nil {
			t.Fatal(err)
		}
		res, err := d.Score(make([]byte, 2*16*16*3), 2, 1e300)
		d.Close()
		if err != nil {
			t.Fatal(err)
		}
		for i, r := range res {
			if r.Finite() || !r.Anomalous {
				t.Errorf("weight %g, image %d: score %g finite=%v anomalous=%v; want not finite and anomalous", bad, i, r.Score, r.Finite(), r.Anomalous)
			}
			if detector.NumberOrNull(r.Score) != nil {
				t.Errorf("score %g kept for JSON", r.Score)
			}
		}
	}
}

// Scores made on the host (float64) from the graph's features equal
// the graph's own (float32, ONNX Runtime), for fp32 and fp16 graphs with a
// patch feature space: TensorRT at fp16 scores this way.
func TestScoresOnTheHostMatchTheGraph(t *testing.T) {
	v, err := models.RandomViT(models.Config{Dim: 32, Depth: 3, Heads: 2, Patch: 8, ImageSize: 32}, 5)
	if err != nil {
		t.Fatal(err)
	}
	blocks := []int{1, 2}
	rng := rand.New(rand.NewPCG(6, 6))
	students := []models.Block{models.XavierBlock(v.Config, rng), models.XavierBlock(v.Config, rng)}
	quad := func(in, k int) models.QuadraticScore {
		q := models.QuadraticScore{In: in, K: k, W: make([]float32, in*k), B: make([]float32, k), Const: -7.25}
		for i := range q.W {
			q.W[i] = float32(rng.NormFloat64())
		}
		for i := range q.B {
			q.B[i] = float32(rng.NormFloat64())
		}
		return q
	}
	patch := &models.PatchScore{PatchFeatures: models.PatchFeatures{Blocks: []int{0}, Neighbourhood: 3, Pooling: models.PoolMean}, D: v.Dim, M: 30}
	for range patch.M * patch.D {
		patch.Bank = append(patch.Bank, float32(rng.NormFloat64()))
	}
	scoring := models.Scoring{Pretrained: quad(v.Dim, 7), Student: quad(len(blocks), 2), Patch: patch}
	info := models.BundleInfo{Format: models.BundleFormat, ImageSize: v.ImageSize, Blocks: blocks, Threshold: 1}
	info.Teacher.Config = v.Config
	info.Patch = &models.PatchInfo{Blocks: patch.Blocks, Neighbourhood: patch.Neighbourhood, Pooling: patch.Pooling, FeatureWidth: patch.D, BankEntries: patch.M, Combination: spreadCombination(10)}
	m, err := models.ScoredDetectorGraph(v, blocks, students, scoring, info, models.FP32)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "host.tfy")
	if err := models.WriteBundle(path, m); err != nil {
		t.Fatal(err)
	}
	images := make([]byte, 4*32*32*3)
	for i := range images {
		images[i] = byte(rng.IntN(256))
	}
	score := func(precision string, host bool) []detector.Result {
		d, err := detector.Load(path, detector.RunnerOptions{Precision: precision, ScoreOnHost: host})
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		res, err := d.Score(images, 4, 1)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	for _, precision := range []string{models.FP32, models.FP16} {
		graph, host := score(precision, false), score(precision, true)
		for i := range graph {
			g, h := graph[i], host[i]
			// The reference: the models package's own float64 evaluation.
			wantPre := scoring.Pretrained.LogLikelihood(h.Embedding)
			for what, pair := range map[string][2]float64{"ll_pretrained": {g.LLPretrained, h.LLPretrained}, "ll_student": {g.LLStudent, h.LLStudent},
				"score": {g.Score, h.Score}, "reference ll_pretrained": {wantPre, h.LLPretrained}} {
				if d := math.Abs(pair[0] - pair[1]); d > 1e-4*math.Max(1, math.Abs(pair[0])) {
					t.Errorf("%s image %d: %s %g by the graph, %g on the host", precision, i, what, pair[0], pair[1])
				}
			}
			if want := info.Patch.Combination.Score(-(h.LLPretrained + h.LLStudent), h.PatchScore); g.PatchScore != h.PatchScore || h.Score != want {
				t.Errorf("%s image %d: patch score %g / %g, score %g, want the combination's %g", precision, i, g.PatchScore, h.PatchScore, h.Score, want)
			}
		}
	}
}
