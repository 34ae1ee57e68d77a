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
// for the students' part of the calibration: students trained again
// without each part (on the other parts, for as many steps as the bundle's
// students) tell how much larger errors are on images a student did not
// train on (crossFitStudents), so that no calibration score is lighter for
// parts having learned its image, as none has learned a new part on the
// line. Each fold repeats the training: a fit trains k+1 times. Measured on
// varied synthetic parts (TestPromiseHoldsOnVariedParts): 3 and 5 folds
// kept the promise alike, 5 taking half as long again.
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
// [images, blocks] as the bundle's students (students) would err on it had
// they not trained on it. The bundle's students' errors on their own
// training images are smaller than on any new part; the fold students
// measure by how much, block by block: their errors on the training images
// of their own fold (never seen) over their errors on the same images where
// those were their training images (the other folds' students). A training
// image's errors are the bundle's students' times that ratio; a validation
// image's, which the bundle's students never trained on, are theirs.
//
// The fold students' own errors, used as they are, were not the bundle's
// students': students still learning differ in level and spread from run
// to run (other steps, other initialisation) more than the teacher-student
// Gaussian's width across images (after 4 epochs at 128 px it flagged 20%
// of new normal parts in TestPatchSpaceFindsSmallDefects). And a ratio per
// image, not per block, spread the errors wider than new parts' (two
// students' differences on each image on top of the bundle's students'
// own): the calibration scores' median came out 3-5 standard errors above
// unseen parts' in TestPromiseHoldsOnVariedParts.
func (o *Options) crossFitStudents(ctx context.Context, images *Images, input models.TrainingInput, src batchSource, train, val []int, folds [][]int, students []models.Block) (*mat.Dense, error) {
	all := allIndices(images.Len())
	perFold := make([]*mat.Dense, len(folds)) // each fold's students' errors on every image
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
		foldStudents := st.best
		if len(fVal) == 0 {
			foldStudents = tr.Students
		}
		if perFold[f], err = o.blockErrors(ctx, images, foldStudents, all); err != nil {
			return nil, err
		}
		slog.Info("calibration fold's students trained", "fold", fmt.Sprintf("%d/%d", f+1, len(folds)), "trained_on", len(fTrain),
			"scored", len(fold), "epochs", st.epoch, "seconds", time.Since(start).Seconds())
	}
	blk, err := o.blockErrors(ctx, images, students, all)
	if err != nil {
		return nil, err
	}
	foldOf := make([]int, images.Len())
	for f, fold := range folds {
		for _, i := range fold {
			foldOf[i] = f
		}
	}
	_, nb := blk.Dims()
	for b := range nb {
		out, in := 0.0, 0.0
		for _, i := range train {
			n := 0.0
			for g := range folds {
				if g != foldOf[i] {
					n++
				}
			}
			for g := range folds {
				if g != foldOf[i] {
					in += perFold[g].At(i, b) / n
				}
			}
			out += perFold[foldOf[i]].At(i, b)
		}
		if !(in > 0 && out > 0) {
			continue
		}
		for _, i := range train {
			blk.Set(i, b, blk.At(i, b)*out/in)
		}
	}
	return blk, nil
}

// blockErrors are the students' block errors on the images idx ([len(idx),
// blocks]).
func (o *Options) blockErrors(ctx context.Context, images *Images, students []models.Block, idx []int) (*mat.Dense, error) {
	r, closeRunner, err := o.featureRunner(students, images.Size)
	if err != nil {
		return nil, err
	}
	defer closeRunner()
	_, errs, err := o.features(ctx, r, images, idx)
	return errs, err
}
