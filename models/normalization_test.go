package models_test

import (
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/transformaly/transformaly/internal/vitref"
	"github.com/transformaly/transformaly/models"
)

var (
	imagenetMean = [3]float64{0.485, 0.456, 0.406}
	imagenetStd  = [3]float64{0.229, 0.224, 0.225}
)

// The normalisation comes from the checkpoint's own files: timm's
// config.json (pretrained_cfg), Hugging Face's preprocessor_config.json;
// --mean/--std (LoadOptions.Input) override both; without any, 0.5 and 0.5
// are assumed and said so. The teacher graph then matches the float64
// reference fed that normalisation, and differs from the 0.5/0.5 one by
// far (a DeiT-like teacher fed the wrong one was 56-59% off).
func TestNormalizationFromTheCheckpoint(t *testing.T) {
	v, err := models.RandomViT(smallConfig, 2)
	if err != nil {
		t.Fatal(err)
	}
	images := randomImages(2, v.ImageSize, 6)
	embed := func(w *models.ViT) []float32 {
		g, err := models.TeacherGraph(w)
		if err != nil {
			t.Fatal(err)
		}
		return runGraph(t, g, images, 2, w.ImageSize, models.OutputEmbedding)[0]
	}
	assumed := embed(v)

	timm := filepath.Join(t.TempDir(), "model.safetensors")
	if err := v.SaveTimm(timm); err != nil {
		t.Fatal(err)
	}
	writeJSON(t, filepath.Join(filepath.Dir(timm), "config.json"), map[string]any{"architecture": "deit_tiny_patch16_224",
		"pretrained_cfg": map[string]any{"mean": imagenetMean[:], "std": imagenetStd[:], "input_size": []int{3, 32, 32},
			"crop_pct": 0.875, "interpolation": "bicubic"}})
	hf := filepath.Join(t.TempDir(), "model.safetensors")
	saveHuggingFace(t, v, hf, "")
	writeJSON(t, filepath.Join(filepath.Dir(hf), "preprocessor_config.json"), map[string]any{"do_normalize": true,
		"image_mean": imagenetMean[:], "image_std": imagenetStd[:], "rescale_factor": 1.0 / 255, "do_rescale": true})
	writeJSON(t, filepath.Join(filepath.Dir(hf), "config.json"), map[string]any{"layer_norm_eps": 1e-6, "num_attention_heads": 4, "hidden_size": 64})

	for name, path := range map[string]string{"timm config.json": timm, "Hugging Face preprocessor_config.json": hf} {
		w, err := models.LoadViT(path, models.LoadOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if w.Input.Mean != imagenetMean || w.Input.Std != imagenetStd || !strings.HasSuffix(w.Input.Source, ".json") {
			t.Errorf("%s: normalisation %+v, want ImageNet's from the file", name, w.Input)
		}
		if path == timm && (w.Input.CropPct != 0.875 || w.Input.Interpolation != "bicubic" || w.Input.InputSize != 32) {
			t.Errorf("timm's evaluation settings not reported: %+v", w.Input)
		}
		got := embed(w)
		for img := range 2 {
			ref := vitref.Forward(w, images[img*w.ImageSize*w.ImageSize*3:(img+1)*w.ImageSize*w.ImageSize*3])
			if e := relErr(got[img*w.Dim:(img+1)*w.Dim], ref.Embedding); e > tolerance {
				t.Errorf("%s, image %d: embedding off the reference by %.2g", name, img, e)
			}
		}
		if d := relDiff(got, assumed); d < 0.1 {
			t.Errorf("%s: the embedding moved only %.2g from the 0.5/0.5 one", name, d)
		}
	}

	// Flags beat the files; no file at all is assumed and said so.
	own := models.Normalization{Rescale: 1.0 / 255, Mean: [3]float64{0.1, 0.2, 0.3}, Std: [3]float64{0.4, 0.5, 0.6}, Source: "--mean and --std"}
	if w, err := models.LoadViT(timm, models.LoadOptions{Input: &own}); err != nil || w.Input != own {
		t.Errorf("--mean/--std over config.json: %+v, %v", w.Input, err)
	}
	bare := filepath.Join(t.TempDir(), "model.safetensors")
	v.SaveTimm(bare)
	if w, err := models.LoadViT(bare, models.LoadOptions{}); err != nil || w.Input.Mean != [3]float64{0.5, 0.5, 0.5} || !strings.Contains(w.Input.Source, "assumed") {
		t.Errorf("without any preprocessing file: %+v, %v", w.Input, err)
	}
	// A file that says something impossible is named.
	writeJSON(t, filepath.Join(filepath.Dir(hf), "preprocessor_config.json"), map[string]any{"image_mean": []float64{0.5, 0.5}, "image_std": imagenetStd[:]})
	if _, err := models.LoadViT(hf, models.LoadOptions{}); err == nil || !strings.Contains(err.Error(), "preprocessor_config.json: image_mean has 2 values") {
		t.Errorf("image_mean of two values: %v", err)
	}
	os.WriteFile(filepath.Join(filepath.Dir(hf), "preprocessor_config.json"), []byte(`{"image_std": [0, 1, 1], "image_mean": [0, 0, 0]}`), 0o644)
	if _, err := models.LoadViT(hf, models.LoadOptions{}); err == nil || !strings.Contains(err.Error(), "std must be positive") {
		t.Errorf("a zero std: %v", err)
	}
}

// The bundle records the normalisation, and the FP16 rebuild from a bundle
// keeps it.
func TestBundleKeepsTheNormalization(t *testing.T) {
	v, _ := models.RandomViT(smallConfig, 4)
	v.Input = models.Normalization{Rescale: 1.0 / 255, Mean: imagenetMean, Std: imagenetStd, Source: "test"}
	info := models.BundleInfo{Format: models.BundleFormat, ImageSize: v.ImageSize, Blocks: []int{1}, Threshold: 1}
	info.Teacher.Config, info.Teacher.Normalization = v.Config, &v.Input
	m, _ := models.ScoredDetectorGraph(v, []int{1}, []models.Block{v.Blocks[1]}, models.Scoring{Pretrained: identityQuadratic(v.Dim), Student: identityQuadratic(1)}, info, models.FP32)
	path := filepath.Join(t.TempDir(), "b.tfy")
	if err := models.WriteBundle(path, m); err != nil {
		t.Fatal(err)
	}
	back, mf, err := models.ReadBundle(path)
	if err != nil || back.Teacher.Normalization == nil || back.Teacher.Normalization.Mean != imagenetMean {
		t.Fatalf("read back %+v, %v", back.Teacher.Normalization, err)
	}
	w, _, _, err := models.DecodeBundle(back, mf)
	if err != nil || w.Input.Std != imagenetStd {
		t.Errorf("decoded teacher's normalisation %+v, %v", w.Input, err)
	}
}

func identityQuadratic(in int) models.QuadraticScore {
	q := models.QuadraticScore{In: in, K: in, W: make([]float32, in*in), B: make([]float32, in)}
	for i := range in {
		q.W[i*in+i] = 1
	}
	return q
}

// relDiff is |a-b|/|b| (L2).
func relDiff(a, b []float32) float64 {
	num, den := 0.0, 0.0
	for i := range a {
		d := float64(a[i]) - float64(b[i])
		num += d * d
		den += float64(b[i]) * float64(b[i])
	}
	return math.Sqrt(num / den)
}
