package fit

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/transformaly/transformaly/detector"
	"github.com/transformaly/transformaly/models"
)

// The threshold at the precision that runs. The int8 detector's scores are
// the fp32 ones plus a little quantization noise, and noise in the features
// raises Gaussian scores more often than it lowers them: fitted bundles
// scored 1,000 unseen normal parts' method scores 0.2-1.4 higher on average
// at int8, up to 19 for one part, against a threshold 20-33 above the
// normal median (TestInt8KeepsThePromise, before the feature spaces were
// combined by their surprises). A threshold calibrated at fp32 and used at
// int8 then flags more normal parts than it promised. A fit at int8 sets it
// on int8 scores: each normal image's out-of-sample score in each feature
// space moved by the difference between its int8 and fp32 scores there
// under the fitted bundle, the combination fitted again on those (the
// out-of-sample parts themselves are gone by then; their weights are close
// to the bundle's, and the noise is the images' and the weights'
// rounding, which they share).

// calibrateInt8 re-sets the threshold of the bundle a fit wrote on int8
// scores of its normal images, oos being their out-of-sample scores, and
// rewrites the bundle with it.
func (o *Options) calibrateInt8(ctx context.Context, info models.BundleInfo, oos *outOfSample) (models.BundleInfo, error) {
	paths, err := ListImages(o.NormalDir)
	if err != nil {
		return info, err
	}
	images, _, err := LoadImages(ctx, paths, o.Teacher.ImageSize, o.memoryBudget(), o.spillDir())
	if err != nil {
		return info, err
	}
	defer images.Close()
	if images.Len() != len(oos.pretrained) {
		return info, fmt.Errorf("calibrate at int8: %d normal images now, %d when fitted (changed during the fit?)", images.Len(), len(oos.pretrained))
	}
	slog.Info("calibrating the threshold at int8: scoring the normal images at fp32 and int8", "images", images.Len())
	// Per precision, each image's method score and patch score.
	var image, patch [2][]float64
	for k, precision := range []string{models.FP32, models.INT8} {
		d, err := detector.Load(o.Out, detector.RunnerOptions{Threads: o.Threads, Provider: "cpu", Precision: precision})
		if err != nil {
			return info, fmt.Errorf("calibrate at int8: %w", err)
		}
		var buf []byte
		all := allIndices(images.Len())
		for s := 0; s < len(all) && err == nil; s += o.BatchSize {
			idx := all[s:min(s+o.BatchSize, len(all))]
			if buf, err = images.Batch(idx, buf); err != nil {
				break
			}
			var res []detector.Result
			if res, err = d.Score(buf, len(idx), info.Threshold); err == nil {
				for _, r := range res {
					image[k], patch[k] = append(image[k], -(r.LLPretrained+r.LLStudent)), append(patch[k], r.PatchScore)
				}
			}
			if ctx.Err() != nil {
				err = ErrInterrupted
			}
		}
		d.Close()
		if err != nil {
			return info, fmt.Errorf("calibrate at int8: %w", err)
		}
	}
	calib := make([]float64, len(image[0]))
	for i := range calib {
		calib[i] = -(oos.pretrained[i] + oos.student[i]) + image[1][i] - image[0][i]
	}
	if p := info.Patch; p != nil {
		calibPatch := make([]float64, len(calib))
		for i := range calibPatch {
			calibPatch[i] = oos.patch[i] + patch[1][i] - patch[0][i]
		}
		if p.Combination, calib, err = fitCombination(calib, calibPatch, p.Combination.ImageWeight); err != nil {
			return info, fmt.Errorf("calibrate at int8: %w", err)
		}
	}
	cal, err := Calibrate(calib, o.Quantile, info.Calibration.Method+"; at int8: each space's score moved by its int8 score's difference from its fp32 one under the bundle")
	if err != nil {
		return info, err
	}
	cal.Provider, cal.Precision = "cpu", models.INT8
	slog.Info("threshold set at int8", "fp32", info.Threshold, "int8", cal.Threshold)
	info.Threshold, info.ScoreQuantiles, info.Calibration = cal.Threshold, cal.Quantiles, cal.Calibration
	_, mf, err := models.ReadBundle(o.Out)
	if err != nil {
		return info, err
	}
	v, students, scoring, err := models.DecodeBundle(info, mf)
	if err != nil {
		return info, err
	}
	graph, err := models.ScoredDetectorGraph(v, info.Blocks, students, scoring, info, models.FP32)
	if err != nil {
		return info, err
	}
	if err := models.WriteBundle(o.Out, graph); err != nil {
		return info, fmt.Errorf("write bundle: %w", err)
	}
	return info, nil
}
