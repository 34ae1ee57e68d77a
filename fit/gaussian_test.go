package fit

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"gonum.org/v1/gonum/mat"
)

// Closed-form references, independent of gonum: 3x3 inverse and determinant
// by cofactors, 2x2 symmetric eigen-decomposition by the quadratic formula.

func det3(a [3][3]float64) float64 {
	return a[0][0]*(a[1][1]*a[2][2]-a[1][2]*a[2][1]) - a[0][1]*(a[1][0]*a[2][2]-a[1][2]*a[2][0]) + a[0][2]*(a[1][0]*a[2][1]-a[1][1]*a[2][0])
}

func inv3(a [3][3]float64) [3][3]float64 {
	d := det3(a)
	var r [3][3]float64
	for i := range 3 {
		for j := range 3 {
			// cofactor of (j, i)
			r1, r2 := (j+1)%3, (j+2)%3
			c1, c2 := (i+1)%3, (i+2)%3
			r[i][j] = (a[r1][c1]*a[r2][c2] - a[r1][c2]*a[r2][c1]) / d
		}
	}
	return r
}

func sampleData(n, d int, seed uint64, mix [][]float64) *mat.Dense {
	rng := rand.New(rand.NewPCG(seed, 9))
	x := mat.NewDense(n, d, nil)
	for i := range n {
		z := make([]float64, d)
		for k := range z {
			z[k] = rng.NormFloat64()
		}
		for j := range d {
			v := 0.5 * float64(j+1)
			for k := range d {
				v += mix[j][k] * z[k]
			}
			x.Set(i, j, v)
		}
	}
	return x
}

func TestGaussianMatchesClosedForm(t *testing.T) {
	x := sampleData(200, 3, 1, [][]float64{{1, 0.5, 0}, {0, 2, 0.3}, {0.2, 0, 0.7}})
	const ridge = 1e-6
	g, err := FitGaussian(x, ridge)
	if err != nil {
		t.Fatal(err)
	}
	n := 200.0
	var mean [3]float64
	for i := range 200 {
		for j := range 3 {
			mean[j] += x.At(i, j) / n
		}
	}
	var cov [3][3]float64
	for i := range 200 {
		for a := range 3 {
			for b := range 3 {
				cov[a][b] += (x.At(i, a) - mean[a]) * (x.At(i, b) - mean[b]) / n
			}
		}
	}
	tr := (cov[0][0] + cov[1][1] + cov[2][2]) / 3
	for a := range 3 {
		cov[a][a] += ridge * tr
	}
	inv, det := inv3(cov), det3(cov)
	for _, p := range [][]float64{{0.5, 1, 1.5}, {3, -2, 0.1}, {-1, 4, 2}} {
		q := 0.0
		for a := range 3 {
			for b := range 3 {
				q += (p[a] - mean[a]) * inv[a][b] * (p[b] - mean[b])
			}
		}
		want := -0.5 * (3*math.Log(2*math.Pi) + math.Log(det) + q)
		got := g.LogLikelihood(p)
		if math.Abs(got-want) > 1e-6*math.Abs(want) {
			t.Errorf("log-likelihood at %v: %.10g, closed form %.10g", p, got, want)
		}
	}
}

func TestWhiteningMatchesClosedFormPCA(t *testing.T) {
	x := sampleData(300, 2, 2, [][]float64{{2, 0.3}, {0.3, 0.5}})
	var mean [2]float64
	for i := range 300 {
		mean[0] += x.At(i, 0) / 300
		mean[1] += x.At(i, 1) / 300
	}
	var a, b, c float64 // covariance [[a b] [b c]]
	for i := range 300 {
		u, v := x.At(i, 0)-mean[0], x.At(i, 1)-mean[1]
		a, b, c = a+u*u/300, b+u*v/300, c+v*v/300
	}
	disc := math.Sqrt((a-c)*(a-c)/4 + b*b)
	l1, l2 := (a+c)/2+disc, (a+c)/2-disc
	e1 := [2]float64{b, l1 - a} // eigenvector of l1
	norm := math.Hypot(e1[0], e1[1])
	e1[0], e1[1] = e1[0]/norm, e1[1]/norm

	// 90% of the variance: one component if l1 carries it, else both.
	w, err := FitWhitening(x, 0.9)
	if err != nil {
		t.Fatal(err)
	}
	wantK := 2
	if l1/(l1+l2) >= 0.9 {
		wantK = 1
	}
	if len(w.Variances) != wantK {
		t.Fatalf("kept %d components, want %d (explained %.3f by the first)", len(w.Variances), wantK, l1/(l1+l2))
	}
	if math.Abs(w.Variances[0]-l1) > 1e-9*l1 {
		t.Errorf("first variance %g, closed form %g", w.Variances[0], l1)
	}
	// Whitened first coordinate of a point, up to the eigenvector's sign.
	p := mat.NewDense(1, 2, []float64{1.3, -0.4})
	z := w.Apply(p).At(0, 0)
	want := ((1.3-mean[0])*e1[0] + (-0.4-mean[1])*e1[1]) / math.Sqrt(l1)
	if math.Abs(math.Abs(z)-math.Abs(want)) > 1e-6*math.Abs(want) {
		t.Errorf("whitened coordinate %g, closed form ±%g", z, want)
	}
}

// The folded form the graph evaluates equals whitening then the Gaussian.
func TestQuadraticFoldsWhiteningAndGaussian(t *testing.T) {
	x := sampleData(100, 3, 3, [][]float64{{1, 0.2, 0}, {0, 1, 0.5}, {0.1, 0, 0.2}})
	w, err := FitWhitening(x, 0.95)
	if err != nil {
		t.Fatal(err)
	}
	g, err := FitGaussian(w.Apply(x), 1e-6)
	if err != nil {
		t.Fatal(err)
	}
	q, err := quadratic(w, g, 3)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		row := mat.NewDense(1, 3, mat.Row(nil, i, x))
		want := g.LogLikelihood(mat.Row(nil, 0, w.Apply(row)))
		got := q.LogLikelihood(row32(x, i))
		if math.Abs(got-want) > 1e-5*math.Max(1, math.Abs(want)) {
			t.Errorf("row %d: folded %g, direct %g", i, got, want)
		}
	}
}

func TestQuantileInterpolates(t *testing.T) {
	s := []float64{1, 2, 3, 4, 5}
	for _, c := range []struct{ q, want float64 }{{0.5, 3}, {0.25, 2}, {0.9, 4.6}, {1, 5}} {
		if got := quantile(s, c.q); math.Abs(got-c.want) > 1e-12 {
			t.Errorf("quantile %g = %g, want %g", c.q, got, c.want)
		}
	}
}

func TestDefaultBlocks(t *testing.T) {
	if got := DefaultBlocks(12); len(got) != 10 || got[0] != 2 || got[9] != 11 {
		t.Errorf("depth 12: %v, want 2..11", got)
	}
	if got := DefaultBlocks(3); len(got) != 3 || got[0] != 0 {
		t.Errorf("depth 3: %v, want 0..2", got)
	}
}

// AUROC equals the Mann-Whitney probability that an anomalous score exceeds
// a normal one (ties count half).
func TestAUROCMatchesMannWhitney(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 3))
	normal, anomalous := make([]float64, 37), make([]float64, 23)
	for i := range normal {
		normal[i] = float64(rng.IntN(20))
	}
	for i := range anomalous {
		anomalous[i] = float64(rng.IntN(20) + 5)
	}
	wins := 0.0
	for _, a := range anomalous {
		for _, n := range normal {
			switch {
			case a > n:
				wins++
			case a == n:
				wins += 0.5
			}
		}
	}
	want := wins / float64(len(normal)*len(anomalous))
	if got := AUROC(normal, anomalous); math.Abs(got-want) > 1e-12 {
		t.Errorf("AUROC %g, Mann-Whitney %g", got, want)
	}
	if got := AUROC([]float64{1, 2}, []float64{3, 4}); got != 1 {
		t.Errorf("separable AUROC %g, want 1", got)
	}
}

// The conformal threshold's promise checked by brute force: over many
// draws of n normal calibration scores, the share of new normal scores
// above the chosen threshold averages (n+1-j)/(n+1), and its spread matches
// the Beta interval returned with it.
func TestConformalThresholdKeepsItsPromise(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 5))
	const n, draws, fresh = 200, 400, 2000
	sum, inside := 0.0, 0
	var expected, lo, hi float64
	for range draws {
		cal := make([]float64, n)
		for i := range cal {
			cal[i] = rng.ExpFloat64() // any continuous distribution: the promise is distribution-free
		}
		slices.Sort(cal)
		var th float64
		th, expected, lo, hi = conformalThreshold(cal, 0.995)
		above := 0
		for range fresh {
			if rng.ExpFloat64() > th {
				above++
			}
		}
		rate := float64(above) / fresh
		sum += rate
		if rate >= lo && rate <= hi {
			inside++
		}
	}
	if mean := sum / draws; math.Abs(mean-expected) > 0.0015 || expected > 0.005 {
		t.Errorf("mean false-alarm rate %.4f, promised %.4f (at most 0.005)", mean, expected)
	}
	if share := float64(inside) / draws; share < 0.9 {
		t.Errorf("%.0f%% of draws inside the 95%% interval %.4f-%.4f", 100*share, lo, hi)
	}
}
