package fit

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"time"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/blas32"

	onnx "github.com/yalue/onnxruntime_go"

	"github.com/transformaly/transformaly/detector"
	"github.com/transformaly/transformaly/models"
)

// DefaultCoreset is the share of the normal images' patches the memory
// bank keeps (PatchCore's 10%). Measured on the synthetic small defects at
// 128 px (200 normal images, eval --dataset): chips, the hardest, image
// AUROC 0.80 / 0.94 / 0.96 and AUPRO 0.81 / 0.97 / 0.97 with 1% / 10% / 25%
// (the bank's fit costs about proportionally: BenchmarkPatchBank).
const DefaultCoreset = 0.1

// DefaultPatchBlocks are the teacher blocks whose tokens are the patch
// features: one block a quarter of the way in (block 2 of 12, 1 of 6).
// Early blocks keep a patch's own content; later ones mix in the whole
// image, which dilutes a small defect the way the CLS embedding does. On
// the synthetic small defects with a random 6-block teacher, block 1 gave
// the best image AUROC of blocks 0-3 (see TestPatchSpaceFindsSmallDefects).
func DefaultPatchBlocks(depth int) []int {
	return []int{max(0, (depth+2)/4-1)}
}

// patchProjection is the width coreset selection projects features to
// (PatchCore's random projection): distances between random projections
// keep the ranking the greedy choice needs at a fraction of the cost.
const patchProjection = 128

// patchSpace is what fitPatchSpace learns.
type patchSpace struct {
	score *models.PatchScore
	info  *models.PatchInfo
	// imageScores is each normal image's out-of-sample patch score: its
	// largest patch distance to bank entries taken from other images.
	imageScores []float64
}

// fitPatchSpace collects the patch features of the normal images idx,
// keeps a greedy coreset of them as the memory bank, and scores every
// image against the entries of the others; llScores are the images'
// out-of-fold log-likelihood sums, which the patch term is weighed against.
func (o *Options) fitPatchSpace(ctx context.Context, images *Images, idx []int, llScores []float64) (*patchSpace, error) {
	start := time.Now()
	v := o.Teacher
	g2, d := v.Grid()*v.Grid(), v.Dim*len(o.PatchBlocks)
	n := len(idx)
	bytes := int64(n) * int64(g2) * int64(d) * 4
	if bytes > o.memoryBudget() {
		return nil, fmt.Errorf("patch features of %d images (%d patches of width %d) take %.1f GB, over the memory budget of %.1f GB (--memory-budget): use fewer images or patch blocks, or --patch-blocks none",
			n, n*g2, d, float64(bytes)/1e9, float64(o.memoryBudget())/1e9)
	}
	graph, err := models.PatchFeatureGraph(v, o.PatchBlocks)
	if err != nil {
		return nil, err
	}
	r, err := detector.NewRunner(graph, images.Size, []string{models.OutputPatchFeatures}, o.runnerOptions())
	if err != nil {
		return nil, fmt.Errorf("patch features: %w", err)
	}
	defer r.Close()
	feats := make([]float32, 0, n*g2*d)
	var buf []byte
	for s := 0; s < n; s += o.BatchSize {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%w while computing patch features; training is saved: run again with --resume", ErrInterrupted)
		}
		part := idx[s:min(s+o.BatchSize, n)]
		if buf, err = images.Batch(part, buf); err != nil {
			return nil, err
		}
		out, err := r.Run(buf, len(part))
		if err != nil {
			return nil, fmt.Errorf("patch features: %w", err)
		}
		feats = append(feats, out[0].Data...)
		o.report(Progress{Phase: "patches", Batch: s/o.BatchSize + 1, Batches: (n + o.BatchSize - 1) / o.BatchSize, ValLoss: math.NaN()})
	}
	patches := n * g2
	m := bankEntries(o.Coreset, patches)
	picked := composedCoreset(ctx, projectRandomly(feats, d, patchProjection, o.Seed), min(d, patchProjection), m, o.Seed)
	if ctx.Err() != nil {
		return nil, fmt.Errorf("%w while choosing the patch coreset; training is saved: run again with --resume", ErrInterrupted)
	}
	bank := make([]float32, 0, m*d)
	owner := make([]int, m)
	for j, p := range picked {
		bank = append(bank, feats[p*d:(p+1)*d]...)
		owner[j] = images.FrameOf(idx[p/g2]) // a frame's tiles share their pixels: left out together
	}
	products, closeProducts, err := o.bankProducts(bank, m, d)
	if err != nil {
		return nil, err
	}
	group := make([]int, n)
	for k, i := range idx {
		group[k] = images.FrameOf(i)
	}
	dist, err := outOfSampleDistances(feats, d, g2, bank, owner, group, products)
	closeProducts()
	if err != nil {
		return nil, fmt.Errorf("out-of-sample patch distances: %w", err)
	}
	imageScores := make([]float64, n)
	for i := range n {
		imageScores[i] = images.patchScore(idx[i], dist[i*g2:(i+1)*g2], v.Grid(), o.TileEdges)
	}
	median, scale := spreadAboveMedian(imageScores)
	all := images.countedDistances(dist, idx, v.Grid(), o.TileEdges)
	slices.Sort(all)
	_, weight := spreadAboveMedian(llScores)
	ps := &models.PatchScore{Blocks: o.PatchBlocks, D: d, M: m, Bank: bank, Median: median, Scale: scale, Weight: weight}
	info := &models.PatchInfo{Blocks: o.PatchBlocks, FeatureWidth: d, BankEntries: m, Coreset: o.Coreset, Patches: patches,
		TermMedian: median, TermScale: scale, TermWeight: weight, NormalDistance: quantile(all, 0.999)}
	slog.Info("patch memory bank", "blocks", o.PatchBlocks, "patches", patches, "bank_entries", m, "feature_width", d,
		"bank_mb", float64(m*d*4)/1e6, "normal_patch_distance_999", info.NormalDistance, "seconds", time.Since(start).Seconds())
	return &patchSpace{score: ps, info: info, imageScores: imageScores}, nil
}

// projectRandomly maps the rows of feats ([P, d]) to k dimensions by a
// Gaussian random matrix (rows unchanged when d <= k): distances survive up
// to a small factor (Johnson-Lindenstrauss).
func projectRandomly(feats []float32, d, k int, seed uint64) []float32 {
	if d <= k {
		return feats
	}
	rng := rand.New(rand.NewPCG(seed, 0x9e37))
	proj := make([]float32, d*k)
	for i := range proj {
		proj[i] = float32(rng.NormFloat64() / math.Sqrt(float64(k)))
	}
	p := len(feats) / d
	x := make([]float32, p*k)
	blas32.Gemm(blas.NoTrans, blas.NoTrans, 1, blas32.General{Rows: p, Cols: d, Stride: d, Data: feats},
		blas32.General{Rows: d, Cols: k, Stride: k, Data: proj}, 0, blas32.General{Rows: p, Cols: k, Stride: k, Data: x})
	return x
}

// spreadAboveMedian fits an exponential tail from the median to normal
// images' out-of-sample scores (patch scores, or the log-likelihoods' sum)
// for the patch term (models.PatchScore.Term). Its scale comes from the
// bulk, (q90 - q50)/ln 5 (what it is for an exponential tail), not from the
// mean excess: a few normal images with odd patches made that twice the
// spread unseen normal images showed, halving the term of every defect.
func spreadAboveMedian(scores []float64) (from, scale float64) {
	sorted := slices.Sorted(slices.Values(scores))
	from = quantile(sorted, 0.5)
	scale = (quantile(sorted, 0.9) - from) / math.Log(5)
	if !(scale > 1e-9*math.Max(1, from)) {
		scale = 1e-9 * math.Max(1, from) // identical images: any rise is an anomaly
	}
	return from, scale
}

// greedyCoreset picks m of the rows of x ([P, k]) by PatchCore's greedy
// k-center rule: start from a random row, then again and again the row
// farthest from every row picked so far. The bank then covers every normal
// patch within the smallest radius greedy can promise (twice the optimum).
// By hand: no library here does it.
func greedyCoreset(ctx context.Context, x []float32, k, m int, seed uint64) []int {
	p := len(x) / k
	if m >= p {
		all := make([]int, p)
		for i := range all {
			all[i] = i
		}
		return all
	}
	rng := rand.New(rand.NewPCG(seed, 0xc0de))
	minDist := make([]float32, p)
	norms := make([]float32, p) // squared: a distance is |x|^2 - 2 x.c + |c|^2
	for i := range minDist {
		minDist[i] = float32(math.Inf(1))
		norms[i] = dot(x[i*k:(i+1)*k], x[i*k:(i+1)*k])
	}
	picked := make([]int, 0, m)
	next := rng.IntN(p)
	workers := runtime.GOMAXPROCS(0)
	chunk := (p + workers - 1) / workers
	dots := make([]float32, p)
	best := make([]int, workers)
	var wg sync.WaitGroup
	for len(picked) < m && ctx.Err() == nil {
		picked = append(picked, next)
		c := x[next*k : (next+1)*k]
		c2 := norms[next]
		for w := range workers {
			wg.Add(1)
			go func(w, lo, hi int) {
				defer wg.Done()
				// x.c for the rows by gonum's Sgemv, its assembly dot
				// products: a 10% coreset of 98,000 ViT-S patches took 9.7 s
				// instead of the plain loop's 31 s (BenchmarkPatchBank).
				blas32.Gemv(blas.NoTrans, 1, blas32.General{Rows: hi - lo, Cols: k, Stride: k, Data: x[lo*k : hi*k]},
					blas32.Vector{N: k, Inc: 1, Data: c}, 0, blas32.Vector{N: hi - lo, Inc: 1, Data: dots[lo:hi]})
				arg, far := lo, float32(-1)
				for i := lo; i < hi; i++ {
					if s := norms[i] - 2*dots[i] + c2; s < minDist[i] {
						minDist[i] = s
					}
					if minDist[i] > far {
						arg, far = i, minDist[i]
					}
				}
				best[w] = arg
			}(w, w*chunk, min(p, (w+1)*chunk))
		}
		wg.Wait()
		next = best[0]
		for _, b := range best[1:] {
			if minDist[b] > minDist[next] {
				next = b
			}
		}
	}
	return picked
}

// outOfSampleDistances gives each row of feats ([images*perImage, d]) the
// distance a test image would see if it looked like that row's image: the
// bank without that image, i.e. without its own entries (which would put
// its patches at distance 0) but with the patches of other images those
// entries stood for (the ones nearest to them), which a coreset chosen
// without the image would have had to cover instead. Leaving out only the
// image's own entries put its unusual patches far from everything: the
// 90% quantile of patch scores came out above that of unseen normal
// images, and the patch term, scaled by it, cost the small defects 0.07 of
// AUROC.
//
// owner holds each entry's group and group each image's (nil: each image
// is its own): images of a group, a frame's tiles, are left out together.
func outOfSampleDistances(feats []float32, d, perImage int, bank []float32, owner, group []int, products productFunc) ([]float32, error) {
	groupOf := func(k int) int {
		if group == nil {
			return k
		}
		return group[k]
	}
	m := len(owner)
	norms := make([]float32, m)
	for j := range m {
		norms[j] = dot(bank[j*d:(j+1)*d], bank[j*d:(j+1)*d])
	}
	rows := len(feats) / d
	out := make([]float32, rows)
	nearest := make([]int, rows) // each row's nearest entry over the whole bank
	// Chunks of whole images, about 16M products each.
	chunk := max(perImage, (16<<20)/max(m, 1)/perImage*perImage)
	for lo := 0; lo < rows; lo += chunk {
		hi := min(rows, lo+chunk)
		prod, err := products(feats[lo*d:hi*d], hi-lo)
		if err != nil {
			return nil, err
		}
		for r := lo; r < hi; r++ {
			x2 := dot(feats[r*d:(r+1)*d], feats[r*d:(r+1)*d])
			img := groupOf(r / perImage)
			other, any := float32(math.Inf(1)), float32(math.Inf(1))
			for j, xm := range prod[(r-lo)*m : (r-lo+1)*m] {
				dist := x2 - 2*xm + norms[j]
				if dist < any {
					any, nearest[r] = dist, j
				}
				if owner[j] != img && dist < other {
					other = dist
				}
			}
			out[r] = other
		}
	}
	// The patches of other images that each image's entries stand for.
	standsFor := map[int][]int{}
	sq := make([]float32, rows) // their squared norms
	for r, j := range nearest {
		if img := owner[j]; img != groupOf(r/perImage) {
			standsFor[img] = append(standsFor[img], r)
			sq[r] = dot(feats[r*d:(r+1)*d], feats[r*d:(r+1)*d])
		}
	}
	// Per image, one small Sgemm of its patches against those patches.
	var others, prod []float32
	for k := range rows / perImage {
		qs := standsFor[groupOf(k)]
		others = others[:0]
		for _, q := range qs {
			others = append(others, feats[q*d:(q+1)*d]...)
		}
		lo := k * perImage
		if len(qs) > 0 {
			prod = slices.Grow(prod[:0], perImage*len(qs))[:perImage*len(qs)]
			blas32.Gemm(blas.NoTrans, blas.Trans, 1, blas32.General{Rows: perImage, Cols: d, Stride: d, Data: feats[lo*d : (lo+perImage)*d]},
				blas32.General{Rows: len(qs), Cols: d, Stride: d, Data: others}, 0, blas32.General{Rows: perImage, Cols: len(qs), Stride: len(qs), Data: prod})
		}
		for r := lo; r < lo+perImage; r++ {
			x2 := dot(feats[r*d:(r+1)*d], feats[r*d:(r+1)*d])
			for k, q := range qs {
				out[r] = min(out[r], x2-2*prod[(r-lo)*len(qs)+k]+sq[q])
			}
			out[r] = float32(math.Sqrt(math.Max(0, float64(out[r]))))
		}
	}
	return out, nil
}

// productFunc returns the n rows of x ([n, d]) times the bank's entries:
// [n, M] dot products.
type productFunc func(x []float32, n int) ([]float32, error)

// bankProducts opens an ONNX Runtime session for a bank's dot products
// (BankProductGraph), on the fit's provider: the products are nearly all of
// the out-of-sample distances' work, 10x faster there than in gonum's
// Sgemm on 2 cores (7.6 s for a 1% bank of 98,000 ViT-S patches).
func (o *Options) bankProducts(bank []float32, m, d int) (productFunc, func(), error) {
	graph, err := models.BankProductGraph(bank, m, d)
	if err != nil {
		return nil, nil, err
	}
	var s *onnx.DynamicAdvancedSession
	opts := o.runnerOptions()
	opts.ImageSize = 0
	if _, err := detector.OpenOnProvider(opts, func(so *onnx.SessionOptions, _ string) error {
		var err error
		s, err = onnx.NewDynamicAdvancedSessionWithONNXData(graph, []string{models.InputBankFeatures}, []string{models.OutputBankProducts}, so)
		return err
	}); err != nil {
		return nil, nil, fmt.Errorf("bank products session: %w", err)
	}
	products := func(x []float32, n int) ([]float32, error) {
		in, err := onnx.NewTensor(onnx.NewShape(int64(n), int64(d)), x)
		if err != nil {
			return nil, err
		}
		defer in.Destroy()
		out, err := onnx.NewEmptyTensor[float32](onnx.NewShape(int64(n), int64(m)))
		if err != nil {
			return nil, err
		}
		defer out.Destroy()
		if err := s.Run([]onnx.Value{in}, []onnx.Value{out}); err != nil {
			return nil, err
		}
		return slices.Clone(out.GetData()), nil // the tensor's memory goes with it
	}
	return products, func() { s.Destroy() }, nil
}

func dot(a, b []float32) float32 {
	var s float32
	for i, v := range a {
		s += v * b[i]
	}
	return s
}
