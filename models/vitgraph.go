package models

import (
	"fmt"
	"math"
	"slices"
	"sort"

	"github.com/transformaly/transformaly/models/onnxpb"
)

// Graph input and output names shared by the teacher and detector graphs.
const (
	InputImages       = "images"       // uint8 [N, H, W, 3], RGB, already resized
	OutputEmbedding   = "embedding"    // float32 [N, Dim]: CLS token after the final LayerNorm
	OutputBlockErrors = "block_errors" // float32 [N, len(blocks)]: per-block MSE
	OutputTokenErrors = "token_errors" // float32 [N, len(blocks), Tokens]: per-token MSE
)

const batchDim = "batch"

// blockValues names the graph values holding one block's parameters.
type blockValues struct {
	norm1W, norm1B, qkvW, qkvB, projW, projB string
	norm2W, norm2B, fc1W, fc1B, fc2W, fc2B   string
	ls1, ls2                                 string // "" without layer scale
}

// BlockParam is one parameter tensor of a block: its name suffix, shape and
// where it lives in a Block.
type BlockParam struct {
	Name  string
	Shape []int
	Data  *[]float32
	value *string // the blockValues field naming it in a graph
}

// blockParams lists b's parameters in a fixed order (layer scales only when
// present), tying each to its field in Block and in blockValues.
func blockParams(b *Block, c Config, w *blockValues) []BlockParam {
	d, m := c.Dim, c.MLPDim
	ps := []BlockParam{
		{"norm1.weight", []int{d}, &b.Norm1W, &w.norm1W}, {"norm1.bias", []int{d}, &b.Norm1B, &w.norm1B},
		{"qkv.weight", []int{3 * d, d}, &b.QKVW, &w.qkvW}, {"qkv.bias", []int{3 * d}, &b.QKVB, &w.qkvB},
		{"proj.weight", []int{d, d}, &b.ProjW, &w.projW}, {"proj.bias", []int{d}, &b.ProjB, &w.projB},
		{"norm2.weight", []int{d}, &b.Norm2W, &w.norm2W}, {"norm2.bias", []int{d}, &b.Norm2B, &w.norm2B},
		{"fc1.weight", []int{m, d}, &b.FC1W, &w.fc1W}, {"fc1.bias", []int{m}, &b.FC1B, &w.fc1B},
		{"fc2.weight", []int{d, m}, &b.FC2W, &w.fc2W}, {"fc2.bias", []int{d}, &b.FC2B, &w.fc2B},
	}
	if b.LayerScale1 != nil {
		ps = append(ps, BlockParam{"ls1", []int{d}, &b.LayerScale1, &w.ls1}, BlockParam{"ls2", []int{d}, &b.LayerScale2, &w.ls2})
	}
	return ps
}

// Params lists the block's parameters in the order training graphs take
// them.
func (b *Block) Params(c Config) []BlockParam {
	return blockParams(b, c, &blockValues{})
}

// blockWeights adds b's parameters to the graph as initializers.
func (g *Graph) blockWeights(prefix string, b Block, c Config) blockValues {
	var w blockValues
	for _, p := range blockParams(&b, c, &w) {
		*p.value = g.Weight(prefix+"."+p.Name, *p.Data, p.Shape...)
	}
	return w
}

// blockInputs declares a block's parameters as graph inputs named
// prefix.<param>, for graphs that take the weights at run time (training).
func (g *Graph) blockInputs(prefix string, b Block, c Config) blockValues {
	var w blockValues
	for _, p := range blockParams(&b, c, &w) {
		dims := make([]Dim, len(p.Shape))
		for i, d := range p.Shape {
			dims[i] = d
		}
		*p.value = g.Input(prefix+"."+p.Name, Float32, dims...)
	}
	return w
}

// linear is x @ W^T + b over 2-D activations [rows, in], with W in PyTorch's
// [out, in] layout: one Gemm, the shape MLAS and cuBLAS run fastest.
// In an int8 graph it is quantizedLinear; in ActivationRangeGraph it
// records x's per-channel range too.
func (g *Graph) linear(x, w, b string) string {
	if ref, ok := g.weights[w]; ok && len(ref.shape) == 2 {
		if g.ranges != nil {
			g.recordRange(x, w, ref.shape[1])
		}
		if g.int8 != nil {
			return g.quantizedLinear(x, ref, w, b)
		}
	}
	return g.Op("Gemm", []string{x, w, b}, AttrInt("transB", 1))
}

func (g *Graph) layerNorm(x, w, b string, eps float64) string {
	return g.Op("LayerNormalization", []string{x, w, b}, AttrInt("axis", -1), AttrFloat("epsilon", float32(eps)))
}

// gelu is the exact (erf) GELU written in the node pattern ORT fuses into
// one Gelu kernel: x * 0.5 * (1 + erf(x / sqrt 2)).
func (g *Graph) gelu(x string) string {
	e := g.Op("Erf", []string{g.Op("Div", []string{x, g.Scalar(float32(math.Sqrt2))})})
	return g.Op("Mul", []string{g.Op("Mul", []string{x, g.Op("Add", []string{e, g.Scalar(1)})}), g.Scalar(0.5)})
}

// block is one pre-norm transformer block over tokens kept 2-D as
// [N*Tokens, Dim], so every projection is a single large Gemm.
func (g *Graph) block(x string, w blockValues, c Config) string {
	t, d, h := int64(c.Tokens()), int64(c.Dim), int64(c.Heads)
	dh := d / h
	qkv := g.linear(g.layerNorm(x, w.norm1W, w.norm1B, c.Eps), w.qkvW, w.qkvB) // [N*T, 3D]
	qkv = g.Op("Reshape", []string{qkv, g.Shape(-1, t, 3, h, dh)})
	qkv = g.Op("Transpose", []string{qkv}, AttrInts("perm", 2, 0, 3, 1, 4)) // [3, N, H, T, dh]
	parts := g.OpN("Split", []string{qkv}, 3, AttrInt("axis", 0))
	for i := range parts {
		parts[i] = g.Op("Squeeze", []string{parts[i], g.Ints([]int64{0}, 1)}) // [N, H, T, dh]
	}
	q := g.Op("Mul", []string{parts[0], g.Scalar(float32(1 / math.Sqrt(float64(dh))))})
	kT := g.Op("Transpose", []string{parts[1]}, AttrInts("perm", 0, 1, 3, 2))
	attn := g.Op("Softmax", []string{g.Op("MatMul", []string{q, kT})}, AttrInt("axis", -1)) // [N, H, T, T]
	ctx := g.Op("MatMul", []string{attn, parts[2]})                                         // [N, H, T, dh]
	ctx = g.Op("Transpose", []string{ctx}, AttrInts("perm", 0, 2, 1, 3))
	ctx = g.Op("Reshape", []string{ctx, g.Shape(-1, d)})
	y := g.linear(ctx, w.projW, w.projB)
	if w.ls1 != "" {
		y = g.Op("Mul", []string{y, w.ls1})
	}
	x = g.Op("Add", []string{x, y})
	y = g.linear(g.gelu(g.linear(g.layerNorm(x, w.norm2W, w.norm2B, c.Eps), w.fc1W, w.fc1B)), w.fc2W, w.fc2B)
	if w.ls2 != "" {
		y = g.Op("Mul", []string{y, w.ls2})
	}
	return g.Op("Add", []string{x, y})
}

// embedTokens turns the uint8 image batch into the first block's input,
// [N*Tokens, Dim]: normalise (x/255-0.5)/0.5, patchify by a strided Conv,
// prepend the class token and add the position embedding.
func (g *Graph) embedTokens(images string, v *ViT) string {
	c := v.Config
	// (x * rescale - mean) / std per channel, as x * scale + shift over
	// the last (RGB) axis.
	n := v.InputNormalization()
	var scale, shift []float32
	for ch := range 3 {
		scale = append(scale, float32(n.Rescale/n.Std[ch]))
		shift = append(shift, float32(-n.Mean[ch]/n.Std[ch]))
	}
	x := g.Op("Cast", []string{images}, AttrInt("to", int64(g.compute)))
	x = g.Op("Add", []string{g.Op("Mul", []string{x, g.Weight("input.scale", scale, 3)}), g.Weight("input.shift", shift, 3)})
	x = g.Op("Transpose", []string{x}, AttrInts("perm", 0, 3, 1, 2)) // [N, 3, H, W]
	pw := g.Weight("patch_embed.weight", v.PatchW, c.Dim, 3, c.Patch, c.Patch)
	pb := g.Weight("patch_embed.bias", v.PatchB, c.Dim)
	p := int64(c.Patch)
	x = g.Op("Conv", []string{x, pw, pb}, AttrInts("kernel_shape", p, p), AttrInts("strides", p, p)) // [N, D, g, g]
	x = g.Op("Reshape", []string{x, g.Shape(0, int64(c.Dim), -1)})
	x = g.Op("Transpose", []string{x}, AttrInts("perm", 0, 2, 1)) // [N, g*g, D]
	// Zero rows padded in front of the patches, plus a position table whose
	// first row already holds cls_token + pos_embed[0] and whose next rows
	// are the register tokens (which have no position), place the class and
	// register tokens without any batch-size-dependent Expand.
	x = g.Op("Pad", []string{x, g.Ints([]int64{0, int64(1 + c.Registers), 0, 0, 0, 0})})
	d := c.Dim
	pos := slices.Concat(v.PosEmbed[:d], v.RegTokens, v.PosEmbed[d:])
	for i := range d {
		pos[i] += v.ClsToken[i]
	}
	x = g.Op("Add", []string{x, g.Weight("pos_embed_with_cls", pos, 1, c.Tokens(), c.Dim)})
	return g.Op("Reshape", []string{x, g.Shape(-1, int64(c.Dim))})
}

// finalEmbedding is the CLS token of the last block's output after the
// final LayerNorm (LayerNorm is per token, so normalising only CLS is exact).
func (g *Graph) finalEmbedding(x string, v *ViT) string {
	c := v.Config
	x = g.Op("Reshape", []string{x, g.Shape(-1, int64(c.Tokens()), int64(c.Dim))})
	cls := g.Op("Gather", []string{x, g.Ints([]int64{0})}, AttrInt("axis", 1)) // [N, D]
	return g.layerNorm(cls, g.Weight("norm.weight", v.NormW, c.Dim), g.Weight("norm.bias", v.NormB, c.Dim), c.Eps)
}

// teacherBody runs the embedding and every block, returning the embedding
// value and each block's input (ins[i]) and output (ins[i+1]) as 2-D values.
func (g *Graph) teacherBody(images string, v *ViT) (embedding string, ins []string) {
	ins = g.teacherPrefix(images, v, v.Depth)
	return g.finalEmbedding(ins[v.Depth], v), ins
}

// teacherPrefix runs the embedding and the teacher's first n blocks,
// returning the residual stream before block 0 (ins[0]) and after each
// block i (ins[i+1]) as [N*Tokens, Dim] values.
func (g *Graph) teacherPrefix(images string, v *ViT, n int) []string {
	x := g.embedTokens(images, v)
	ins := []string{x}
	for i := range n {
		x = g.block(x, g.blockWeights(fmt.Sprintf("teacher.%d", i), v.Blocks[i], v.Config), v.Config)
		ins = append(ins, x)
	}
	return ins
}

func (g *Graph) imagesInput(c Config) string {
	return g.Input(InputImages, Uint8, batchDim, c.ImageSize, c.ImageSize, 3)
}

// CheckBlocks validates a block index set against the teacher's depth: at
// least one block, each within it, none twice.
func CheckBlocks(blocks []int, depth int) error {
	if len(blocks) == 0 {
		return fmt.Errorf("no blocks chosen")
	}
	seen := map[int]bool{}
	for _, b := range blocks {
		if b < 0 || b >= depth {
			return fmt.Errorf("block %d is outside the teacher's blocks 0..%d", b, depth-1)
		}
		if seen[b] {
			return fmt.Errorf("block %d is listed twice", b)
		}
		seen[b] = true
	}
	return nil
}

// TeacherGraph emits the teacher: images -> embedding (feature 1 alone).
func TeacherGraph(v *ViT) ([]byte, error) {
	g := NewGraph()
	emb, _ := g.teacherBody(g.imagesInput(v.Config), v)
	g.Output(OutputEmbedding, emb, Float32, batchDim, v.Dim)
	return g.Model("transformaly_teacher", map[string]string{"config": v.Describe()})
}

// DetectorGraph emits teacher and students in one graph: images ->
// embedding, per-block MSE [N, B] and per-token errors [N, B, ImageTokens]
// (registers left out of both), where
// student k mimics teacher block blocks[k] fed the teacher's input of it.
// Teacher and students together may pass 2 GiB (ViT-L): WriteModelFile
// stores the model whatever its size.
func DetectorGraph(v *ViT, blocks []int, students []Block) (*onnxpb.ModelProto, error) {
	g := NewGraph()
	if _, err := g.detectorBody(v, blocks, students); err != nil {
		return nil, err
	}
	return g.Proto("transformaly_detector", map[string]string{"config": v.Describe()}), nil
}

// detectorOutputs are the values detectorBody leaves for scoring.
type detectorOutputs struct {
	embedding, blockErrors string
	ins                    []string // the teacher's residual stream before and after each block
}

func (g *Graph) detectorBody(v *ViT, blocks []int, students []Block) (detectorOutputs, error) {
	if len(blocks) == 0 || len(blocks) != len(students) {
		return detectorOutputs{}, fmt.Errorf("detector graph: %d blocks but %d students", len(blocks), len(students))
	}
	if err := CheckBlocks(blocks, v.Depth); err != nil {
		return detectorOutputs{}, fmt.Errorf("detector graph: %w", err)
	}
	c := v.Config
	emb, ins := g.teacherBody(g.imagesInput(c), v)
	t := int64(c.Tokens())
	var perBlock []string
	for k, i := range blocks {
		s := g.block(ins[i], g.blockWeights(fmt.Sprintf("student.%d", i), students[k], c), c)
		diff := g.Op("Sub", []string{g.toF32(s), g.toF32(ins[i+1])})
		// Mean over channels first, then over tokens: two short float32
		// reductions instead of one long one keep the error accurate.
		perToken := g.Op("ReduceMean", []string{g.squared(diff)}, AttrInts("axes", 1), AttrInt("keepdims", 0))
		perBlock = append(perBlock, g.Op("Reshape", []string{perToken, g.Shape(-1, 1, t)}))
	}
	tokenErrors := perBlock[0]
	if len(perBlock) > 1 {
		tokenErrors = g.Op("Concat", perBlock, AttrInt("axis", 1))
	}
	if c.Registers > 0 { // registers carry no image position: left out
		keep := []int64{0}
		for tok := 1 + c.Registers; tok < c.Tokens(); tok++ {
			keep = append(keep, int64(tok))
		}
		tokenErrors = g.Op("Gather", []string{tokenErrors, g.Ints(keep, len(keep))}, AttrInt("axis", 2))
	}
	blockErrors := g.Op("ReduceMean", []string{tokenErrors}, AttrInts("axes", 2), AttrInt("keepdims", 0))
	emb = g.toF32(emb)
	g.Output(OutputEmbedding, emb, Float32, batchDim, c.Dim)
	g.Output(OutputBlockErrors, blockErrors, Float32, batchDim, len(blocks))
	g.Output(OutputTokenErrors, tokenErrors, Float32, batchDim, len(blocks), c.ImageTokens())
	return detectorOutputs{embedding: emb, blockErrors: blockErrors, ins: ins}, nil
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// SgemmGraph is a single n x n x n float32 MatMul of two inputs "a" and "b"
// into "c": the yardstick for how close the ViT graphs come to the
// machine's matrix-multiply peak.
func SgemmGraph(n int) ([]byte, error) {
	g := NewGraph()
	a := g.Input("a", Float32, n, n)
	b := g.Input("b", Float32, n, n)
	g.Output("c", g.Op("MatMul", []string{a, b}), Float32, n, n)
	return g.Model("sgemm", nil)
}

// ForwardFLOPs counts the float32 operations (2 per multiply-add) of one
// image through the teacher, and through each student block.
func (c Config) ForwardFLOPs() (teacher, perBlock float64) {
	t, d, m := float64(c.Tokens()), float64(c.Dim), float64(c.MLPDim)
	patches := float64(c.Grid() * c.Grid())
	perBlock = 2*t*(3*d*d+d*d+2*d*m) + 4*t*t*d
	return 2*patches*d*3*float64(c.Patch*c.Patch) + float64(c.Depth)*perBlock, perBlock
}
