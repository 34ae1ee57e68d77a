package models_test

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/transformaly/transformaly/models"
)

// saveHuggingFace writes v in the Hugging Face transformers layout
// (ViTForImageClassification when prefix is "vit.", ViTModel when ""), the
// way save_pretrained names the tensors.
func saveHuggingFace(t *testing.T, v *models.ViT, path, prefix string) {
	t.Helper()
	d, m, p := v.Dim, v.MLPDim, v.Patch
	ts := map[string]models.Tensor{
		prefix + "embeddings.patch_embeddings.projection.weight": {Shape: []int{d, 3, p, p}, Data: v.PatchW},
		prefix + "embeddings.patch_embeddings.projection.bias":   {Shape: []int{d}, Data: v.PatchB},
		prefix + "embeddings.cls_token":                          {Shape: []int{1, 1, d}, Data: v.ClsToken},
		prefix + "embeddings.position_embeddings":                {Shape: []int{1, v.ImageTokens(), d}, Data: v.PosEmbed},
		prefix + "layernorm.weight":                              {Shape: []int{d}, Data: v.NormW},
		prefix + "layernorm.bias":                                {Shape: []int{d}, Data: v.NormB},
	}
	if prefix != "" {
		ts["classifier.weight"] = models.Tensor{Shape: []int{10, d}, Data: make([]float32, 10*d)}
		ts["classifier.bias"] = models.Tensor{Shape: []int{10}, Data: make([]float32, 10)}
	}
	for i, b := range v.Blocks {
		n := func(s string) string { return fmt.Sprintf("%sencoder.layer.%d.%s", prefix, i, s) }
		for j, part := range []string{"query", "key", "value"} {
			ts[n("attention.attention."+part+".weight")] = models.Tensor{Shape: []int{d, d}, Data: b.QKVW[j*d*d : (j+1)*d*d]}
			ts[n("attention.attention."+part+".bias")] = models.Tensor{Shape: []int{d}, Data: b.QKVB[j*d : (j+1)*d]}
		}
		ts[n("layernorm_before.weight")] = models.Tensor{Shape: []int{d}, Data: b.Norm1W}
		ts[n("layernorm_before.bias")] = models.Tensor{Shape: []int{d}, Data: b.Norm1B}
		ts[n("attention.output.dense.weight")] = models.Tensor{Shape: []int{d, d}, Data: b.ProjW}
		ts[n("attention.output.dense.bias")] = models.Tensor{Shape: []int{d}, Data: b.ProjB}
		ts[n("layernorm_after.weight")] = models.Tensor{Shape: []int{d}, Data: b.Norm2W}
		ts[n("layernorm_after.bias")] = models.Tensor{Shape: []int{d}, Data: b.Norm2B}
		ts[n("intermediate.dense.weight")] = models.Tensor{Shape: []int{m, d}, Data: b.FC1W}
		ts[n("intermediate.dense.bias")] = models.Tensor{Shape: []int{m}, Data: b.FC1B}
		ts[n("output.dense.weight")] = models.Tensor{Shape: []int{d, m}, Data: b.FC2W}
		ts[n("output.dense.bias")] = models.Tensor{Shape: []int{d}, Data: b.FC2B}
	}
	if err := models.WriteSafetensors(path, ts, map[string]string{"format": "pt"}); err != nil {
		t.Fatal(err)
	}
}

func writeJSON(t *testing.T, path string, v any) {
	t.Helper()
	data, _ := json.Marshal(v)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestBothLayoutsLoadToTheSameModel(t *testing.T) {
	v, err := models.RandomViT(smallConfig, 1)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	timmPath := filepath.Join(dir, "timm", "model.safetensors")
	os.MkdirAll(filepath.Dir(timmPath), 0o755)
	if err := v.SaveTimm(timmPath); err != nil {
		t.Fatal(err)
	}
	fromTimm, err := models.LoadViT(timmPath, models.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if fromTimm.Layout != models.LayoutTimm || fromTimm.Config != v.Config {
		t.Fatalf("timm load: layout %s config %+v, want timm %+v", fromTimm.Layout, fromTimm.Config, v.Config)
	}
	images := randomImages(2, v.ImageSize, 4)
	timmGraph, _ := models.TeacherGraph(fromTimm)
	want := runGraph(t, timmGraph, images, 2, v.ImageSize, models.OutputEmbedding)[0]

	for _, prefix := range []string{"vit.", ""} {
		t.Run("hf prefix "+prefix, func(t *testing.T) {
			hfPath := filepath.Join(t.TempDir(), "model.safetensors")
			saveHuggingFace(t, v, hfPath, prefix)
			writeJSON(t, filepath.Join(filepath.Dir(hfPath), "config.json"),
				map[string]any{"layer_norm_eps": 1e-6, "num_attention_heads": 4, "hidden_size": 64})
			hf, err := models.LoadViT(hfPath, models.LoadOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if hf.Layout != models.LayoutHuggingFace || hf.Config != v.Config {
				t.Fatalf("hf load: layout %s config %+v, want %+v", hf.Layout, hf.Config, v.Config)
			}
			if !reflect.DeepEqual(hf.Blocks, fromTimm.Blocks) || !reflect.DeepEqual(hf.PosEmbed, fromTimm.PosEmbed) {
				t.Fatal("hf and timm weights differ")
			}
			g, _ := models.TeacherGraph(hf)
			got := runGraph(t, g, images, 2, v.ImageSize, models.OutputEmbedding)[0]
			if !reflect.DeepEqual(got, want) {
				t.Errorf("embeddings differ between layouts")
			}
		})
	}
}

func TestHuggingFaceEpsilonAndHeads(t *testing.T) {
	v, _ := models.RandomViT(smallConfig, 2)
	path := filepath.Join(t.TempDir(), "model.safetensors")
	saveHuggingFace(t, v, path, "vit.")
	// No config.json and a width no usual ViT has: the heads are asked for.
	if _, err := models.LoadViT(path, models.LoadOptions{}); err == nil || !strings.Contains(err.Error(), "give --heads") {
		t.Errorf("a 64-wide ViT with nothing saying its heads: %v", err)
	}
	// The heads flag wins; without config.json HF's default epsilon.
	hf, err := models.LoadViT(path, models.LoadOptions{Heads: 8})
	if err != nil || hf.Heads != 8 || hf.Eps != 1e-12 || hf.HeadsSource != "--heads" {
		t.Errorf("heads override: %v heads %d eps %g", err, hf.Heads, hf.Eps)
	}
	// The epsilon matters: the embeddings differ measurably.
	hf.Heads = 4
	g1, _ := models.TeacherGraph(hf)
	hf.Eps = 1e-6
	g2, _ := models.TeacherGraph(hf)
	img := randomImages(1, v.ImageSize, 3)
	a := runGraph(t, g1, img, 1, v.ImageSize, models.OutputEmbedding)[0]
	b := runGraph(t, g2, img, 1, v.ImageSize, models.OutputEmbedding)[0]
	if reflect.DeepEqual(a, b) {
		t.Error("epsilon 1e-12 and 1e-6 gave identical embeddings")
	}
}

func TestPositionEmbeddingResize(t *testing.T) {
	v, _ := models.RandomViT(smallConfig, 5) // grid 4
	orig := append([]float32{}, v.PosEmbed...)
	if err := v.ResizePositionEmbedding(v.ImageSize); err != nil {
		t.Fatal(err)
	}
	if relErr(v.PosEmbed, toF64(orig)) > 1e-7 {
		t.Error("resizing to the same size is not the identity")
	}
	// Upsampling 4x4 -> 8x8 and the class token row is kept.
	if err := v.ResizePositionEmbedding(64); err != nil {
		t.Fatal(err)
	}
	if v.ImageSize != 64 || len(v.PosEmbed) != (64+1)*v.Dim {
		t.Fatalf("after resize: image %d, %d position values", v.ImageSize, len(v.PosEmbed))
	}
	if !reflect.DeepEqual(v.PosEmbed[:v.Dim], orig[:v.Dim]) {
		t.Error("class token position changed")
	}
	if err := v.ResizePositionEmbedding(30); err == nil {
		t.Error("resize to 30 with patch 8 accepted")
	}
}

// A 2x1 -> 4x1 hand computation with PyTorch's antialiased bicubic filter
// (a=-0.5): output 0 sits at source coordinate 0.25-0.5 and sees taps
// 0 and 1 with raw weights W(0.25)=0.8671875 and W(1.25)=-0.0703125,
// renormalised over the two in-range taps.
func TestBicubicMatchesHandComputation(t *testing.T) {
	cfg := models.Config{Dim: 1, Depth: 1, Heads: 1, Patch: 1, ImageSize: 2}
	v, _ := models.RandomViT(cfg, 1)
	// Grid 2x2 with values varying along x only: [0 1; 0 1].
	v.PosEmbed = []float32{9, 0, 1, 0, 1}
	if err := v.ResizePositionEmbedding(4); err != nil {
		t.Fatal(err)
	}
	w0, w1 := 0.8671875, -0.0703125
	want0 := w1 / (w0 + w1)
	// Along y both rows are equal, so each output row equals the x pass.
	got := v.PosEmbed[1:5]
	if math.Abs(float64(got[0])-want0) > 1e-6 || math.Abs(float64(got[3])-(1-want0)) > 1e-6 {
		t.Errorf("first row %v, want [%g ... %g]", got, want0, 1-want0)
	}
	if v.PosEmbed[0] != 9 {
		t.Error("class token changed")
	}
}

// Hugging Face layouts resize as transformers does, without antialias
// (A=-0.75, clamped taps). By hand for [0 1] -> 4: output 0 sits at source
// -0.25, taps -2..1 clamp to 0,0,0,1 with weights W(1.75), W(0.75),
// W(0.25), W(1.25) = -0.03515625, 0.26171875, 0.87890625, -0.10546875, so it
// is -0.10546875; output 1 at 0.25 takes W(0.75)+W(1.75) of the 1, 0.2265625.
func TestHuggingFaceBicubicMatchesHandComputation(t *testing.T) {
	v, _ := models.RandomViT(models.Config{Dim: 1, Depth: 1, Heads: 1, Patch: 1, ImageSize: 2}, 1)
	v.Layout = models.LayoutHuggingFace
	v.PosEmbed = []float32{9, 0, 1, 0, 1}
	if err := v.ResizePositionEmbedding(4); err != nil {
		t.Fatal(err)
	}
	want := []float64{-0.10546875, 0.2265625, 0.7734375, 1.10546875}
	for i, w := range want {
		if got := float64(v.PosEmbed[1+i]); math.Abs(got-w) > 1e-6 {
			t.Errorf("output %d: %g, want %g", i, got, w)
		}
	}
}

func toF64(xs []float32) []float64 {
	out := make([]float64, len(xs))
	for i, x := range xs {
		out[i] = float64(x)
	}
	return out
}

// rewriteHeader edits a safetensors file's JSON header in place of a test.
func rewriteHeader(t *testing.T, src, dst string, edit func(h map[string]map[string]any)) {
	t.Helper()
	data, _ := os.ReadFile(src)
	n := binary.LittleEndian.Uint64(data)
	var h map[string]map[string]any
	if err := json.Unmarshal(data[8:8+n], &h); err != nil {
		t.Fatal(err)
	}
	edit(h)
	header, _ := json.Marshal(h)
	out := binary.LittleEndian.AppendUint64(nil, uint64(len(header)))
	out = append(append(out, header...), data[8+n:]...)
	os.WriteFile(dst, out, 0o644)
}

func TestBadCheckpointsGiveClearErrors(t *testing.T) {
	v, _ := models.RandomViT(smallConfig, 1)
	dir := t.TempDir()
	good := filepath.Join(dir, "good.safetensors")
	if err := v.SaveTimm(good); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(good)
	cases := []struct {
		name string
		make func(path string)
		want string
	}{
		{"missing file", func(string) {}, "no such file"},
		{"truncated", func(p string) { os.WriteFile(p, data[:len(data)-100], 0o644) }, "truncated"},
		{"tiny", func(p string) { os.WriteFile(p, data[:5], 0o644) }, "too short"},
		{"not safetensors", func(p string) { os.WriteFile(p, []byte("PK\x03\x04 this is a zip file, not a checkpoint"), 0o644) }, "not a safetensors file"},
		{"wrong dtype", func(p string) {
			rewriteHeader(t, good, p, func(h map[string]map[string]any) { h["blocks.1.attn.proj.weight"]["dtype"] = "I32" })
		}, `tensor "blocks.1.attn.proj.weight": dtype "I32"`},
		{"missing tensor", func(p string) {
			rewriteHeader(t, good, p, func(h map[string]map[string]any) { delete(h, "blocks.2.mlp.fc2.bias") })
		}, `missing tensor "blocks.2.mlp.fc2.bias"`},
		{"missing block", func(p string) {
			rewriteHeader(t, good, p, func(h map[string]map[string]any) { delete(h, "blocks.1.norm1.weight") })
		}, `missing tensor "blocks.1.norm1.weight"`},
		{"inconsistent shape", func(p string) {
			rewriteHeader(t, good, p, func(h map[string]map[string]any) { h["blocks.0.mlp.fc2.weight"]["shape"] = []int{128, 128} })
		}, `tensor "blocks.0.mlp.fc2.weight" has shape [128 128], want [64 256]`},
		{"offsets disagree with shape", func(p string) {
			rewriteHeader(t, good, p, func(h map[string]map[string]any) { h["norm.bias"]["shape"] = []int{65} })
		}, `tensor "norm.bias": offsets`},
		{"overlapping tensors", func(p string) {
			rewriteHeader(t, good, p, func(h map[string]map[string]any) {
				h["norm.bias"]["data_offsets"] = h["norm.weight"]["data_offsets"]
			})
		}, `overlap in the file`},
		{"a folder", func(p string) { os.Mkdir(p, 0o755) }, "is a folder"},
		{"unknown layout", func(p string) {
			models.WriteSafetensors(p, map[string]models.Tensor{"fc.weight": {Shape: []int{2}, Data: []float32{1, 2}}}, nil)
		}, "unrecognised checkpoint layout"},
		{"unsupported variant", func(p string) {
			ts, _, _ := models.ReadSafetensors(good)
			ts["blocks.0.attn.q_norm.weight"] = models.Tensor{Shape: []int{16}, Data: make([]float32, 16)}
			models.WriteSafetensors(p, ts, nil)
		}, `tensor "blocks.0.attn.q_norm.weight" is not part of a plain ViT`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(c.name, " ", "_")+".safetensors")
			c.make(p)
			_, err := models.LoadViT(p, models.LoadOptions{})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("got error %v, want one containing %q", err, c.want)
			}
		})
	}
}

func TestHalfPrecisionCheckpoint(t *testing.T) {
	// One F16 and one BF16 tensor with exactly representable values.
	var raw []byte
	for _, h := range []uint16{0x3c00, 0xc000, 0x3800, 0x0001} { // 1, -2, 0.5, 2^-24
		raw = binary.LittleEndian.AppendUint16(raw, h)
	}
	for _, h := range []uint16{0x3f80, 0xc040} { // 1, -3
		raw = binary.LittleEndian.AppendUint16(raw, h)
	}
	header, _ := json.Marshal(map[string]any{
		"a": map[string]any{"dtype": "F16", "shape": []int{4}, "data_offsets": []int{0, 8}},
		"b": map[string]any{"dtype": "BF16", "shape": []int{2}, "data_offsets": []int{8, 12}},
	})
	file := binary.LittleEndian.AppendUint64(nil, uint64(len(header)))
	file = append(append(file, header...), raw...)
	path := filepath.Join(t.TempDir(), "half.safetensors")
	os.WriteFile(path, file, 0o644)
	ts, _, err := models.ReadSafetensors(path)
	if err != nil {
		t.Fatal(err)
	}
	if want := []float32{1, -2, 0.5, float32(math.Pow(2, -24))}; !reflect.DeepEqual(ts["a"].Data, want) {
		t.Errorf("F16 decoded %v, want %v", ts["a"].Data, want)
	}
	if want := []float32{1, -3}; !reflect.DeepEqual(ts["b"].Data, want) {
		t.Errorf("BF16 decoded %v, want %v", ts["b"].Data, want)
	}
}

// Float32ToFloat16 rounds to the nearest half, ties to even, and
// round-trips every value a half can hold.
func TestFloat32ToFloat16(t *testing.T) {
	for _, c := range []struct {
		in   float32
		want uint16
	}{
		{1, 0x3c00}, {-2, 0xc000}, {0.5, 0x3800}, {65504, 0x7bff}, {1e6, 0x7c00}, {0, 0},
		{float32(math.Pow(2, -24)), 0x0001},       // smallest subnormal
		{float32(math.Pow(2, -25)), 0x0000},       // halfway to it: ties to even (zero)
		{1 + float32(math.Pow(2, -11)), 0x3c00},   // halfway between 1 and the next half: to even
		{1 + 3*float32(math.Pow(2, -11)), 0x3c02}, // halfway above an odd mantissa: up
		{float32(math.Inf(-1)), 0xfc00},
	} {
		if got := models.Float32ToFloat16(c.in); got != c.want {
			t.Errorf("Float32ToFloat16(%g) = %#04x, want %#04x", c.in, got, c.want)
		}
	}
	// Every finite half converts back to itself through float32.
	for h := uint16(0); h < 0x7c00; h++ {
		f := halfToFloat(h)
		if got := models.Float32ToFloat16(f); got != h {
			t.Fatalf("half %#04x -> %g -> %#04x", h, f, got)
		}
	}
}

// halfToFloat decodes a finite half by its definition: (1024 + m) * 2^(e-25)
// for normal numbers, m * 2^-24 for subnormal ones.
func halfToFloat(h uint16) float32 {
	return float32(math.Ldexp(float64(h&0x3ff)+func() float64 {
		if h>>10 == 0 {
			return 0
		}
		return 1024
	}(), int(max(h>>10, 1))-25))
}

// A Hugging Face config.json that contradicts the weights is an error
// naming the key (a checkpoint missing its last layer loaded at depth 2
// under num_hidden_layers: 3), as are heads of 0; what agrees loads.
func TestHuggingFaceConfigMustAgreeWithTheWeights(t *testing.T) {
	v, _ := models.RandomViT(smallConfig, 2)
	for _, c := range []struct {
		config map[string]any
		cut    bool // drop the last layer's tensors
		want   string
	}{
		{map[string]any{"num_hidden_layers": 3, "hidden_size": 64, "num_attention_heads": 4, "image_size": 32, "patch_size": 8, "intermediate_size": 256}, false, ""},
		{map[string]any{"num_hidden_layers": 3}, true, "num_hidden_layers 3, the weights 2"},
		{map[string]any{"hidden_size": 768}, false, "hidden_size 768, the weights 64"},
		{map[string]any{"image_size": 224}, false, "image_size 224, the weights 32"},
		{map[string]any{"num_attention_heads": 0}, false, "num_attention_heads 0"},
		{map[string]any{"num_attention_heads": 5}, false, "num_attention_heads 5"},
	} {
		dir := t.TempDir()
		path := filepath.Join(dir, "model.safetensors")
		saveHuggingFace(t, v, path, "")
		if c.cut {
			ts, _, err := models.ReadSafetensors(path)
			if err != nil {
				t.Fatal(err)
			}
			for name := range ts {
				if strings.HasPrefix(name, "encoder.layer.2.") {
					delete(ts, name)
				}
			}
			models.WriteSafetensors(path, ts, nil)
		}
		writeJSON(t, filepath.Join(dir, "config.json"), c.config)
		got, err := models.LoadViT(path, models.LoadOptions{})
		switch {
		case c.want == "" && (err != nil || got.Heads != 4 || got.Depth != 3):
			t.Errorf("%v: %v", c.config, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%v: %v, want an error saying %q", c.config, err, c.want)
		}
	}
}

// Heads from timm's config.json architecture name, checked against the
// width; else from a usual width (huge/14 is 1280 wide with 16 heads, not
// 1280/64 = 20).
func TestHeadsFromTimmArchitecture(t *testing.T) {
	for _, c := range []struct {
		arch      string
		dim       int
		heads     int
		wantError string
	}{
		{"vit_small_patch16_224.augreg_in21k", 384, 6, ""},
		{"deit_tiny_patch16_224", 192, 3, ""},
		{"vit_huge_patch14_224", 1280, 16, ""},
		{"vit_giant_patch14_dinov2.lvd142m", 1536, 24, ""},
		{"vit_base_patch16_224", 384, 0, "says architecture vit_base_patch16_224 (768 wide), but the weights are 384 wide"},
		{"", 1280, 16, ""}, // no architecture: the usual for the width
	} {
		v, err := models.RandomViT(models.Config{Dim: c.dim, Depth: 1, Heads: 4, Patch: 16, ImageSize: 32}, 1)
		if err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		path := filepath.Join(dir, "model.safetensors")
		if err := v.SaveTimm(path); err != nil {
			t.Fatal(err)
		}
		tensors, _, err := models.ReadSafetensors(path) // written again without the heads metadata
		if err != nil {
			t.Fatal(err)
		}
		models.WriteSafetensors(path, tensors, nil)
		if c.arch != "" {
			writeJSON(t, filepath.Join(dir, "config.json"), map[string]any{"architecture": c.arch})
		}
		w, err := models.LoadViT(path, models.LoadOptions{})
		switch {
		case c.wantError != "":
			if err == nil || !strings.Contains(err.Error(), c.wantError) {
				t.Errorf("%s at width %d: %v, want %q", c.arch, c.dim, err, c.wantError)
			}
		case err != nil || w.Heads != c.heads:
			t.Errorf("%s at width %d: heads %v (%v), want %d", c.arch, c.dim, w, err, c.heads)
		default:
			t.Logf("%s: %d heads from %s", c.arch, w.Heads, w.HeadsSource)
		}
	}
}
