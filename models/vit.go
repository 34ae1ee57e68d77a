package models

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// Checkpoint layouts recognised by LoadViT.
const (
	LayoutTimm        = "timm"
	LayoutHuggingFace = "huggingface"
)

// Default LayerNorm epsilons of the two layouts' reference implementations.
const (
	timmLayerNormEps = 1e-6
	hfLayerNormEps   = 1e-12
)

// HeadsMetadataKey is the safetensors metadata key from which the number of
// attention heads is read when present (the random ViTs we generate set it;
// real timm files do not, and fall back to dim/64).
const HeadsMetadataKey = "transformaly.num_heads"

// Config is the architecture of a plain ViT with a class token, and
// optionally register tokens (DINOv2 with registers).
type Config struct {
	Dim       int     `json:"dim"`
	Depth     int     `json:"depth"`
	Heads     int     `json:"heads"`
	MLPDim    int     `json:"mlp_dim"`
	Patch     int     `json:"patch"`
	ImageSize int     `json:"image_size"`
	Eps       float64 `json:"layer_norm_eps"`
	// Registers are the register tokens between the class token and the
	// patches: they take part in attention, have no position, and are left
	// out of student errors, maps and patch features.
	Registers int `json:"registers,omitempty"`
}

// Grid is the number of patches along one side of the image.
func (c Config) Grid() int { return c.ImageSize / c.Patch }

// Tokens is the sequence length: the class token, the registers and the
// patches.
func (c Config) Tokens() int { return c.Grid()*c.Grid() + 1 + c.Registers }

// ImageTokens are the class token and the patches, without registers: the
// rows of the position embedding, and the tokens errors and maps cover.
func (c Config) ImageTokens() int { return c.Grid()*c.Grid() + 1 }

// Block holds one transformer block's weights. Linear weights keep PyTorch's
// [out, in] layout.
type Block struct {
	Norm1W, Norm1B []float32
	QKVW, QKVB     []float32 // [3*Dim, Dim], [3*Dim]: q, k, v stacked
	ProjW, ProjB   []float32 // [Dim, Dim], [Dim]
	Norm2W, Norm2B []float32
	FC1W, FC1B     []float32 // [MLPDim, Dim], [MLPDim]
	FC2W, FC2B     []float32 // [Dim, MLPDim], [Dim]
	// LayerScale1/2 are per-channel residual scales (timm's ls1/ls2, DeiT-III);
	// nil when the checkpoint has none.
	LayerScale1, LayerScale2 []float32
}

// ViT is a Vision Transformer's weights in one canonical layout.
type ViT struct {
	Config
	Layout   string
	Checksum string    // sha256 of the checkpoint file
	PatchW   []float32 // [Dim, 3, Patch, Patch]
	PatchB   []float32 // [Dim]
	ClsToken []float32 // [Dim]
	// PosEmbed is [ImageTokens, Dim]: the class token's row first (zero for
	// checkpoints whose class token has no position, timm's no_embed_class).
	PosEmbed  []float32
	RegTokens []float32 // [Registers, Dim]
	Blocks    []Block
	NormW     []float32
	NormB     []float32
	// Input is the pixel normalisation the checkpoint was trained with.
	Input Normalization
	// HeadsSource says where the number of heads came from.
	HeadsSource string
}

// LoadOptions adjust how a checkpoint is interpreted.
type LoadOptions struct {
	// Heads overrides the number of attention heads (0: from config.json,
	// metadata or timm's architecture name, else the usual for the width).
	Heads int
	// ImageSize resizes the position embedding to this input size (0: keep
	// the checkpoint's own).
	ImageSize int
	// Input overrides the normalisation read beside the checkpoint (nil:
	// from its files, else AssumedNormalization).
	Input *Normalization
}

// LoadViT reads a timm or Hugging Face ViT checkpoint (safetensors),
// detecting the layout and architecture from tensor names and shapes.
func LoadViT(path string, opts LoadOptions) (*ViT, error) {
	tensors, meta, err := ReadSafetensors(path)
	if err != nil {
		return nil, err
	}
	sum, err := fileSHA256(path)
	if err != nil {
		return nil, err
	}
	var v *ViT
	switch {
	case has(tensors, "patch_embed.proj.weight"):
		v, err = fromTimm(tensors)
	case has(tensors, "embeddings.patch_embeddings.projection.weight"),
		has(tensors, "vit.embeddings.patch_embeddings.projection.weight"):
		v, err = fromHuggingFace(tensors, filepath.Join(filepath.Dir(path), "config.json"))
	default:
		return nil, fmt.Errorf("load %s: unrecognised checkpoint layout: found neither timm's patch_embed.proj.weight nor Hugging Face's embeddings.patch_embeddings.projection.weight", path)
	}
	if err != nil {
		return nil, fmt.Errorf("load %s (%s layout): %w", path, layoutOf(tensors), err)
	}
	v.Checksum = sum
	switch n, ok, err := readNormalization(filepath.Dir(path)); {
	case opts.Input != nil:
		v.Input = *opts.Input
	case err != nil:
		return nil, fmt.Errorf("load %s: normalisation: %w", path, err)
	case ok:
		v.Input = n
	default:
		v.Input = AssumedNormalization()
	}
	if err := v.Input.Check(); err != nil {
		return nil, fmt.Errorf("load %s: %w", path, err)
	}
	// Heads: --heads, else the Hugging Face config.json (read with the
	// weights), safetensors metadata, timm's config.json architecture name,
	// and last the width of a known family (said so: HeadsSource).
	switch {
	case opts.Heads > 0:
		v.Heads, v.HeadsSource = opts.Heads, "--heads"
	case v.Heads > 0:
		v.HeadsSource = "config.json num_attention_heads"
	default:
		if h, ok := meta[HeadsMetadataKey]; ok {
			if v.Heads, err = strconv.Atoi(h); err != nil {
				return nil, fmt.Errorf("load %s: metadata %s=%q is not an integer", path, HeadsMetadataKey, h)
			}
			v.HeadsSource = "safetensors metadata " + HeadsMetadataKey
			break
		}
		h, source, err := timmHeads(filepath.Dir(path), v.Dim)
		if err != nil {
			return nil, fmt.Errorf("load %s: %w", path, err)
		}
		if h > 0 {
			v.Heads, v.HeadsSource = h, source
			break
		}
		if h, ok := headsByWidth[v.Dim]; ok {
			v.Heads, v.HeadsSource = h, fmt.Sprintf("assumed from the width %d (the usual ViT of that width; nothing beside the weights says)", v.Dim)
			break
		}
		return nil, fmt.Errorf("load %s: nothing says how many attention heads this %d-wide ViT has (no config.json, no metadata, and no usual ViT is that wide): give --heads", path, v.Dim)
	}
	if v.Heads <= 0 || v.Dim%v.Heads != 0 {
		return nil, fmt.Errorf("load %s: %d attention heads do not divide dim %d (set the number of heads explicitly)", path, v.Heads, v.Dim)
	}
	if opts.ImageSize > 0 && opts.ImageSize != v.ImageSize {
		if err := v.ResizePositionEmbedding(opts.ImageSize); err != nil {
			return nil, fmt.Errorf("load %s: %w", path, err)
		}
	}
	return v, nil
}

func layoutOf(t map[string]Tensor) string {
	if has(t, "patch_embed.proj.weight") {
		return LayoutTimm
	}
	return LayoutHuggingFace
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("open checkpoint: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("checksum %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func has(t map[string]Tensor, name string) bool {
	_, ok := t[name]
	return ok
}

// weightReader takes tensors out of a checkpoint by name, checking shapes,
// and remembers which names were used so leftovers can be reported.
type weightReader struct {
	tensors map[string]Tensor
	used    map[string]bool
	err     error
}

func newWeightReader(t map[string]Tensor) *weightReader {
	return &weightReader{tensors: t, used: map[string]bool{}}
}

// take returns the tensor's data, requiring the given shape; the first error
// sticks and later calls return nil.
func (r *weightReader) take(name string, shape ...int) []float32 {
	if r.err != nil {
		return nil
	}
	t, ok := r.tensors[name]
	if !ok {
		r.err = fmt.Errorf("missing tensor %q", name)
		return nil
	}
	if shapeSize(t.Shape) != shapeSize(shape) || len(t.Shape) != len(shape) || !equalInts(t.Shape, shape) {
		r.err = fmt.Errorf("tensor %q has shape %v, want %v", name, t.Shape, shape)
		return nil
	}
	r.used[name] = true
	return t.Data
}

// optional is take for a tensor that may be absent.
func (r *weightReader) optional(name string, shape ...int) []float32 {
	if !has(r.tensors, name) {
		return nil
	}
	return r.take(name, shape...)
}

// unused lists the tensor names no take consumed whose names match prefix.
func (r *weightReader) unused(prefix *regexp.Regexp) []string {
	var out []string
	for name := range r.tensors {
		if !r.used[name] && prefix.MatchString(name) {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// countBlocks finds the depth from names like prefix + N + suffix, requiring
// indices 0..depth-1 without gaps.
func countBlocks(t map[string]Tensor, prefix, suffix string) (int, error) {
	re := regexp.MustCompile("^" + regexp.QuoteMeta(prefix) + `(\d+)` + regexp.QuoteMeta(suffix) + "$")
	seen := map[int]bool{}
	for name := range t {
		if m := re.FindStringSubmatch(name); m != nil {
			i, _ := strconv.Atoi(m[1])
			seen[i] = true
		}
	}
	if len(seen) == 0 {
		return 0, fmt.Errorf("no transformer blocks found (no tensor named %sN%s)", prefix, suffix)
	}
	for i := range len(seen) {
		if !seen[i] {
			return 0, fmt.Errorf("missing tensor %q: block %d is absent but %d blocks are present", prefix+strconv.Itoa(i)+suffix, i, len(seen))
		}
	}
	return len(seen), nil
}

// embeddingShapes derives dim, patch and image size from the patch
// projection and the position embedding.
func embeddingShapes(patch Tensor, patchName string, pos Tensor, posName string) (dim, p, image int, err error) {
	if len(patch.Shape) != 4 || patch.Shape[1] != 3 || patch.Shape[2] != patch.Shape[3] {
		return 0, 0, 0, fmt.Errorf("tensor %q has shape %v, want [dim, 3, patch, patch]", patchName, patch.Shape)
	}
	dim, p = patch.Shape[0], patch.Shape[2]
	if len(pos.Shape) != 3 || pos.Shape[0] != 1 || pos.Shape[2] != dim {
		return 0, 0, 0, fmt.Errorf("tensor %q has shape %v, want [1, tokens, %d]", posName, pos.Shape, dim)
	}
	grid := int(math.Round(math.Sqrt(float64(pos.Shape[1] - 1))))
	if grid*grid+1 != pos.Shape[1] {
		return 0, 0, 0, fmt.Errorf("tensor %q has %d tokens, which is not a square patch grid plus one class token", posName, pos.Shape[1])
	}
	return dim, p, grid * p, nil
}

// withClassPosition gives a position embedding without the class token's
// row (timm's no_embed_class: DeiT-III, DINOv2 with registers) a zero one,
// the canonical layout; a square token count marks such a table.
func withClassPosition(t map[string]Tensor, name string) {
	pos, ok := t[name]
	if !ok || len(pos.Shape) != 3 {
		return
	}
	grid := int(math.Round(math.Sqrt(float64(pos.Shape[1]))))
	if grid > 1 && grid*grid == pos.Shape[1] {
		t[name] = Tensor{Shape: []int{1, pos.Shape[1] + 1, pos.Shape[2]}, Data: append(make([]float32, pos.Shape[2]), pos.Data...)}
	}
}

// registers reads the register tokens ([1, R, Dim]) under name, if any.
func (r *weightReader) registers(name string, dim int) (int, []float32) {
	t, ok := r.tensors[name]
	if !ok {
		return 0, nil
	}
	if len(t.Shape) != 3 || t.Shape[0] != 1 || t.Shape[1] < 1 {
		r.err = fmt.Errorf("tensor %q has shape %v, want [1, registers, %d]", name, t.Shape, dim)
		return 0, nil
	}
	return t.Shape[1], r.take(name, 1, t.Shape[1], dim)
}

func fromTimm(t map[string]Tensor) (*ViT, error) {
	if !has(t, "pos_embed") {
		return nil, errors.New(`missing tensor "pos_embed"`)
	}
	withClassPosition(t, "pos_embed")
	dim, p, image, err := embeddingShapes(t["patch_embed.proj.weight"], "patch_embed.proj.weight", t["pos_embed"], "pos_embed")
	if err != nil {
		return nil, err
	}
	depth, err := countBlocks(t, "blocks.", ".norm1.weight")
	if err != nil {
		return nil, err
	}
	fc1, ok := t["blocks.0.mlp.fc1.weight"]
	if !ok || len(fc1.Shape) != 2 {
		return nil, errors.New(`missing tensor "blocks.0.mlp.fc1.weight" or it is not a matrix`)
	}
	cfg := Config{Dim: dim, Depth: depth, MLPDim: fc1.Shape[0], Patch: p, ImageSize: image, Eps: timmLayerNormEps}
	r := newWeightReader(t)
	v := &ViT{Config: cfg, Layout: LayoutTimm}
	v.PatchW = r.take("patch_embed.proj.weight", dim, 3, p, p)
	v.PatchB = r.take("patch_embed.proj.bias", dim)
	v.ClsToken = r.take("cls_token", 1, 1, dim)
	v.PosEmbed = r.take("pos_embed", 1, cfg.ImageTokens(), dim)
	v.Registers, v.RegTokens = r.registers("reg_token", dim)
	for i := range depth {
		n := func(s string) string { return fmt.Sprintf("blocks.%d.%s", i, s) }
		b := Block{
			Norm1W: r.take(n("norm1.weight"), dim), Norm1B: r.take(n("norm1.bias"), dim),
			QKVW:  r.take(n("attn.qkv.weight"), 3*dim, dim),
			QKVB:  r.optional(n("attn.qkv.bias"), 3*dim),
			ProjW: r.take(n("attn.proj.weight"), dim, dim), ProjB: r.take(n("attn.proj.bias"), dim),
			Norm2W: r.take(n("norm2.weight"), dim), Norm2B: r.take(n("norm2.bias"), dim),
			FC1W: r.take(n("mlp.fc1.weight"), cfg.MLPDim, dim), FC1B: r.take(n("mlp.fc1.bias"), cfg.MLPDim),
			FC2W: r.take(n("mlp.fc2.weight"), dim, cfg.MLPDim), FC2B: r.take(n("mlp.fc2.bias"), dim),
			LayerScale1: r.optional(n("ls1.gamma"), dim),
			LayerScale2: r.optional(n("ls2.gamma"), dim),
		}
		if b.QKVB == nil {
			b.QKVB = make([]float32, 3*dim)
		}
		v.Blocks = append(v.Blocks, b)
	}
	v.NormW = r.take("norm.weight", dim)
	v.NormB = r.take("norm.bias", dim)
	if r.err != nil {
		return nil, r.err
	}
	// Tensors inside the backbone that we do not understand (q/k norms,
	// register tokens, ...) would silently change the function: refuse them.
	if extra := r.unused(regexp.MustCompile(`^(blocks\.|patch_embed\.|pos_embed|cls_token|reg_token|norm\.)`)); len(extra) > 0 {
		return nil, fmt.Errorf("tensor %q is not part of a plain ViT (unsupported architecture variant)", extra[0])
	}
	return v, nil
}

// hfNames are a Hugging Face ViT family's tensor names inside a block.
type hfNames struct {
	norm1, norm2, fc1, fc2 string
	layerScale1            string // "" when the family has none
	layerScale2            string
	eps                    float64 // the family's default layer_norm_eps
}

var (
	hfViTNames = hfNames{norm1: "layernorm_before", norm2: "layernorm_after", fc1: "intermediate.dense", fc2: "output.dense", eps: hfLayerNormEps}
	// Dinov2Model (facebook/dinov2-*), with or without registers.
	hfDinov2Names = hfNames{norm1: "norm1", norm2: "norm2", fc1: "mlp.fc1", fc2: "mlp.fc2",
		layerScale1: "layer_scale1.lambda1", layerScale2: "layer_scale2.lambda1", eps: 1e-6}
)

func fromHuggingFace(t map[string]Tensor, configPath string) (*ViT, error) {
	prefix := ""
	for _, p := range []string{"vit.", "dinov2."} {
		if has(t, p+"embeddings.patch_embeddings.projection.weight") {
			prefix = p
		}
	}
	name := func(s string) string { return prefix + s }
	names := hfViTNames
	if has(t, name("encoder.layer.0.norm1.weight")) {
		names = hfDinov2Names
	}
	if !has(t, name("embeddings.position_embeddings")) {
		return nil, fmt.Errorf("missing tensor %q", name("embeddings.position_embeddings"))
	}
	dim, p, image, err := embeddingShapes(t[name("embeddings.patch_embeddings.projection.weight")], name("embeddings.patch_embeddings.projection.weight"),
		t[name("embeddings.position_embeddings")], name("embeddings.position_embeddings"))
	if err != nil {
		return nil, err
	}
	depth, err := countBlocks(t, name("encoder.layer."), "."+names.norm1+".weight")
	if err != nil {
		return nil, err
	}
	fc1Name := name("encoder.layer.0." + names.fc1 + ".weight")
	fc1, ok := t[fc1Name]
	if !ok || len(fc1.Shape) != 2 {
		return nil, fmt.Errorf("missing tensor %q or it is not a matrix (a SwiGLU DINOv2, giant, is not supported)", fc1Name)
	}
	cfg := Config{Dim: dim, Depth: depth, MLPDim: fc1.Shape[0], Patch: p, ImageSize: image, Eps: names.eps}
	hf, err := readHFConfig(configPath)
	if err != nil {
		return nil, err
	}
	if err := hf.contradicts(cfg); err != nil {
		return nil, err
	}
	if hf.UseSwiGLU {
		return nil, fmt.Errorf("%s says use_swiglu_ffn: SwiGLU blocks (DINOv2 giant) are not supported", configPath)
	}
	if hf.LayerNormEps > 0 {
		cfg.Eps = hf.LayerNormEps
	}
	if hf.NumAttentionHeads != nil {
		cfg.Heads = *hf.NumAttentionHeads
	}
	r := newWeightReader(t)
	v := &ViT{Config: cfg, Layout: LayoutHuggingFace}
	v.PatchW = r.take(name("embeddings.patch_embeddings.projection.weight"), dim, 3, p, p)
	v.PatchB = r.take(name("embeddings.patch_embeddings.projection.bias"), dim)
	v.ClsToken = r.take(name("embeddings.cls_token"), 1, 1, dim)
	v.PosEmbed = r.take(name("embeddings.position_embeddings"), 1, cfg.ImageTokens(), dim)
	v.Registers, v.RegTokens = r.registers(name("embeddings.register_tokens"), dim)
	if hf.NumRegisterTokens != nil && *hf.NumRegisterTokens != v.Registers {
		return nil, fmt.Errorf("%s says num_register_tokens %d, the weights have %d", configPath, *hf.NumRegisterTokens, v.Registers)
	}
	r.optional(name("embeddings.mask_token"), 1, dim) // masked-image pretraining only
	for i := range depth {
		n := func(s string) string { return name(fmt.Sprintf("encoder.layer.%d.%s", i, s)) }
		var qkvW, qkvB []float32
		for _, part := range []string{"query", "key", "value"} {
			qkvW = append(qkvW, r.take(n("attention.attention."+part+".weight"), dim, dim)...)
			qkvB = append(qkvB, r.take(n("attention.attention."+part+".bias"), dim)...)
		}
		b := Block{
			Norm1W: r.take(n(names.norm1+".weight"), dim), Norm1B: r.take(n(names.norm1+".bias"), dim),
			QKVW: qkvW, QKVB: qkvB,
			ProjW: r.take(n("attention.output.dense.weight"), dim, dim), ProjB: r.take(n("attention.output.dense.bias"), dim),
			Norm2W: r.take(n(names.norm2+".weight"), dim), Norm2B: r.take(n(names.norm2+".bias"), dim),
			FC1W: r.take(n(names.fc1+".weight"), cfg.MLPDim, dim), FC1B: r.take(n(names.fc1+".bias"), cfg.MLPDim),
			FC2W: r.take(n(names.fc2+".weight"), dim, cfg.MLPDim), FC2B: r.take(n(names.fc2+".bias"), dim),
		}
		if names.layerScale1 != "" {
			b.LayerScale1, b.LayerScale2 = r.take(n(names.layerScale1), dim), r.take(n(names.layerScale2), dim)
		}
		v.Blocks = append(v.Blocks, b)
	}
	v.NormW = r.take(name("layernorm.weight"), dim)
	v.NormB = r.take(name("layernorm.bias"), dim)
	if r.err != nil {
		return nil, r.err
	}
	if extra := r.unused(regexp.MustCompile("^" + regexp.QuoteMeta(prefix) + `(embeddings\.|encoder\.)`)); len(extra) > 0 {
		return nil, fmt.Errorf("tensor %q is not part of a plain ViT (unsupported architecture variant)", extra[0])
	}
	return v, nil
}

type hfConfig struct {
	LayerNormEps      float64 `json:"layer_norm_eps"`
	NumAttentionHeads *int    `json:"num_attention_heads"`
	// What the weights also tell: compared with them, since a checkpoint
	// missing its last layer loaded at depth 5 under num_hidden_layers: 6.
	HiddenSize       *int `json:"hidden_size"`
	NumHiddenLayers  *int `json:"num_hidden_layers"`
	IntermediateSize *int `json:"intermediate_size"`
	ImageSize        *int `json:"image_size"`
	PatchSize        *int `json:"patch_size"`
	// DINOv2's.
	NumRegisterTokens *int `json:"num_register_tokens"`
	UseSwiGLU         bool `json:"use_swiglu_ffn"`
}

// contradicts names the first setting of the config.json that the weights'
// shapes contradict, if any.
func (hf hfConfig) contradicts(c Config) error {
	for _, k := range []struct {
		key     string
		file    *int
		weights int
	}{{"hidden_size", hf.HiddenSize, c.Dim}, {"num_hidden_layers", hf.NumHiddenLayers, c.Depth},
		{"intermediate_size", hf.IntermediateSize, c.MLPDim}, {"image_size", hf.ImageSize, c.ImageSize}, {"patch_size", hf.PatchSize, c.Patch}} {
		if k.file != nil && *k.file != k.weights {
			return fmt.Errorf("config.json says %s %d, the weights %d (a checkpoint cut short, or the config of another model?)", k.key, *k.file, k.weights)
		}
	}
	if h := hf.NumAttentionHeads; h != nil && (*h <= 0 || c.Dim%*h != 0) {
		return fmt.Errorf("config.json says num_attention_heads %d, which does not divide the width %d", *h, c.Dim)
	}
	return nil
}

// readHFConfig reads the config.json beside a Hugging Face checkpoint; a
// missing file means defaults.
func readHFConfig(path string) (hfConfig, error) {
	var c hfConfig
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return c, fmt.Errorf("read %s: %w", path, err)
	}
	if err := json.Unmarshal(data, &c); err != nil {
		return c, fmt.Errorf("parse %s: %w", path, err)
	}
	return c, nil
}

// Parameters returns the number of weights in the backbone.
func (v *ViT) Parameters() int {
	n := len(v.PatchW) + len(v.PatchB) + len(v.ClsToken) + len(v.PosEmbed) + len(v.RegTokens) + len(v.NormW) + len(v.NormB)
	for _, b := range v.Blocks {
		n += len(b.Norm1W) + len(b.Norm1B) + len(b.QKVW) + len(b.QKVB) + len(b.ProjW) + len(b.ProjB) +
			len(b.Norm2W) + len(b.Norm2B) + len(b.FC1W) + len(b.FC1B) + len(b.FC2W) + len(b.FC2B) +
			len(b.LayerScale1) + len(b.LayerScale2)
	}
	return n
}

// Describe is a one-line summary of the architecture.
func (c Config) Describe() string {
	parts := []string{
		fmt.Sprintf("dim=%d", c.Dim), fmt.Sprintf("depth=%d", c.Depth), fmt.Sprintf("heads=%d", c.Heads),
		fmt.Sprintf("mlp=%d", c.MLPDim), fmt.Sprintf("patch=%d", c.Patch), fmt.Sprintf("image=%d", c.ImageSize),
		fmt.Sprintf("eps=%g", c.Eps),
	}
	if c.Registers > 0 {
		parts = append(parts, fmt.Sprintf("registers=%d", c.Registers))
	}
	return strings.Join(parts, " ")
}
