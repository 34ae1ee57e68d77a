package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/transformaly/transformaly/fit"
	"github.com/transformaly/transformaly/models"
	"github.com/transformaly/transformaly/tiles"
)

// parseBlocks reads "2-11", "0,3,5" or "3-5,8" (0-based teacher blocks).
func parseBlocks(s string) ([]int, error) {
	var out []int
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(strings.TrimSpace(part), "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			return nil, fmt.Errorf("--blocks %q: %q is not a block number", s, lo)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a {
				return nil, fmt.Errorf("--blocks %q: %q is not a range like 2-11", s, part)
			}
		}
		for i := a; i <= b; i++ {
			out = append(out, i)
		}
	}
	return out, nil
}

func fitCommand(fs *pflag.FlagSet) func([]string) error {
	var teacher teacherFlags
	var rt runtimeFlags
	teacher.register(fs)
	normal := fs.String("normal", "", "folder of normal images (png, jpg, bmp; searched recursively) (required)")
	out := fs.String("out", "", "bundle file to write, e.g. line3.tfy (required)")
	valFraction := fs.Float64("val-fraction", 0.1, "share of the normal images held out to pick the students' best epoch")
	blocks := fs.String("blocks", "", "0-based teacher blocks that get a student, e.g. 2-11 (default: all but the first two)")
	epochs := fs.Int("epochs", 30, "training epochs at most")
	patience := fs.Int("patience", 5, "stop once no student's held-out loss has improved for this many epochs (0: train all --epochs); each student keeps its best epoch")
	batch := fs.Int("batch-size", 16, "images per training step")
	lr := fs.Float64("lr", 1e-4, "Adam learning rate")
	seed := fs.Uint64("seed", 1, "seed for the split, the student initialisation and the shuffling")
	whitening := fs.Float64("whitening", 0.9, "PCA explained-variance fraction kept for the embedding's Gaussian")
	quantile := fs.Float64("threshold-quantile", 0.995, "the threshold promises at most 1 minus this share of false alarms on normal parts (0.995: 0.5%), calibrated on out-of-sample scores of the normal images (at least 1/(1-q) - 1 of them: 199 for 0.995)")
	calibrationFolds := fs.Int("calibration-folds", fit.DefaultCalibrationFolds, "parts the normal images are cut into for calibrating the threshold: students trained again without each part (on the other parts, as many steps as the bundle's students) tell how much larger, block by block, errors are on images a student did not train on, so the threshold is set on scores as a new part's; training runs this many times more (patch banks: ten folds, at a fraction of that)")
	resume := fs.Bool("resume", false, "continue an interrupted fit of the same --out from its last finished epoch")
	provider := fs.String("provider", "auto", "execution provider for training: auto (CUDA when usable, else CPU, saying why), cuda or cpu")
	providerLibrary := fs.String("provider-library", "", "execution-provider plugin library, e.g. libonnxruntime_providers_cuda.so of the core library's exact version")
	cudaOptions := fs.StringToString("cuda-options", nil, "ONNX Runtime CUDA provider options for training, e.g. device_id=1,gpu_mem_limit=8589934592")
	memoryMB := fs.Int64("max-image-memory-mb", fit.DefaultMemoryBudget>>20, "decoded images, then the teacher's cached activations, kept in memory; beyond this they go to temporary files beside --out. The patch features the memory bank is chosen from stay in memory: a fit whose features exceed this is refused, saying how much they take")
	cacheMB := fs.Int64("activation-cache-mb", fit.DefaultActivationCache>>20, "largest cache of the teacher's activations, computed once so that epochs run only the students (CPU training; 0: run the teacher in every step)")
	patchBlocks := fs.String("patch-blocks", "", "0-based teacher blocks whose patch tokens are the patch feature space (finds small defects and where they are), e.g. 2 or 2,4; \"none\" fits without it (default: one block a quarter of the way in)")
	tile := fs.Int("tile", 0, "cut every frame into tiles of this many pixels square at native resolution (after the camera's crop and rotation), each resized to the teacher's input, and fit on tiles: small defects a resize of the whole frame would blur away stay several patches wide (0: the whole frame resized); score, eval and the daemon cut frames the same way")
	tileOverlap := fs.Float64("tile-overlap", 0, "with --tile: the share of a tile its neighbours overlap at least, in [0, 0.9); each tile's patches count only in its core, the ring its neighbours cover being theirs (default: two of the teacher's patches, at least 0.125)")
	progressJSON := fs.Bool("progress-json", false, "also write the progress on stdout, one JSON object a line (phase, fold, folds, epoch, epochs, batch, batches, left_s): what the daemon's background refit reads")
	precision := fs.String("precision", models.FP32, "precision the threshold is calibrated at: fp32, or int8 for a bundle that will run with --precision int8 (precision: int8 in the daemon): the normal images are scored at both and the threshold set on int8 scores; the bundle is the same either way")
	neighbourhood := fs.Int("patch-neighbourhood", 0, "side, in patches, of the square around each patch that makes its feature (--patch-pooling says how): 3 gives context, 1 is the token alone; odd, 1 to 7 (default 3)")
	pooling := fs.String("patch-pooling", "", "how a patch's neighbourhood makes its feature: mean (PatchCore's: robust to a patch-sized shift, quiets normal patches, but averages a defect of a patch or two with its normal neighbours) or concat (the tokens side by side, then a fixed random projection to a few hundred wide: keeps the defect's token and how its neighbours are arranged) (default: concat with a --tile the teacher sees at native resolution or shrunk, mean for magnified tiles and whole frames)")
	coreset := fs.Float64("coreset", fit.DefaultCoreset, "share of the normal images' patches the patch memory bank keeps (greedy coreset): more finds subtler defects, costs memory and scoring time")
	imageWeight := fs.Float64("image-weight", fit.DefaultImageWeight, "with the patch feature space: the image-level space's share of the false-alarm rate, in (0, 1); the score is the stronger evidence of the two spaces, each as -ln of the share of normal parts scoring higher, the image-level one needing ln(1/weight) more and the patch space ln(1/(1-weight)) (more: an anomaly only the image-level space sees, a part of another kind, is found sooner; less: a small defect only the patch space sees)")
	rt.register(fs)
	return func(args []string) error {
		if len(args) > 0 {
			return usageError("unexpected arguments %q", args)
		}
		var missing []string
		for _, f := range []struct {
			name, value string
		}{{"--teacher", teacher.path}, {"--normal", *normal}, {"--out", *out}} {
			if f.value == "" {
				missing = append(missing, f.name)
			}
		}
		if len(missing) > 0 {
			return usageError("%s required", strings.Join(missing, ", "))
		}
		if st, err := os.Stat(*normal); err != nil || !st.IsDir() {
			return fmt.Errorf("--normal %s: not a readable folder", *normal)
		}
		var tiling *tiles.Tiling
		if *tile != 0 || fs.Changed("tile-overlap") {
			tiling = &tiles.Tiling{Size: *tile, Overlap: *tileOverlap}
			if err := tiling.Check(); err != nil {
				return usageError("--tile, --tile-overlap: %v", err)
			}
		}
		v, err := teacher.load()
		if err != nil {
			return err
		}
		if tiling != nil && !fs.Changed("tile-overlap") {
			tiling.Overlap = tiles.DefaultOverlap(v.Grid())
		}
		var blockList []int
		if *blocks != "" {
			if blockList, err = parseBlocks(*blocks); err != nil {
				return usageError("%v", err)
			}
		}
		var patchList []int
		noPatch := *patchBlocks == "none"
		if noPatch && (fs.Changed("coreset") || fs.Changed("image-weight") || fs.Changed("patch-neighbourhood") || fs.Changed("patch-pooling")) {
			return usageError("--coreset, --image-weight, --patch-neighbourhood and --patch-pooling shape the patch feature space, which --patch-blocks none leaves out")
		}
		if *patchBlocks != "" && !noPatch {
			if patchList, err = parseBlocks(*patchBlocks); err != nil {
				return usageError("--patch-blocks: %v", err)
			}
		}
		if err := rt.init(); err != nil {
			return err
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		info, err := fit.Run(ctx, fit.Options{
			Teacher: v, TeacherPath: teacher.path, NormalDir: *normal, Blocks: blockList, PatchBlocks: patchList, NoPatch: noPatch, PatchNeighbourhood: *neighbourhood, PatchPooling: *pooling, Coreset: *coreset, ImageWeight: *imageWeight, Tiling: tiling,
			ValFraction: *valFraction, Epochs: *epochs, Patience: *patience, BatchSize: *batch, LR: *lr, Seed: *seed,
			Whitening: *whitening, Quantile: *quantile, Precision: *precision, CalibrationFolds: *calibrationFolds, Threads: rt.threads, Provider: *provider, ProviderLibrary: *providerLibrary, CUDAOptions: *cudaOptions, MemoryBudget: *memoryMB << 20, ActivationCache: activationCache(*cacheMB), Out: *out, Resume: *resume,
			Progress: progressLogger(*progressJSON),
		})
		if err != nil {
			return err
		}
		slog.Info("bundle written", "path", *out, "threshold", info.Threshold, "train_images", info.Training.TrainImages,
			"val_images", info.Training.ValImages, "seconds", math.Round(info.Training.Seconds), "cross_fit_seconds", math.Round(info.Training.CrossFitSeconds))
		return nil
	}
}

// activationCache maps --activation-cache-mb to fit.Options, where 0
// means the default and a negative limit turns the cache off.
func activationCache(mb int64) int64 {
	if mb <= 0 {
		return -1
	}
	return mb << 20
}

// progressLine is one line of fit --progress-json.
type progressLine struct {
	Phase   string  `json:"phase"`
	Fold    int     `json:"fold"`
	Folds   int     `json:"folds"`
	Epoch   int     `json:"epoch"`
	Epochs  int     `json:"epochs"`
	Batch   int     `json:"batch"`
	Batches int     `json:"batches"`
	LeftS   float64 `json:"left_s"`
}

// progressLogger logs training progress at most every 10 seconds, and every
// finished epoch; with asJSON it also writes every step to stdout, at most
// one a second (see progressLine).
func progressLogger(asJSON bool) func(fit.Progress) {
	var last, lastJSON time.Time
	return func(p fit.Progress) {
		if asJSON && (time.Since(lastJSON) >= time.Second || !math.IsNaN(p.ValLoss)) {
			lastJSON = time.Now()
			json.NewEncoder(os.Stdout).Encode(progressLine{Phase: p.Phase, Fold: p.Fold, Folds: p.Folds, Epoch: p.Epoch, Epochs: p.Epochs,
				Batch: p.Batch, Batches: p.Batches, LeftS: p.Remaining.Seconds()})
		}
		switch {
		case !math.IsNaN(p.ValLoss) && p.Fold > 0:
			slog.Info("calibration fold's epoch finished", "fold", fmt.Sprintf("%d/%d", p.Fold, p.Folds), "epoch", fmt.Sprintf("%d/%d", p.Epoch, p.Epochs), "train_loss", p.TrainLoss, "val_loss", p.ValLoss)
		case !math.IsNaN(p.ValLoss):
			slog.Info("epoch finished", "epoch", fmt.Sprintf("%d/%d", p.Epoch, p.Epochs), "train_loss", p.TrainLoss, "val_loss", p.ValLoss)
		case time.Since(last) >= 10*time.Second:
			last = time.Now()
			switch p.Phase {
			case "teacher":
				slog.Info("caching the teacher's activations", "batch", fmt.Sprintf("%d/%d", p.Batch, p.Batches))
				return
			case "features":
				slog.Info("computing features", "batch", fmt.Sprintf("%d/%d", p.Batch, p.Batches))
				return
			}
			what := "training"
			if p.Fold > 0 {
				what = fmt.Sprintf("training the students of calibration fold %d/%d", p.Fold, p.Folds)
			}
			slog.Info(what, "epoch", fmt.Sprintf("%d/%d", p.Epoch, p.Epochs), "batch", fmt.Sprintf("%d/%d", p.Batch, p.Batches),
				"images_per_s", math.Round(p.ImagesPerSecond*10)/10, "train_loss", p.TrainLoss, "left", p.Remaining.Round(time.Second))
		}
	}
}
