package fit

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"slices"
	"time"

	"gonum.org/v1/gonum/mat"

	"github.com/transformaly/transformaly/models"
)

// DefaultCalibrationFolds is how many parts the normal images are cut into
// for the students' part of the calibration: each part's block errors come
// from students trained again without it (on the other parts, for as many
// steps as the bundle's students), so every learned part of a calibration
// score has never seen its image, as none has seen a new part on the line.
// Each fold repeats the training: a fit trains k+1 times. Measured on
// varied synthetic parts (TestPromiseHoldsOnVariedParts): 3 and 5 folds
// kept the promise alike (0.0-0.4% false alarms for 0.5%), 5 taking half
// as long again; with 3 the fold students learn from two thirds of the
// images.
const DefaultCalibrationFolds = 3

func (o *Options) calibrationFolds() int {
	if o.CalibrationFolds == 0 {
		return DefaultCalibrationFolds
	}
	return o.CalibrationFolds
}

// calibrationFolds deals the image indices 0..n-1, shuffled by the seed,
// into k folds, each sorted.
func calibrationFolds(n, k int, seed uint64) [][]int {
	k = min(k, n)
	perm := rand.New(rand.NewPCG(seed, 0xf01d)).Perm(n)
	folds := make([][]int, k)
	for r, i := range perm {
		folds[r%k] = append(folds[r%k], i)
	}
	for _, f := range folds {
		slices.Sort(f)
	}
	return folds
}

// calibrationFolds deals the frames into k folds (see calibrationFolds),
// and gives each fold's images: a frame's tiles share a fold (tiled.go).
func (im *Images) calibrationFolds(k int, seed uint64) [][]int {
	folds := calibrationFolds(im.Frames(), k, seed)
	for i, f := range folds {
		folds[i] = im.ofFrames(f)
	}
	return folds
}

// without returns the members of idx not in fold (both sorted).
func without(idx, fold []int) []int {
	var out []int
	for _, i := range idx {
		if _, found := slices.BinarySearch(fold, i); !found {
			out = append(out, i)
		}
	}
	return out
}

// crossFitStudents trains, for each fold, students on the training images
// outside it (each keeping its best epoch on the validation images outside
// it, as the bundle's students do) and returns every image's block errors
// [images, blocks] under the students that never saw it. Those errors are
// what a new normal part's errors look like to the bundle's students (a
// little larger: fold students learn from fewer images, which errs on the
// safe side), where the bundle's students' errors on their own training
// images are smaller than any new part's.
//
// students are the bundle's: their errors on the validation images (which
// they were not trained on) set the errors' level (scaleToBundle).
func (o *Options) crossFitStudents(ctx context.Context, images *Images, input models.TrainingInput, src batchSource, train, val []int, folds [][]int, students []models.Block) (*mat.Dense, error) {
	blk := mat.NewDense(images.Len(), len(o.Blocks), nil)
	for f, fold := range folds {
		start := time.Now()
		fTrain, fVal := without(train, fold), without(val, fold)
		// As many training steps as the bundle's students took: fold
		// students see fewer images an epoch, and with the bundle's epochs
		// they stopped short of its students (their median errors on
		// their held-out images were 30% above the bundle's students' on
		// new parts, with every student still improving at its last
		// epoch, in TestPromiseHoldsOnVariedParts).
		stretch := float64(len(train)) / float64(max(1, len(fTrain)))
		fo := *o
		fo.Epochs = int(math.Ceil(float64(o.Epochs) * stretch))
		fo.Patience = int(math.Ceil(float64(o.Patience) * stretch))
		fo.Progress = func(p Progress) {
			p.Fold, p.Folds = f+1, len(folds)
			o.report(p)
		}
		rng := rand.New(rand.NewPCG(o.Seed, 0x57d+uint64(f)+1))
		st := freshState("", o.Teacher.Config, len(o.Blocks), rng)
		tr, err := NewTrainer(o.Teacher, o.Blocks, st.students, o.LR, o.runnerOptions(), input)
		if err != nil {
			return nil, fmt.Errorf("calibration fold %d: %w", f+1, err)
		}
		err = fo.train(ctx, tr, src, fTrain, fVal, st, "")
		tr.Close()
		if err != nil {
			return nil, fmt.Errorf("calibration fold %d: %w", f+1, err)
		}
		students := st.best
		if len(fVal) == 0 {
			students = tr.Students
		}
		r, closeRunner, err := o.featureRunner(students, images.Size)
		if err != nil {
			return nil, err
		}
		_, errs, err := o.features(ctx, r, images, fold)
		closeRunner()
		if err != nil {
			return nil, err
		}
		for k, i := range fold {
			blk.SetRow(i, errs.RawRowView(k))
		}
		slog.Info("calibration fold's students trained", "fold", fmt.Sprintf("%d/%d", f+1, len(folds)), "trained_on", len(fTrain),
			"scored", len(fold), "epochs", st.epoch, "seconds", time.Since(start).Seconds())
	}
	alignFolds(blk, folds)
	if len(val) > 0 {
		r, closeRunner, err := o.featureRunner(students, images.Size)
		if err != nil {
			return nil, err
		}
		_, bundleVal, err := o.features(ctx, r, images, val)
		closeRunner()
		if err != nil {
			return nil, err
		}
		scaleToBundle(blk, val, bundleVal)
	}
	return blk, nil
}

// scaleToBundle scales every image's cross-fitted block errors, block by
// block, by the ratio of the bundle's students' mean error on the
// validation images (bundleVal, rows in val's order: images they were not
// trained on) to the cross-fitted students' on the same images. Students
// still learning fast differ in level from run to run (other steps, other
// initialisation), and the teacher-student Gaussian is narrow across
// images: after 3 epochs at 128 px, the bundle's students' errors on new
// normal parts lay 170 nats below the fold students' Gaussian, flagging
// every one.
func scaleToBundle(blk *mat.Dense, val []int, bundleVal *mat.Dense) {
	_, nb := blk.Dims()
	for b := range nb {
		folded, bundle := 0.0, 0.0
		for k, i := range val {
			folded += blk.At(i, b)
			bundle += bundleVal.At(k, b)
		}
		if !(folded > 0 && bundle > 0) {
			continue
		}
		n, _ := blk.Dims()
		for i := range n {
			blk.Set(i, b, blk.At(i, b)*bundle/folded)
		}
	}
}

// alignFolds scales each fold's block errors so that their mean over the
// fold's images is, block by block, the mean over all images. Each fold's
// students err a little more or less than another's on every image (they
// learned from other images), where the bundle has one set of students:
// pooled as they are, the folds' errors spread wider than the bundle's
// students' errors on new parts (medians of their log-likelihoods 6.7
// standard errors apart in one fit of TestPromiseHoldsOnVariedParts). The
// pooled mean stays: fold students, trained on fewer images, err a little
// more than the bundle's, which errs on the safe side.
func alignFolds(blk *mat.Dense, folds [][]int) {
	n, nb := blk.Dims()
	for b := range nb {
		all := mat.Sum(blk.ColView(b)) / float64(n)
		for _, fold := range folds {
			m := 0.0
			for _, i := range fold {
				m += blk.At(i, b) / float64(len(fold))
			}
			if !(m > 0) {
				continue
			}
			for _, i := range fold {
				blk.Set(i, b, blk.At(i, b)*all/m)
			}
		}
	}
}
