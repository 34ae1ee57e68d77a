package models

import (
	"fmt"
	"slices"
)

// The patch-level feature space (PatchCore's, on the teacher's tokens): a
// defect a few patches wide barely moves the CLS embedding or a block's
// mean student error, but its patches lie far from every normal patch.
// Each patch's feature is the teacher's token output of the chosen blocks,
// averaged over its k x k neighbourhood on the patch grid (PatchCore's
// 3x3: local context, and robustness to a patch-sized shift; 1: the token
// alone, which keeps a defect of a patch or two from being averaged with
// eight normal neighbours), the blocks' features side by side. A memory
// bank holds a coreset of the normal images' patch features; a patch's
// distance is the Euclidean distance to its nearest bank entry, and the
// image's patch score the largest over its patches.

// Patch outputs of the scored detector graph.
const (
	OutputPatchDistances = "patch_distances" // float32 [N, Grid*Grid]: each patch's nearest-bank-entry distance
	OutputPatchScore     = "patch_score"     // float32 [N]: the largest patch distance
	OutputPatchFeatures  = "patch_features"  // float32 [N, Grid*Grid, D], of PatchFeatureGraph
)

// PatchScore is the patch feature space of a bundle.
type PatchScore struct {
	Blocks []int // teacher blocks whose token outputs are the features
	// Neighbourhood is the side, in patches, of the square each token is
	// averaged over (odd).
	Neighbourhood int
	D, M          int       // feature width (Dim x len(Blocks)), bank entries
	Bank          []float32 // [M, D] row-major
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

// patchFeatures turns the teacher's block outputs (ins[b+1], [N*Tokens,
// Dim]) into float32 patch features [N*Grid*Grid, Dim*len(blocks)]. The
// k x k neighbourhood mean (over the neighbours there are at the grid's
// edge) and the removal of the class and register tokens are one MatMul by
// a fixed [Grid^2, Tokens] matrix: 0.3% of a ViT-B forward pass, and no Slice or AveragePool (an
// AveragePool and Slice version crashed ORT 1.29's CUDA plugin on an H200).
func (g *Graph) patchFeatures(ins []string, c Config, blocks []int, k int) string {
	t, grid, r := c.Tokens(), c.Grid(), k/2
	agg := make([]float32, grid*grid*t)
	for py := range grid {
		for px := range grid {
			var neighbours []int
			for y := max(0, py-r); y <= min(grid-1, py+r); y++ {
				for x := max(0, px-r); x <= min(grid-1, px+r); x++ {
					neighbours = append(neighbours, 1+c.Registers+y*grid+x) // the class token and registers come first
				}
			}
			for _, tok := range neighbours {
				agg[(py*grid+px)*t+tok] = 1 / float32(len(neighbours))
			}
		}
	}
	a := g.Weight32("patch.neighbourhood", agg, grid*grid, t)
	var per []string
	for _, b := range blocks {
		x := g.Op("Reshape", []string{g.toF32(ins[b+1]), g.Shape(-1, int64(t), int64(c.Dim))})
		per = append(per, g.Op("MatMul", []string{a, x})) // [N, Grid^2, Dim]
	}
	x := per[0]
	if len(per) > 1 {
		x = g.Op("Concat", per, AttrInt("axis", 2))
	}
	return g.Op("Reshape", []string{x, g.Shape(-1, int64(c.Dim*len(blocks)))})
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
	dist := g.Op("Reshape", []string{g.patchDistances(g.patchFeatures(ins, c, p.Blocks, p.Neighbourhood), p), g.Shape(-1, grid2)})
	g.Output(OutputPatchDistances, dist, Float32, batchDim, int(grid2))
	g.Output(OutputPatchScore, g.Op("ReduceMax", []string{dist}, AttrInts("axes", 1), AttrInt("keepdims", 0)), Float32, batchDim)
}

// PatchFeatureGraph emits images -> patch features [N, Grid*Grid, D] of
// the given teacher blocks, each token averaged over its neighbourhood x
// neighbourhood patches (fit's input for the memory bank); only the
// teacher's blocks up to the deepest chosen one run.
func PatchFeatureGraph(v *ViT, blocks []int, neighbourhood int) ([]byte, error) {
	if err := CheckPatchBlocks(blocks, v.Depth); err != nil {
		return nil, err
	}
	if err := CheckNeighbourhood(neighbourhood); err != nil {
		return nil, err
	}
	g := NewGraph()
	ins := g.teacherPrefix(g.imagesInput(v.Config), v, slices.Max(blocks)+1)
	grid2 := v.Grid() * v.Grid()
	d := v.Dim * len(blocks)
	f := g.Op("Reshape", []string{g.patchFeatures(ins, v.Config, blocks, neighbourhood), g.Shape(-1, int64(grid2), int64(d))})
	g.Output(OutputPatchFeatures, f, Float32, batchDim, grid2, d)
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
