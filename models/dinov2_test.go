package models_test

import (
	"fmt"
	"path/filepath"
	"testing"

	"github.com/transformaly/transformaly/internal/vitref"
	"github.com/transformaly/transformaly/models"
)

// dinov2ViT is a DINOv2-shaped ViT: patch 14, LayerScale, and
// optionally registers.
func dinov2ViT(t *testing.T, registers int, seed uint64) *models.ViT {
	t.Helper()
	v, err := models.RandomViT(models.Config{Dim: 48, Depth: 3, Heads: 3, Patch: 14, ImageSize: 56, Registers: registers}, seed)
	if err != nil {
		t.Fatal(err)
	}
	v.RandomLayerScale(seed)
	return v
}

// saveHFDinov2 writes v as transformers' Dinov2Model (or
// Dinov2WithRegistersModel) saves it, with its config.json.
func saveHFDinov2(t *testing.T, v *models.ViT, dir string) string {
	t.Helper()
	d, m, p := v.Dim, v.MLPDim, v.Patch
	ts := map[string]models.Tensor{
		"embeddings.patch_embeddings.projection.weight": {Shape: []int{d, 3, p, p}, Data: v.PatchW},
		"embeddings.patch_embeddings.projection.bias":   {Shape: []int{d}, Data: v.PatchB},
		"embeddings.cls_token":                          {Shape: []int{1, 1, d}, Data: v.ClsToken},
		"embeddings.mask_token":                         {Shape: []int{1, d}, Data: make([]float32, d)},
		"embeddings.position_embeddings":                {Shape: []int{1, v.ImageTokens(), d}, Data: v.PosEmbed},
		"layernorm.weight":                              {Shape: []int{d}, Data: v.NormW},
		"layernorm.bias":                                {Shape: []int{d}, Data: v.NormB},
	}
	config := map[string]any{"model_type": "dinov2", "hidden_size": d, "num_attention_heads": v.Heads, "num_hidden_layers": v.Depth,
		"patch_size": p, "image_size": v.ImageSize, "layer_norm_eps": 1e-6, "layerscale_value": 1.0, "use_swiglu_ffn": false, "mlp_ratio": 4}
	if v.Registers > 0 {
		ts["embeddings.register_tokens"] = models.Tensor{Shape: []int{1, v.Registers, d}, Data: v.RegTokens}
		config["model_type"], config["num_register_tokens"] = "dinov2_with_registers", v.Registers
	}
	for i, b := range v.Blocks {
		n := func(s string) string { return fmt.Sprintf("encoder.layer.%d.%s", i, s) }
		for j, part := range []string{"query", "key", "value"} {
			ts[n("attention.attention."+part+".weight")] = models.Tensor{Shape: []int{d, d}, Data: b.QKVW[j*d*d : (j+1)*d*d]}
			ts[n("attention.attention."+part+".bias")] = models.Tensor{Shape: []int{d}, Data: b.QKVB[j*d : (j+1)*d]}
		}
		for name, data := range map[string][]float32{"norm1.weight": b.Norm1W, "norm1.bias": b.Norm1B, "norm2.weight": b.Norm2W, "norm2.bias": b.Norm2B,
			"attention.output.dense.bias": b.ProjB, "mlp.fc1.bias": b.FC1B, "mlp.fc2.bias": b.FC2B,
			"layer_scale1.lambda1": b.LayerScale1, "layer_scale2.lambda1": b.LayerScale2} {
			ts[n(name)] = models.Tensor{Shape: []int{len(data)}, Data: data}
		}
		ts[n("attention.output.dense.weight")] = models.Tensor{Shape: []int{d, d}, Data: b.ProjW}
		ts[n("mlp.fc1.weight")] = models.Tensor{Shape: []int{m, d}, Data: b.FC1W}
		ts[n("mlp.fc2.weight")] = models.Tensor{Shape: []int{d, m}, Data: b.FC2W}
	}
	path := filepath.Join(dir, "model.safetensors")
	if err := models.WriteSafetensors(path, ts, map[string]string{"format": "pt"}); err != nil {
		t.Fatal(err)
	}
	writeJSON(t, filepath.Join(dir, "config.json"), config)
	return path
}

// DINOv2 teachers, with and without registers, in timm's and Hugging
// Face's layouts: the embedding, per-block and per-token student errors
// (registers left out) and patch features equal the float64 reference.
func TestDINOv2MatchesReference(t *testing.T) {
	for _, registers := range []int{0, 4} {
		v := dinov2ViT(t, registers, uint64(20+registers))
		timmPath := filepath.Join(t.TempDir(), "model.safetensors")
		if err := v.SaveTimm(timmPath); err != nil {
			t.Fatal(err)
		}
		hfDir := t.TempDir()
		hfPath := saveHFDinov2(t, v, hfDir)
		for layout, path := range map[string]string{"timm": timmPath, "huggingface": hfPath} {
			t.Run(fmt.Sprintf("%s registers %d", layout, registers), func(t *testing.T) {
				loaded, err := models.LoadViT(path, models.LoadOptions{})
				if err != nil {
					t.Fatal(err)
				}
				if loaded.Registers != registers || loaded.Patch != 14 || loaded.Tokens() != 17+registers {
					t.Fatalf("loaded %s, want %d registers, patch 14", loaded.Describe(), registers)
				}
				checkDetectorMatchesReference(t, v, loaded)
				patchGraph, err := models.PatchFeatureGraph(loaded, models.PatchFeatures{Blocks: []int{1}, Neighbourhood: 3, Pooling: models.PoolConcat})
				if err != nil {
					t.Fatal(err)
				}
				const n = 2
				size := v.ImageSize
				images := randomImages(n, size, 12)
				patches := runGraph(t, patchGraph, images, n, size, models.OutputPatchFeatures)[0]
				g2 := v.Grid() * v.Grid()
				for img := range n {
					var want []float64
					for _, f := range refPatchFeatures(v.Config, vitref.Forward(v, images[img*size*size*3:(img+1)*size*size*3]), models.PatchFeatures{Blocks: []int{1}, Neighbourhood: 3, Pooling: models.PoolConcat}) {
						want = append(want, f...)
					}
					if e := relErr(patches[img*g2*9*v.Dim:(img+1)*g2*9*v.Dim], want); e > tolerance {
						t.Errorf("image %d: patch features relative error %.2g", img, e)
					}
				}
			})
		}
	}
}

// The registers' weights matter: the reference without them differs, so
// the test above would catch their loss.
func TestRegistersChangeTheEmbedding(t *testing.T) {
	v := dinov2ViT(t, 4, 3)
	img := randomImages(1, v.ImageSize, 1)
	with := vitref.Forward(v, img).Embedding
	w := *v
	w.RegTokens = make([]float32, len(v.RegTokens))
	if e := relErr(toF32(with), vitref.Forward(&w, img).Embedding); e < 1e-3 {
		t.Errorf("zeroed registers changed the embedding by only %.2g", e)
	}
}

func toF32(x []float64) []float32 {
	out := make([]float32, len(x))
	for i, v := range x {
		out[i] = float32(v)
	}
	return out
}
