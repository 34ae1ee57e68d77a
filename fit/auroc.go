package fit

import (
	"sort"

	"gonum.org/v1/gonum/integrate"
	"gonum.org/v1/gonum/stat"
)

// AUROC is the area under the ROC curve of scores where higher means
// anomalous (gonum's ROC, integrated with the trapezoidal rule).
func AUROC(normal, anomalous []float64) float64 {
	scores := append(append([]float64{}, normal...), anomalous...)
	classes := make([]bool, len(scores))
	for i := len(normal); i < len(scores); i++ {
		classes[i] = true
	}
	idx := make([]int, len(scores))
	for i := range idx {
		idx[i] = i
	}
	sort.Slice(idx, func(a, b int) bool { return scores[idx[a]] < scores[idx[b]] })
	sorted, sortedClasses := make([]float64, len(scores)), make([]bool, len(scores))
	for i, j := range idx {
		sorted[i], sortedClasses[i] = scores[j], classes[j]
	}
	tpr, fpr, _ := stat.ROC(nil, sorted, sortedClasses, nil)
	return integrate.Trapezoidal(fpr, tpr)
}
