package models

import (
	"fmt"
	"math"
	"slices"

	"github.com/transformaly/transformaly/models/onnxpb"
)

// Reverse-mode differentiation of our own ONNX graphs, written as explicit
// ONNX nodes: ONNX Runtime's training build is gone and onnxruntime_go has no
// training API, so the backward pass is built here, one vector-Jacobian rule
// per operator, and runs in the same ORT session (CPU or CUDA) as the
// forward pass. The rules keep the big products 2-D: input gradients as
// MatMul(dY, W), weight gradients as Gemm(dY, X, transA=1).

// Backward appends nodes computing, for every value in wrt, the gradient of
// sum over seeds of <seed value, seed gradient>: seeds maps a forward value to
// the name of its incoming gradient (for a loss, a constant one). It returns
// the gradient value of each wrt entry.
func (g *Graph) Backward(seeds map[string]string, wrt []string) (map[string]string, error) {
	forward := slices.Clone(g.nodes)
	needs := map[string]bool{}
	for _, w := range wrt {
		needs[w] = true
	}
	for _, n := range forward {
		if slices.ContainsFunc(n.Input, func(in string) bool { return needs[in] }) {
			for _, o := range n.Output {
				needs[o] = true
			}
		}
	}
	contrib := map[string][]string{}
	for v, grad := range seeds {
		contrib[v] = append(contrib[v], grad)
	}
	// Every consumer of a value comes after its producer, so walking the
	// nodes backwards completes each value's gradient before it is used.
	for i := len(forward) - 1; i >= 0; i-- {
		n := forward[i]
		if !slices.ContainsFunc(n.Output, func(o string) bool { return len(contrib[o]) > 0 }) ||
			!slices.ContainsFunc(n.Input, func(in string) bool { return needs[in] }) {
			continue
		}
		dys := make([]string, len(n.Output))
		for j, o := range n.Output {
			dys[j] = g.sumGrads(contrib[o])
		}
		dxs, err := g.vjp(n, dys, needs)
		if err != nil {
			return nil, fmt.Errorf("backward through %s (%s): %w", n.GetName(), n.GetOpType(), err)
		}
		for j, dx := range dxs {
			if dx != "" && needs[n.Input[j]] {
				contrib[n.Input[j]] = append(contrib[n.Input[j]], dx)
			}
		}
	}
	grads := map[string]string{}
	for _, w := range wrt {
		if len(contrib[w]) == 0 {
			return nil, fmt.Errorf("backward: no gradient reaches %s", w)
		}
		grads[w] = g.sumGrads(contrib[w])
	}
	return grads, nil
}

func (g *Graph) sumGrads(gs []string) string {
	switch len(gs) {
	case 0:
		return ""
	case 1:
		return gs[0]
	default:
		return g.Op("Sum", gs)
	}
}

// rank returns a value's rank or an error naming it.
func (g *Graph) rank(v string) (int, error) {
	r, ok := g.ranks[v]
	if !ok || r < 0 {
		return 0, fmt.Errorf("rank of %s unknown", v)
	}
	return r, nil
}

// like reshapes grad to the shape of x (Reshape to Shape(x)).
func (g *Graph) like(grad, x string) string {
	out := g.Op("Reshape", []string{grad, g.Op("Shape", []string{x})})
	g.ranks[out] = g.ranks[x]
	return out
}

// unbroadcast sums grad (of output rank) over the leading axes that
// broadcasting added to an operand of lower rank. Broadcasting of size-1
// axes within the same rank is not used by our graphs and not handled.
func (g *Graph) unbroadcast(grad string, outRank, inRank int) string {
	if inRank >= outRank {
		return grad
	}
	axes := make([]int64, outRank-inRank)
	for i := range axes {
		axes[i] = int64(i)
	}
	return g.Op("ReduceSum", []string{grad, g.Ints(axes, len(axes))}, AttrInt("keepdims", 0))
}

func normAxes(axes []int64, rank int) []int64 {
	out := make([]int64, len(axes))
	for i, a := range axes {
		if a < 0 {
			a += int64(rank)
		}
		out[i] = a
	}
	slices.Sort(out)
	return out
}

// vjp applies one operator's vector-Jacobian rule: given the gradients of
// the node's outputs (dys, "" where none), it returns the gradient of each
// input ("" where not needed).
func (g *Graph) vjp(n *onnxpb.NodeProto, dys []string, needs map[string]bool) ([]string, error) {
	in, dy := n.Input, dys[0]
	dx := make([]string, len(in))
	need := func(i int) bool { return i < len(in) && needs[in[i]] }
	outRank := func() (int, error) { return g.rank(n.Output[0]) }
	switch n.GetOpType() {
	case "Identity":
		dx[0] = dy
	case "Add", "Sub", "Mul", "Div":
		or, err := outRank()
		if err != nil {
			return nil, err
		}
		for i := range 2 {
			if !need(i) {
				continue
			}
			ir, err := g.rank(in[i])
			if err != nil {
				return nil, err
			}
			var d string
			switch op := n.GetOpType(); {
			case op == "Add":
				d = dy
			case op == "Sub" && i == 0:
				d = dy
			case op == "Sub":
				d = g.Op("Neg", []string{dy})
			case op == "Mul":
				d = g.Op("Mul", []string{dy, in[1-i]})
			case i == 0: // Div
				d = g.Op("Div", []string{dy, in[1]})
			default:
				return nil, fmt.Errorf("gradient with respect to a divisor is not supported")
			}
			dx[i] = g.unbroadcast(d, or, ir)
		}
	case "Neg":
		dx[0] = g.Op("Neg", []string{dy})
	case "Erf":
		// d/dx erf(x) = 2/sqrt(pi) * exp(-x^2)
		x := in[0]
		dx[0] = g.Op("Mul", []string{dy, g.Op("Mul", []string{
			g.Op("Exp", []string{g.Op("Neg", []string{g.Op("Mul", []string{x, x})})}),
			g.Scalar(float32(2 / math.Sqrt(math.Pi))),
		})})
	case "Gemm":
		if attrInt(n, "transA", 0) != 0 || attrInt(n, "transB", 0) != 1 || hasAttr(n, "alpha") || hasAttr(n, "beta") {
			return nil, fmt.Errorf("only Gemm(A, B, C, transB=1) is differentiated")
		}
		// Y = A B^T + C
		if need(0) {
			dx[0] = g.Op("MatMul", []string{dy, in[1]})
		}
		if need(1) {
			dx[1] = g.Op("Gemm", []string{dy, in[0]}, AttrInt("transA", 1))
		}
		if need(2) {
			dx[2] = g.Op("ReduceSum", []string{dy, g.Ints([]int64{0}, 1)}, AttrInt("keepdims", 0))
		}
	case "MatMul":
		ra, err := g.rank(in[0])
		if err != nil {
			return nil, err
		}
		rb, err := g.rank(in[1])
		if err != nil {
			return nil, err
		}
		if ra != rb || ra < 2 {
			return nil, fmt.Errorf("only same-rank MatMul is differentiated (ranks %d and %d)", ra, rb)
		}
		swap := make([]int64, ra)
		for i := range swap {
			swap[i] = int64(i)
		}
		swap[ra-1], swap[ra-2] = swap[ra-2], swap[ra-1]
		if need(0) {
			dx[0] = g.Op("MatMul", []string{dy, g.Op("Transpose", []string{in[1]}, AttrInts("perm", swap...))})
		}
		if need(1) {
			dx[1] = g.Op("MatMul", []string{g.Op("Transpose", []string{in[0]}, AttrInts("perm", swap...)), dy})
		}
	case "Transpose":
		perm := attrInts(n, "perm")
		inv := make([]int64, len(perm))
		for i, p := range perm {
			inv[p] = int64(i)
		}
		dx[0] = g.Op("Transpose", []string{dy}, AttrInts("perm", inv...))
	case "Reshape", "Squeeze", "Unsqueeze":
		dx[0] = g.like(dy, in[0])
	case "Split":
		parts := make([]string, len(dys))
		for j, d := range dys {
			parts[j] = d
			if d == "" { // an unused piece contributes zeros
				parts[j] = g.Op("Mul", []string{n.Output[j], g.Scalar(0)})
			}
		}
		dx[0] = g.Op("Concat", parts, AttrInt("axis", attrInt(n, "axis", 0)))
	case "Softmax":
		r, err := g.rank(in[0])
		if err != nil {
			return nil, err
		}
		if a := attrInt(n, "axis", -1); a != -1 && a != int64(r-1) {
			return nil, fmt.Errorf("only Softmax over the last axis is differentiated")
		}
		// dx = y * (dy - sum(dy * y, last axis))
		y := n.Output[0]
		s := g.Op("ReduceSum", []string{g.Op("Mul", []string{dy, y}), g.Ints([]int64{-1}, 1)}, AttrInt("keepdims", 1))
		dx[0] = g.Op("Mul", []string{y, g.Op("Sub", []string{dy, s})})
	case "LayerNormalization":
		return g.layerNormVJP(n, dy, need)
	case "ReduceMean", "ReduceSum":
		r, err := g.rank(in[0])
		if err != nil {
			return nil, err
		}
		axes := attrInts(n, "axes")
		if n.GetOpType() == "ReduceSum" {
			axes = g.ints[in[1]]
		}
		if len(axes) == 0 {
			return nil, fmt.Errorf("reductions over all axes are not differentiated; name the axes")
		}
		grad := dy
		if attrInt(n, "keepdims", 1) == 0 {
			ax := normAxes(axes, r)
			grad = g.Op("Unsqueeze", []string{dy, g.Ints(ax, len(ax))})
		}
		if n.GetOpType() == "ReduceMean" {
			// Divided by the count of x's elements on the reduced axes,
			// known only at run time (the batch), from Shape: ORT 1.29's
			// CUDA plugin crashed the process running Size (an H200, a call
			// to address 0), where Shape, Gather and ReduceProd run.
			ax := normAxes(axes, r)
			dims := g.Op("Gather", []string{g.Op("Cast", []string{g.Op("Shape", []string{in[0]})}, AttrInt("to", int64(Float32))), g.Ints(ax, len(ax))})
			grad = g.Op("Div", []string{grad, g.Op("ReduceProd", []string{dims}, AttrInts("axes", 0), AttrInt("keepdims", 0))})
		}
		dx[0] = g.Op("Expand", []string{grad, g.Op("Shape", []string{in[0]})})
		g.ranks[dx[0]] = r
	default:
		return nil, fmt.Errorf("no gradient rule for %s", n.GetOpType())
	}
	return dx, nil
}

// layerNormVJP differentiates LayerNormalization over the last axis, asking
// the forward node for its saved mean and inverse standard deviation.
func (g *Graph) layerNormVJP(n *onnxpb.NodeProto, dy string, need func(int) bool) ([]string, error) {
	x, scale := n.Input[0], n.Input[1]
	r, err := g.rank(x)
	if err != nil {
		return nil, err
	}
	if a := attrInt(n, "axis", -1); a != -1 && a != int64(r-1) {
		return nil, fmt.Errorf("only LayerNormalization over the last axis is differentiated")
	}
	if len(n.Output) < 3 {
		base := n.GetName()
		n.Output = append(n.Output[:1], base+"_mean", base+"_inv_std")
		g.ranks[base+"_mean"], g.ranks[base+"_inv_std"] = r, r
	}
	mean, invStd := n.Output[1], n.Output[2]
	xhat := g.Op("Mul", []string{g.Op("Sub", []string{x, mean}), invStd})
	lead := make([]int64, r-1)
	for i := range lead {
		lead[i] = int64(i)
	}
	dx := make([]string, len(n.Input))
	if need(1) {
		dx[1] = g.Op("ReduceSum", []string{g.Op("Mul", []string{dy, xhat}), g.Ints(lead, len(lead))}, AttrInt("keepdims", 0))
	}
	if need(2) {
		dx[2] = g.Op("ReduceSum", []string{dy, g.Ints(lead, len(lead))}, AttrInt("keepdims", 0))
	}
	if need(0) {
		// dx = invStd * (gy - mean(gy) - xhat * mean(gy * xhat)), gy = dy * scale
		gy := g.Op("Mul", []string{dy, scale})
		m1 := g.Op("ReduceMean", []string{gy}, AttrInts("axes", -1), AttrInt("keepdims", 1))
		m2 := g.Op("ReduceMean", []string{g.Op("Mul", []string{gy, xhat})}, AttrInts("axes", -1), AttrInt("keepdims", 1))
		dx[0] = g.Op("Mul", []string{invStd, g.Op("Sub", []string{g.Op("Sub", []string{gy, m1}), g.Op("Mul", []string{xhat, m2})})})
	}
	return dx, nil
}

func hasAttr(n *onnxpb.NodeProto, name string) bool {
	return slices.ContainsFunc(n.Attribute, func(a *onnxpb.AttributeProto) bool { return a.GetName() == name })
}
