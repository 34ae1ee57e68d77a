package fit

import (
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// binomialTail is P(X >= k) for X ~ Binomial(n, p), summed term by term in
// log space: the independent reference for Observe's beta functions.
func binomialTail(k, n int, p float64) float64 {
	s := 0.0
	for i := k; i <= n; i++ {
		lc, _ := math.Lgamma(float64(n + 1))
		a, _ := math.Lgamma(float64(i + 1))
		b, _ := math.Lgamma(float64(n - i + 1))
		s += math.Exp(lc - a - b + float64(i)*math.Log(p) + float64(n-i)*math.Log1p(-p))
	}
	return s
}

// A breach is more false alarms than the top of the promise's interval
// gives with probability 1%; the observed rate's interval is
// Clopper-Pearson's: at its ends the binomial tails are 2.5%.
func TestObserveFlagsBreachesOfThePromise(t *testing.T) {
	promised := [2]float64{0.0001, 0.0183} // 200 calibration images, 0.5%
	for _, c := range []struct{ k, n int }{{0, 500}, {3, 500}, {8, 500}, {15, 500}, {20, 500}, {2, 100}, {5, 100}, {40, 1000}} {
		o := Observe(c.k, c.n, promised)
		if want := binomialTail(c.k, c.n, promised[1]) < 0.01 && c.k > 0; o.Breach != want {
			t.Errorf("%d of %d: breach %v, binomial tail at %.4f says %v", c.k, c.n, o.Breach, promised[1], want)
		}
		if c.k > 0 {
			if tail := binomialTail(c.k, c.n, o.Rate95[0]); math.Abs(tail-0.025) > 1e-6 {
				t.Errorf("%d of %d: P(X >= k) at the interval's low end %.5f is %.6f, want 0.025", c.k, c.n, o.Rate95[0], tail)
			}
		}
		if up := 1 - binomialTail(c.k+1, c.n, o.Rate95[1]); math.Abs(up-0.025) > 1e-6 {
			t.Errorf("%d of %d: P(X <= k) at the interval's high end %.5f is %.6f, want 0.025", c.k, c.n, o.Rate95[1], up)
		}
	}
	// 500 images at a promise of 0.5% made on 200 images (its interval
	// reaching 1.83%): 20 false alarms (4%) breach it, 15 (3%) are within
	// the chance of 1.83%, 5 (1%) well within.
	if !Observe(20, 500, promised).Breach || Observe(15, 500, promised).Breach || Observe(5, 500, promised).Breach {
		t.Error("20 of 500 must breach a promise of 0.5% made on 200 images, 15 and 5 of 500 not")
	}
}

// Too few calibration scores for the rate: the threshold is their largest,
// the promise is the rate it gives, and the calibration says what would
// keep it; with 1/(1-q) - 1 of them it is kept.
func TestCalibrateSaysWhenThePromiseCannotBeKept(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	scores := func(n int) []float64 {
		s := make([]float64, n)
		for i := range s {
			s[i] = rng.ExpFloat64()
		}
		return s
	}
	few := scores(120)
	c, err := Calibrate(few, 0.995, "test")
	if err != nil {
		t.Fatal(err)
	}
	if c.Threshold != slices.Max(few) || math.Abs(c.ExpectedFalseAlarms-1.0/121) > 1e-12 {
		t.Errorf("120 scores: threshold %g (largest %g), promise %g (want 1/121)", c.Threshold, slices.Max(few), c.ExpectedFalseAlarms)
	}
	for _, want := range []string{"120 normal images", "at least 199", "--threshold-quantile"} {
		if !strings.Contains(c.Unkept, want) {
			t.Errorf("120 scores: %q lacks %q", c.Unkept, want)
		}
	}
	enough := scores(199)
	c, err = Calibrate(enough, 0.995, "test")
	if err != nil {
		t.Fatal(err)
	}
	if c.Unkept != "" || c.ExpectedFalseAlarms > 0.005 {
		t.Errorf("199 scores: promise %g, unkept %q", c.ExpectedFalseAlarms, c.Unkept)
	}
	if _, err := Calibrate([]float64{1, math.NaN()}, 0.9, "test"); err == nil {
		t.Error("a NaN calibration score was accepted")
	}
}
