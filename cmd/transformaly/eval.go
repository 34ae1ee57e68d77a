package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"

	"github.com/spf13/pflag"

	"github.com/transformaly/transformaly/detector"
	"github.com/transformaly/transformaly/fit"
	"github.com/transformaly/transformaly/internal/atomicfile"
	"github.com/transformaly/transformaly/models"
)

// evalReport is what eval prints.
type evalReport struct {
	AUROC           float64 `json:"auroc"`
	AUROCPretrained float64 `json:"auroc_pretrained"`
	AUROCStudent    float64 `json:"auroc_student"`
	// AUROCImage is the method's score's, -(ll_pretrained + ll_student):
	// the image-level feature space as the combination takes it.
	AUROCImage float64 `json:"auroc_image"`
	// AUROCPatch is the patch score's alone (bundles with a patch feature
	// space only).
	AUROCPatch     *float64 `json:"auroc_patch,omitempty"`
	Threshold      float64  `json:"threshold"`
	FalseAlarmRate float64  `json:"false_alarm_rate"`
	// What the bundle's calibration promised for its own threshold (absent
	// for bundles fitted before calibration was recorded).
	ExpectedFalseAlarmRate *float64    `json:"expected_false_alarm_rate,omitempty"`
	ExpectedFalseAlarms95  *[2]float64 `json:"expected_false_alarm_rate_95,omitempty"`
	// The normal images flagged, the observed rate's exact 95% interval,
	// and whether it breaches the promise (more than the top of the
	// promise's interval gives with probability 1%; absent without a
	// promise). PromiseUnkept is the bundle's own word that its threshold
	// cannot keep the promise.
	FalseAlarms      int        `json:"false_alarms"`
	FalseAlarmRate95 [2]float64 `json:"false_alarm_rate_95"`
	PromiseBreached  *bool      `json:"promise_breached,omitempty"`
	PromiseUnkept    string     `json:"promise_unkept,omitempty"`
	DetectionRate    float64    `json:"detection_rate"`
	NormalImages     int        `json:"normal_images"`
	AnomalousImages  int        `json:"anomalous_images"`
	SkippedImages    int        `json:"skipped_images"`
	// Precision compares FP16 or INT8 against FP32 (with --compare-precision).
	Precision *precisionReport `json:"precision_compare,omitempty"`
}

func evalCommand(fs *pflag.FlagSet) func([]string) error {
	var model modelFlags
	var rt runtimeFlags
	model.register(fs)
	normalDir := fs.String("normal", "", "folder of normal test images (or --dataset)")
	anomalousDir := fs.String("anomalous", "", "folder of anomalous test images (or --dataset)")
	dataset := fs.String("dataset", "", "an MVTec AD layout instead of --normal and --anomalous: test/good, test/<defect>/, ground_truth/<defect>/<name>_mask.png; image AUROC per defect kind and feature space, pixel AUROC and AUPRO (to a false positive rate of 0.3) from the anomaly maps")
	asJSON := fs.Bool("json", false, "print one JSON object: auroc, auroc_pretrained, auroc_student, auroc_patch, false_alarm_rate, detection_rate, threshold and image counts")
	compare := fs.String("compare-precision", "", "also score at `precision` fp16 or int8 (bare: fp16) and report its AUROC and score differences against fp32 (per defect kind with --dataset); --model's --precision should then be fp32")
	fs.Lookup("compare-precision").NoOptDefVal = models.FP16
	batch := fs.Int("batch-size", 8, "images per ONNX Runtime call")
	chart := fs.String("chart", "", "also write a PNG `file` with the ROC curve and the score distributions around the threshold")
	rt.register(fs)
	return func(args []string) error {
		// pflag gives a flag with a default value its own value only after
		// "=": --compare-precision int8 leaves int8 as an argument.
		if *compare == models.FP16 && len(args) == 1 && (args[0] == models.INT8 || args[0] == models.FP16) {
			*compare, args = args[0], nil
		}
		if len(args) > 0 {
			return usageError("unexpected arguments %q", args)
		}
		if (*dataset == "") == (*normalDir == "" || *anomalousDir == "") {
			return usageError("give --normal and --anomalous, or --dataset")
		}
		if *compare != "" && *compare != models.FP16 && *compare != models.INT8 {
			return usageError("--compare-precision %q is not fp16 or int8", *compare)
		}
		if *dataset != "" && *chart != "" {
			return usageError("--chart goes with --normal and --anomalous, not --dataset")
		}
		if *batch < 1 {
			return usageError("--batch-size must be at least 1")
		}
		det, err := model.load(rt)
		if err != nil {
			return err
		}
		defer det.Close()
		if *chart != "" {
			if err := atomicfile.Writable(*chart); err != nil {
				return fmt.Errorf("--chart: %w", err)
			}
		}
		if *dataset != "" {
			rep, err := evaluateDataset(det, *dataset, model.thresholdFor(det), *batch)
			if err != nil {
				return err
			}
			if *compare != "" {
				other, err := model.loadAs(rt, *compare)
				if err != nil {
					return err
				}
				defer other.Close()
				otherRep, err := evaluateDataset(other, *dataset, model.thresholdFor(det), *batch)
				if err != nil {
					return err
				}
				if rep.Precision, err = compareDatasetPrecision(*compare, rep, otherRep); err != nil {
					return err
				}
			}
			if *asJSON {
				return json.NewEncoder(os.Stdout).Encode(rep)
			}
			printDatasetReport(rep)
			return nil
		}
		rep, scores, err := evaluate(det, *normalDir, *anomalousDir, model.thresholdFor(det), *batch)
		if err != nil {
			return err
		}
		if *compare != "" {
			other, err := model.loadAs(rt, *compare)
			if err != nil {
				return err
			}
			defer other.Close()
			otherRep, otherScores, err := evaluate(other, *normalDir, *anomalousDir, rep.Threshold, *batch)
			if err != nil {
				return err
			}
			p := comparePrecision(*compare, rep.AUROC, scores, otherRep.AUROC, otherScores, rep.Threshold)
			rep.Precision = &p
		}
		if *chart != "" {
			if err := fit.WriteEvalChart(*chart, scores[:rep.NormalImages], scores[rep.NormalImages:], rep.Threshold); err != nil {
				return err
			}
		}
		if *asJSON {
			return json.NewEncoder(os.Stdout).Encode(rep)
		}
		printReport(rep)
		return nil
	}
}

func printReport(rep evalReport) {
	fmt.Printf("images: %d normal, %d anomalous (%d skipped)\n", rep.NormalImages, rep.AnomalousImages, rep.SkippedImages)
	fmt.Printf("AUROC: %.4f combined, %.4f pretrained feature, %.4f teacher-student feature, %.4f their sum (the method's score)", rep.AUROC, rep.AUROCPretrained, rep.AUROCStudent, rep.AUROCImage)
	if rep.AUROCPatch != nil {
		fmt.Printf(", %.4f patch feature", *rep.AUROCPatch)
	}
	fmt.Println()
	fmt.Printf("at threshold %.4g: false alarm rate %.4f, detection rate %.4f\n", rep.Threshold, rep.FalseAlarmRate, rep.DetectionRate)
	fmt.Printf("false alarms: %d of %d normal images (95%% interval of the rate %.4f-%.4f)\n", rep.FalseAlarms, rep.NormalImages, rep.FalseAlarmRate95[0], rep.FalseAlarmRate95[1])
	if e := rep.ExpectedFalseAlarmRate; e != nil {
		fmt.Printf("the bundle's calibration promised a false alarm rate of %.4f (95%% interval %.4f-%.4f) at its threshold\n", *e, rep.ExpectedFalseAlarms95[0], rep.ExpectedFalseAlarms95[1])
	}
	if rep.PromiseUnkept != "" {
		fmt.Printf("the bundle says its threshold cannot keep its promise: %s\n", rep.PromiseUnkept)
	}
	if b := rep.PromiseBreached; b != nil && *b {
		fmt.Printf("BREACH: %d false alarms of %d are more than the promise allows (under 1%% likely at its 95%% upper rate %.4f): these normal images differ from those the bundle was fitted on (new lighting, parts, camera position?); refit on normal images like them, or raise the threshold\n",
			rep.FalseAlarms, rep.NormalImages, rep.ExpectedFalseAlarms95[1])
	}
	if p := rep.Precision; p != nil {
		precision := models.FP16
		if p.AUROCInt8 != nil {
			precision = models.INT8
		}
		fmt.Println(p.line(precision))
	}
}

// evaluate scores every image under the two folders and measures AUROC and
// the rates at the threshold.
func evaluate(det *detector.Detector, normalDir, anomalousDir string, threshold float64, batch int) (evalReport, []float64, error) {
	rep := evalReport{Threshold: threshold}
	type scores struct{ all, pre, stu, patch []float64 }
	var sets [2]scores
	for i, dir := range []string{normalDir, anomalousDir} {
		paths, err := fit.ListImages(dir)
		if err != nil {
			return rep, nil, err
		}
		if len(paths) == 0 {
			return rep, nil, fmt.Errorf("no images (png, jpg, jpeg, bmp) under %s", dir)
		}
		failed, err := scoreFiles(det, paths, batch, rep.Threshold, func(_ string, r detector.Result) error {
			sets[i].all = append(sets[i].all, r.Score)
			sets[i].pre = append(sets[i].pre, -r.LLPretrained)
			sets[i].stu = append(sets[i].stu, -r.LLStudent)
			sets[i].patch = append(sets[i].patch, r.PatchScore)
			return nil
		})
		if err != nil {
			return rep, nil, err
		}
		rep.SkippedImages += failed
		if len(sets[i].all) == 0 {
			return rep, nil, fmt.Errorf("no readable images under %s", dir)
		}
	}
	rep.NormalImages, rep.AnomalousImages = len(sets[0].all), len(sets[1].all)
	rep.AUROC = fit.AUROC(sets[0].all, sets[1].all)
	rep.AUROCPretrained = fit.AUROC(sets[0].pre, sets[1].pre)
	rep.AUROCStudent = fit.AUROC(sets[0].stu, sets[1].stu)
	rep.AUROCImage = fit.AUROC(sums(sets[0].pre, sets[0].stu), sums(sets[1].pre, sets[1].stu))
	if det.Info.Patch != nil {
		a := fit.AUROC(sets[0].patch, sets[1].patch)
		rep.AUROCPatch = &a
	}
	rep.FalseAlarmRate = fit.FractionAbove(sets[0].all, rep.Threshold)
	rep.FalseAlarms = int(math.Round(rep.FalseAlarmRate * float64(rep.NormalImages)))
	c := det.Info.Calibration
	observed := fit.Observe(rep.FalseAlarms, rep.NormalImages, c.FalseAlarms95)
	rep.FalseAlarmRate95 = observed.Rate95
	if c.Images > 0 && threshold == det.Info.Threshold {
		rep.ExpectedFalseAlarmRate, rep.ExpectedFalseAlarms95 = &c.ExpectedFalseAlarms, &c.FalseAlarms95
		rep.PromiseBreached, rep.PromiseUnkept = &observed.Breach, c.Unkept
	}
	rep.DetectionRate = fit.FractionAbove(sets[1].all, rep.Threshold)
	return rep, append(sets[0].all, sets[1].all...), nil
}

// sums adds xs and ys element by element.
func sums(xs, ys []float64) []float64 {
	out := make([]float64, len(xs))
	for i := range out {
		out[i] = xs[i] + ys[i]
	}
	return out
}
