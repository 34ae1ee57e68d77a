package detector

import (
	"gonum.org/v1/gonum/mat"

	"github.com/transformaly/transformaly/models"
)

// hostScorer makes a bundle's log-likelihoods and score in float64 on the
// host (RunnerOptions.ScoreOnHost) from the graph's embedding, block errors
// and patch score, a batch at a time through gonum's matrix product.
type hostScorer struct {
	pre, stu quadratic
	patch    *models.PatchScore
}

func newHostScorer(s models.Scoring) *hostScorer {
	return &hostScorer{pre: newQuadratic(s.Pretrained), stu: newQuadratic(s.Student), patch: s.Patch}
}

// quadratic is a QuadraticScore in float64: const - |x W + b|^2 / 2.
type quadratic struct {
	w     *mat.Dense // [In, K]
	b     []float64
	konst float64
}

func newQuadratic(q models.QuadraticScore) quadratic {
	w := mat.NewDense(q.In, q.K, nil)
	for i := range q.In {
		for j := range q.K {
			w.Set(i, j, float64(q.W[i*q.K+j]))
		}
	}
	b := make([]float64, q.K)
	for j := range b {
		b[j] = float64(q.B[j])
	}
	return quadratic{w: w, b: b, konst: q.Const}
}

// logLikelihoods evaluates n feature rows packed in x.
func (q quadratic) logLikelihoods(x []float32, n int) []float64 {
	in, _ := q.w.Dims()
	xs := mat.NewDense(n, in, nil)
	for i := range n {
		row := xs.RawRowView(i)
		for k := range row {
			row[k] = float64(x[i*in+k])
		}
	}
	var y mat.Dense
	y.Mul(xs, q.w)
	out := make([]float64, n)
	for i := range out {
		sq := 0.0
		for j, v := range y.RawRowView(i) {
			v += q.b[j]
			sq += v * v
		}
		out[i] = q.konst - 0.5*sq
	}
	return out
}

// rescore replaces the graph's likelihoods and scores with the host's.
func (h *hostScorer) rescore(res []Result, embeddings, blockErrors []float32) {
	pre := h.pre.logLikelihoods(embeddings, len(res))
	stu := h.stu.logLikelihoods(blockErrors, len(res))
	for i := range res {
		r := &res[i]
		r.LLPretrained, r.LLStudent = pre[i], stu[i]
		r.Score = -(pre[i] + stu[i])
		if h.patch != nil {
			r.Score += h.patch.Term(r.PatchScore)
		}
	}
}
