package main

import (
	"fmt"
	"math"
	"sort"

	"github.com/transformaly/transformaly/models"
)

// precisionReport says what a precision (fp16 or int8) costs against fp32
// on the evaluated images: AUROC, score differences, and the verdicts at
// the threshold that change. Its keys are all numbers; auroc_fp16 or
// auroc_int8 says which precision was compared.
type precisionReport struct {
	AUROCFP32          float64  `json:"auroc_fp32"`
	AUROCFP16          *float64 `json:"auroc_fp16,omitempty"`
	AUROCInt8          *float64 `json:"auroc_int8,omitempty"`
	AUROCDifference    float64  `json:"auroc_difference"`
	MaxScoreDifference float64  `json:"max_score_difference"`
	MeanScoreDiff      float64  `json:"mean_score_difference"`
	VerdictsChanged    int      `json:"verdicts_changed"`
}

// comparePrecision compares the fp32 AUROC and scores with another
// precision's (scores of the same images in the same order), verdicts at
// threshold.
func comparePrecision(precision string, aurocFP32 float64, fp32Scores []float64, auroc float64, scores []float64, threshold float64) precisionReport {
	p := precisionReport{AUROCFP32: aurocFP32, AUROCDifference: auroc - aurocFP32}
	if precision == models.INT8 {
		p.AUROCInt8 = &auroc
	} else {
		p.AUROCFP16 = &auroc
	}
	for i := range fp32Scores {
		d := math.Abs(fp32Scores[i] - scores[i])
		p.MaxScoreDifference = math.Max(p.MaxScoreDifference, d)
		p.MeanScoreDiff += d / float64(len(fp32Scores))
		if (fp32Scores[i] > threshold) != (scores[i] > threshold) {
			p.VerdictsChanged++
		}
	}
	return p
}

func (p precisionReport) line(precision string) string {
	auroc := p.AUROCFP32 + p.AUROCDifference
	return fmt.Sprintf("%s vs fp32: AUROC %.4f vs %.4f (%+.4f), score difference max %.4g mean %.4g, %d verdicts changed",
		precision, auroc, p.AUROCFP32, p.AUROCDifference, p.MaxScoreDifference, p.MeanScoreDiff, p.VerdictsChanged)
}

// datasetPrecisionReport is eval --dataset --compare-precision's: each
// defect kind's AUROC and score differences (over its images) against
// fp32, and all defects together (score differences over every image,
// normal ones included).
type datasetPrecisionReport struct {
	Precision          string                     `json:"precision"`
	Kinds              map[string]precisionReport `json:"kinds"`
	Overall            precisionReport            `json:"overall"`
	FalseAlarmRateFP32 float64                    `json:"false_alarm_rate_fp32"`
	FalseAlarmRate     float64                    `json:"false_alarm_rate"` // at the precision compared
}

// compareDatasetPrecision compares two evaluations of the same dataset.
func compareDatasetPrecision(precision string, fp32, other datasetReport) (*datasetPrecisionReport, error) {
	p := &datasetPrecisionReport{Precision: precision, Kinds: map[string]precisionReport{},
		FalseAlarmRateFP32: fp32.FalseAlarmRate, FalseAlarmRate: other.FalseAlarmRate}
	var all, allOther []float64
	for _, kind := range sortedKinds(fp32.scores) {
		a, b := fp32.scores[kind], other.scores[kind]
		if len(a) != len(b) {
			return nil, fmt.Errorf("compare precision: %d images of %s at fp32 but %d at %s", len(a), kind, len(b), precision)
		}
		all, allOther = append(all, a...), append(allOther, b...)
		if kind != "good" {
			p.Kinds[kind] = comparePrecision(precision, fp32.Kinds[kind].AUROC, a, other.Kinds[kind].AUROC, b, fp32.Threshold)
		}
	}
	p.Overall = comparePrecision(precision, fp32.Overall.AUROC, all, other.Overall.AUROC, allOther, fp32.Threshold)
	return p, nil
}

func sortedKinds(m map[string][]float64) []string {
	kinds := make([]string, 0, len(m))
	for k := range m {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	return kinds
}

func printDatasetPrecision(p *datasetPrecisionReport) {
	fmt.Printf("%s vs fp32, per kind:\n", p.Precision)
	names := make([]string, 0, len(p.Kinds))
	for n := range p.Kinds {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Printf("  %-14s %s\n", n, p.Kinds[n].line(p.Precision))
	}
	fmt.Printf("  %-14s %s\n", "all defects", p.Overall.line(p.Precision))
	fmt.Printf("  false alarms at the threshold: %.4f at %s, %.4f at fp32\n", p.FalseAlarmRate, p.Precision, p.FalseAlarmRateFP32)
}
