// Package fit trains the student blocks on normal images, fits the two
// Gaussians of the method and calibrates a threshold, producing one bundle.
package fit

import (
	"errors"
	"fmt"
	"math"

	"gonum.org/v1/gonum/mat"

	"github.com/transformaly/transformaly/models"
)

// Whitening is PCA whitening: z = (x - Mean) Components diag(1/sqrt(Variances)).
type Whitening struct {
	Mean       []float64
	Components *mat.Dense // [dim, k]: leading eigenvectors of the covariance
	Variances  []float64  // [k]: their eigenvalues
	Explained  float64    // fraction of the total variance kept
}

// FitWhitening keeps the fewest leading principal components whose
// eigenvalues reach the given fraction of the total variance.
func FitWhitening(x *mat.Dense, fraction float64) (*Whitening, error) {
	if fraction <= 0 || fraction > 1 {
		return nil, fmt.Errorf("whitening fraction %g is not in (0, 1]", fraction)
	}
	return fitWhitening(x, fraction, 0)
}

// fitWhitening keeps the given number of components (0: as many as the
// fraction asks). Calibration folds keep the bundle's number: refitted to
// their fraction, some kept one more or one fewer, whose log-likelihoods
// are not on the bundle's scale (their medians were 7 standard errors from
// unseen images' in one fit of TestPromiseHoldsOnVariedParts).
func fitWhitening(x *mat.Dense, fraction float64, components int) (*Whitening, error) {
	n, d := x.Dims()
	mean, cov, err := meanCov(x)
	if err != nil {
		return nil, err
	}
	var eig mat.EigenSym
	if !eig.Factorize(cov, true) {
		return nil, errors.New("PCA: eigen-decomposition did not converge")
	}
	vals := eig.Values(nil) // ascending
	var vecs mat.Dense
	eig.VectorsTo(&vecs)
	total := 0.0
	for _, v := range vals {
		total += math.Max(v, 0)
	}
	if total <= 0 {
		return nil, fmt.Errorf("PCA: the %d features have no variance over %d images (all identical?)", d, n)
	}
	w := &Whitening{Mean: mean}
	kept := 0.0
	var cols []int
	for i := d - 1; i >= 0 && (kept < fraction*total && components == 0 || len(cols) < components); i-- {
		// Components with (numerically) zero variance cannot be whitened.
		if vals[i] <= 1e-12*total {
			break
		}
		cols = append(cols, i)
		kept += vals[i]
		w.Variances = append(w.Variances, vals[i])
	}
	w.Components = mat.NewDense(d, len(cols), nil)
	for j, c := range cols {
		for i := range d {
			w.Components.Set(i, j, vecs.At(i, c))
		}
	}
	w.Explained = kept / total
	return w, nil
}

// Apply whitens the rows of x.
func (w *Whitening) Apply(x *mat.Dense) *mat.Dense {
	n, d := x.Dims()
	centred := mat.NewDense(n, d, nil)
	centred.Apply(func(_, j int, v float64) float64 { return v - w.Mean[j] }, x)
	var z mat.Dense
	z.Mul(centred, w.Components)
	z.Apply(func(_, j int, v float64) float64 { return v / math.Sqrt(w.Variances[j]) }, &z)
	return &z
}

// Gaussian is a full-covariance normal distribution.
type Gaussian struct {
	Mean   []float64
	chol   mat.Cholesky
	logDet float64
}

// FitGaussian fits mean and covariance to the rows of x, adding
// regularisation*trace/dim to the diagonal (and at least a tiny floor) so
// that a singular covariance, e.g. from fewer images than features, stays
// invertible.
func FitGaussian(x *mat.Dense, regularisation float64) (*Gaussian, error) {
	mean, cov, err := meanCov(x)
	if err != nil {
		return nil, err
	}
	d := len(mean)
	ridge := regularisation * mat.Trace(cov) / float64(d)
	if ridge <= 0 {
		ridge = 1e-12
	}
	for i := range d {
		cov.SetSym(i, i, cov.At(i, i)+ridge)
	}
	g := &Gaussian{Mean: mean}
	if !g.chol.Factorize(cov) {
		return nil, errors.New("gaussian: covariance is not positive definite even after regularisation")
	}
	g.logDet = g.chol.LogDet()
	return g, nil
}

// LogLikelihood is log N(x; mean, cov).
func (g *Gaussian) LogLikelihood(x []float64) float64 {
	d := len(g.Mean)
	diff := mat.NewVecDense(d, nil)
	for i := range d {
		diff.SetVec(i, x[i]-g.Mean[i])
	}
	var sol mat.VecDense
	if err := g.chol.SolveVecTo(&sol, diff); err != nil {
		return math.Inf(-1)
	}
	return -0.5 * (float64(d)*math.Log(2*math.Pi) + g.logDet + mat.Dot(diff, &sol))
}

// meanCov returns the column means and the maximum-likelihood covariance
// (divided by n, as sklearn's and the paper's Gaussian fits do).
func meanCov(x *mat.Dense) ([]float64, *mat.SymDense, error) {
	n, d := x.Dims()
	if n < 2 {
		return nil, nil, fmt.Errorf("need at least 2 samples to fit a distribution, have %d", n)
	}
	mean := make([]float64, d)
	for j := range d {
		mean[j] = mat.Sum(x.ColView(j)) / float64(n)
	}
	centred := mat.NewDense(n, d, nil)
	centred.Apply(func(_, j int, v float64) float64 { return v - mean[j] }, x)
	cov := mat.NewSymDense(d, nil)
	cov.SymOuterK(1/float64(n), centred.T())
	return mean, cov, nil
}

// quadratic folds an optional whitening and a Gaussian into the form the
// detector graph evaluates: ll(x) = Const - 0.5 ||x W + B||^2 with
// W = P L^-T and B = -(m P + mu) L^-T, where P maps x to the Gaussian's space
// (identity without whitening), m is the whitening mean and cov = L L^T.
func quadratic(w *Whitening, g *Gaussian, in int) (models.QuadraticScore, error) {
	k := len(g.Mean)
	p := mat.NewDense(in, k, nil) // x -> feature space
	shift := make([]float64, k)   // feature of x = 0
	if w == nil {
		for i := range in {
			p.Set(i, i, 1)
		}
	} else {
		for i := range in {
			for j := range k {
				p.Set(i, j, w.Components.At(i, j)/math.Sqrt(w.Variances[j]))
			}
		}
		mean := mat.NewDense(1, in, w.Mean)
		var s mat.Dense
		s.Mul(mean, p)
		for j := range k {
			shift[j] = -s.At(0, j)
		}
	}
	// L^-T: solve L^T X = I.
	var l mat.TriDense
	g.chol.LTo(&l)
	var lInvT mat.Dense
	if err := lInvT.Solve(l.T(), eye(k)); err != nil {
		return models.QuadraticScore{}, fmt.Errorf("invert Cholesky factor: %w", err)
	}
	var wMat mat.Dense
	wMat.Mul(p, &lInvT)
	off := mat.NewDense(1, k, nil)
	for j := range k {
		off.Set(0, j, shift[j]-g.Mean[j])
	}
	var b mat.Dense
	b.Mul(off, &lInvT)
	q := models.QuadraticScore{In: in, K: k, W: make([]float32, in*k), B: make([]float32, k),
		Const: -0.5 * (float64(k)*math.Log(2*math.Pi) + g.logDet)}
	for i := range in {
		for j := range k {
			q.W[i*k+j] = float32(wMat.At(i, j))
		}
	}
	for j := range k {
		q.B[j] = float32(b.At(0, j))
	}
	return q, nil
}

func eye(k int) *mat.Dense {
	m := mat.NewDense(k, k, nil)
	for i := range k {
		m.Set(i, i, 1)
	}
	return m
}
