package models_test

import (
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/transformaly/transformaly/internal/vitref"
	"github.com/transformaly/transformaly/models"
	"gonum.org/v1/gonum/floats"
)

// refPatchFeatures is the float64 reference of a patch feature map: each
// patch's token outputs of each block over its k x k neighbourhood, either
// averaged over the neighbours that exist on the grid or laid side by side
// row by row (a neighbour off the grid replaced by the nearest on it),
// blocks side by side, then multiplied by the projection if there is one.
// [Grid*Grid][width]
func refPatchFeatures(c models.Config, ref vitref.Result, f models.PatchFeatures) [][]float64 {
	g, d, r := c.Grid(), c.Dim, f.Neighbourhood/2
	token := func(b, y, x int) []float64 {
		tok := 1 + c.Registers + y*g + x // after the class token and registers
		return ref.BlockIO[b+1][tok*d : (tok+1)*d]
	}
	out := make([][]float64, g*g)
	for p := range out {
		py, px := p/g, p%g
		for _, b := range f.Blocks {
			if f.Pooling == models.PoolConcat {
				for y := py - r; y <= py+r; y++ {
					for x := px - r; x <= px+r; x++ {
						out[p] = append(out[p], token(b, min(g-1, max(0, y)), min(g-1, max(0, x)))...)
					}
				}
				continue
			}
			mean := make([]float64, d)
			n := 0.0
			for y := max(0, py-r); y <= min(g-1, py+r); y++ {
				for x := max(0, px-r); x <= min(g-1, px+r); x++ {
					for o, v := range token(b, y, x) {
						mean[o] += v
					}
					n++
				}
			}
			for o := range mean {
				mean[o] /= n
			}
			out[p] = append(out[p], mean...)
		}
		if f.Projection != nil {
			raw := len(out[p])
			w := len(f.Projection) / raw
			projected := make([]float64, w)
			for i, v := range out[p] {
				for j := range w {
					projected[j] += v * float64(f.Projection[i*w+j])
				}
			}
			out[p] = projected
		}
	}
	return out
}

func TestPatchFeatureGraphMatchesReference(t *testing.T) {
	v, _ := models.RandomViT(smallConfig, 3)
	mean := func(blocks []int, k int) models.PatchFeatures {
		return models.PatchFeatures{Blocks: blocks, Neighbourhood: k, Pooling: models.PoolMean}
	}
	concat := func(blocks []int, k int, width int) models.PatchFeatures {
		f := models.PatchFeatures{Blocks: blocks, Neighbourhood: k, Pooling: models.PoolConcat}
		if width > 0 {
			f.Projection = models.RandomProjection(f.RawWidth(v.Dim), width, uint64(k))
		}
		return f
	}
	for _, f := range []models.PatchFeatures{mean([]int{1}, 3), mean([]int{0, 2}, 3), mean([]int{1}, 1), mean([]int{2}, 5),
		concat([]int{1}, 3, 0), concat([]int{0, 2}, 3, 50), concat([]int{2}, 5, 7)} {
		graph, err := models.PatchFeatureGraph(v, f)
		if err != nil {
			t.Fatal(err)
		}
		const n = 2
		images := randomImages(n, v.ImageSize, 5)
		got := runGraph(t, graph, images, n, v.ImageSize, models.OutputPatchFeatures)[0]
		g2, d := v.Grid()*v.Grid(), f.Width(v.Dim)
		for img := range n {
			ref := refPatchFeatures(v.Config, vitref.Forward(v, images[img*v.ImageSize*v.ImageSize*3:(img+1)*v.ImageSize*v.ImageSize*3]), f)
			var want []float64
			for _, p := range ref {
				want = append(want, p...)
			}
			if len(want) != g2*d {
				t.Fatalf("%s %dx%d: reference of %d values, want %d", f.Pooling, f.Neighbourhood, f.Neighbourhood, len(want), g2*d)
			}
			if e := relErr(got[img*g2*d:(img+1)*g2*d], want); e > tolerance {
				t.Errorf("blocks %v, %s over %dx%d, width %d, image %d: patch features relative error %.2g", f.Blocks, f.Pooling, f.Neighbourhood, f.Neighbourhood, d, img, e)
			}
		}
	}
	if _, err := models.PatchFeatureGraph(v, mean([]int{3}, 3)); err == nil {
		t.Error("a patch block past the teacher's depth was accepted")
	}
	for _, k := range []int{0, 2, 9} {
		if _, err := models.PatchFeatureGraph(v, mean([]int{1}, k)); err == nil || !strings.Contains(err.Error(), "neighbourhood") {
			t.Errorf("neighbourhood %d: %v, want it refused", k, err)
		}
	}
	bad := mean([]int{1}, 3)
	bad.Pooling = "max"
	if _, err := models.PatchFeatureGraph(v, bad); err == nil || !strings.Contains(err.Error(), `pooling "max"`) {
		t.Errorf("pooling max: %v, want it refused", err)
	}
	bad = concat([]int{1}, 3, 10)
	bad.Projection = bad.Projection[1:]
	if _, err := models.PatchFeatureGraph(v, bad); err == nil || !strings.Contains(err.Error(), "projection") {
		t.Errorf("a projection of the wrong shape: %v, want it refused", err)
	}
}

// The scored detector's patch distances are each patch's distance to its
// nearest bank entry, brute force in float64 over reference features; the
// patch score is the largest; the graph's score is the method's alone. The bank
// holds random entries and exact copies of some of image 0's patches (a
// distance of 0 must come out 0, not NaN).
func TestPatchDistancesMatchBruteForce(t *testing.T) {
	v, _ := models.RandomViT(smallConfig, 6)
	blocks, patchBlocks := []int{1, 2}, []int{0, 1}
	rng := rand.New(rand.NewPCG(4, 4))
	students := []models.Block{models.XavierBlock(v.Config, rng), models.XavierBlock(v.Config, rng)}
	const n = 3
	size := v.ImageSize
	images := randomImages(n, size, 9)
	check := func(f models.PatchFeatures) (*models.PatchScore, models.Scoring, models.BundleInfo) {
		refs := make([][][]float64, n)
		for i := range n {
			refs[i] = refPatchFeatures(v.Config, vitref.Forward(v, images[i*size*size*3:(i+1)*size*size*3]), f)
		}
		d := f.Width(v.Dim)
		p := &models.PatchScore{PatchFeatures: f, D: d}
		for j := range 40 { // random entries near the features' scale
			src := refs[1+j%2][rng.IntN(len(refs[1]))]
			for _, x := range src {
				p.Bank = append(p.Bank, float32(x+0.3*rng.NormFloat64()))
			}
		}
		for _, k := range []int{0, 5, 9} {
			for _, x := range refs[0][k] {
				p.Bank = append(p.Bank, float32(x))
			}
		}
		p.M = len(p.Bank) / d
		scoring := models.Scoring{Pretrained: randomQuadratic(v.Dim, 5, rng), Student: randomQuadratic(2, 2, rng), Patch: p}
		info := models.BundleInfo{Format: models.BundleFormat, ImageSize: size, Blocks: blocks, Threshold: 1}
		info.Teacher.Config = v.Config
		_, graph := scoredGraph(t, v, blocks, students, scoring, info)
		got := runGraph(t, graph, images, n, size, models.OutputPatchDistances, models.OutputPatchScore,
			models.OutputLLPretrained, models.OutputLLStudent, models.OutputScore)
		g2 := v.Grid() * v.Grid()
		for i := range n {
			want := make([]float64, g2)
			worst := 0.0
			for q, f := range refs[i] {
				best := math.Inf(1)
				for j := range p.M {
					s := 0.0
					for o, x := range f {
						diff := x - float64(p.Bank[j*d+o])
						s += diff * diff
					}
					best = math.Min(best, s)
				}
				want[q] = math.Sqrt(best)
				worst = math.Max(worst, want[q])
			}
			dist := got[0][i*g2 : (i+1)*g2]
			for q := range want { // absolute, against the feature's length (float32's |x|^2 - 2x.m + |m|^2 keeps about 1e-3 of it): exact matches are 0
				length := math.Sqrt(floats.Dot(refs[i][q], refs[i][q]))
				if diff := math.Abs(float64(dist[q]) - want[q]); diff > 1e-3*max(length, math.Sqrt(float64(d))) || math.IsNaN(float64(dist[q])) {
					t.Errorf("%s %dx%d: image %d patch %d: distance %g, brute force %g", f.Pooling, f.Neighbourhood, f.Neighbourhood, i, q, dist[q], want[q])
				}
			}
			if i == 0 && (dist[0] > 0.05 || dist[5] > 0.05) {
				t.Errorf("patches copied into the bank: distances %g and %g, want about 0", dist[0], dist[5])
			}
			if math.Abs(float64(got[1][i])-worst) > 1e-3*worst {
				t.Errorf("image %d: patch score %g, want the largest distance %g", i, got[1][i], worst)
			}
			want4 := -(float64(got[2][i]) + float64(got[3][i]))
			if math.Abs(float64(got[4][i])-want4) > 1e-4*math.Max(1, math.Abs(want4)) {
				t.Errorf("image %d: score %g, want -(ll_pretrained + ll_student) = %g", i, got[4][i], want4)
			}
		}
		return p, scoring, info
	}
	p, scoring, info := check(models.PatchFeatures{Blocks: patchBlocks, Neighbourhood: 1, Pooling: models.PoolMean})
	d := p.D
	concat := models.PatchFeatures{Blocks: patchBlocks, Neighbourhood: 3, Pooling: models.PoolConcat}
	concat.Projection = models.RandomProjection(concat.RawWidth(v.Dim), 40, 8)
	pc, sc, ic := check(concat)
	// A concatenation's projection reads back from the bundle's graph.
	ic.Patch = &models.PatchInfo{Blocks: patchBlocks, Neighbourhood: 3, Pooling: models.PoolConcat, FeatureWidth: pc.D, BankEntries: pc.M, Combination: someCombination}
	mc, _ := models.ScoredDetectorGraph(v, blocks, students, sc, ic, models.FP32)
	pathC := t.TempDir() + "/c.tfy"
	if err := models.WriteBundle(pathC, mc); err != nil {
		t.Fatal(err)
	}
	if back, mf, err := models.ReadBundle(pathC); err != nil {
		t.Errorf("a concatenating bundle: %v", err)
	} else if _, _, s, err := models.DecodeBundle(back, mf); err != nil || s.Patch.Pooling != models.PoolConcat || !slices.Equal(s.Patch.Projection, pc.Projection) || !slices.Equal(s.Patch.Bank, pc.Bank) {
		t.Errorf("a concatenating bundle decoded: %v", err)
	}
	// The bank reads back from the bundle's graph.
	pi := &models.PatchInfo{Blocks: patchBlocks, Neighbourhood: 1, Pooling: models.PoolMean, FeatureWidth: d, BankEntries: p.M, Combination: someCombination}
	info.Patch = pi
	m, _ := models.ScoredDetectorGraph(v, blocks, students, scoring, info, models.FP32)
	path := t.TempDir() + "/p.tfy"
	if err := models.WriteBundle(path, m); err != nil {
		t.Fatal(err)
	}
	back, mf, err := models.ReadBundle(path)
	if err != nil {
		t.Fatal(err)
	}
	_, _, s, err := models.DecodeBundle(back, mf)
	if err != nil || s.Patch == nil || len(s.Patch.Bank) != len(p.Bank) || s.Patch.Bank[d+3] != p.Bank[d+3] || s.Patch.Bank[len(p.Bank)-1] != p.Bank[len(p.Bank)-1] || s.Patch.Neighbourhood != 1 {
		t.Errorf("patch bank decoded from the bundle: %v", err)
	}
	// A format 3 bundle averaged its patch features over 3x3 without
	// recording it: read as 3, whatever the field says.
	info.Format, pi.Neighbourhood = 3, 0
	m, _ = models.ScoredDetectorGraph(v, blocks, students, scoring, info, models.FP32)
	if err := models.WriteBundle(path, m); err != nil {
		t.Fatal(err)
	}
	if back, mf, err = models.ReadBundle(path); err != nil || back.Patch.Neighbourhood != 3 {
		t.Fatalf("a format 3 bundle: %v, neighbourhood %d, want 3", err, back.Patch.Neighbourhood)
	}
	if _, _, s, err = models.DecodeBundle(back, mf); err != nil || s.Patch.Neighbourhood != 3 {
		t.Errorf("a format 3 bundle decoded: %v", err)
	}
	// An unrecorded or even neighbourhood in a newer bundle is refused.
	info.Format = models.BundleFormat
	m, _ = models.ScoredDetectorGraph(v, blocks, students, scoring, info, models.FP32)
	if err := models.WriteBundle(path, m); err != nil {
		t.Fatal(err)
	}
	if _, _, err := models.ReadBundle(path); err == nil || !strings.Contains(err.Error(), "neighbourhood 0") {
		t.Errorf("a bundle without its patch neighbourhood: %v", err)
	}
	pi.Neighbourhood = 1
	// A format 2 bundle with a patch space added a patch term to its
	// graph's score, which this build no longer reads: refused, by name.
	info.Format = 2
	m, _ = models.ScoredDetectorGraph(v, blocks, students, scoring, info, models.FP32)
	if err := models.WriteBundle(path, m); err != nil {
		t.Fatal(err)
	}
	if _, _, err := models.ReadBundle(path); err == nil || !strings.Contains(err.Error(), "format 2 with a patch feature space") || !strings.Contains(err.Error(), "fit it again") {
		t.Errorf("a format 2 bundle with a patch space: %v", err)
	}
	// A combination that could not score is refused.
	info.Format, pi.Combination.ImageWeight = models.BundleFormat, 1
	m, _ = models.ScoredDetectorGraph(v, blocks, students, scoring, info, models.FP32)
	if err := models.WriteBundle(path, m); err != nil {
		t.Fatal(err)
	}
	if _, _, err := models.ReadBundle(path); err == nil || !strings.Contains(err.Error(), "image weight 1 is not in (0, 1)") {
		t.Errorf("an image weight of 1: %v", err)
	}
}

// Under TensorRT's FP16 kernels only a Pow layer directly followed by a
// Reduce layer is kept in FP32 (ONNX Runtime's trt_layer_norm_fp32_fallback):
// in the half-precision scored detector every square is such a Pow, on
// float32, whose only reader is the next node, a reduction; no Mul squares
// a value.
func TestSquaresSitBesideTheirReductions(t *testing.T) {
	v, _ := models.RandomViT(smallConfig, 6)
	blocks := []int{1, 2}
	rng := rand.New(rand.NewPCG(4, 4))
	students := []models.Block{models.XavierBlock(v.Config, rng), models.XavierBlock(v.Config, rng)}
	p := &models.PatchScore{PatchFeatures: models.PatchFeatures{Blocks: []int{0}, Neighbourhood: 3, Pooling: models.PoolMean}, D: v.Dim, M: 4, Bank: make([]float32, 4*v.Dim)}
	scoring := models.Scoring{Pretrained: randomQuadratic(v.Dim, 5, rng), Student: randomQuadratic(2, 2, rng), Patch: p}
	info := models.BundleInfo{Format: models.BundleFormat, ImageSize: v.ImageSize, Blocks: blocks, Threshold: 1}
	info.Teacher.Config = v.Config
	m, err := models.ScoredDetectorGraph(v, blocks, students, scoring, info, models.FP16)
	if err != nil {
		t.Fatal(err)
	}
	nodes := m.GetGraph().GetNode()
	readers := map[string]int{}
	for _, n := range nodes {
		for _, in := range n.GetInput() {
			readers[in]++
		}
	}
	pows := 0
	for i, n := range nodes {
		switch n.GetOpType() {
		case "Pow":
			pows++
			out := n.GetOutput()[0]
			if i+1 == len(nodes) || !strings.HasPrefix(nodes[i+1].GetOpType(), "Reduce") || nodes[i+1].GetInput()[0] != out || readers[out] != 1 {
				t.Errorf("Pow %s is not read by the next node alone, a reduction", n.GetName())
			}
		case "Mul":
			if in := n.GetInput(); len(in) == 2 && in[0] == in[1] {
				t.Errorf("Mul %s squares %s: write it as Pow before its reduction", n.GetName(), in[0])
			}
		}
	}
	// Token errors of two blocks, two quadratic forms, the patch norms.
	if pows != 5 {
		t.Errorf("%d squares, want 5", pows)
	}
}
