package fit

import (
	"cmp"
	"slices"

	"gonum.org/v1/gonum/integrate"
	"gonum.org/v1/gonum/stat"
)

// AUROC is the area under the ROC curve of scores where higher means
// anomalous (gonum's ROC, integrated with the trapezoidal rule).
func AUROC(normal, anomalous []float64) float64 {
	tpr, fpr := roc(normal, anomalous)
	return integrate.Trapezoidal(fpr, tpr)
}

// roc is gonum's ROC curve of the two score sets (it wants the scores
// sorted, classes alongside).
func roc(normal, anomalous []float64) (tpr, fpr []float64) {
	scores := append(slices.Clone(normal), anomalous...)
	idx := make([]int, len(scores))
	for i := range idx {
		idx[i] = i
	}
	slices.SortFunc(idx, func(a, b int) int { return cmp.Compare(scores[a], scores[b]) })
	sorted, classes := make([]float64, len(idx)), make([]bool, len(idx))
	for i, j := range idx {
		sorted[i], classes[i] = scores[j], j >= len(normal)
	}
	tpr, fpr, _ = stat.ROC(nil, sorted, classes, nil)
	return tpr, fpr
}

// FractionAbove is the share of scores above the threshold: the false alarm
// rate of normal images, the detection rate of anomalous ones.
func FractionAbove(scores []float64, threshold float64) float64 {
	n := 0
	for _, x := range scores {
		if x > threshold {
			n++
		}
	}
	return float64(n) / float64(len(scores))
}
