package models_test

import (
	"math"
	"testing"

	"github.com/transformaly/transformaly/models"
)

// someCombination is a valid combination for bundles whose scores a test
// does not look at.
var someCombination = models.Combination{Image: models.NormalScores{Images: 1, Scores: []float64{0}},
	Patch: models.NormalScores{Images: 1, Scores: []float64{0}}, ImageWeight: 0.5}

// A space's surprise is -ln of the share of normal scores above, counted
// by hand: 0 below them all, -ln(1 - k/(n+1)) at the k-th of n, and past
// the tail model's threshold growing by 1 per tail scale. The combined
// score is the larger surprise less -ln of its space's weight, and NaN
// when either score is.
func TestCombinationScore(t *testing.T) {
	const n = 99
	normal := make([]float64, n)
	for i := range normal {
		normal[i] = float64(i + 1) // 1..99
	}
	img := models.NormalScores{Images: n, Scores: normal}
	for _, c := range []struct{ score, want float64 }{
		{-5, 0}, {0.5, 0}, {1, -math.Log(1 - 1.0/100)}, {50, -math.Log(1 - 50.0/100)}, {99, math.Log(100)}, {120, math.Log(100)},
	} {
		if got := img.Surprise(c.score); math.Abs(got-c.want) > 1e-12 {
			t.Errorf("surprise of %g among 1..99: %g, want %g", c.score, got, c.want)
		}
	}
	withTail := img
	withTail.Tail = models.FitScoreTail(normal, 0.1, 5) // from 90, 9 of 99 above (a share of 10/100), mean excess 5
	if got, want := withTail.Surprise(90+2*5), -math.Log(10.0/100)+2; math.Abs(got-want) > 1e-12 {
		t.Errorf("two tail scales past the tail's start: surprise %g, want %g", got, want)
	}
	patch := models.NormalScores{Images: 3, Scores: []float64{10, 20, 30}}
	c := models.Combination{Image: img, Patch: patch, ImageWeight: 0.2}
	for _, x := range []struct{ image, patch float64 }{{50, 10}, {99, 30}, {1, 25}, {0, 0}} {
		want := math.Max(img.Surprise(x.image)+math.Log(0.2), patch.Surprise(x.patch)+math.Log(0.8))
		if got := c.Score(x.image, x.patch); math.Abs(got-want) > 1e-12 {
			t.Errorf("score of %v: %g, want %g", x, got, want)
		}
	}
	if s := c.Score(50, math.NaN()); !math.IsNaN(s) {
		t.Errorf("a NaN patch score combined to %g", s)
	}
	if s := c.Score(math.NaN(), 10); !math.IsNaN(s) {
		t.Errorf("a NaN method score combined to %g", s)
	}
}
