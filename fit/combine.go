package fit

import (
	"fmt"
	"math"
	"slices"

	"github.com/transformaly/transformaly/models"
)

// DefaultImageWeight is the image-level feature space's share of the
// false-alarm rate in a combination (models.Combination.ImageWeight), the
// patch space's being the rest: the method's score needs ln 20 (3.0) more
// surprise than the patch score to set the combined score. Measured on
// synthetic washers at 128 px (random 6-block teacher, patch 8, 200 normal
// images, 60 of each kind, 3 seeds), the combined image AUROC against the
// better space alone, on average: at weights 0.5 / 0.2 / 0.1 / 0.05 / 0.02,
// chips -0.046 / -0.017 / -0.011 / -0.008 / -0.004 (the patch space alone
// 0.90-0.93, the method's score 0.53-0.63), cracks -0.008 to 0.000, every
// other kind (holes, stains, a nut for a washer, gross defects) within
// 0.002 at any weight; the sum the bundles made before (format 2):
// chips -0.071. Small defects detected at the calibrated threshold: 30%
// with that sum, 56% at 0.05. A semantic anomaly the image-level space sees far better
// than patches gives up ln 20 of its surprise, small beside how far past
// normal parts such an anomaly scores.
const DefaultImageWeight = 0.05

// fitCombination fits the combination of a bundle's two feature spaces on
// normal frames' out-of-sample scores in each (the method's score and the
// patch score; a tiled frame's, its tiles' largest), and gives each
// frame's combined score, to calibrate the threshold on.
func fitCombination(image, patch []float64, imageWeight float64) (models.Combination, []float64, error) {
	if len(image) != len(patch) {
		return models.Combination{}, nil, fmt.Errorf("combine feature spaces: %d image scores and %d patch scores", len(image), len(patch))
	}
	for _, x := range slices.Concat(image, patch) {
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return models.Combination{}, nil, fmt.Errorf("combine feature spaces: an out-of-sample score is %g", x)
		}
	}
	c := models.Combination{Image: spaceScores(image), Patch: spaceScores(patch), ImageWeight: imageWeight}
	scores := make([]float64, len(image))
	for i := range scores {
		scores[i] = c.Score(image[i], patch[i])
	}
	return c, scores, nil
}

// spaceScores keeps a feature space's out-of-sample normal scores for a
// combination. Unlike the calibration's (tailMinScores), their tail model
// is fitted on as few as 2 scores (the top 10%, or 2 of fewer than 20): a
// surprise that stopped rising past the largest normal score would score a
// gross defect no higher than that normal image, on which the threshold of
// a fit on few images sits.
func spaceScores(scores []float64) models.NormalScores {
	sorted := slices.Sorted(slices.Values(scores))
	n := len(sorted)
	k := max(int(math.Floor(tailShare*float64(n))), 2)
	return models.NormalScores{Images: n, Scores: evenlySpaced(sorted, 1001), Tail: models.FitScoreTail(sorted, (float64(k)+0.5)/float64(n), 2)}
}
