package models

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
)

// XavierBlock is a freshly initialised block, as the paper's code makes its
// students: Xavier-uniform linear weights, zero biases, identity LayerNorms.
func XavierBlock(c Config, rng *rand.Rand) Block {
	d, m := c.Dim, c.MLPDim
	xavier := func(out, in int) []float32 {
		bound := math.Sqrt(6 / float64(in+out))
		w := make([]float32, out*in)
		for i := range w {
			w[i] = float32((2*rng.Float64() - 1) * bound)
		}
		return w
	}
	return Block{
		Norm1W: fill(d, 1), Norm1B: make([]float32, d),
		QKVW: xavier(3*d, d), QKVB: make([]float32, 3*d),
		ProjW: xavier(d, d), ProjB: make([]float32, d),
		Norm2W: fill(d, 1), Norm2B: make([]float32, d),
		FC1W: xavier(m, d), FC1B: make([]float32, m),
		FC2W: xavier(d, m), FC2B: make([]float32, d),
	}
}

func fill(n int, x float32) []float32 {
	out := make([]float32, n)
	for i := range out {
		out[i] = x
	}
	return out
}

// RandomViT makes a seeded random ViT of the given shape. Every parameter is
// non-trivial (LayerNorm scales and all biases are perturbed too), so that
// numerical tests exercise all of them; Heads must be set.
func RandomViT(c Config, seed uint64) (*ViT, error) {
	if c.Dim <= 0 || c.Depth <= 0 || c.Heads <= 0 || c.Dim%c.Heads != 0 || c.Patch <= 0 || c.ImageSize <= 0 || c.ImageSize%c.Patch != 0 || c.MLPDim < 0 {
		return nil, fmt.Errorf("random ViT: invalid shape %s (all sizes positive, heads dividing dim, patch dividing image size; mlp 0 for 4 x dim)", c.Describe())
	}
	if c.MLPDim == 0 {
		c.MLPDim = 4 * c.Dim
	}
	if c.Eps == 0 {
		c.Eps = timmLayerNormEps
	}
	rng := rand.New(rand.NewPCG(seed, 0x7472616e73666f72))
	normal := func(n int, mean, std float64) []float32 {
		out := make([]float32, n)
		for i := range out {
			out[i] = float32(mean + std*rng.NormFloat64())
		}
		return out
	}
	d := c.Dim
	v := &ViT{Config: c, Layout: LayoutTimm, Input: AssumedNormalization()}
	v.PatchW = normal(d*3*c.Patch*c.Patch, 0, math.Sqrt(1/float64(3*c.Patch*c.Patch)))
	v.PatchB = normal(d, 0, 0.02)
	v.ClsToken = normal(d, 0, 0.02)
	v.PosEmbed = normal(c.ImageTokens()*d, 0, 0.02)
	if c.Registers > 0 {
		v.RegTokens = normal(c.Registers*d, 0, 0.5) // DINOv2's registers are far from zero
	}
	for range c.Depth {
		b := XavierBlock(c, rng)
		b.Norm1W, b.Norm1B = normal(d, 1, 0.1), normal(d, 0, 0.05)
		b.Norm2W, b.Norm2B = normal(d, 1, 0.1), normal(d, 0, 0.05)
		b.QKVB, b.ProjB = normal(3*d, 0, 0.02), normal(d, 0, 0.02)
		b.FC1B, b.FC2B = normal(c.MLPDim, 0, 0.02), normal(d, 0, 0.02)
		v.Blocks = append(v.Blocks, b)
	}
	v.NormW, v.NormB = normal(d, 1, 0.1), normal(d, 0, 0.05)
	return v, nil
}

// RandomLayerScale gives every block seeded per-channel LayerScale factors
// in [0.5, 1.5), as DINOv2's blocks have (a random model for tests).
func (v *ViT) RandomLayerScale(seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 0x6c73))
	scale := func() []float32 {
		out := make([]float32, v.Dim)
		for i := range out {
			out[i] = float32(0.5 + rng.Float64())
		}
		return out
	}
	for i := range v.Blocks {
		v.Blocks[i].LayerScale1, v.Blocks[i].LayerScale2 = scale(), scale()
	}
}

// SaveTimm writes the ViT as a timm model.safetensors, recording the number
// of heads in the metadata (timm's own files leave it to the model name).
// With registers it takes timm's DINOv2-with-registers layout
// (no_embed_class): reg_token, a position table without the class token's
// row, and that row folded into cls_token, as timm converts them.
func (v *ViT) SaveTimm(path string) error {
	d, m, p := v.Dim, v.MLPDim, v.Patch
	t := map[string]Tensor{
		"patch_embed.proj.weight": {Shape: []int{d, 3, p, p}, Data: v.PatchW},
		"patch_embed.proj.bias":   {Shape: []int{d}, Data: v.PatchB},
		"cls_token":               {Shape: []int{1, 1, d}, Data: v.ClsToken},
		"pos_embed":               {Shape: []int{1, v.ImageTokens(), d}, Data: v.PosEmbed},
		"norm.weight":             {Shape: []int{d}, Data: v.NormW},
		"norm.bias":               {Shape: []int{d}, Data: v.NormB},
	}
	if v.Registers > 0 {
		cls := make([]float32, d)
		for i := range cls {
			cls[i] = v.ClsToken[i] + v.PosEmbed[i]
		}
		t["cls_token"] = Tensor{Shape: []int{1, 1, d}, Data: cls}
		t["pos_embed"] = Tensor{Shape: []int{1, v.ImageTokens() - 1, d}, Data: v.PosEmbed[d:]}
		t["reg_token"] = Tensor{Shape: []int{1, v.Registers, d}, Data: v.RegTokens}
	}
	for i, b := range v.Blocks {
		n := func(s string) string { return fmt.Sprintf("blocks.%d.%s", i, s) }
		t[n("norm1.weight")] = Tensor{Shape: []int{d}, Data: b.Norm1W}
		t[n("norm1.bias")] = Tensor{Shape: []int{d}, Data: b.Norm1B}
		t[n("attn.qkv.weight")] = Tensor{Shape: []int{3 * d, d}, Data: b.QKVW}
		t[n("attn.qkv.bias")] = Tensor{Shape: []int{3 * d}, Data: b.QKVB}
		t[n("attn.proj.weight")] = Tensor{Shape: []int{d, d}, Data: b.ProjW}
		t[n("attn.proj.bias")] = Tensor{Shape: []int{d}, Data: b.ProjB}
		t[n("norm2.weight")] = Tensor{Shape: []int{d}, Data: b.Norm2W}
		t[n("norm2.bias")] = Tensor{Shape: []int{d}, Data: b.Norm2B}
		t[n("mlp.fc1.weight")] = Tensor{Shape: []int{m, d}, Data: b.FC1W}
		t[n("mlp.fc1.bias")] = Tensor{Shape: []int{m}, Data: b.FC1B}
		t[n("mlp.fc2.weight")] = Tensor{Shape: []int{d, m}, Data: b.FC2W}
		t[n("mlp.fc2.bias")] = Tensor{Shape: []int{d}, Data: b.FC2B}
		if b.LayerScale1 != nil {
			t[n("ls1.gamma")] = Tensor{Shape: []int{d}, Data: b.LayerScale1}
			t[n("ls2.gamma")] = Tensor{Shape: []int{d}, Data: b.LayerScale2}
		}
	}
	return WriteSafetensors(path, t, map[string]string{"format": "pt", HeadsMetadataKey: strconv.Itoa(v.Heads)})
}
