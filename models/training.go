package models

import (
	"fmt"
	"slices"
	"strconv"
)

// Training graph outputs and names.
const (
	OutputLosses = "losses" // float32 [len(blocks)]: each student's MSE over the batch
	gradPrefix   = "grad."
	// Activations carries the teacher's residual stream at each of
	// ActivationBoundaries, float32 [N, len(boundaries), Tokens, Dim]: the
	// output of TeacherActivationsGraph and the input of a training graph
	// built FromActivations.
	Activations = "activations"
)

// TrainingInput says what a training graph is fed.
type TrainingInput int

const (
	// FromImages runs the teacher inside the graph on every step.
	FromImages TrainingInput = iota
	// FromActivations takes the teacher's activations, computed once by
	// TeacherActivationsGraph and cached, so a fit pays for the teacher's
	// forward pass once instead of once per epoch.
	FromActivations
)

// ActivationBoundaries lists the places in the teacher's residual stream a
// fit of students on blocks reads, sorted: k is block k's input and block
// k-1's output, so blocks 2..11 read boundaries 2..12.
func ActivationBoundaries(blocks []int) []int {
	var b []int
	for _, i := range blocks {
		b = append(b, i, i+1)
	}
	slices.Sort(b)
	return slices.Compact(b)
}

// TeacherActivationsGraph emits images -> the teacher's residual stream at
// ActivationBoundaries(blocks), [N, K, Tokens, Dim] (Activations), running
// only the blocks up to the last chosen one.
func TeacherActivationsGraph(v *ViT, blocks []int) ([]byte, error) {
	if err := CheckBlocks(blocks, v.Depth); err != nil {
		return nil, fmt.Errorf("teacher activations graph: %w", err)
	}
	c := v.Config
	g := NewGraph()
	ins := g.teacherPrefix(g.imagesInput(c), v, slices.Max(blocks)+1)
	bounds := ActivationBoundaries(blocks)
	shape := g.Shape(-1, 1, int64(c.Tokens()), int64(c.Dim))
	var parts []string
	for _, k := range bounds {
		parts = append(parts, g.Op("Reshape", []string{ins[k], shape}))
	}
	acts := parts[0]
	if len(parts) > 1 {
		acts = g.Op("Concat", parts, AttrInt("axis", 1))
	}
	g.Output(Activations, acts, Float32, batchDim, len(bounds), c.Tokens(), c.Dim)
	return g.Model("transformaly_teacher_activations", map[string]string{"config": c.Describe()})
}

// cachedActivations splits a FromActivations graph's input into the
// residual stream at each boundary, as teacherPrefix returns it (entries
// no student reads stay empty).
func (g *Graph) cachedActivations(c Config, blocks []int) []string {
	bounds := ActivationBoundaries(blocks)
	acts := g.Input(Activations, Float32, batchDim, len(bounds), c.Tokens(), c.Dim)
	parts := []string{acts}
	if len(bounds) > 1 {
		parts = g.OpN("Split", []string{acts}, len(bounds), AttrInt("axis", 1))
	}
	ins := make([]string, bounds[len(bounds)-1]+1)
	for j, k := range bounds {
		ins[k] = g.Op("Reshape", []string{parts[j], g.Shape(-1, int64(c.Dim))})
	}
	return ins
}

// StudentParamName names the graph input carrying parameter param (a
// BlockParam name) of the student of teacher block i.
func StudentParamName(i int, param string) string { return "student." + strconv.Itoa(i) + "." + param }

// GradName names the training graph output holding the gradient of a
// student parameter input.
func GradName(input string) string { return gradPrefix + input }

// TrainingGraph emits one fit step for students of the given teacher blocks:
// images -> the teacher up to the last chosen block (or, FromActivations,
// the teacher's cached activations) -> each student fed the teacher's input
// of its block -> per-image block errors [N, B] (OutputBlockErrors) and
// per-block losses [B] (OutputLosses). With grads, it also outputs the
// gradient of each block's loss with respect to each of its student's
// parameters, which are graph inputs (StudentParamName) so one session
// serves every step.
func TrainingGraph(v *ViT, blocks []int, withGrads bool, input TrainingInput) ([]byte, error) {
	if err := CheckBlocks(blocks, v.Depth); err != nil {
		return nil, fmt.Errorf("training graph: %w", err)
	}
	c := v.Config
	g := NewGraph()
	var ins []string
	if input == FromActivations {
		ins = g.cachedActivations(c, blocks)
	} else {
		// Only the teacher blocks the students need: ORT does not prune
		// unused nodes.
		ins = g.teacherPrefix(g.imagesInput(c), v, slices.Max(blocks)+1)
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
