package detector_test

import (
	"bytes"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	onnx "github.com/yalue/onnxruntime_go"
	"google.golang.org/protobuf/proto"

	"github.com/transformaly/transformaly/detector"
	"github.com/transformaly/transformaly/models"
	"github.com/transformaly/transformaly/models/onnxpb"
)

// TestGPUMatchesCPU runs only on a GPU box (TRANSFORMALY_GPU=1, see
// scripts/gpu-check.sh): each GPU provider that opens must score a random
// detector like the CPU provider, within 1e-3 of the score spread in fp32
// (an H200: 6e-6), 1e-2 by default (TF32 matmuls on CUDA, FP16 kernels on
// TensorRT; an H200: 2.5e-3) and 5e-2 in fp16 (an H200: 2e-3); the patch
// scores (nearest-bank-entry distances over a bank of 2,000) alike; for a
// plain ViT and a DINOv2-like one (4 registers, LayerScale: the graph's
// register Gather and wider Pad).
func TestGPUMatchesCPU(t *testing.T) {
	if os.Getenv("TRANSFORMALY_GPU") == "" {
		t.Skip("set TRANSFORMALY_GPU=1 on a GPU box (scripts/gpu-check.sh)")
	}
	for _, registers := range []int{0, 4} {
		t.Run(fmt.Sprintf("registers=%d", registers), func(t *testing.T) {
			v, err := models.RandomViT(models.Config{Dim: 192, Depth: 6, Heads: 3, Patch: 16, ImageSize: 224, Registers: registers}, 3)
			if err != nil {
				t.Fatal(err)
			}
			if registers > 0 {
				v.RandomLayerScale(3)
			}
			gpuMatchesCPU(t, v)
		})
	}
}

func gpuMatchesCPU(t *testing.T, v *models.ViT) {
	blocks := []int{2, 3, 4, 5}
	rng := rand.New(rand.NewPCG(4, 4))
	var students []models.Block
	for range blocks {
		students = append(students, models.XavierBlock(v.Config, rng))
	}
	images := make([]byte, 8*224*224*3)
	for i := range images {
		images[i] = byte(rng.IntN(256))
	}
	// Through a bundle file, as the daemon loads it: weights as external
	// data, the FP16 variant rebuilt from them.
	info := models.BundleInfo{Format: models.BundleFormat, ImageSize: v.ImageSize, Blocks: blocks, Threshold: 1}
	info.Teacher.Config = v.Config
	scoring := identityScoring(v.Dim, len(blocks))
	patch := &models.PatchScore{PatchFeatures: models.PatchFeatures{Blocks: []int{1}, Neighbourhood: 3, Pooling: models.PoolMean}, D: v.Dim, M: 2000}
	for range patch.M * patch.D {
		patch.Bank = append(patch.Bank, float32(rng.NormFloat64()))
	}
	scoring.Patch = patch
	info.Patch = &models.PatchInfo{Blocks: patch.Blocks, Neighbourhood: patch.Neighbourhood, Pooling: patch.Pooling, FeatureWidth: patch.D, BankEntries: patch.M, Combination: spreadCombination(1)}
	m, err := models.ScoredDetectorGraph(v, blocks, students, scoring, info, models.FP32)
	if err != nil {
		t.Fatal(err)
	}
	bundle := filepath.Join(t.TempDir(), "gpu.tfy")
	if err := models.WriteBundle(bundle, m); err != nil {
		t.Fatal(err)
	}
	run := func(provider, precision string, host bool) [2][]float64 {
		// Options users set, so ONNX Runtime confirms their names.
		d, err := detector.Load(bundle, detector.RunnerOptions{Provider: provider, Precision: precision, MaxBatch: 8, ScoreOnHost: host,
			CacheDir: t.TempDir(), ProviderLibrary: os.Getenv("TRANSFORMALY_PROVIDER_LIBRARY"),
			CUDAOptions:     map[string]string{"device_id": "0", "arena_extend_strategy": "kSameAsRequested", "cudnn_conv_algo_search": "HEURISTIC"},
			TensorRTOptions: map[string]string{"trt_max_workspace_size": "2147483648"}})
		if err != nil {
			t.Logf("%s %s: not usable: %v", provider, precision, err)
			return [2][]float64{}
		}
		defer d.Close()
		res, err := d.Score(images, 8, d.Info.Threshold)
		if err != nil {
			t.Fatalf("%s %s: %v", provider, precision, err)
		}
		var out [2][]float64
		for _, r := range res {
			out[0], out[1] = append(out[0], r.Score), append(out[1], r.PatchScore)
		}
		return out
	}
	want := run("cpu", models.FP32, false)
	var spread [2]float64
	for k := range want {
		for _, x := range want[k] {
			spread[k] = math.Max(spread[k], math.Abs(x-want[k][0]))
		}
	}
	usable := 0
	for _, provider := range []string{"cuda", "tensorrt"} {
		for _, c := range []struct {
			precision string
			tol       float64
			host      bool // scores made on the host, as TensorRT at fp16 always does
		}{{models.FP32, 1e-3, false}, {"", 1e-2, false}, {models.FP16, 5e-2, false}, {models.FP16, 5e-2, true}} { // "": the default, TF32 allowed
			got := run(provider, c.precision, c.host)
			if got[0] == nil {
				continue
			}
			usable++
			for k, what := range []string{"score", "patch score"} {
				worst := 0.0
				for i := range want[k] {
					worst = math.Max(worst, math.Abs(got[k][i]-want[k][i]))
				}
				t.Logf("%s %s host=%v: max %s difference %.3g (spread %.3g, tolerance %.0e of it)", provider, c.precision, c.host, what, worst, spread[k], c.tol)
				if worst > c.tol*math.Max(spread[k], 1) || math.IsNaN(worst) {
					t.Errorf("%s %s host=%v: %ss differ from the CPU by %g", provider, c.precision, c.host, what, worst)
				}
			}
		}
	}
	if usable == 0 {
		t.Error("TRANSFORMALY_GPU is set but no GPU provider could be used (see the reasons above, or transformaly doctor)")
	}
}

// TestGPUTrainingStepMatchesCPU runs only on a GPU box (TRANSFORMALY_GPU=1):
// fit's training-step graph (forward, loss and backward) gives the CUDA
// provider the same losses and gradients as the CPU, within what TF32
// matmuls change (1e-3 of the losses, 1e-2 of each gradient's largest
// entry), and logs the time of a step on each.
func TestGPUTrainingStepMatchesCPU(t *testing.T) {
	if os.Getenv("TRANSFORMALY_GPU") == "" {
		t.Skip("set TRANSFORMALY_GPU=1 on a GPU box (scripts/gpu-check.sh)")
	}
	graph, inputs, outputs, values := trainingStep(t)
	const batch = 8
	run := func(provider string) [][]float32 {
		var out [][]float32
		_, err := detector.OpenOnProvider(detector.RunnerOptions{Provider: provider, ProviderLibrary: os.Getenv("TRANSFORMALY_PROVIDER_LIBRARY")},
			func(so *onnx.SessionOptions, _ string) error {
				s, err := onnx.NewDynamicAdvancedSessionWithONNXData(graph, inputs, outputs, so)
				if err != nil {
					return err
				}
				defer s.Destroy()
				var took time.Duration
				for range 3 { // the first two plan and touch memory
					res := make([]onnx.Value, len(outputs))
					start := time.Now()
					if err := s.Run(values, res); err != nil {
						return err
					}
					took = time.Since(start)
					out = out[:0]
					for _, r := range res {
						out = append(out, slices.Clone(r.(*onnx.Tensor[float32]).GetData()))
						r.Destroy()
					}
				}
				t.Logf("%s: training step of 2 ViT-S blocks, batch %d: %s", provider, batch, took)
				return nil
			})
		if err != nil {
			t.Logf("%s: not usable: %v", provider, err)
			return nil
		}
		return out
	}
	want := run("cpu")
	got := run("cuda")
	if got == nil {
		t.Fatal("TRANSFORMALY_GPU is set but the CUDA provider could not be used (see above, or transformaly doctor)")
	}
	for i, name := range outputs {
		worst, scale := 0.0, 0.0
		for j := range want[i] {
			worst = math.Max(worst, math.Abs(float64(got[i][j]-want[i][j])))
			scale = math.Max(scale, math.Abs(float64(want[i][j])))
		}
		tol := 1e-2
		if name == models.OutputLosses {
			tol = 1e-3
		}
		if worst > tol*scale {
			t.Errorf("%s: CUDA differs from the CPU by %.3g (largest entry %.3g)", name, worst, scale)
		}
	}
}

// trainingStep is fit's training-step graph (images in; two ViT-S-shaped
// student blocks; losses and gradients out) and its inputs, batch 8.
func trainingStep(t *testing.T) (graph []byte, inputs, outputs []string, values []onnx.Value) {
	t.Helper()
	v, err := models.RandomViT(models.Config{Dim: 384, Depth: 4, Heads: 6, Patch: 16, ImageSize: 224}, 7)
	if err != nil {
		t.Fatal(err)
	}
	blocks := []int{2, 3}
	graph, err = models.TrainingGraph(v, blocks, true, models.FromImages)
	if err != nil {
		t.Fatal(err)
	}
	const batch = 8
	rng := rand.New(rand.NewPCG(8, 8))
	images := make([]byte, batch*224*224*3)
	for i := range images {
		images[i] = byte(rng.IntN(256))
	}
	inputs = []string{models.InputImages}
	outputs = []string{models.OutputLosses}
	img, err := onnx.NewTensor(onnx.NewShape(batch, 224, 224, 3), images)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { img.Destroy() })
	values = []onnx.Value{img}
	for _, b := range blocks {
		student := models.XavierBlock(v.Config, rng)
		for _, p := range student.Params(v.Config) {
			name := models.StudentParamName(b, p.Name)
			dims := make(onnx.Shape, len(p.Shape))
			for i, d := range p.Shape {
				dims[i] = int64(d)
			}
			tensor, err := onnx.NewTensor(dims, *p.Data)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { tensor.Destroy() })
			inputs, outputs, values = append(inputs, name), append(outputs, models.GradName(name)), append(values, tensor)
		}
	}
	return graph, inputs, outputs, values
}

// TestGPUTrainingGraphPrefixes runs only on a GPU box (TRANSFORMALY_GPU=1):
// the training step must run on the CUDA provider; where it crashes the
// process (an H200 with ORT 1.29's CUDA plugin jumped to address 0), it
// names the first node whose run crashes, running growing prefixes of the
// graph in child processes (a bisection: each prefix outputs every value it
// computes, so a longer prefix runs all a shorter one does).
func TestGPUTrainingGraphPrefixes(t *testing.T) {
	if os.Getenv("TRANSFORMALY_GPU") == "" {
		t.Skip("set TRANSFORMALY_GPU=1 on a GPU box (scripts/gpu-check.sh)")
	}
	graph, inputs, _, values := trainingStep(t)
	bisectCrash(t, "TestGPUTrainingGraphPrefixes", graph, inputs, values)
}

// TestGPUPatchGraphPrefixes does the same for a scored detector with a
// patch bank (its Slice and AveragePool version crashed the process on an
// H200 with ORT 1.29's CUDA plugin).
func TestGPUPatchGraphPrefixes(t *testing.T) {
	if os.Getenv("TRANSFORMALY_GPU") == "" {
		t.Skip("set TRANSFORMALY_GPU=1 on a GPU box (scripts/gpu-check.sh)")
	}
	v, err := models.RandomViT(models.Config{Dim: 192, Depth: 4, Heads: 3, Patch: 16, ImageSize: 224}, 3)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(5, 5))
	scoring := identityScoring(v.Dim, 1)
	scoring.Patch = &models.PatchScore{PatchFeatures: models.PatchFeatures{Blocks: []int{1}, Neighbourhood: 3, Pooling: models.PoolMean}, D: v.Dim, M: 500}
	for range 500 * v.Dim {
		scoring.Patch.Bank = append(scoring.Patch.Bank, float32(rng.NormFloat64()))
	}
	m, err := models.ScoredDetectorGraph(v, []int{2}, []models.Block{models.XavierBlock(v.Config, rng)}, scoring, models.BundleInfo{}, models.FP32)
	if err != nil {
		t.Fatal(err)
	}
	graph, err := models.Serialize(m)
	if err != nil {
		t.Fatal(err)
	}
	images := make([]byte, 4*224*224*3)
	for i := range images {
		images[i] = byte(rng.IntN(256))
	}
	img, err := onnx.NewTensor(onnx.NewShape(4, 224, 224, 3), images)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Destroy()
	bisectCrash(t, "TestGPUPatchGraphPrefixes", graph, []string{models.InputImages}, []onnx.Value{img})
}

// bisectCrash runs graph on the CUDA provider in a child process (the test
// named test, run again); if it crashes the process, it names the first node whose run
// crashes, running growing prefixes of the graph in child processes (a
// bisection: each prefix outputs every value it computes, so a longer
// prefix runs all a shorter one does).
func bisectCrash(t *testing.T, test string, graph []byte, inputs []string, values []onnx.Value) {
	var m onnxpb.ModelProto
	if err := proto.Unmarshal(graph, &m); err != nil {
		t.Fatal(err)
	}
	nodes := m.Graph.Node
	if prefix := os.Getenv("TRANSFORMALY_GRAPH_PREFIX"); prefix != "" { // a child
		n, err := strconv.Atoi(prefix)
		if err != nil {
			t.Fatal(err)
		}
		runGraphPrefix(t, &m, n, inputs, values)
		return
	}
	crashes := func(n int) bool {
		cmd := exec.Command(os.Args[0], "-test.run=^"+test+"$", "-test.v")
		cmd.Env = append(os.Environ(), "TRANSFORMALY_GRAPH_PREFIX="+strconv.Itoa(n))
		out, err := cmd.CombinedOutput()
		crashed := bytes.Contains(out, []byte("signal arrived during cgo execution")) || bytes.Contains(out, []byte("SIGSEGV")) || bytes.Contains(out, []byte("SIGABRT"))
		if err != nil && !crashed {
			t.Fatalf("prefix of %d nodes failed without a crash: %v\n%s", n, err, out[max(0, len(out)-3000):])
		}
		fmt.Fprintf(os.Stderr, "prefix of %d of %d nodes: crashed %v\n", n, len(nodes), crashed)
		return crashed
	}
	if !crashes(len(nodes)) {
		return
	}
	lo, hi := 0, len(nodes) // the first lo nodes run; the first hi crash
	for lo+1 < hi {
		if mid := (lo + hi) / 2; crashes(mid) {
			hi = mid
		} else {
			lo = mid
		}
	}
	n := nodes[hi-1]
	t.Errorf("the CUDA provider crashes at node %d of %d: %s %s, inputs %v, outputs %v, attributes %v",
		hi-1, len(nodes), n.GetOpType(), n.GetName(), n.GetInput(), n.GetOutput(), n.GetAttribute())
}

// runGraphPrefix runs the first n nodes of m on the CUDA provider with
// every value they compute as an output.
func runGraphPrefix(t *testing.T, m *onnxpb.ModelProto, n int, inputs []string, values []onnx.Value) {
	// Element types: those of inputs and initializers, carried through the
	// nodes (Cast gives its "to", Shape and Size int64, the rest their
	// first input's).
	elem := map[string]int32{}
	for _, in := range m.Graph.Input {
		elem[in.GetName()] = in.GetType().GetTensorType().GetElemType()
	}
	for _, w := range m.Graph.Initializer {
		elem[w.GetName()] = w.GetDataType()
	}
	var outputs []string
	var infos []*onnxpb.ValueInfoProto
	var flatten []*onnxpb.NodeProto
	for _, node := range m.Graph.Node[:n] {
		e := elem[node.GetInput()[0]]
		switch node.GetOpType() {
		case "Shape", "Size":
			e = models.Int64
		case "Cast":
			for _, a := range node.GetAttribute() {
				if a.GetName() == "to" {
					e = int32(a.GetI())
				}
			}
		}
		for _, o := range node.GetOutput() {
			if o == "" {
				continue
			}
			elem[o] = e
			flat := o + "/prefix-output" // 1-D: the Go binding takes no scalars
			flatten = append(flatten, &onnxpb.NodeProto{OpType: proto.String("Reshape"), Input: []string{o, "prefix-flat"}, Output: []string{flat}})
			outputs = append(outputs, flat)
			infos = append(infos, &onnxpb.ValueInfoProto{Name: proto.String(flat), Type: &onnxpb.TypeProto{Value: &onnxpb.TypeProto_TensorType{
				TensorType: &onnxpb.TypeProto_Tensor{ElemType: proto.Int32(e)}}}})
		}
	}
	prefix := proto.Clone(m).(*onnxpb.ModelProto)
	prefix.Graph.Node = append(prefix.Graph.Node[:n], flatten...)
	prefix.Graph.Initializer = append(prefix.Graph.Initializer, &onnxpb.TensorProto{Name: proto.String("prefix-flat"),
		DataType: proto.Int32(models.Int64), Dims: []int64{1}, Int64Data: []int64{-1}})
	prefix.Graph.Output = infos
	model, err := proto.Marshal(prefix)
	if err != nil {
		t.Fatal(err)
	}
	_, err = detector.OpenOnProvider(detector.RunnerOptions{Provider: "cuda", ProviderLibrary: os.Getenv("TRANSFORMALY_PROVIDER_LIBRARY")},
		func(so *onnx.SessionOptions, _ string) error {
			s, err := onnx.NewDynamicAdvancedSessionWithONNXData(model, inputs, outputs, so)
			if err != nil {
				return err
			}
			defer s.Destroy()
			res := make([]onnx.Value, len(outputs))
			if err := s.Run(values, res); err != nil {
				return err
			}
			for _, r := range res {
				r.Destroy()
			}
			return nil
		})
	if err != nil {
		t.Fatal(err)
	}
}
