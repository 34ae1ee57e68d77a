package models

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
)

// The patch-level feature space (PatchCore's, on the teacher's tokens): a
// defect a few patches wide barely moves the CLS embedding or a block's
// mean student error, but its patches lie far from every normal patch.
// Each patch's feature is made of the teacher's token outputs of the
// chosen blocks over its k x k neighbourhood on the patch grid, pooled one
// of two ways (PatchFeatures.Pooling), the blocks' features side by side.
// A memory bank holds a coreset of the normal images' patch features; a
// patch's distance is the Euclidean distance to its nearest bank entry,
// and the image's patch score the largest over its patches.

// Patch outputs of the scored detector graph.
const (
	OutputPatchDistances = "patch_distances" // float32 [N, Grid*Grid]: each patch's nearest-bank-entry distance
	OutputPatchScore     = "patch_score"     // float32 [N]: the largest patch distance
	OutputPatchFeatures  = "patch_features"  // float32 [N, Grid*Grid, D], of PatchFeatureGraph
)

// How a patch's k x k neighbourhood of tokens becomes its feature.
const (
	// PoolMean averages the tokens (PatchCore's local aggregation: context,
	// and robustness to a patch-sized shift). With k = 1, the token alone.
	PoolMean = "mean"
	// PoolConcat lays the tokens side by side in a fixed order (row by
	// row, clamped at the grid's edge), so the feature keeps how the
	// neighbourhood is arranged, which a mean loses: a bite out of a
	// washer's outer edge is, patch by patch, much like the edge of its
	// hole, and only its neighbours (the rim's convex edge on either side)
	// tell the two apart. A fixed random projection (Projection) then
	// brings the k^2-times-wider feature back to a bank width that costs
	// about what the token alone does.
	PoolConcat = "concat"
)

// PatchFeatures says how a patch's feature is made from the teacher.
type PatchFeatures struct {
	Blocks []int // teacher blocks whose token outputs are the features
	// Neighbourhood is the side, in patches, of the square around each
	// patch that is pooled into its feature (odd).
	Neighbourhood int
	Pooling       string // PoolMean or PoolConcat
	// Projection is PoolConcat's fixed random projection, [RawWidth,
	// width] row-major (Johnson-Lindenstrauss: distances kept within a few
	// per cent, by a width of a few hundred); nil keeps the features whole.
	Projection []float32
}

// RandomProjection is a seeded [in, out] matrix of N(0, 1/out) entries:
// a projection that keeps lengths and distances on average (PoolConcat's,
// and fit's for choosing coresets).
func RandomProjection(in, out int, seed uint64) []float32 {
	rng := rand.New(rand.NewPCG(seed, 0x9e37))
	m := make([]float32, in*out)
	for i := range m {
		m[i] = float32(rng.NormFloat64() / math.Sqrt(float64(out)))
	}
	return m
}

// RawWidth is the width of a patch feature before any projection.
func (f PatchFeatures) RawWidth(dim int) int {
	w := dim * len(f.Blocks)
	if f.Pooling == PoolConcat {
		w *= f.Neighbourhood * f.Neighbourhood
	}
	return w
}

// Width is the width of a patch feature, as the bank holds it.
func (f PatchFeatures) Width(dim int) int {
	if raw := f.RawWidth(dim); f.Projection != nil && raw > 0 {
		return len(f.Projection) / raw
	}
	return f.RawWidth(dim)
}

// Check validates the features against a teacher of depth blocks, dim wide.
func (f PatchFeatures) Check(depth, dim int) error {
	if err := CheckPatchBlocks(f.Blocks, depth); err != nil {
		return err
	}
	if err := CheckNeighbourhood(f.Neighbourhood); err != nil {
		return err
	}
	if err := CheckPooling(f.Pooling); err != nil {
		return err
	}
	if raw := f.RawWidth(dim); f.Projection != nil && (f.Pooling != PoolConcat || len(f.Projection)%raw != 0 || len(f.Projection) == 0 || len(f.Projection)/raw > raw) {
		return fmt.Errorf("patch projection of %d values for %s pooling of %d-wide features: want concat pooling and a [%d, width <= %d] matrix", len(f.Projection), f.Pooling, raw, raw, raw)
	}
	return nil
}

// PatchScore is the patch feature space of a bundle.
type PatchScore struct {
	PatchFeatures
	D, M int       // feature width (PatchFeatures.Width), bank entries
	Bank []float32 // [M, D] row-major
}

// CheckPatchBlocks validates the patch blocks against the teacher's depth.
func CheckPatchBlocks(blocks []int, depth int) error {
	if err := CheckBlocks(blocks, depth); err != nil {
		return fmt.Errorf("patch blocks: %w", err)
	}
	return nil
}

// CheckNeighbourhood validates the side of a patch feature's
// neighbourhood: odd, so it centres on the patch, and at most 7.
func CheckNeighbourhood(k int) error {
	if k < 1 || k > 7 || k%2 == 0 {
		return fmt.Errorf("patch neighbourhood %d: want an odd side of 1 to 7 patches", k)
	}
	return nil
}

// CheckPooling validates a patch pooling's name.
func CheckPooling(pooling string) error {
	if pooling != PoolMean && pooling != PoolConcat {
		return fmt.Errorf("patch pooling %q: want %q or %q", pooling, PoolMean, PoolConcat)
	}
	return nil
}

// patchFeatures turns the teacher's block outputs (ins[b+1], [N*Tokens,
// Dim]) into float32 patch features [N*Grid*Grid, f.Width(Dim)], dropping
// the class and register tokens. The mean over the k x k neighbourhood
// (over the neighbours there are at the grid's edge) is one MatMul by a
// fixed [Grid^2, Tokens] matrix: 0.3% of a ViT-B forward pass, and no
// Slice or AveragePool (an AveragePool and Slice version crashed ORT 1.29's
// CUDA plugin on an H200). The concatenation is one Gather of the k^2
// neighbours' tokens, then the projection's MatMul.
func (g *Graph) patchFeatures(ins []string, c Config, f PatchFeatures) string {
	t, grid, k := c.Tokens(), c.Grid(), f.Neighbourhood
	r := k / 2
	var per []string
	if f.Pooling == PoolConcat {
		idx := make([]int64, 0, grid*grid*k*k)
		for py := range grid {
			for px := range grid {
				for y := py - r; y <= py+r; y++ {
					for x := px - r; x <= px+r; x++ {
						cy, cx := min(grid-1, max(0, y)), min(grid-1, max(0, x))
						idx = append(idx, int64(1+c.Registers+cy*grid+cx)) // the class token and registers come first
					}
				}
			}
		}
		neighbours := g.Ints(idx, grid*grid, k*k)
		for _, b := range f.Blocks {
			x := g.Op("Reshape", []string{g.toF32(ins[b+1]), g.Shape(-1, int64(t), int64(c.Dim))})
			x = g.Op("Gather", []string{x, neighbours}, AttrInt("axis", 1)) // [N, Grid^2, k^2, Dim]
			per = append(per, g.Op("Reshape", []string{x, g.Shape(0, int64(grid*grid), int64(k*k*c.Dim))}))
		}
	} else {
		agg := make([]float32, grid*grid*t)
		for py := range grid {
			for px := range grid {
				var neighbours []int
				for y := max(0, py-r); y <= min(grid-1, py+r); y++ {
					for x := max(0, px-r); x <= min(grid-1, px+r); x++ {
						neighbours = append(neighbours, 1+c.Registers+y*grid+x)
					}
				}
				for _, tok := range neighbours {
					agg[(py*grid+px)*t+tok] = 1 / float32(len(neighbours))
				}
			}
		}
		a := g.Weight32("patch.neighbourhood", agg, grid*grid, t)
		for _, b := range f.Blocks {
			x := g.Op("Reshape", []string{g.toF32(ins[b+1]), g.Shape(-1, int64(t), int64(c.Dim))})
			per = append(per, g.Op("MatMul", []string{a, x})) // [N, Grid^2, Dim]
		}
	}
	x := per[0]
	if len(per) > 1 {
		x = g.Op("Concat", per, AttrInt("axis", 2))
	}
	raw := f.RawWidth(c.Dim)
	x = g.Op("Reshape", []string{x, g.Shape(-1, int64(raw))})
	if f.Projection != nil {
		x = g.Op("MatMul", []string{x, g.Weight32("patch.projection", f.Projection, raw, len(f.Projection)/raw)})
	}
	return x
}

// patchDistances computes each feature row's distance to its nearest bank
// entry, in float32 at matmul speed: |x|^2 - 2 x.m + |m|^2 by one MatMul
// against the transposed bank, then the minimum over the bank.
func (g *Graph) patchDistances(features string, p *PatchScore) string {
	bankT := make([]float32, p.D*p.M)
	norms := make([]float32, p.M)
	for j := range p.M {
		row := p.Bank[j*p.D : (j+1)*p.D]
		n := 0.0
		for i, v := range row {
			bankT[i*p.M+j] = v
			n += float64(v) * float64(v)
		}
		norms[j] = float32(n)
	}
	xm := g.Op("MatMul", []string{features, g.Weight32("patch.bank_t", bankT, p.D, p.M)})
	x2 := g.Op("ReduceSum", []string{g.squared(features), g.Ints([]int64{1}, 1)}, AttrInt("keepdims", 1))
	d2 := g.Op("Add", []string{g.Op("Sub", []string{x2, g.Op("Mul", []string{xm, g.Scalar32(2)})}), g.Weight32("patch.bank_norms", norms, 1, p.M)})
	nearest := g.Op("ReduceMin", []string{d2}, AttrInts("axes", 1), AttrInt("keepdims", 0))
	// Rounding can leave a tiny negative square for an exact match.
	return g.Op("Sqrt", []string{g.Op("Relu", []string{nearest})})
}

// patchOutputs adds the patch distances [N, Grid*Grid] and the patch score
// [N] to a detector graph.
func (g *Graph) patchOutputs(ins []string, c Config, p *PatchScore) {
	grid2 := int64(c.Grid() * c.Grid())
	dist := g.Op("Reshape", []string{g.patchDistances(g.patchFeatures(ins, c, p.PatchFeatures), p), g.Shape(-1, grid2)})
	g.Output(OutputPatchDistances, dist, Float32, batchDim, int(grid2))
	g.Output(OutputPatchScore, g.Op("ReduceMax", []string{dist}, AttrInts("axes", 1), AttrInt("keepdims", 0)), Float32, batchDim)
}

// PatchFeatureGraph emits images -> patch features [N, Grid*Grid, D] as f
// makes them (fit's input for the memory bank); only the teacher's blocks
// up to the deepest chosen one run.
func PatchFeatureGraph(v *ViT, f PatchFeatures) ([]byte, error) {
	if err := f.Check(v.Depth, v.Dim); err != nil {
		return nil, err
	}
	g := NewGraph()
	ins := g.teacherPrefix(g.imagesInput(v.Config), v, slices.Max(f.Blocks)+1)
	grid2 := v.Grid() * v.Grid()
	d := f.Width(v.Dim)
	out := g.Op("Reshape", []string{g.patchFeatures(ins, v.Config, f), g.Shape(-1, int64(grid2), int64(d))})
	g.Output(OutputPatchFeatures, out, Float32, batchDim, grid2, d)
	return g.Model("transformaly_patch_features", map[string]string{"config": v.Describe()})
}

// BankProductGraph emits features [N, D] -> products [N, M], each feature
// row's dot products with the bank's entries ([M, D] row-major): fit's
// out-of-sample patch distances, at matmul speed.
func BankProductGraph(bank []float32, m, d int) ([]byte, error) {
	if len(bank) != m*d || m == 0 {
		return nil, fmt.Errorf("bank product graph: %d values for a bank of %d x %d", len(bank), m, d)
	}
	bankT := make([]float32, d*m)
	for j := range m {
		for i := range d {
			bankT[i*m+j] = bank[j*d+i]
		}
	}
	g := NewGraph()
	x := g.Input(InputBankFeatures, Float32, batchDim, d)
	g.Output(OutputBankProducts, g.Op("MatMul", []string{x, g.Weight32("bank_t", bankT, d, m)}), Float32, batchDim, m)
	return g.Model("transformaly_bank_products", nil)
}

// The bank product graph's input and output.
const (
	InputBankFeatures  = "features"
	OutputBankProducts = "products"
)
