package models

import (
	"encoding/binary"
	"fmt"
	"math"
	"slices"

	"google.golang.org/protobuf/proto"

	"github.com/transformaly/transformaly/models/onnxpb"
)

// The ONNX graphs are written by hand on the generated protobuf types: no Go
// library emits ONNX, and the training graphs of the fit issue need the same
// builder for their backward passes.

// Opset is the ONNX operator set every graph targets (LayerNormalization
// arrived in 17; ReduceMean still takes its axes as an attribute).
const Opset = 17

// irVersion matches onnx.proto of ONNX 1.12.
const irVersion = 8

// Element types used in our graphs.
const (
	Float32 = int32(onnxpb.TensorProto_FLOAT)
	Float16 = int32(onnxpb.TensorProto_FLOAT16)
	Uint8   = int32(onnxpb.TensorProto_UINT8)
	Int64   = int32(onnxpb.TensorProto_INT64)
)

// Graph accumulates nodes, initializers, inputs and outputs.
type Graph struct {
	nodes   []*onnxpb.NodeProto
	inits   []*onnxpb.TensorProto
	inputs  []*onnxpb.ValueInfoProto
	outputs []*onnxpb.ValueInfoProto
	counter int
	consts  map[string]string  // dedupe of small constants by key
	ints    map[string][]int64 // values of int64 constants, by name
	// ranks holds each value's rank where known; the backward rules need it
	// for axes and transposes, and dynamic shapes make full shapes unknown.
	ranks map[string]int
	// compute is the element type of weights and activations: Float32, or
	// Float16 for the half-precision variant of a graph.
	compute int32
	// weights holds each float initializer's values and shape, for int8
	// linear layers to quantize (a reference, not a copy).
	weights map[string]weightRef
	// int8, when set, makes linear layers int8 (ScoredDetectorGraphInt8);
	// ranges, when non-nil, collects the outputs ActivationRangeGraph adds.
	int8   *Int8Options
	ranges []string
}

// NewGraph starts an empty graph.
func NewGraph() *Graph {
	return &Graph{consts: map[string]string{}, ints: map[string][]int64{}, ranks: map[string]int{}, compute: Float32, weights: map[string]weightRef{}}
}

// toF32 casts a compute-typed value to float32 (a no-op in float32 graphs):
// errors, reductions and scores stay in float32 in half-precision graphs,
// where squares of small differences would underflow.
func (g *Graph) toF32(x string) string {
	if g.compute == Float32 {
		return x
	}
	return g.Op("Cast", []string{x}, AttrInt("to", int64(Float32)))
}

// squared is x*x (float32) as a Pow node, for a reduction to take as the
// very next node: ONNX Runtime's TensorRT provider, running FP16 kernels
// with trt_layer_norm_fp32_fallback, keeps each Pow layer directly followed
// by a Reduce layer in FP32 (its layer-norm rule), so squared errors and
// quadratic forms cannot overflow half precision's 65504. Callers pass it
// straight to the reduction.
func (g *Graph) squared(x string) string {
	return g.Op("Pow", []string{x, g.Scalar32(2)})
}

// Dim is one dimension of a graph input or output: an int for a fixed size
// or a string for a named dynamic one.
type Dim any

func valueInfo(name string, elem int32, dims []Dim) *onnxpb.ValueInfoProto {
	shape := &onnxpb.TensorShapeProto{}
	for _, d := range dims {
		switch d := d.(type) {
		case int:
			shape.Dim = append(shape.Dim, &onnxpb.TensorShapeProto_Dimension{Value: &onnxpb.TensorShapeProto_Dimension_DimValue{DimValue: int64(d)}})
		case string:
			shape.Dim = append(shape.Dim, &onnxpb.TensorShapeProto_Dimension{Value: &onnxpb.TensorShapeProto_Dimension_DimParam{DimParam: d}})
		default:
			panic(fmt.Sprintf("graph dimension %v is neither int nor string", d))
		}
	}
	return &onnxpb.ValueInfoProto{
		Name: proto.String(name),
		Type: &onnxpb.TypeProto{Value: &onnxpb.TypeProto_TensorType{TensorType: &onnxpb.TypeProto_Tensor{
			ElemType: proto.Int32(elem), Shape: shape,
		}}},
	}
}

// Input declares a graph input and returns its name.
func (g *Graph) Input(name string, elem int32, dims ...Dim) string {
	g.inputs = append(g.inputs, valueInfo(name, elem, dims))
	g.ranks[name] = len(dims)
	return name
}

// Output exposes value under name (through an Identity node when the names
// differ).
func (g *Graph) Output(name, value string, elem int32, dims ...Dim) {
	if value != name {
		g.nodes = append(g.nodes, &onnxpb.NodeProto{OpType: proto.String("Identity"), Input: []string{value}, Output: []string{name}, Name: proto.String(name)})
	}
	g.outputs = append(g.outputs, valueInfo(name, elem, dims))
}

func (g *Graph) fresh(hint string) string {
	g.counter++
	return fmt.Sprintf("%s_%d", hint, g.counter)
}

// Op adds a node with one output and returns the output's name.
func (g *Graph) Op(op string, inputs []string, attrs ...*onnxpb.AttributeProto) string {
	return g.OpN(op, inputs, 1, attrs...)[0]
}

// OpN adds a node with n outputs.
func (g *Graph) OpN(op string, inputs []string, n int, attrs ...*onnxpb.AttributeProto) []string {
	name := g.fresh(op)
	outs := make([]string, n)
	for i := range outs {
		outs[i] = fmt.Sprintf("%s_out%d", name, i)
	}
	node := &onnxpb.NodeProto{OpType: proto.String(op), Name: proto.String(name), Input: inputs, Output: outs, Attribute: attrs}
	g.nodes = append(g.nodes, node)
	if r := g.outputRank(node); r >= 0 {
		for _, o := range outs {
			g.ranks[o] = r
		}
	}
	return slices.Clone(outs) // callers may reuse the slice; the node keeps its own

}

// Weight adds an initializer of the graph's compute type.
func (g *Graph) Weight(name string, data []float32, shape ...int) string {
	return g.weightAs(name, data, g.compute, shape...)
}

// Weight32 adds a float32 initializer whatever the compute type.
func (g *Graph) Weight32(name string, data []float32, shape ...int) string {
	return g.weightAs(name, data, Float32, shape...)
}

func (g *Graph) weightAs(name string, data []float32, elem int32, shape ...int) string {
	if shapeSize(shape) != len(data) {
		panic(fmt.Sprintf("initializer %s: %d values for shape %v", name, len(data), shape))
	}
	var raw []byte
	if elem == Float16 {
		raw = make([]byte, 2*len(data))
		for i, x := range data {
			binary.LittleEndian.PutUint16(raw[2*i:], Float32ToFloat16(x))
		}
	} else {
		raw = make([]byte, 4*len(data))
		for i, x := range data {
			binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(x))
		}
	}
	g.inits = append(g.inits, &onnxpb.TensorProto{Name: proto.String(name), DataType: proto.Int32(elem), Dims: int64s(shape), RawData: raw})
	g.ranks[name] = len(shape)
	g.weights[name] = weightRef{data, shape}
	return name
}

// Scalar is a constant of shape [] and the compute type, shared across the
// graph.
func (g *Graph) Scalar(x float32) string { return g.scalarAs(x, g.compute) }

// Scalar32 is a float32 constant of shape [] whatever the compute type.
func (g *Graph) Scalar32(x float32) string { return g.scalarAs(x, Float32) }

func (g *Graph) scalarAs(x float32, elem int32) string {
	key := fmt.Sprintf("f%d:%x", elem, math.Float32bits(x))
	if n, ok := g.consts[key]; ok {
		return n
	}
	n := g.weightAs(g.fresh("scalar"), []float32{x}, elem)
	g.inits[len(g.inits)-1].Dims = nil
	g.ranks[n] = 0
	g.consts[key] = n
	return n
}

// Float32ToFloat16 rounds to the nearest IEEE half (ties to even),
// saturating to infinity.
func Float32ToFloat16(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int((b>>23)&0xff) - 127 + 15
	mant := b & 0x7fffff
	switch {
	case (b>>23)&0xff == 0xff: // inf or NaN
		if mant != 0 {
			return sign | 0x7e00
		}
		return sign | 0x7c00
	case exp >= 0x1f:
		return sign | 0x7c00
	case exp <= 0:
		if exp < -10 {
			return sign
		}
		mant |= 0x800000
		shift := uint(14 - exp)
		half := uint32(1) << (shift - 1)
		rounded := (mant + half - 1 + (mant>>shift)&1) >> shift
		return sign | uint16(rounded)
	}
	rounded := uint32(exp)<<10 | mant>>13
	if rem := mant & 0x1fff; rem > 0x1000 || rem == 0x1000 && rounded&1 == 1 {
		rounded++ // may carry into the exponent, which is right
	}
	return sign | uint16(rounded)
}

// Ints is an int64 constant (shapes, indices, axes); a nil shape means a
// rank-0 scalar.
func (g *Graph) Ints(values []int64, shape ...int) string {
	key := fmt.Sprintf("i64:%v:%v", values, shape)
	if n, ok := g.consts[key]; ok {
		return n
	}
	if shape == nil && len(values) != 1 {
		shape = []int{len(values)}
	}
	raw := make([]byte, 8*len(values))
	for i, x := range values {
		binary.LittleEndian.PutUint64(raw[8*i:], uint64(x))
	}
	n := g.fresh("ints")
	g.inits = append(g.inits, &onnxpb.TensorProto{Name: proto.String(n), DataType: proto.Int32(Int64), Dims: int64s(shape), RawData: raw})
	g.consts[key] = n
	g.ints[n] = values
	g.ranks[n] = len(shape)
	return n
}

// Shape is a 1-D int64 constant for Reshape/Expand.
func (g *Graph) Shape(dims ...int64) string { return g.Ints(dims, len(dims)) }

// outputRank infers the rank of a node's outputs from its inputs' ranks for
// the operators this project emits; -1 when unknown.
func (g *Graph) outputRank(n *onnxpb.NodeProto) int {
	in := func(i int) int {
		if i >= len(n.Input) {
			return -1
		}
		if r, ok := g.ranks[n.Input[i]]; ok {
			return r
		}
		return -1
	}
	switch n.GetOpType() {
	case "Add", "Sub", "Mul", "Div", "Sum", "Where", "Expand":
		r := -1
		for i := range n.Input {
			r = max(r, in(i))
		}
		if n.GetOpType() == "Expand" {
			if shape, ok := g.ints[n.Input[1]]; ok {
				r = max(in(0), len(shape))
			}
		}
		return r
	case "Gemm":
		return 2
	case "MatMul":
		return max(in(0), in(1))
	case "Reshape":
		if shape, ok := g.ints[n.Input[1]]; ok {
			return len(shape)
		}
		return -1
	case "Shape":
		return 1
	case "Squeeze", "Unsqueeze":
		axes, ok := g.ints[n.Input[1]]
		if !ok || in(0) < 0 {
			return -1
		}
		if n.GetOpType() == "Squeeze" {
			return in(0) - len(axes)
		}
		return in(0) + len(axes)
	case "ReduceMean", "ReduceSum", "ReduceProd":
		if attrInt(n, "keepdims", 1) == 1 || in(0) < 0 {
			return in(0)
		}
		axes := attrInts(n, "axes")
		if n.GetOpType() == "ReduceSum" && len(n.Input) > 1 {
			axes = g.ints[n.Input[1]]
		}
		return in(0) - len(axes)
	case "Gather":
		if r, ok := g.ranks[n.Input[1]]; ok && in(0) >= 0 {
			return in(0) - 1 + r
		}
		return -1
	default: // elementwise, Transpose, Softmax, LayerNormalization, Split, Concat, Cast, Conv, Pad, Identity, Neg, Erf, Exp
		return in(0)
	}
}

func attrInt(n *onnxpb.NodeProto, name string, def int64) int64 {
	for _, a := range n.Attribute {
		if a.GetName() == name {
			return a.GetI()
		}
	}
	return def
}

func attrInts(n *onnxpb.NodeProto, name string) []int64 {
	for _, a := range n.Attribute {
		if a.GetName() == name {
			return a.GetInts()
		}
	}
	return nil
}

func int64s(xs []int) []int64 {
	out := make([]int64, len(xs))
	for i, x := range xs {
		out[i] = int64(x)
	}
	return out
}

// Attribute helpers.

// AttrInt is an integer attribute.
func AttrInt(name string, v int64) *onnxpb.AttributeProto {
	return &onnxpb.AttributeProto{Name: proto.String(name), Type: onnxpb.AttributeProto_INT.Enum(), I: proto.Int64(v)}
}

// AttrInts is an integer-list attribute.
func AttrInts(name string, v ...int64) *onnxpb.AttributeProto {
	return &onnxpb.AttributeProto{Name: proto.String(name), Type: onnxpb.AttributeProto_INTS.Enum(), Ints: v}
}

// AttrFloat is a float attribute.
func AttrFloat(name string, v float32) *onnxpb.AttributeProto {
	return &onnxpb.AttributeProto{Name: proto.String(name), Type: onnxpb.AttributeProto_FLOAT.Enum(), F: proto.Float32(v)}
}

// Model serialises the graph as an ONNX model with the given metadata, for
// a session opened from memory.
func (g *Graph) Model(name string, metadata map[string]string) ([]byte, error) {
	return Serialize(g.Proto(name, metadata))
}

// Proto is the graph as an ONNX ModelProto with the given metadata.
func (g *Graph) Proto(name string, metadata map[string]string) *onnxpb.ModelProto {
	if g.int8 != nil {
		g.dropUnusedInitializers() // the float weights int8 layers replaced
	}
	m := &onnxpb.ModelProto{
		IrVersion:       proto.Int64(irVersion),
		ProducerName:    proto.String("transformaly"),
		ProducerVersion: proto.String(Version),
		OpsetImport:     []*onnxpb.OperatorSetIdProto{{Domain: proto.String(""), Version: proto.Int64(Opset)}},
		Graph: &onnxpb.GraphProto{
			Name: proto.String(name), Node: g.nodes, Initializer: g.inits, Input: g.inputs, Output: g.outputs,
		},
	}
	for _, k := range sortedKeys(metadata) {
		m.MetadataProps = append(m.MetadataProps, &onnxpb.StringStringEntryProto{Key: proto.String(k), Value: proto.String(metadata[k])})
	}
	return m
}

// Version is the project's version, stamped into graphs and bundles.
var Version = "0.1.0-dev"

// dropUnusedInitializers removes the initializers no node reads.
func (g *Graph) dropUnusedInitializers() {
	used := map[string]bool{}
	for _, n := range g.nodes {
		for _, in := range n.Input {
			used[in] = true
		}
	}
	g.inits = slices.DeleteFunc(g.inits, func(t *onnxpb.TensorProto) bool { return !used[t.GetName()] })
}
