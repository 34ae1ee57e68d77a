package models

import (
	"math"
	"slices"

	"google.golang.org/protobuf/proto"

	"github.com/transformaly/transformaly/models/onnxpb"
)

// The int8 variant of the detector graph, for the CPU: every linear layer
// (a Gemm with a constant weight: each block's qkv, proj, fc1 and fc2, in
// the teacher and the students) becomes
//
//	DynamicQuantizeLinear(x) -> MatMulInteger(x_q, W_q, x_zero) -> Cast
//	-> Mul(., x_scale * W_scale) -> Add(bias)
//
// with W_q int8, symmetric per output channel, and x quantized to uint8 per
// tensor at run time. ONNX Runtime fuses that chain into one
// DynamicQuantizeMatMul node, which runs on MLAS's integer kernels
// (AVX-512 VNNI / AVX-VNNI's vpdpbusd, else AVX2's vpmaddubsw). A QDQ graph
// (DequantizeLinear -> MatMul -> Add) would not do: ORT folds it into a
// float Gemm and dequantizes the weights on every run. What is not a linear
// layer (the patch embedding's Conv, attention's two activation products,
// softmax, GELU, LayerNorm, the errors, the patch bank's distances and the
// scoring) stays float32.
//
// Per-tensor activation quantization is ruined by channels whose
// magnitudes dwarf the others' (trained ViTs' LayerNorm outputs have a few
// such channels): one scale for the whole tensor leaves the ordinary
// channels a handful of levels. Each layer's input is therefore smoothed
// first (SmoothQuant, Xiao et al. 2023): channel j is divided by
// s_j = sqrt(r_j / w_j), where r_j is its largest magnitude on probe inputs
// and w_j the weight column's, and the weight column multiplied by it, so
// the product is unchanged in exact arithmetic while activation and weight
// ranges meet halfway.

// INT8 is the int8 precision: see ScoredDetectorGraphInt8.
const INT8 = "int8"

// Int8Options say how the int8 variant is made.
type Int8Options struct {
	// Ranges holds, per linear layer (by its weight's initializer name, as
	// ActivationRangeGraph's outputs name it after RangePrefix), each input
	// channel's largest magnitude on probe inputs. A layer without one is
	// quantized unsmoothed.
	Ranges map[string][]float32
	// UnsignedWeights stores the weights as uint8 with a zero point of 128
	// (the same 255 levels) instead of int8: for x86 CPUs without VNNI,
	// whose uint8 x int8 kernel (AVX2's vpmaddubsw) adds pairs of products
	// in saturating int16 (2 x 255 x 127 > 32767), which was measured to
	// take the CLS embedding's deviations from the images' mean from a
	// cosine of 0.99 with fp32 to 0.53, while the uint8 x uint8 kernel
	// widens to 16 bits first, as fast here. VNNI's vpdpbusd (and ARM's
	// dot products) take int8 weights without overflow.
	UnsignedWeights bool
}

// RangePrefix starts the names of ActivationRangeGraph's outputs: the rest
// is the linear layer's weight name.
const RangePrefix = "range:"

// weightRef is an initializer's float32 values and shape, kept while a
// graph is built so a linear layer can quantize its weight.
type weightRef struct {
	data  []float32
	shape []int
}

// ScoredDetectorGraphInt8 is ScoredDetectorGraph with its linear layers in
// int8 (see above); errors, likelihoods and scores stay float32.
func ScoredDetectorGraphInt8(v *ViT, blocks []int, students []Block, s Scoring, info BundleInfo, q Int8Options) (*onnxpb.ModelProto, error) {
	g := NewGraph()
	g.int8 = &q
	return g.scoredDetector(v, blocks, students, s, info)
}

// ActivationRangeGraph is the float32 detector (teacher and students) with
// one more output per linear layer: RangePrefix + its weight's name, float32
// [in], each input channel's largest magnitude over the batch's tokens.
// Its ranges make the int8 variant's Int8Options.Ranges.
func ActivationRangeGraph(v *ViT, blocks []int, students []Block) (m *onnxpb.ModelProto, outputs []string, err error) {
	g := NewGraph()
	g.ranges = []string{}
	if _, err := g.detectorBody(v, blocks, students); err != nil {
		return nil, nil, err
	}
	return g.Proto("transformaly_activation_ranges", nil), g.ranges, nil
}

// recordRange adds x's per-channel largest magnitude as a graph output
// (ActivationRangeGraph).
func (g *Graph) recordRange(x, w string, in int) {
	r := g.Op("ReduceMax", []string{g.Op("Abs", []string{x})}, AttrInts("axes", 0), AttrInt("keepdims", 0))
	g.Output(RangePrefix+w, r, Float32, in)
	g.ranges = append(g.ranges, RangePrefix+w)
}

// quantizedLinear is linear (x @ W^T + b, W [out, in]) in int8, in the
// node pattern ONNX Runtime fuses into DynamicQuantizeMatMul.
func (g *Graph) quantizedLinear(x string, w weightRef, wName, b string) string {
	out, in := w.shape[0], w.shape[1]
	smooth := smoothing(g.int8.Ranges[wName], w)
	if smooth != nil {
		inv := make([]float32, in)
		for j, s := range smooth {
			inv[j] = 1 / s
		}
		x = g.Op("Mul", []string{x, g.Weight32(wName+".int8_smoothing", inv, in)})
	}
	// W^T as [in, out] in 255 levels, symmetric, with one scale per output
	// channel.
	const levels = 127
	wq := make([]byte, in*out)
	scales := make([]float32, out)
	for o := range out {
		row := w.data[o*in : (o+1)*in]
		peak := 0.0
		for j, v := range row {
			peak = math.Max(peak, math.Abs(float64(v)*smoothFactor(smooth, j)))
		}
		scale := peak / levels
		if scale == 0 {
			scale = 1 // an all-zero row: any scale gives zeros
		}
		scales[o] = float32(scale)
		for j, v := range row {
			q := int8(math.RoundToEven(float64(v) * smoothFactor(smooth, j) / scale))
			if g.int8.UnsignedWeights {
				wq[j*out+o] = byte(int(q) + 128)
			} else {
				wq[j*out+o] = byte(q)
			}
		}
	}
	qw := wName + ".int8"
	elem := int32(onnxpb.TensorProto_INT8)
	if g.int8.UnsignedWeights {
		elem = int32(onnxpb.TensorProto_UINT8)
	}
	g.inits = append(g.inits, &onnxpb.TensorProto{Name: proto.String(qw), DataType: proto.Int32(elem), Dims: int64s([]int{in, out}), RawData: wq})
	g.ranks[qw] = 2
	dq := g.OpN("DynamicQuantizeLinear", []string{x}, 3) // x_q, x_scale, x_zero
	mmIn := []string{dq[0], qw, dq[2]}
	if g.int8.UnsignedWeights {
		zp := qw + "_zero"
		g.inits = append(g.inits, &onnxpb.TensorProto{Name: proto.String(zp), DataType: proto.Int32(elem), RawData: []byte{128}})
		mmIn = append(mmIn, zp)
	}
	acc := g.Op("MatMulInteger", mmIn)
	scale := g.Op("Mul", []string{dq[1], g.Weight32(wName+".int8_scale", scales, out)}) // x_scale first: the fused node's order
	y := g.Op("Mul", []string{g.Op("Cast", []string{acc}, AttrInt("to", int64(Float32))), scale})
	return g.Op("Add", []string{y, b})
}

func smoothFactor(smooth []float32, j int) float64 {
	if smooth == nil {
		return 1
	}
	return float64(smooth[j])
}

// outlierRatio is how far a layer's largest input channel range must stand
// above the median one for smoothing to pay: on random ViTs without
// outlier channels (ranges within 1.5x of each other) smoothing moved the
// CLS embedding a little further from float32's, not closer.
const outlierRatio = 4

// smoothing is SmoothQuant's per-input-channel factor s_j = sqrt(r_j / w_j)
// (migration strength 0.5) for activation ranges r and the weight columns'
// largest magnitudes w; nil without ranges, or when no channel's range is
// outlierRatio times the median. A channel that never moved, or a weight
// column of zeros, keeps 1.
func smoothing(ranges []float32, w weightRef) []float32 {
	out, in := w.shape[0], w.shape[1]
	if len(ranges) != in {
		return nil
	}
	sorted := slices.Clone(ranges)
	slices.Sort(sorted)
	if !(sorted[in-1] > outlierRatio*sorted[in/2]) {
		return nil
	}
	cols := make([]float64, in)
	for o := range out {
		for j, v := range w.data[o*in : (o+1)*in] {
			cols[j] = math.Max(cols[j], math.Abs(float64(v)))
		}
	}
	s := make([]float32, in)
	for j := range s {
		s[j] = 1
		if r := float64(ranges[j]); r > 0 && cols[j] > 0 && !math.IsInf(r, 0) && !math.IsNaN(r) {
			s[j] = float32(math.Sqrt(r / cols[j]))
		}
	}
	return s
}
