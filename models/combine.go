package models

import (
	"fmt"
	"math"
	"slices"
)

// Combination makes a bundle's score from its two feature spaces: the
// image-level one (the method's score, OutputScore: -(ll_pretrained +
// ll_student)) and the patch space (OutputPatchScore, the largest patch
// distance). Each becomes its surprise under normal parts' out-of-sample
// scores in that space (NormalScores.Surprise: -ln of the share of normal
// parts scoring higher), and the score is the larger of the two, each less
// -ln of its weight: -ln of the smaller weighted tail probability (a
// weighted Bonferroni rule). Either space alone can then raise the score,
// as far as its evidence goes, and the other space's ordinary variation on
// normal parts adds nothing to it. Summing the two (the method's sum of
// log-likelihoods plus a patch term, before) let the image-level spaces'
// noise on normal parts bury a few hot patches: small defects found by the
// patch space alone at image AUROC 0.90-0.93 scored 0.80-0.87 combined.
//
// The maximum also commutes with a tiled frame's worst tile: the frame's
// score from its tiles' largest image and patch scores is its worst tile's
// score.
type Combination struct {
	Image NormalScores `json:"image"` // of the method's score
	Patch NormalScores `json:"patch"` // of the patch score
	// ImageWeight is the image-level space's share of the false-alarm
	// rate, in (0, 1); the patch space's is the rest.
	ImageWeight float64 `json:"image_weight"`
}

// Score is the combined score of a method's score image and a patch
// score; NaN when either is.
func (c Combination) Score(image, patch float64) float64 {
	return max(c.Image.Surprise(image)+math.Log(c.ImageWeight), c.Patch.Surprise(patch)+math.Log1p(-c.ImageWeight))
}

// check validates a combination read from a bundle.
func (c Combination) check() error {
	if !(c.ImageWeight > 0 && c.ImageWeight < 1) {
		return fmt.Errorf("combination: image weight %g is not in (0, 1)", c.ImageWeight)
	}
	for name, n := range map[string]NormalScores{"image": c.Image, "patch": c.Patch} {
		if err := n.check(); err != nil {
			return fmt.Errorf("combination: %s scores: %w", name, err)
		}
	}
	return nil
}

// check validates normal scores read from a bundle.
func (n NormalScores) check() error {
	if len(n.Scores) == 0 || n.Images < len(n.Scores) {
		return fmt.Errorf("%d scores kept of %d images", len(n.Scores), n.Images)
	}
	for _, x := range n.Scores {
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return fmt.Errorf("a score is %g", x)
		}
	}
	if !slices.IsSorted(n.Scores) {
		return fmt.Errorf("scores not sorted")
	}
	if t := n.Tail; t != nil && !(t.Scale > 0 && t.Share > 0 && t.Share < 1) {
		return fmt.Errorf("tail of scale %g and share %g", t.Scale, t.Share)
	}
	return nil
}
