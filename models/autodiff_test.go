package models_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	onnx "github.com/yalue/onnxruntime_go"

	"github.com/transformaly/transformaly/internal/ort"
	"github.com/transformaly/transformaly/internal/vitref"
	"github.com/transformaly/transformaly/models"
)

// runFloatGraph runs a graph whose inputs are all float32 tensors.
func runFloatGraph(t testing.TB, model []byte, names []string, shapes [][]int, values [][]float32, outputs []string) [][]float32 {
	t.Helper()
	opts, err := ort.SessionOptions(1)
	if err != nil {
		t.Fatal(err)
	}
	defer opts.Destroy()
	s, err := onnx.NewDynamicAdvancedSessionWithONNXData(model, names, outputs, opts)
	if err != nil {
		t.Fatalf("create session: %v", err)
	}
	defer s.Destroy()
	ins := make([]onnx.Value, len(names))
	for i := range names {
		dims := make([]int64, len(shapes[i]))
		for j, d := range shapes[i] {
			dims[j] = int64(d)
		}
		tensor, err := onnx.NewTensor(onnx.NewShape(dims...), values[i])
		if err != nil {
			t.Fatal(err)
		}
		defer tensor.Destroy()
		ins[i] = tensor
	}
	outs := make([]onnx.Value, len(outputs))
	if err := s.Run(ins, outs); err != nil {
		t.Fatalf("run: %v", err)
	}
	res := make([][]float32, len(outs))
	for i, o := range outs {
		res[i] = append([]float32{}, o.(*onnx.Tensor[float32]).GetData()...)
		o.Destroy()
	}
	return res
}

func size(shape []int) int {
	n := 1
	for _, d := range shape {
		n *= d
	}
	return n
}

func toDims(shape []int) []models.Dim {
	out := make([]models.Dim, len(shape))
	for i, d := range shape {
		out[i] = d
	}
	return out
}

// ruleCase is one operator whose gradient rule is checked: build emits the
// operator on the graph inputs, ref computes the same function in float64.
type ruleCase struct {
	name   string
	shapes [][]int // one per differentiated input
	out    []int
	build  func(g *models.Graph, in []string) string
	ref    func(in [][]float64) []float64
}

var ruleCases = []ruleCase{
	{
		name: "Gemm transB", shapes: [][]int{{4, 3}, {5, 3}, {5}}, out: []int{4, 5},
		build: func(g *models.Graph, in []string) string {
			return g.Op("Gemm", in, models.AttrInt("transB", 1))
		},
		ref: func(in [][]float64) []float64 {
			a, b, c := in[0], in[1], in[2]
			y := make([]float64, 20)
			for i := range 4 {
				for j := range 5 {
					y[i*5+j] = c[j]
					for k := range 3 {
						y[i*5+j] += a[i*3+k] * b[j*3+k]
					}
				}
			}
			return y
		},
	},
	{
		name: "MatMul 4-D", shapes: [][]int{{2, 2, 3, 4}, {2, 2, 4, 3}}, out: []int{2, 2, 3, 3},
		build: func(g *models.Graph, in []string) string { return g.Op("MatMul", in) },
		ref: func(in [][]float64) []float64 {
			y := make([]float64, 36)
			for bh := range 4 {
				for i := range 3 {
					for j := range 3 {
						for k := range 4 {
							y[bh*9+i*3+j] += in[0][bh*12+i*4+k] * in[1][bh*12+k*3+j]
						}
					}
				}
			}
			return y
		},
	},
	{
		name: "Add Sub Mul Div Neg", shapes: [][]int{{3, 4}, {3, 4}}, out: []int{3, 4},
		build: func(g *models.Graph, in []string) string {
			s := g.Op("Sub", []string{g.Op("Mul", []string{in[0], in[1]}), g.Op("Neg", []string{in[1]})})
			return g.Op("Add", []string{g.Op("Div", []string{s, g.Scalar(2.5)}), in[0]})
		},
		ref: func(in [][]float64) []float64 {
			y := make([]float64, 12)
			for i := range y {
				y[i] = (in[0][i]*in[1][i]+in[1][i])/2.5 + in[0][i]
			}
			return y
		},
	},
	{
		name: "Mul broadcast over leading axes", shapes: [][]int{{3, 4}, {4}}, out: []int{3, 4},
		build: func(g *models.Graph, in []string) string { return g.Op("Mul", in) },
		ref: func(in [][]float64) []float64 {
			y := make([]float64, 12)
			for i := range y {
				y[i] = in[0][i] * in[1][i%4]
			}
			return y
		},
	},
	{
		name: "Erf GELU pattern", shapes: [][]int{{2, 5}}, out: []int{2, 5},
		build: func(g *models.Graph, in []string) string {
			e := g.Op("Erf", []string{g.Op("Div", []string{in[0], g.Scalar(float32(math.Sqrt2))})})
			return g.Op("Mul", []string{g.Op("Mul", []string{in[0], g.Op("Add", []string{e, g.Scalar(1)})}), g.Scalar(0.5)})
		},
		ref: func(in [][]float64) []float64 {
			y := make([]float64, len(in[0]))
			for i, x := range in[0] {
				y[i] = 0.5 * x * (1 + math.Erf(x/math.Sqrt2))
			}
			return y
		},
	},
	{
		name: "Transpose and Reshape", shapes: [][]int{{2, 3, 4}}, out: []int{4, 6},
		build: func(g *models.Graph, in []string) string {
			t := g.Op("Transpose", in, models.AttrInts("perm", 2, 0, 1)) // [4, 2, 3]
			return g.Op("Reshape", []string{t, g.Shape(4, 6)})
		},
		ref: func(in [][]float64) []float64 {
			y := make([]float64, 24)
			for a := range 2 {
				for b := range 3 {
					for c := range 4 {
						y[c*6+a*3+b] = in[0][a*12+b*4+c]
					}
				}
			}
			return y
		},
	},
	{
		name: "Split and Squeeze", shapes: [][]int{{3, 2, 2}}, out: []int{2, 2},
		build: func(g *models.Graph, in []string) string {
			parts := g.OpN("Split", in, 3, models.AttrInt("axis", 0))
			sq := func(v string) string { return g.Op("Squeeze", []string{v, g.Ints([]int64{0}, 1)}) }
			// Part 1 is unused: its gradient must be zero.
			return g.Op("Mul", []string{sq(parts[0]), sq(parts[2])})
		},
		ref: func(in [][]float64) []float64 {
			y := make([]float64, 4)
			for i := range y {
				y[i] = in[0][i] * in[0][8+i]
			}
			return y
		},
	},
	{
		name: "Softmax", shapes: [][]int{{2, 3, 4}}, out: []int{2, 3, 4},
		build: func(g *models.Graph, in []string) string {
			return g.Op("Softmax", in, models.AttrInt("axis", -1))
		},
		ref: func(in [][]float64) []float64 {
			y := make([]float64, 24)
			for r := range 6 {
				row := in[0][r*4 : r*4+4]
				m, s := math.Inf(-1), 0.0
				for _, x := range row {
					m = math.Max(m, x)
				}
				for _, x := range row {
					s += math.Exp(x - m)
				}
				for j, x := range row {
					y[r*4+j] = math.Exp(x-m) / s
				}
			}
			return y
		},
	},
	{
		name: "LayerNormalization", shapes: [][]int{{3, 5}, {5}, {5}}, out: []int{3, 5},
		build: func(g *models.Graph, in []string) string {
			return g.Op("LayerNormalization", in, models.AttrInt("axis", -1), models.AttrFloat("epsilon", 1e-5))
		},
		ref: func(in [][]float64) []float64 {
			y := make([]float64, 15)
			for r := range 3 {
				row := in[0][r*5 : r*5+5]
				m, v := 0.0, 0.0
				for _, x := range row {
					m += x / 5
				}
				for _, x := range row {
					v += (x - m) * (x - m) / 5
				}
				for j, x := range row {
					y[r*5+j] = (x-m)/math.Sqrt(v+1e-5)*in[1][j] + in[2][j]
				}
			}
			return y
		},
	},
	{
		name: "ReduceMean keepdims 0 and 1", shapes: [][]int{{2, 3, 4}}, out: []int{2, 1},
		build: func(g *models.Graph, in []string) string {
			m := g.Op("ReduceMean", in, models.AttrInts("axes", -1), models.AttrInt("keepdims", 0)) // [2, 3]
			return g.Op("ReduceMean", []string{m}, models.AttrInts("axes", 1), models.AttrInt("keepdims", 1))
		},
		ref: func(in [][]float64) []float64 {
			y := make([]float64, 2)
			for i, x := range in[0] {
				y[i/12] += x / 12
			}
			return y
		},
	},
	{
		name: "ReduceSum", shapes: [][]int{{3, 4}}, out: []int{4},
		build: func(g *models.Graph, in []string) string {
			return g.Op("ReduceSum", []string{in[0], g.Ints([]int64{0}, 1)}, models.AttrInt("keepdims", 0))
		},
		ref: func(in [][]float64) []float64 {
			y := make([]float64, 4)
			for i, x := range in[0] {
				y[i%4] += x
			}
			return y
		},
	},
}

// TestGradientRules checks each operator's vector-Jacobian rule, run in ONNX
// Runtime in float32, against central finite differences of the float64
// reference function.
func TestGradientRules(t *testing.T) {
	for _, c := range ruleCases {
		t.Run(c.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(1, 2))
			g := models.NewGraph()
			var names []string
			var values [][]float32
			for i, s := range c.shapes {
				names = append(names, g.Input(fmt.Sprintf("x%d", i), models.Float32, toDims(s)...))
				v := make([]float32, size(s))
				for j := range v {
					v[j] = float32(rng.NormFloat64())
				}
				values = append(values, v)
			}
			y := c.build(g, names)
			seed := g.Input("seed", models.Float32, toDims(c.out)...)
			grads, err := g.Backward(map[string]string{y: seed}, names)
			if err != nil {
				t.Fatal(err)
			}
			var outputs []string
			for i, n := range names {
				outputs = append(outputs, "grad_"+n)
				g.Output("grad_"+n, grads[n], models.Float32, toDims(c.shapes[i])...)
			}
			model, err := g.Model("rule", nil)
			if err != nil {
				t.Fatal(err)
			}
			r := make([]float32, size(c.out))
			for j := range r {
				r[j] = float32(rng.NormFloat64())
			}
			got := runFloatGraph(t, model, append(names, "seed"), append(c.shapes, c.out), append(values, r), outputs)

			in64 := make([][]float64, len(values))
			for i, v := range values {
				in64[i] = toF64(v)
			}
			loss := func() float64 {
				y := c.ref(in64)
				s := 0.0
				for j := range y {
					s += y[j] * float64(r[j])
				}
				return s
			}
			const h = 1e-6
			for i := range in64 {
				fd := make([]float64, len(in64[i]))
				for j := range in64[i] {
					x := in64[i][j]
					in64[i][j] = x + h
					up := loss()
					in64[i][j] = x - h
					down := loss()
					in64[i][j] = x
					fd[j] = (up - down) / (2 * h)
				}
				if e := relErr(got[i], fd); e > 1e-5 {
					t.Errorf("input %d: gradient %v\nfinite differences %v\nrelative error %.2g", i, got[i], fd, e)
				}
			}
		})
	}
}

// TestTrainingStepGradients checks the whole training-step graph, fed
// images or the teacher's cached activations: every gradient of every
// student parameter against central finite differences of the float64
// reference loss (teacher blocks, student block, MSE).
func TestTrainingStepGradients(t *testing.T) {
	cfg := models.Config{Dim: 16, Depth: 3, Heads: 2, MLPDim: 32, Patch: 8, ImageSize: 16}
	v, err := models.RandomViT(cfg, 4)
	if err != nil {
		t.Fatal(err)
	}
	cfg = v.Config
	blocks := []int{0, 2}
	const n = 2
	images := randomImages(n, cfg.ImageSize, 21)
	refs := make([]vitref.Result, n)
	for i := range n {
		refs[i] = vitref.Forward(v, images[i*cfg.ImageSize*cfg.ImageSize*3:(i+1)*cfg.ImageSize*cfg.ImageSize*3])
	}
	s := int64(cfg.ImageSize)
	imageTensor, err := onnx.NewTensor(onnx.NewShape(n, s, s, 3), images)
	if err != nil {
		t.Fatal(err)
	}
	defer imageTensor.Destroy()
	// The cached activations, taken from the reference forward pass.
	bounds := models.ActivationBoundaries(blocks)
	var acts []float32
	for _, ref := range refs {
		for _, k := range bounds {
			for _, x := range ref.BlockIO[k] {
				acts = append(acts, float32(x))
			}
		}
	}
	actTensor, err := onnx.NewTensor(onnx.NewShape(n, int64(len(bounds)), int64(cfg.Tokens()), int64(cfg.Dim)), acts)
	if err != nil {
		t.Fatal(err)
	}
	defer actTensor.Destroy()

	for _, tc := range []struct {
		name  string
		input models.TrainingInput
		value onnx.Value
	}{
		{models.InputImages, models.FromImages, imageTensor},
		{models.Activations, models.FromActivations, actTensor},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(8, 8))
			students := []models.Block{models.XavierBlock(cfg, rng), models.XavierBlock(cfg, rng)}
			// Non-zero biases and non-unit norms, so their gradients are
			// exercised away from the special point of a fresh init.
			for k := range students {
				for _, p := range students[k].Params(cfg) {
					for j := range *p.Data {
						(*p.Data)[j] += float32(0.05 * rng.NormFloat64())
					}
				}
			}
			graph, err := models.TrainingGraph(v, blocks, true, tc.input)
			if err != nil {
				t.Fatal(err)
			}
			got := runTraining(t, graph, cfg, blocks, students, tc.name, tc.value)
			for k, b := range blocks {
				loss := func() float64 {
					total := 0.0
					for _, ref := range refs {
						for _, e := range vitref.TokenErrors(cfg, vitref.Block(cfg, students[k], ref.BlockIO[b]), ref.BlockIO[b+1]) {
							total += e / float64(cfg.Tokens())
						}
					}
					return total / n
				}
				if e := math.Abs(float64(got.losses[k])-loss()) / loss(); e > 1e-5 {
					t.Errorf("block %d: loss %g, reference %g", b, got.losses[k], loss())
				}
				for _, p := range students[k].Params(cfg) {
					fd := make([]float64, len(*p.Data))
					for j := range fd {
						x := (*p.Data)[j]
						const h = 1e-3
						up, down := x+h, x-h // float32: divide by the step actually taken
						(*p.Data)[j] = up
						lu := loss()
						(*p.Data)[j] = down
						ld := loss()
						(*p.Data)[j] = x
						fd[j] = (lu - ld) / (float64(up) - float64(down))
					}
					name := models.StudentParamName(b, p.Name)
					if e := relErr(got.grads[name], fd); e > 2e-4 {
						t.Errorf("%s: gradient relative error %.2g", name, e)
					}
				}
			}
		})
	}
}

type trainingResult struct {
	losses []float32
	grads  map[string][]float32
}

// runTraining runs a training-step graph on one batch, fed as the graph
// input named input.
func runTraining(t testing.TB, graph []byte, cfg models.Config, blocks []int, students []models.Block, input string, batch onnx.Value) trainingResult {
	t.Helper()
	opts, err := ort.SessionOptions(1)
	if err != nil {
		t.Fatal(err)
	}
	defer opts.Destroy()
	names := []string{input}
	outputs := []string{models.OutputLosses}
	values := []onnx.Value{batch}
	for k, b := range blocks {
		for _, p := range students[k].Params(cfg) {
			name := models.StudentParamName(b, p.Name)
			names = append(names, name)
			outputs = append(outputs, models.GradName(name))
			dims := make([]int64, len(p.Shape))
			for i, d := range p.Shape {
				dims[i] = int64(d)
			}
			tensor, err := onnx.NewTensor(onnx.NewShape(dims...), *p.Data)
			if err != nil {
				t.Fatal(err)
			}
			defer tensor.Destroy()
			values = append(values, tensor)
		}
	}
	sess, err := onnx.NewDynamicAdvancedSessionWithONNXData(graph, names, outputs, opts)
	if err != nil {
		t.Fatalf("create session: %v", err)
	}
	defer sess.Destroy()
	outs := make([]onnx.Value, len(outputs))
	if err := sess.Run(values, outs); err != nil {
		t.Fatalf("run: %v", err)
	}
	res := trainingResult{grads: map[string][]float32{}}
	for i, o := range outs {
		data := append([]float32{}, o.(*onnx.Tensor[float32]).GetData()...)
		if i == 0 {
			res.losses = data
		} else {
			res.grads[names[i]] = data
		}
		o.Destroy()
	}
	return res
}
