package fit

import (
	"fmt"
	"math"
	"slices"
	"strconv"

	"gonum.org/v1/gonum/stat/distuv"

	"github.com/transformaly/transformaly/models"
)

// Calibration is a threshold and what it promises, from out-of-sample
// scores of normal images.
type Calibration struct {
	Threshold float64
	// Quantiles are the scores' quantiles recorded in a bundle
	// (models.BundleInfo.ScoreQuantiles).
	Quantiles map[string]float64
	models.Calibration
}

// Calibrate sets the threshold that promises a rate of at most 1 - q false
// alarms on new normal images from scores, one per normal image, each made
// by parts (Gaussians, students, patch bank) fitted without that image: the
// split-conformal choice (conformalThreshold), with the rate's mean and 95%
// interval, the scores kept for normal quantiles, and their tail model.
// Scores must be exchangeable with a new normal image's score: a tiled
// bundle gives one per frame, its worst tile's. method says how the scores
// were made (recorded in the bundle). When the scores are too few for the
// rate, the threshold is their largest, Unkept says so and what would keep
// it, and the promise (ExpectedFalseAlarms) is the rate that threshold
// gives.
func Calibrate(scores []float64, q float64, method string) (Calibration, error) {
	if len(scores) == 0 {
		return Calibration{}, fmt.Errorf("calibrate: no scores")
	}
	if !(q > 0 && q < 1) {
		return Calibration{}, fmt.Errorf("calibrate: quantile %g is not in (0, 1)", q)
	}
	s := slices.Clone(scores)
	for _, x := range s {
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return Calibration{}, fmt.Errorf("calibrate: a calibration score is %g", x)
		}
	}
	slices.Sort(s)
	threshold, expected, lo, hi := conformalThreshold(s, q)
	c := Calibration{Threshold: threshold, Quantiles: map[string]float64{},
		Calibration: models.Calibration{Method: method, NormalScores: normalScores(s), ExpectedFalseAlarms: expected,
			FalseAlarms95: [2]float64{lo, hi}}}
	for _, p := range scoreQuantiles {
		c.Quantiles[strconv.FormatFloat(p, 'f', -1, 64)] = quantile(s, p)
	}
	if need := imagesForPromise(q); len(s) < need {
		c.Unkept = fmt.Sprintf("%d normal images cannot keep a promise of %.2g%% false alarms: the threshold is their largest score, which %.2g%% of new normal parts pass; fit on at least %d normal images, or promise %.2g%% (--threshold-quantile %.4g)",
			len(s), 100*(1-q), 100*expected, need, 100*expected, 1-expected)
	}
	return c, nil
}

// imagesForPromise is the fewest calibration scores whose conformal
// threshold keeps a promise of 1 - q: n + 1 >= 1/(1 - q).
func imagesForPromise(q float64) int {
	return int(math.Ceil(1/(1-q)-1e-9)) - 1
}

// The tail model (models.ScoreTail) is fitted to the top 10% of the
// calibration scores: near the 90% quantile the exponential form already
// holds for chi-square-like scores, and it leaves 20 scores from 200
// images (fewer, and no tail model is kept).
const (
	tailShare     = 0.1
	tailMinScores = 20
)

// normalScores keeps sorted out-of-sample scores of normal images, and
// their tail model, for NormalQuantile and Surprise.
func normalScores(sorted []float64) models.NormalScores {
	return models.NormalScores{Images: len(sorted), Scores: evenlySpaced(sorted, 1001), Tail: models.FitScoreTail(sorted, tailShare, tailMinScores)}
}

// scoreQuantiles are the calibration score quantiles recorded in a bundle.
var scoreQuantiles = []float64{0.5, 0.9, 0.95, 0.99, 0.995, 0.999}

// evenlySpaced keeps at most m of the sorted xs, evenly spaced by rank,
// the first and last included.
func evenlySpaced(xs []float64, m int) []float64 {
	if len(xs) <= m {
		return slices.Clone(xs)
	}
	out := make([]float64, m)
	for i := range m {
		out[i] = xs[int(math.Round(float64(i)*float64(len(xs)-1)/float64(m-1)))]
	}
	return out
}

// conformalThreshold picks, from n sorted exchangeable calibration scores,
// the j-th smallest with j = ceil(q (n+1)) (at most n): a new normal score
// then lies above it with probability (n+1-j)/(n+1), at most 1-q when
// n+1 >= 1/(1-q) (split-conformal prediction). That rate, over the draw of
// the calibration images, is Beta(n+1-j, j) distributed: its mean and 95%
// interval come back with the threshold.
func conformalThreshold(sorted []float64, q float64) (threshold, expected, lo, hi float64) {
	n := len(sorted)
	j := min(max(int(math.Ceil(q*float64(n+1))), 1), n)
	b := distuv.Beta{Alpha: float64(n + 1 - j), Beta: float64(j)}
	return sorted[j-1], b.Mean(), b.Quantile(0.025), b.Quantile(0.975)
}

// ObservedRate is what normal images scored at a bundle's threshold show
// against its promise: the false alarms' share, its exact 95% interval
// (Clopper-Pearson), and whether it breaches the promise: more false
// alarms than a rate at the top of the promise's own 95% interval gives
// with probability 1% (a one-sided binomial test there), so a breach is
// not the luck of a small sample.
type ObservedRate struct {
	FalseAlarms, Images int
	Rate                float64
	Rate95              [2]float64
	Breach              bool
}

// Observe compares falseAlarms of images normal images with the promise of
// a calibration (promised95: its interval of the rate).
func Observe(falseAlarms, images int, promised95 [2]float64) ObservedRate {
	o := ObservedRate{FalseAlarms: falseAlarms, Images: images}
	if images == 0 {
		return o
	}
	k, n := float64(falseAlarms), float64(images)
	o.Rate = k / n
	if falseAlarms > 0 {
		o.Rate95[0] = distuv.Beta{Alpha: k, Beta: n - k + 1}.Quantile(0.025)
	}
	o.Rate95[1] = 1
	if falseAlarms < images {
		o.Rate95[1] = distuv.Beta{Alpha: k + 1, Beta: n - k}.Quantile(0.975)
	}
	// P(X >= k) for X ~ Binomial(n, p) is the regularised incomplete beta
	// I_p(k, n-k+1), the CDF of Beta(k, n-k+1) at p.
	if p := promised95[1]; falseAlarms > 0 && p < 1 {
		o.Breach = distuv.Beta{Alpha: k, Beta: n - k + 1}.CDF(p) < 0.01
	}
	return o
}
