package models

import (
	"fmt"
	"strconv"
)

// Training graph outputs and names.
const (
	OutputLosses = "losses" // float32 [len(blocks)]: each student's MSE over the batch
	gradPrefix   = "grad."
)

// StudentParamName names the graph input carrying parameter param (a
// BlockParam name) of the student of teacher block i.
func StudentParamName(i int, param string) string { return "student." + strconv.Itoa(i) + "." + param }

// GradName names the training graph output holding the gradient of a
// student parameter input.
func GradName(input string) string { return gradPrefix + input }

// TrainingGraph emits one fit step for students of the given teacher blocks:
// images -> the teacher up to the last chosen block -> each student fed the
// teacher's input of its block -> per-image block errors [N, B]
// (OutputBlockErrors) and per-block losses [B] (OutputLosses). With grads,
// it also outputs the gradient of each block's loss with respect to each of
// its student's parameters, which are graph inputs (StudentParamName) so one
// session serves every step.
func TrainingGraph(v *ViT, blocks []int, withGrads bool) ([]byte, error) {
	if len(blocks) == 0 {
		return nil, fmt.Errorf("training graph: no blocks chosen")
	}
	if err := checkBlocks(blocks, v.Depth); err != nil {
		return nil, fmt.Errorf("training graph: %w", err)
	}
	c := v.Config
	g := NewGraph()
	x := g.embedTokens(g.imagesInput(c), v)
	ins := []string{x}
	last := 0
	for _, i := range blocks {
		last = max(last, i)
	}
	// Only the teacher blocks the students need: ORT does not prune unused
	// nodes.
	for i := 0; i <= last; i++ {
		x = g.block(x, g.blockWeights(fmt.Sprintf("teacher.%d", i), v.Blocks[i], c), c)
		ins = append(ins, x)
	}
	t := int64(c.Tokens())
	seeds := map[string]string{}
	one := g.Weight("one", []float32{1}, 1)
	var params, losses, perImage []string
	for _, i := range blocks {
		w := g.blockInputs("student."+strconv.Itoa(i), Block{}, c)
		for _, p := range blockParams(&Block{}, c, &blockValues{}) {
			params = append(params, StudentParamName(i, p.Name))
		}
		s := g.block(ins[i], w, c)
		diff := g.Op("Sub", []string{s, ins[i+1]})
		perToken := g.Op("ReduceMean", []string{g.Op("Mul", []string{diff, diff})}, AttrInts("axes", 1), AttrInt("keepdims", 0))
		blockErr := g.Op("ReduceMean", []string{g.Op("Reshape", []string{perToken, g.Shape(-1, t)})}, AttrInts("axes", 1), AttrInt("keepdims", 0)) // [N]
		loss := g.Op("ReduceMean", []string{blockErr}, AttrInts("axes", 0), AttrInt("keepdims", 1))                                                // [1]
		seeds[loss] = one
		losses = append(losses, loss)
		perImage = append(perImage, g.Op("Unsqueeze", []string{blockErr, g.Ints([]int64{1}, 1)}))
	}
	concat := func(vs []string, axis int64) string {
		if len(vs) == 1 {
			return vs[0]
		}
		return g.Op("Concat", vs, AttrInt("axis", axis))
	}
	g.Output(OutputLosses, concat(losses, 0), Float32, len(blocks))
	g.Output(OutputBlockErrors, concat(perImage, 1), Float32, batchDim, len(blocks))
	if withGrads {
		grads, err := g.Backward(seeds, params)
		if err != nil {
			return nil, fmt.Errorf("training graph: %w", err)
		}
		for _, p := range params {
			g.Output(GradName(p), grads[p], Float32, g.paramDims(p)...)
		}
	}
	return g.Model("transformaly_training", map[string]string{"config": c.Describe()})
}

// paramDims returns the declared dims of a graph input.
func (g *Graph) paramDims(input string) []Dim {
	for _, vi := range g.inputs {
		if vi.GetName() != input {
			continue
		}
		var dims []Dim
		for _, d := range vi.GetType().GetTensorType().GetShape().GetDim() {
			dims = append(dims, int(d.GetDimValue()))
		}
		return dims
	}
	return nil
}
