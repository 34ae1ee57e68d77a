package fit

import (
	"math/rand/v2"
	"slices"
	"testing"
)

// Fitted on few normal images (30: too few for the calibration's tail
// model), the combined score still rises past the largest normal score in
// either space: a gross defect scores above every calibration score, so
// above a threshold that is their largest, and a grosser one higher still
// (a surprise that stopped at the largest normal score tied them).
func TestCombinationRisesPastEveryNormalScore(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	image, patch := make([]float64, 30), make([]float64, 30)
	for i := range image {
		image[i], patch[i] = 100+10*rng.NormFloat64(), 3+0.5*rng.NormFloat64()
	}
	c, calibration, err := fitCombination(image, patch, DefaultImageWeight)
	if err != nil {
		t.Fatal(err)
	}
	top := slices.Max(calibration)
	// Past the largest normal score of a space, 10 and 20 of its
	// standard deviations: the image-level space's weight holds a score
	// just past its largest back (by ln 20), not one that far.
	for _, x := range [][2]float64{{slices.Max(image) + 100, 3}, {100, slices.Max(patch) + 5}} {
		s, grosser := c.Score(x[0], x[1]), c.Score(2*x[0]-100, 2*x[1]-3)
		if !(s > top && grosser > s) {
			t.Errorf("scores %v far past every normal one: %g, grosser %g; calibration scores up to %g", x, s, grosser, top)
		}
	}
	if _, _, err := fitCombination(image, patch[:29], DefaultImageWeight); err == nil {
		t.Error("29 patch scores for 30 images were combined")
	}
}
