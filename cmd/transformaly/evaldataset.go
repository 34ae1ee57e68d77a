package main

import (
	"errors"
	"fmt"
	"image"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"gocv.io/x/gocv"

	"github.com/transformaly/transformaly/capture"
	"github.com/transformaly/transformaly/detector"
	"github.com/transformaly/transformaly/fit"
	"github.com/transformaly/transformaly/internal/heatmap"
)

// maxMapSide bounds the side at which anomaly maps meet ground-truth
// masks (both resized to it, masks by nearest neighbour): anomalib's 256,
// so pixel metrics of a full MVTec AD category fit in memory.
const maxMapSide = 256

// aupRoLimit is the false positive rate AUPRO integrates up to (MVTec AD's).
const aupROLimit = 0.3

// kindReport is one defect kind's (or all kinds') figures.
type kindReport struct {
	Images          int     `json:"images"`
	AUROC           float64 `json:"auroc"`
	AUROCPretrained float64 `json:"auroc_pretrained"`
	AUROCStudent    float64 `json:"auroc_student"`
	// AUROCImage is the method's score's, -(ll_pretrained + ll_student):
	// the image-level feature space as the combination takes it.
	AUROCImage    float64  `json:"auroc_image"`
	AUROCPatch    *float64 `json:"auroc_patch,omitempty"`
	DetectionRate float64  `json:"detection_rate"`
	// Pixel metrics, from the anomaly maps (bundles with a patch feature
	// space only).
	PixelAUROC *float64 `json:"pixel_auroc,omitempty"`
	AUPRO      *float64 `json:"aupro,omitempty"`
}

// datasetReport is what eval --dataset prints.
type datasetReport struct {
	Threshold      float64               `json:"threshold"`
	FalseAlarmRate float64               `json:"false_alarm_rate"`
	NormalImages   int                   `json:"normal_images"`
	Kinds          map[string]kindReport `json:"kinds"`
	Overall        kindReport            `json:"overall"`
	MapSide        int                   `json:"map_side,omitempty"` // longest side maps met masks at
	// Precision compares another precision with this one (fp32), with
	// --compare-precision.
	Precision *datasetPrecisionReport `json:"precision_compare,omitempty"`
	scores    map[string][]float64    // per folder (good and each kind), for Precision
}

// scoredSet is the scores (and maps) of one folder of test images.
type scoredSet struct {
	all, pre, stu, patch []float64
	maps                 []fit.PixelMap
}

// evaluateDataset scores an MVTec AD layout under dir: test/good and
// test/<kind> for each defect kind, with ground_truth/<kind>/<name>_mask.png.
func evaluateDataset(det *detector.Detector, dir string, threshold float64, batch int) (datasetReport, error) {
	rep := datasetReport{Threshold: threshold, Kinds: map[string]kindReport{}, scores: map[string][]float64{}}
	layout := "the MVTec AD layout: test/good, test/<defect>/, ground_truth/<defect>/<name>_mask.png"
	if st, err := os.Stat(filepath.Join(dir, "test", "good")); err != nil || !st.IsDir() {
		return rep, fmt.Errorf("dataset %s: no test/good folder (%s)", dir, layout)
	}
	entries, err := os.ReadDir(filepath.Join(dir, "test"))
	if err != nil {
		return rep, fmt.Errorf("dataset %s: %w", dir, err)
	}
	var kinds []string
	for _, e := range entries {
		if e.IsDir() && e.Name() != "good" {
			kinds = append(kinds, e.Name())
		}
	}
	sort.Strings(kinds)
	if len(kinds) == 0 {
		return rep, fmt.Errorf("dataset %s: no defect folder beside test/good (%s)", dir, layout)
	}
	withMaps := det.Info.Patch != nil
	good, err := scoreDatasetFolder(det, dir, "good", threshold, batch, withMaps)
	if err != nil {
		return rep, err
	}
	rep.NormalImages, rep.FalseAlarmRate = len(good.all), fit.FractionAbove(good.all, threshold)
	rep.scores["good"] = good.all
	if withMaps {
		rep.MapSide = maxMapSide
	}
	var overall scoredSet
	for _, kind := range kinds {
		set, err := scoreDatasetFolder(det, dir, kind, threshold, batch, withMaps)
		if err != nil {
			return rep, err
		}
		rep.scores[kind] = set.all
		if rep.Kinds[kind], err = kindFigures(good, set, threshold, det.Info.Patch != nil, withMaps); err != nil {
			return rep, fmt.Errorf("dataset %s, %s: %w", dir, kind, err)
		}
		overall.all, overall.pre, overall.stu = append(overall.all, set.all...), append(overall.pre, set.pre...), append(overall.stu, set.stu...)
		overall.patch, overall.maps = append(overall.patch, set.patch...), append(overall.maps, set.maps...)
	}
	if rep.Overall, err = kindFigures(good, overall, threshold, det.Info.Patch != nil, withMaps); err != nil {
		return rep, fmt.Errorf("dataset %s: %w", dir, err)
	}
	return rep, nil
}

// kindFigures measures a defect set against the normal one.
func kindFigures(good, set scoredSet, threshold float64, patch, withMaps bool) (kindReport, error) {
	k := kindReport{Images: len(set.all), AUROC: fit.AUROC(good.all, set.all), AUROCPretrained: fit.AUROC(good.pre, set.pre),
		AUROCStudent: fit.AUROC(good.stu, set.stu), AUROCImage: fit.AUROC(sums(good.pre, good.stu), sums(set.pre, set.stu)), DetectionRate: fit.FractionAbove(set.all, threshold)}
	if patch {
		a := fit.AUROC(good.patch, set.patch)
		k.AUROCPatch = &a
	}
	if withMaps {
		maps := append(append([]fit.PixelMap{}, good.maps...), set.maps...)
		pix, err := fit.PixelAUROC(maps)
		if errors.Is(err, fit.ErrNoDefectPixels) {
			return k, nil // masks all empty: no pixel metrics for this kind
		}
		if err != nil {
			return k, err
		}
		pro, err := fit.AUPRO(maps, aupROLimit)
		if err != nil {
			return k, err
		}
		k.PixelAUROC, k.AUPRO = &pix, &pro
	}
	return k, nil
}

// scoreDatasetFolder scores test/<kind>, with each image's map and mask
// (all normal for good) when withMaps.
func scoreDatasetFolder(det *detector.Detector, dir, kind string, threshold float64, batch int, withMaps bool) (scoredSet, error) {
	var set scoredSet
	folder := filepath.Join(dir, "test", kind)
	paths, err := fit.ListImages(folder)
	if err != nil {
		return set, err
	}
	if len(paths) == 0 {
		return set, fmt.Errorf("no images (png, jpg, jpeg, bmp) under %s", folder)
	}
	failed, err := scoreFilesWithViews(det, paths, batch, withMaps, threshold, func(p string, view *capture.View, r detector.Result) error {
		set.all, set.pre, set.stu, set.patch = append(set.all, r.Score), append(set.pre, -r.LLPretrained), append(set.stu, -r.LLStudent), append(set.patch, r.PatchScore)
		if !withMaps {
			return nil
		}
		defer view.Release()
		m, err := datasetMap(det, dir, kind, p, view, r)
		if err != nil {
			return err
		}
		set.maps = append(set.maps, m)
		return nil
	})
	if err != nil {
		return set, err
	}
	if failed > 0 {
		return set, fmt.Errorf("%d of %d images under %s could not be read", failed, len(paths), folder)
	}
	return set, nil
}

// datasetMap is an image's anomaly map and ground-truth mask at most
// maxMapSide on the longer side.
func datasetMap(det *detector.Detector, dir, kind, path string, view *capture.View, r detector.Result) (fit.PixelMap, error) {
	w, h := view.Width, view.Height
	if long := max(w, h); long > maxMapSide {
		w, h = max(1, w*maxMapSide/long), max(1, h*maxMapSide/long)
	}
	anomaly, err := heatmap.FromPatchDistances(r.PatchDistances, r.MapCols, r.MapRows, det.Info.Teacher.Config.Grid(), det.Info.Patch.NormalDistance)
	if err != nil {
		return fit.PixelMap{}, err
	}
	scores, err := anomaly.Full(w, h)
	if err != nil {
		return fit.PixelMap{}, err
	}
	m := fit.PixelMap{W: w, H: h, Scores: scores, Mask: make([]bool, w*h)}
	if kind == "good" {
		return m, nil
	}
	name := strings.TrimSuffix(filepath.Base(path), filepath.Ext(path))
	maskPath := filepath.Join(dir, "ground_truth", kind, name+"_mask.png")
	mask := gocv.IMRead(maskPath, gocv.IMReadGrayScale)
	defer mask.Close()
	if mask.Empty() {
		if _, err := os.Stat(maskPath); errors.Is(err, os.ErrNotExist) {
			return m, fmt.Errorf("image %s has no mask %s", path, maskPath)
		}
		return m, fmt.Errorf("mask %s: not an image OpenCV can read", maskPath)
	}
	if mask.Cols() != view.Width || mask.Rows() != view.Height {
		return m, fmt.Errorf("mask %s is %dx%d, but its image %s is %dx%d", maskPath, mask.Cols(), mask.Rows(), path, view.Width, view.Height)
	}
	small := gocv.NewMat()
	defer small.Close()
	gocv.Resize(mask, &small, image.Pt(w, h), 0, 0, gocv.InterpolationNearestNeighbor)
	px, err := small.DataPtrUint8()
	if err != nil {
		return m, err
	}
	for i, v := range px {
		m.Mask[i] = v > 127
	}
	return m, nil
}

// printDatasetReport prints eval --dataset's table.
func printDatasetReport(rep datasetReport) {
	opt := func(x *float64) string {
		if x == nil {
			return "    -"
		}
		return fmt.Sprintf("%.3f", *x)
	}
	fmt.Printf("%-14s %6s %8s %8s %8s %8s %8s %9s %8s %8s\n", "kind", "images", "AUROC", "pretr.", "student", "image", "patch", "detected", "pixAUROC", "AUPRO")
	row := func(name string, k kindReport) {
		fmt.Printf("%-14s %6d %8.3f %8.3f %8.3f %8.3f %8s %9.3f %8s %8s\n", name, k.Images, k.AUROC, k.AUROCPretrained, k.AUROCStudent, k.AUROCImage, opt(k.AUROCPatch), k.DetectionRate, opt(k.PixelAUROC), opt(k.AUPRO))
	}
	names := make([]string, 0, len(rep.Kinds))
	for n := range rep.Kinds {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		row(n, rep.Kinds[n])
	}
	row("all defects", rep.Overall)
	fmt.Printf("normal images %d, false alarms %.4f at threshold %.4g", rep.NormalImages, rep.FalseAlarmRate, rep.Threshold)
	if rep.MapSide > 0 {
		fmt.Printf("; pixel metrics at most %d px a side, AUPRO to a false positive rate of %.1f", rep.MapSide, aupROLimit)
	}
	fmt.Println()
	if math.IsNaN(rep.Overall.AUROC) {
		fmt.Println("(AUROC is NaN: a score was not finite)")
	}
	if rep.Precision != nil {
		printDatasetPrecision(rep.Precision)
	}
}
