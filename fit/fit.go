package fit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"time"

	"gonum.org/v1/gonum/mat"

	"github.com/transformaly/transformaly/detector"
	"github.com/transformaly/transformaly/internal/atomicfile"
	"github.com/transformaly/transformaly/models"
	"github.com/transformaly/transformaly/tiles"
)

// Options are everything a fit needs.
type Options struct {
	Teacher     *models.ViT
	TeacherPath string
	NormalDir   string
	Blocks      []int // 0-based teacher blocks with a student; nil: DefaultBlocks
	ValFraction float64
	Epochs      int
	// Patience ends training once no student's held-out loss has improved
	// for this many epochs (0: always train Epochs). Each student keeps its
	// best epoch either way.
	Patience  int
	BatchSize int
	LR        float64
	Seed      uint64
	Whitening float64 // PCA explained-variance fraction for feature 1
	// PatchBlocks are the teacher blocks of the patch feature space (nil:
	// DefaultPatchBlocks; NoPatch: none). Coreset is the share of the
	// normal patches its memory bank keeps (0: DefaultCoreset).
	PatchBlocks []int
	NoPatch     bool
	Coreset     float64
	// PatchNeighbourhood is the side, in patches, of the square each
	// patch feature pools, and PatchPooling how (models.PoolMean or
	// PoolConcat); 0 and "": DefaultPatchPooling's.
	PatchNeighbourhood int
	PatchPooling       string
	// ImageWeight is the image-level feature space's share of the
	// false-alarm rate when combined with the patch space
	// (models.Combination; 0: DefaultImageWeight).
	ImageWeight float64
	// Tiling cuts every normal frame into tiles at native resolution, and
	// the whole method is fitted on tiles (nil: frames resized whole; see
	// tiled.go). TileEdges counts every patch of a tile for its patch
	// score, not only those in its core.
	Tiling    *tiles.Tiling
	TileEdges bool
	Quantile  float64 // of held-out normal scores, for the threshold
	// Precision is the one the threshold is calibrated at: fp32 ("") or
	// int8, for a bundle that will run at int8 on the CPU (int8.go).
	Precision string
	// CalibrationFolds is how many parts the normal images are cut into,
	// each scored for the calibration by students and a patch bank fitted
	// without it (0: DefaultCalibrationFolds; at least 2).
	CalibrationFolds int
	Threads          int
	Provider         string // execution provider preference: auto (CUDA, else CPU), cuda or cpu; "" is cpu
	// ProviderLibrary is an execution-provider plugin library (see
	// detector.RunnerOptions).
	ProviderLibrary string
	// CUDAOptions are further settings of the CUDA provider (see
	// detector.RunnerOptions).
	CUDAOptions map[string]string
	// MemoryBudget bounds the decoded images, then the teacher's cached
	// activations, kept in memory (bytes; 0: DefaultMemoryBudget); beyond it
	// they go to temporary files beside Out.
	MemoryBudget int64
	// ActivationCache bounds the teacher's activations cached for training
	// (bytes; 0: DefaultActivationCache; negative: the teacher runs in every
	// step). They stay in memory within what MemoryBudget leaves, and go to
	// a temporary file beside Out beyond it.
	ActivationCache int64
	Out             string // bundle path
	Resume          bool
	// Progress, when set, is called after every batch and epoch.
	Progress func(Progress)
}

// Progress reports where a fit is.
type Progress struct {
	Phase string // "teacher" (caching its activations), "train" or "features"
	// Fold is the calibration fold whose students train (1-based, of
	// Folds; 0: the bundle's own students).
	Fold, Folds     int
	Epoch, Epochs   int // 1-based
	Batch, Batches  int
	ImagesPerSecond float64
	TrainLoss       float64 // mean over this epoch's batches so far, summed over blocks
	ValLoss         float64 // at the end of an epoch, summed over blocks (NaN otherwise)
	Remaining       time.Duration
}

// DefaultMemoryBudget keeps about 7,000 images of 224x224 in memory.
const DefaultMemoryBudget = 1 << 30

// ErrInterrupted is returned when the context ends a fit; finished epochs
// are kept in the state file for Resume.
var ErrInterrupted = errors.New("fit interrupted")

// DefaultBlocks is the paper's choice adapted to the depth: every block but
// the first two (blocks 2..11 of a 12-block ViT); all blocks of a ViT with
// three or fewer.
func DefaultBlocks(depth int) []int {
	first := 2
	if depth <= 3 {
		first = 0
	}
	var b []int
	for i := first; i < depth; i++ {
		b = append(b, i)
	}
	return b
}

func (o *Options) memoryBudget() int64 {
	if o.MemoryBudget <= 0 {
		return DefaultMemoryBudget
	}
	return o.MemoryBudget
}

// spillDir takes what does not fit in memory: beside the bundle, where
// there is room for it.
func (o *Options) spillDir() string { return filepath.Dir(o.Out) }

// StatePath is where an unfinished fit of the bundle out keeps its epochs.
func StatePath(out string) string { return out + ".fit-state" }

func (o *Options) check() error {
	switch {
	case o.Teacher == nil:
		return errors.New("no teacher")
	case o.Out == "":
		return errors.New("no output bundle path")
	case o.Epochs < 1:
		return fmt.Errorf("epochs %d: need at least 1", o.Epochs)
	case o.Patience < 0:
		return fmt.Errorf("patience %d: must not be negative", o.Patience)
	case o.BatchSize < 1:
		return fmt.Errorf("batch size %d: need at least 1", o.BatchSize)
	// Written so that NaN fails each range (every comparison with NaN is
	// false): --val-fraction NaN panicked, a NaN quantile or learning rate
	// ended in "json: unsupported value: NaN" after all the training.
	case !(o.LR > 0 && o.LR < 1):
		return fmt.Errorf("learning rate %g (--lr): must be in (0, 1)", o.LR)
	case !(o.ValFraction >= 0 && o.ValFraction < 1):
		return fmt.Errorf("validation fraction %g (--val-fraction): must be in [0, 1)", o.ValFraction)
	case !(o.Quantile > 0 && o.Quantile < 1):
		return fmt.Errorf("threshold quantile %g (--threshold-quantile): must be in (0, 1)", o.Quantile)
	case o.CalibrationFolds == 1 || o.CalibrationFolds < 0:
		return fmt.Errorf("calibration folds %d (--calibration-folds): need at least 2", o.CalibrationFolds)
	case !(o.Whitening > 0 && o.Whitening <= 1):
		return fmt.Errorf("whitening %g (--whitening): the explained-variance fraction must be in (0, 1]", o.Whitening)
	}
	if err := o.checkTiling(); err != nil {
		return err
	}
	switch o.Precision {
	case "", models.FP32:
	case models.INT8:
		if o.Tiling != nil {
			return errors.New("precision int8 (--precision): a tiled fit calibrates at fp32 only, for now")
		}
	default:
		return fmt.Errorf("precision %q (--precision): the threshold is calibrated at fp32 or int8", o.Precision)
	}
	if err := detector.CheckProviderOptions(o.CUDAOptions); err != nil {
		return fmt.Errorf("CUDA options: %w", err)
	}
	if o.Blocks == nil {
		o.Blocks = DefaultBlocks(o.Teacher.Depth)
	}
	if err := models.CheckBlocks(o.Blocks, o.Teacher.Depth); err != nil {
		return fmt.Errorf("blocks: %w", err)
	}
	if o.NoPatch {
		o.PatchBlocks = nil
		return nil
	}
	if o.PatchBlocks == nil {
		o.PatchBlocks = DefaultPatchBlocks(o.Teacher.Depth)
	}
	if err := models.CheckPatchBlocks(o.PatchBlocks, o.Teacher.Depth); err != nil {
		return fmt.Errorf("--patch-blocks: %w", err)
	}
	k, pooling := DefaultPatchPooling(o.Tiling, o.Teacher.ImageSize)
	if o.PatchNeighbourhood == 0 {
		o.PatchNeighbourhood = k
	}
	if err := models.CheckNeighbourhood(o.PatchNeighbourhood); err != nil {
		return fmt.Errorf("--patch-neighbourhood: %w", err)
	}
	if o.PatchPooling == "" {
		o.PatchPooling = pooling
	}
	if err := models.CheckPooling(o.PatchPooling); err != nil {
		return fmt.Errorf("--patch-pooling: %w", err)
	}
	if o.Coreset == 0 {
		o.Coreset = DefaultCoreset
	}
	if !(o.Coreset > 0 && o.Coreset <= 1) {
		return fmt.Errorf("coreset %g (--coreset): the share of patches kept must be in (0, 1]", o.Coreset)
	}
	if o.ImageWeight == 0 {
		o.ImageWeight = DefaultImageWeight
	}
	if !(o.ImageWeight > 0 && o.ImageWeight < 1) {
		return fmt.Errorf("image weight %g (--image-weight): the image-level space's share of the false-alarm rate must be in (0, 1)", o.ImageWeight)
	}
	return nil
}

// Run fits a detector and writes its bundle to o.Out.
func Run(ctx context.Context, o Options) (models.BundleInfo, error) {
	info, oos, err := run(ctx, o)
	if err == nil && o.Precision == models.INT8 {
		info, err = o.calibrateInt8(ctx, info, oos)
	}
	return info, err
}

// outOfSample are the normal images' out-of-sample scores the calibration
// used, per feature space (patch: nil without one), in the order of the
// images' indices.
type outOfSample struct {
	pretrained, student, patch []float64
	bankSeconds                float64 // the fold banks' time
	// The folds each image was scored in: by students trained and by a
	// patch bank chosen without it.
	studentFolds, bankFolds [][]int
}

func run(ctx context.Context, o Options) (models.BundleInfo, *outOfSample, error) {
	var info models.BundleInfo
	if err := o.check(); err != nil {
		return info, nil, fmt.Errorf("fit: %w", err)
	}
	start := time.Now()
	if err := atomicfile.Writable(o.Out); err != nil {
		// Before any work: otherwise the first epoch's state save finds out.
		return info, nil, fmt.Errorf("fit: the bundle %s cannot be written: %w", o.Out, err)
	}
	paths, err := ListImages(o.NormalDir)
	if err != nil {
		return info, nil, err
	}
	if len(paths) == 0 {
		return info, nil, fmt.Errorf("fit: no images (png, jpg, jpeg, bmp) under %s", o.NormalDir)
	}
	slog.Info("reading normal images", "dir", o.NormalDir, "files", len(paths), "size", o.Teacher.ImageSize)
	images, failed, err := o.loadImages(ctx, paths)
	if err != nil {
		return info, nil, err
	}
	defer images.Close()
	if ctx.Err() != nil {
		return info, nil, ErrInterrupted
	}
	if len(failed) > 0 {
		slog.Warn("some images were skipped", "skipped", len(failed), "kept", images.Len())
	}
	if images.Frames() < 4 {
		return info, nil, fmt.Errorf("fit: only %d readable images under %s; need at least 4", images.Frames(), o.NormalDir)
	}
	train, val := o.splitFrames(images)
	slog.Info("split", "train", len(train), "validation", len(val))

	state, err := o.startState(images, train)
	if err != nil {
		return info, nil, err
	}
	// The calibration folds' students train as many epochs again each.
	input, batches, err := o.batches(ctx, images, o.Epochs-state.epoch+o.calibrationFolds()*o.Epochs)
	if err != nil {
		return info, nil, err
	}
	defer batches.close()
	tr, err := NewTrainer(o.Teacher, o.Blocks, state.students, o.LR, o.runnerOptions(), input)
	if err != nil {
		return info, nil, err
	}
	defer tr.Close()
	slog.Info("training", "provider", tr.Provider, "blocks", o.Blocks, "epochs", o.Epochs, "batch_size", o.BatchSize)
	tr.restore(state)
	if err := o.train(ctx, tr, batches, train, val, state, StatePath(o.Out)); err != nil {
		return info, nil, err
	}
	students := state.best
	if len(val) == 0 {
		students = tr.Students
	}
	// The training sessions hold the teacher's weights and Adam's moments:
	// let them go before the feature pass needs as much again (a ViT-L fit
	// otherwise peaks past 24 GB).
	if err := tr.Close(); err != nil {
		slog.Warn("closing the training sessions", "err", err)
	}
	folds := images.calibrationFolds(o.calibrationFolds(), o.Seed)
	crossStart := time.Now()
	blkOOF, err := o.crossFitStudents(ctx, images, input, batches, train, val, folds, students)
	if err != nil {
		return info, nil, err
	}
	crossStudents := time.Since(crossStart)
	if err := batches.close(); err != nil {
		slog.Warn("freeing the teacher's cached activations", "err", err)
	}

	info, scoring, oos, err := o.fitScoring(ctx, images, students, images.calibrationFolds(patchBankFolds, o.Seed), blkOOF)
	if err != nil {
		return info, nil, err
	}
	info.Training.TrainImages, info.Training.ValImages = len(train), len(val)
	info.Training.CalibrationFolds = len(folds)
	info.Training.CrossFitSeconds = crossStudents.Seconds() + oos.bankSeconds
	oos.studentFolds = folds
	info.Training.BestEpochs = state.bestEpochs
	info.Training.EpochsRun = state.epoch
	info.Training.ValLosses = state.bestVal
	info.Training.StepSeconds = tr.StepTime.Seconds()
	info.Training.Seconds = time.Since(start).Seconds()
	graph, err := models.ScoredDetectorGraph(o.Teacher, o.Blocks, students, scoring, info, models.FP32)
	if err != nil {
		return info, nil, err
	}
	if err := models.WriteBundle(o.Out, graph); err != nil {
		return info, nil, fmt.Errorf("write bundle: %w", err)
	}
	if err := os.Remove(StatePath(o.Out)); err != nil && !errors.Is(err, os.ErrNotExist) {
		slog.Warn("could not remove the fit state", "err", err)
	}
	return info, oos, nil
}

// split shuffles 0..n-1 with the seed and holds out round(fraction*n) for
// validation, keeping at least 2 for training.
func split(n int, fraction float64, seed uint64) (train, val []int) {
	idx := rand.New(rand.NewPCG(seed, 0xda7a)).Perm(n)
	nVal := min(int(math.Round(fraction*float64(n))), n-2)
	val, train = idx[:nVal], idx[nVal:]
	sort.Ints(val)
	sort.Ints(train)
	return train, val
}

// train runs the epochs left of st, saving it after each to statePath
// ("": not saved).
func (o *Options) train(ctx context.Context, tr *Trainer, src batchSource, train, val []int, st *fitState, statePath string) error {
	batches := (len(train) + o.BatchSize - 1) / o.BatchSize
	epochStart := time.Now()
	seen := 0
	for epoch := st.epoch + 1; epoch <= o.Epochs; epoch++ {
		order := slices.Clone(train)
		rand.New(rand.NewPCG(o.Seed, uint64(epoch))).Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
		lossSum := 0.0
		for b := range batches {
			if ctx.Err() != nil {
				return fmt.Errorf("%w after %d finished epochs; run again with --resume to continue", ErrInterrupted, st.epoch)
			}
			idx := order[b*o.BatchSize : min((b+1)*o.BatchSize, len(order))]
			in, err := src.batch(idx)
			if err != nil {
				return err
			}
			losses, err := tr.Step(in)
			in.Destroy()
			if err != nil {
				return err
			}
			for _, l := range losses {
				lossSum += float64(l)
			}
			if math.IsNaN(lossSum) || math.IsInf(lossSum, 0) {
				return fmt.Errorf("training diverged in epoch %d, batch %d: the students' loss is %g (a learning rate too high for this teacher, now %g: try a tenth of it with --lr; or a teacher whose outputs are not finite)", epoch, b+1, lossSum, o.LR)
			}
			seen += len(idx)
			rate := float64(seen) / time.Since(epochStart).Seconds()
			left := (o.Epochs-epoch)*(len(train)+len(val)) + len(train) - (b*o.BatchSize + len(idx)) + len(val)
			o.report(Progress{Phase: "train", Epoch: epoch, Epochs: o.Epochs, Batch: b + 1, Batches: batches,
				ImagesPerSecond: rate, TrainLoss: lossSum / float64(b+1), ValLoss: math.NaN(),
				Remaining: time.Duration(float64(left) / rate * float64(time.Second))})
		}
		valLoss, err := validate(tr, src, val, o.BatchSize)
		if err != nil {
			return err
		}
		st.epoch = epoch
		st.finishEpoch(tr, epoch, valLoss)
		if statePath != "" {
			if err := st.save(statePath, tr); err != nil {
				return err
			}
		}
		o.report(Progress{Phase: "train", Epoch: epoch, Epochs: o.Epochs, Batch: batches, Batches: batches,
			TrainLoss: lossSum / float64(batches), ValLoss: sum(valLoss)})
		if last := slices.Max(st.bestEpochs); o.Patience > 0 && valLoss != nil && epoch-last >= o.Patience && epoch < o.Epochs {
			slog.Info("stopping early: no student's held-out loss improved lately", "epoch", epoch, "last_improvement", last, "patience", o.Patience)
			break
		}
	}
	return nil
}

// runnerOptions are the ORT settings of every session of the fit; fp32
// throughout (no TF32 matmuls on CUDA), so the calibration is the CPU's.
func (o *Options) runnerOptions() detector.RunnerOptions {
	provider := o.Provider
	if provider == "auto" {
		provider = "cuda,cpu" // TensorRT builds inference engines; it does not train
	}
	return detector.RunnerOptions{Threads: o.Threads, Provider: provider, Precision: models.FP32, ProviderLibrary: o.ProviderLibrary, CUDAOptions: o.CUDAOptions}
}

func (o *Options) report(p Progress) {
	if o.Progress != nil {
		o.Progress(p)
	}
}

func sum(xs []float64) float64 {
	s := 0.0
	for _, x := range xs {
		s += x
	}
	return s
}

// validate returns each block's mean error over the validation images
// (nil without any).
func validate(tr *Trainer, src batchSource, val []int, batch int) ([]float64, error) {
	if len(val) == 0 {
		return nil, nil
	}
	nb := len(tr.blocks)
	loss := make([]float64, nb)
	for s := 0; s < len(val); s += batch {
		idx := val[s:min(s+batch, len(val))]
		in, err := src.batch(idx)
		if err != nil {
			return nil, err
		}
		errs, err := tr.BlockErrors(in)
		in.Destroy()
		if err != nil {
			return nil, err
		}
		for i, e := range errs {
			loss[i%nb] += float64(e) / float64(len(val))
		}
	}
	return loss, nil
}

// featureRunner opens the detector graph of the final students: from
// memory, or when teacher and students together pass protobuf's 2 GiB
// (ViT-L) through a model file beside the bundle, removed when the runner
// is closed.
func (o *Options) featureRunner(students []models.Block, size int) (*detector.Runner, func(), error) {
	graph, err := models.DetectorGraph(o.Teacher, o.Blocks, students)
	if err != nil {
		return nil, nil, err
	}
	outputs := []string{models.OutputEmbedding, models.OutputBlockErrors}
	model, err := models.Serialize(graph)
	switch {
	case err == nil:
		r, err := detector.NewRunner(model, size, outputs, o.runnerOptions())
		if err != nil {
			return nil, nil, err
		}
		return r, func() { r.Close() }, nil
	case !errors.Is(err, models.ErrTooLarge):
		return nil, nil, err
	}
	path := filepath.Join(filepath.Dir(o.Out), "."+filepath.Base(o.Out)+".features.onnx")
	if err := models.WriteModelFile(path, graph); err != nil {
		return nil, nil, err
	}
	mf, err := models.ReadModelFile(path)
	if err == nil {
		var r *detector.Runner
		if r, err = detector.NewFileRunner(mf, size, outputs, o.runnerOptions()); err == nil {
			return r, func() { r.Close(); os.Remove(path) }, nil
		}
	}
	os.Remove(path)
	return nil, nil, err
}

// features runs the detector graph of the final students over images and
// returns the embeddings [n, dim] and block errors [n, blocks].
func (o *Options) features(ctx context.Context, r *detector.Runner, images *Images, idx []int) (*mat.Dense, *mat.Dense, error) {
	var err error
	d, nb := o.Teacher.Dim, len(o.Blocks)
	emb := mat.NewDense(len(idx), d, nil)
	blk := mat.NewDense(len(idx), nb, nil)
	var buf []byte
	for s := 0; s < len(idx); s += o.BatchSize {
		if ctx.Err() != nil {
			return nil, nil, fmt.Errorf("%w while computing features; training is saved: run again with --resume", ErrInterrupted)
		}
		part := idx[s:min(s+o.BatchSize, len(idx))]
		if buf, err = images.Batch(part, buf); err != nil {
			return nil, nil, err
		}
		out, err := r.Run(buf, len(part))
		if err != nil {
			return nil, nil, err
		}
		for i := range part {
			for j := range d {
				emb.Set(s+i, j, float64(out[0].Data[i*d+j]))
			}
			for j := range nb {
				blk.Set(s+i, j, float64(out[1].Data[i*nb+j]))
			}
		}
		o.report(Progress{Phase: "features", Batch: s/o.BatchSize + 1, Batches: (len(idx) + o.BatchSize - 1) / o.BatchSize, ValLoss: math.NaN()})
	}
	return emb, blk, nil
}

// covarianceRidge is the relative regularisation of both Gaussians.
const covarianceRidge = 1e-6

// fitScoring fits the Gaussians and the patch bank on every normal image
// and calibrates the threshold on cross-fitted scores: each image scored
// by Gaussians, students (blkOOF: its block errors under students trained
// without its fold) and a patch bank fitted without it.
func (o *Options) fitScoring(ctx context.Context, images *Images, students []models.Block, bankFolds [][]int, blkOOF *mat.Dense) (models.BundleInfo, models.Scoring, *outOfSample, error) {
	var info models.BundleInfo
	var scoring models.Scoring
	r, closeRunner, err := o.featureRunner(students, images.Size)
	if err != nil {
		return info, scoring, nil, err
	}
	defer closeRunner()
	all := allIndices(images.Len())
	emb, _, err := o.features(ctx, r, images, all)
	if err != nil {
		return info, scoring, nil, err
	}
	if len(all) <= 2*len(o.Blocks) {
		slog.Warn("few normal images for the teacher-student Gaussian: its covariance is barely (or not) determined and scores will swing; add normal images",
			"images", len(all), "features", len(o.Blocks))
	}
	// The teacher-student Gaussian is fitted on the cross-fitted errors:
	// the bundle's students' errors on their own training images are
	// smaller than on any new part (in sample), and a Gaussian of those
	// called new normal parts unusual.
	scoring, white, err := o.fitGaussians(emb, blkOOF, 0)
	if err != nil {
		return info, scoring, nil, err
	}
	// Every image is scored by Gaussians fitted without it (10 folds, with
	// the bundle's number of principal components): calibrating on the
	// 10% held out (20 images of 200: their 99.5% quantile is their
	// maximum, and they also chose the students' epochs) gave 0.4-8.7%
	// false alarms on unseen normal images, 3.9% on average, for a
	// promised 0.5% (TestFalseAlarmRateAsPromised). A frame's tiles share
	// a fold.
	gaussFolds := min(gaussianFolds, images.Frames())
	llPre, llStu, err := o.outOfFoldScores(emb, blkOOF, gaussFolds, len(white.Variances), images.FrameOf)
	if err != nil {
		return info, scoring, nil, fmt.Errorf("calibrate the threshold: %w", err)
	}
	scores := make([]float64, len(all))
	for i := range scores {
		scores[i] = -(llPre[i] + llStu[i])
	}
	scores = images.worstTiles(scores, all)
	oos := &outOfSample{pretrained: llPre, student: llStu, bankFolds: bankFolds}
	var patches *patchSpace
	if !o.NoPatch {
		if patches, err = o.fitPatchSpace(ctx, images, bankFolds); err != nil {
			return info, scoring, nil, err
		}
		// Each frame's out-of-sample scores in both spaces make its
		// combined score: the threshold covers that.
		scoring.Patch = patches.score
		if patches.info.Combination, scores, err = fitCombination(scores, images.worstTiles(patches.imageScores, all), o.ImageWeight); err != nil {
			return info, scoring, nil, err
		}
		oos.patch, oos.bankSeconds = patches.imageScores, patches.foldSeconds
	}
	method := fmt.Sprintf("out-of-sample scores of every normal image: students trained without it (%d folds), Gaussians fitted without it (%d folds)", o.calibrationFolds(), gaussFolds)
	if patches != nil {
		method += fmt.Sprintf(", a patch bank chosen without it (%d folds)", len(bankFolds))
	}
	if o.Tiling != nil {
		method += "; per frame: each normal frame's worst tile"
	}
	cal, err := Calibrate(scores, o.Quantile, method)
	if err != nil {
		return info, scoring, nil, err
	}
	cal.Provider, cal.Precision = r.Provider(), models.FP32
	if cal.Unkept != "" {
		slog.Warn("the threshold cannot keep its promise: " + cal.Unkept)
	} else if need := 2 * imagesForPromise(o.Quantile); len(scores) < need {
		slog.Warn("few normal images for the threshold: it keeps its promise on average, but is about their largest score, so the rate it gives varies from fit to fit (see its 95% interval); add normal images",
			"images", len(scores), "promised", 1-o.Quantile, "false_alarm_rate_95", fmt.Sprintf("%.4f-%.4f", cal.FalseAlarms95[0], cal.FalseAlarms95[1]), "images_for_a_stable_threshold", need)
	}
	info = models.BundleInfo{
		Format: models.BundleFormat, Version: models.Version, Created: time.Now().UTC(),
		ImageSize: o.Teacher.ImageSize, Blocks: o.Blocks, PCAComponents: len(white.Variances),
		ThresholdQuantile: o.Quantile, Threshold: cal.Threshold, ScoreQuantiles: cal.Quantiles,
		Calibration: cal.Calibration,
		Training: models.TrainingInfo{Epochs: o.Epochs, BatchSize: o.BatchSize, LR: o.LR, Seed: o.Seed,
			ValFraction: o.ValFraction, Whitening: o.Whitening},
	}
	info.Teacher.Path, info.Teacher.Layout, info.Teacher.Checksum, info.Teacher.Config = o.TeacherPath, o.Teacher.Layout, o.Teacher.Checksum, o.Teacher.Config
	input := o.Teacher.InputNormalization()
	info.Teacher.Normalization = &input
	if patches != nil {
		info.Patch = patches.info
	}
	info.Tiling = o.tilingInfo(images, cal.Calibration)
	slog.Info("scoring fitted", "pca_components", len(white.Variances), "explained", white.Explained, "threshold", info.Threshold,
		"expected_false_alarm_rate", info.Calibration.ExpectedFalseAlarms, "false_alarm_rate_95", fmt.Sprintf("%.4f-%.4f", cal.FalseAlarms95[0], cal.FalseAlarms95[1]),
		"calibration_images", len(scores))
	return info, scoring, oos, nil
}

// gaussianFolds is the k of the Gaussians' k-fold calibration.
const gaussianFolds = 10

// patchBankFolds is how many banks the calibration chooses, each without a
// tenth of the images: a bank's choice costs a fraction of the students'
// training, and one from 90% of the images covers about as densely as the
// bundle's (from two thirds, the fit's images' patch scores came out 2
// standard errors above unseen images' in TestPromiseHoldsOnVariedParts).
const patchBankFolds = 10

// outOfFoldScores gives every row the log-likelihoods of Gaussians fitted
// without its fold, keeping components principal components. Rows of one
// frame (frameOf: a tile's frame) share a fold: Gaussians fitted on the
// other tiles of its own frame, which overlap it and share its part and
// lighting, scored a tile as more usual than a new frame's tiles.
func (o *Options) outOfFoldScores(emb, blk *mat.Dense, k, components int, frameOf func(int) int) (llPre, llStu []float64, err error) {
	n, _ := emb.Dims()
	llPre, llStu = make([]float64, n), make([]float64, n)
	for f := range k {
		var in, out []int
		for i := range n {
			if frameOf(i)%k == f {
				out = append(out, i)
			} else {
				in = append(in, i)
			}
		}
		fold, _, err := o.fitGaussians(rows(emb, in), rows(blk, in), components)
		if err != nil {
			return nil, nil, err
		}
		for _, i := range out {
			llPre[i], llStu[i] = fold.Pretrained.LogLikelihood(row32(emb, i)), fold.Student.LogLikelihood(row32(blk, i))
		}
	}
	return llPre, llStu, nil
}

// fitGaussians fits the two Gaussians, on the PCA-whitened embeddings and
// on the block errors, as the scoring of a bundle.
// components > 0 fixes the number of principal components.
func (o *Options) fitGaussians(emb, blk *mat.Dense, components int) (models.Scoring, *Whitening, error) {
	var s models.Scoring
	white, err := fitWhitening(emb, o.Whitening, components)
	if err != nil {
		return s, nil, fmt.Errorf("fit feature 1 (pretrained): %w", err)
	}
	gPre, err := FitGaussian(white.Apply(emb), covarianceRidge)
	if err != nil {
		return s, nil, fmt.Errorf("fit feature 1 (pretrained): %w", err)
	}
	gStu, err := FitGaussian(blk, covarianceRidge)
	if err != nil {
		return s, nil, fmt.Errorf("fit feature 2 (teacher-student): %w", err)
	}
	if s.Pretrained, err = quadratic(white, gPre, o.Teacher.Dim); err != nil {
		return s, nil, err
	}
	_, nb := blk.Dims()
	if s.Student, err = quadratic(nil, gStu, nb); err != nil {
		return s, nil, err
	}
	return s, white, nil
}

// rows copies the given rows of m.
func rows(m *mat.Dense, idx []int) *mat.Dense {
	_, c := m.Dims()
	out := mat.NewDense(len(idx), c, nil)
	for r, i := range idx {
		out.SetRow(r, m.RawRowView(i))
	}
	return out
}

func row32(m *mat.Dense, i int) []float32 {
	_, c := m.Dims()
	out := make([]float32, c)
	for j := range c {
		out[j] = float32(m.At(i, j))
	}
	return out
}

// quantile of sorted values, linearly interpolated (numpy's default).
func quantile(sorted []float64, q float64) float64 {
	if len(sorted) == 1 {
		return sorted[0]
	}
	pos := q * float64(len(sorted)-1)
	lo := int(math.Floor(pos))
	hi := min(lo+1, len(sorted)-1)
	return sorted[lo] + (pos-float64(lo))*(sorted[hi]-sorted[lo])
}
