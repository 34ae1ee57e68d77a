package models_test

import (
	"math"
	"math/rand/v2"
	"testing"

	onnx "github.com/yalue/onnxruntime_go"

	"github.com/transformaly/transformaly/internal/ort"
	"github.com/transformaly/transformaly/internal/ort/orttest"
	"github.com/transformaly/transformaly/models"
	"github.com/transformaly/transformaly/models/onnxpb"
)

func TestMain(m *testing.M) { orttest.Main(m) }

// smallConfig is the random ViT most tests use: 17 tokens of width 64.
var smallConfig = models.Config{Dim: 64, Depth: 3, Heads: 4, Patch: 8, ImageSize: 32}

func randomImages(n, size int, seed uint64) []uint8 {
	rng := rand.New(rand.NewPCG(seed, 1))
	img := make([]uint8, n*size*size*3)
	for i := range img {
		img[i] = uint8(rng.IntN(256))
	}
	return img
}

// runGraph runs model in ONNX Runtime on a uint8 image batch and returns the
// named outputs flattened.
func runGraph(t testing.TB, model []byte, images []uint8, n, size int, outputs ...string) [][]float32 {
	t.Helper()
	opts, err := ort.SessionOptions(0)
	if err != nil {
		t.Fatal(err)
	}
	defer opts.Destroy()
	s, err := onnx.NewDynamicAdvancedSessionWithONNXData(model, []string{models.InputImages}, outputs, opts)
	if err != nil {
		t.Fatalf("create session: %v", err)
	}
	defer s.Destroy()
	in, err := onnx.NewTensor(onnx.NewShape(int64(n), int64(size), int64(size), 3), images)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Destroy()
	outs := make([]onnx.Value, len(outputs))
	if err := s.Run([]onnx.Value{in}, outs); err != nil {
		t.Fatalf("run graph: %v", err)
	}
	res := make([][]float32, len(outs))
	for i, o := range outs {
		res[i] = append([]float32{}, o.(*onnx.Tensor[float32]).GetData()...)
		o.Destroy()
	}
	return res
}

// relErr is max|got-want| / max|want|.
func relErr(got []float32, want []float64) float64 {
	if len(got) != len(want) {
		return math.Inf(1)
	}
	maxDiff, maxRef := 0.0, 0.0
	for i := range got {
		maxDiff = math.Max(maxDiff, math.Abs(float64(got[i])-want[i]))
		maxRef = math.Max(maxRef, math.Abs(want[i]))
	}
	return maxDiff / maxRef
}

// scoredGraph builds a scored detector graph and its serialized model.
func scoredGraph(t testing.TB, v *models.ViT, blocks []int, students []models.Block, s models.Scoring, info models.BundleInfo) (*onnxpb.ModelProto, []byte) {
	t.Helper()
	m, err := models.ScoredDetectorGraph(v, blocks, students, s, info, models.FP32)
	if err != nil {
		t.Fatal(err)
	}
	graph, err := models.Serialize(m)
	if err != nil {
		t.Fatal(err)
	}
	return m, graph
}
