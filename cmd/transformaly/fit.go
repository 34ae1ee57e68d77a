package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/transformaly/transformaly/capture"
	"github.com/transformaly/transformaly/daemon"
	"github.com/transformaly/transformaly/detector"
	"github.com/transformaly/transformaly/fit"
	"github.com/transformaly/transformaly/internal/atomicfile"
	"github.com/transformaly/transformaly/internal/heatmap"
	"github.com/transformaly/transformaly/models"
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
	valFraction := fs.Float64("val-fraction", 0.1, "share of the normal images held out to pick the best epoch and calibrate the threshold")
	blocks := fs.String("blocks", "", "0-based teacher blocks that get a student, e.g. 2-11 (default: all but the first two)")
	epochs := fs.Int("epochs", 30, "training epochs at most")
	patience := fs.Int("patience", 5, "stop once no student's held-out loss has improved for this many epochs (0: train all --epochs); each student keeps its best epoch")
	batch := fs.Int("batch-size", 16, "images per training step")
	lr := fs.Float64("lr", 1e-4, "Adam learning rate")
	seed := fs.Uint64("seed", 1, "seed for the split, the student initialisation and the shuffling")
	whitening := fs.Float64("whitening", 0.9, "PCA explained-variance fraction kept for the embedding's Gaussian")
	quantile := fs.Float64("threshold-quantile", 0.995, "quantile of held-out normal scores used as the default alert threshold")
	resume := fs.Bool("resume", false, "continue an interrupted fit of the same --out from its last finished epoch")
	provider := fs.String("provider", "auto", "execution provider for training: auto (CUDA when usable, else CPU, saying why), cuda or cpu")
	providerLibrary := fs.String("provider-library", "", "execution-provider plugin library, e.g. libonnxruntime_providers_cuda.so of the core library's exact version")
	cudaOptions := fs.StringToString("cuda-options", nil, "ONNX Runtime CUDA provider options for training, e.g. device_id=1,gpu_mem_limit=8589934592")
	memoryMB := fs.Int64("max-image-memory-mb", fit.DefaultMemoryBudget>>20, "decoded images, then the teacher's cached activations, kept in memory; beyond this they go to temporary files beside --out")
	cacheMB := fs.Int64("activation-cache-mb", fit.DefaultActivationCache>>20, "largest cache of the teacher's activations, computed once so that epochs run only the students (CPU training; 0: run the teacher in every step)")
	patchBlocks := fs.String("patch-blocks", "", "0-based teacher blocks whose patch tokens are the patch feature space (finds small defects and where they are), e.g. 2 or 2,4; \"none\" fits without it (default: one block a quarter of the way in)")
	coreset := fs.Float64("coreset", fit.DefaultCoreset, "share of the normal images' patches the patch memory bank keeps (greedy coreset): more finds subtler defects, costs memory and scoring time")
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
		v, err := teacher.load()
		if err != nil {
			return err
		}
		var blockList []int
		if *blocks != "" {
			if blockList, err = parseBlocks(*blocks); err != nil {
				return usageError("%v", err)
			}
		}
		var patchList []int
		noPatch := *patchBlocks == "none"
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
			Teacher: v, TeacherPath: teacher.path, NormalDir: *normal, Blocks: blockList, PatchBlocks: patchList, NoPatch: noPatch, Coreset: *coreset,
			ValFraction: *valFraction, Epochs: *epochs, Patience: *patience, BatchSize: *batch, LR: *lr, Seed: *seed,
			Whitening: *whitening, Quantile: *quantile, Threads: rt.threads, Provider: *provider, ProviderLibrary: *providerLibrary, CUDAOptions: *cudaOptions, MemoryBudget: *memoryMB << 20, ActivationCache: activationCache(*cacheMB), Out: *out, Resume: *resume,
			Progress: progressLogger(),
		})
		if err != nil {
			return err
		}
		slog.Info("bundle written", "path", *out, "threshold", info.Threshold, "train_images", info.Training.TrainImages,
			"val_images", info.Training.ValImages, "seconds", math.Round(info.Training.Seconds))
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

// progressLogger logs training progress at most every 10 seconds, and every
// finished epoch.
func progressLogger() func(fit.Progress) {
	var last time.Time
	return func(p fit.Progress) {
		switch {
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
			slog.Info("training", "epoch", fmt.Sprintf("%d/%d", p.Epoch, p.Epochs), "batch", fmt.Sprintf("%d/%d", p.Batch, p.Batches),
				"images_per_s", math.Round(p.ImagesPerSecond*10)/10, "train_loss", p.TrainLoss, "left", p.Remaining.Round(time.Second))
		}
	}
}

// imageBatches reads image files in batches of packed RGB at size, calling
// fn with each batch's readable files (and with keepViews each image as
// decoded); unreadable files are logged and counted.
func imageBatches(paths []string, size int, keepViews bool, batch int, fn func(ok []string, pixels []byte, views []*capture.View) error) (failed int, err error) {
	for start := 0; start < len(paths); start += batch {
		var ok []string
		var pixels []byte
		var views []*capture.View
		for _, p := range paths[start:min(start+batch, len(paths))] {
			img, view, err := capture.ReadImageRGB(p, size, keepViews)
			if err != nil {
				slog.Error("skipping image", "err", err)
				failed++
				continue
			}
			ok = append(ok, p)
			pixels = append(pixels, img...)
			views = append(views, view)
		}
		if len(ok) > 0 {
			if err := fn(ok, pixels, views); err != nil {
				return failed, err
			}
		}
	}
	return failed, nil
}

// unreadable ends a command over image files: the batch error if any, else
// a failure when some files could not be read (after the others were done).
func unreadable(failed, total int, err error) error {
	if err != nil {
		return err
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d images could not be read", failed, total)
	}
	return nil
}

// scoreFiles scores image files in batches, calling fn for each readable
// one.
func scoreFiles(det *detector.Detector, paths []string, batch int, threshold float64, fn func(path string, r detector.Result) error) (failed int, err error) {
	return scoreFilesWithViews(det, paths, batch, false, threshold, func(p string, _ *capture.View, r detector.Result) error { return fn(p, r) })
}

// scoreFilesWithViews is scoreFiles that also hands over each image as
// decoded (with keepViews).
func scoreFilesWithViews(det *detector.Detector, paths []string, batch int, keepViews bool, threshold float64, fn func(path string, view *capture.View, r detector.Result) error) (failed int, err error) {
	return imageBatches(paths, det.Size(), keepViews, batch, func(ok []string, pixels []byte, views []*capture.View) error {
		res, err := det.Score(pixels, len(ok), threshold)
		if err != nil {
			return err
		}
		for i, p := range ok {
			if err := fn(p, views[i], res[i]); err != nil {
				return err
			}
		}
		return nil
	})
}

// modelFlags name a bundle.
type modelFlags struct {
	flags                        *pflag.FlagSet
	path                         string
	threshold                    float64
	provider                     string
	precision                    string
	providerLibrary              string
	cudaOptions, tensorrtOptions map[string]string
}

func (m *modelFlags) register(fs *pflag.FlagSet) {
	m.flags = fs
	fs.StringVar(&m.path, "model", "", "bundle `file` written by transformaly fit (required)")
	fs.Float64Var(&m.threshold, "threshold", 0, "alert threshold on the score (default: the bundle's calibrated one)")
	fs.StringVar(&m.provider, "provider", "cpu", "execution provider: auto (TensorRT, then CUDA, then CPU), tensorrt, cuda or cpu")
	fs.StringVar(&m.precision, "precision", "", "detector precision: fp32, or fp16 (weights and activations in half precision, scores in float32); default fp32 with FP16 kernels allowed on TensorRT and TF32 on CUDA")
	fs.StringVar(&m.providerLibrary, "provider-library", "", "execution-provider plugin libraries, comma-separated (e.g. libonnxruntime_providers_cuda.so of the core library's exact version)")
	fs.StringToStringVar(&m.cudaOptions, "cuda-options", nil, "ONNX Runtime CUDA provider options, e.g. device_id=1,gpu_mem_limit=8589934592")
	fs.StringToStringVar(&m.tensorrtOptions, "tensorrt-options", nil, "ONNX Runtime TensorRT provider options, e.g. trt_max_workspace_size=4294967296")
}

// thresholdFor is --threshold when it was given, whatever its sign (scores
// are negative log-likelihoods and often below zero), else the bundle's.
func (m *modelFlags) thresholdFor(det *detector.Detector) float64 {
	if m.flags.Changed("threshold") {
		return m.threshold
	}
	return det.Info.Threshold
}

func (m *modelFlags) load(rt runtimeFlags) (*detector.Detector, error) {
	return m.loadAs(rt, m.precision)
}

func (m *modelFlags) loadAs(rt runtimeFlags, precision string) (*detector.Detector, error) {
	if m.path == "" {
		return nil, usageError("--model is required")
	}
	if err := detector.CheckProviderOptions(m.cudaOptions); err != nil {
		return nil, usageError("--cuda-options: %v", err)
	}
	if err := detector.CheckProviderOptions(m.tensorrtOptions); err != nil {
		return nil, usageError("--tensorrt-options: %v", err)
	}
	if err := rt.init(); err != nil {
		return nil, err
	}
	return detector.Load(m.path, detector.RunnerOptions{Threads: rt.threads, Provider: m.provider, Precision: precision, ProviderLibrary: m.providerLibrary,
		CUDAOptions: m.cudaOptions, TensorRTOptions: m.tensorrtOptions})
}

type scoreLine struct {
	Path  string   `json:"path"`
	Score *float64 `json:"score"` // null when not finite (then Error says so)
	// NormalQuantile is the share of normal parts scoring at or below this
	// one, from the bundle's calibration.
	NormalQuantile *float64 `json:"normal_quantile,omitempty"`
	LLPretrained   *float64 `json:"ll_pretrained"`
	LLStudent      *float64 `json:"ll_student"`
	// PatchScore is the largest patch distance (bundles with a patch
	// feature space only).
	PatchScore  *float64  `json:"patch_score,omitempty"`
	BlockErrors []float32 `json:"block_errors"`
	Anomalous   bool      `json:"anomalous"`
	Threshold   float64   `json:"threshold"`
	Embedding   []float32 `json:"embedding,omitempty"`
	Heatmap     string    `json:"heatmap,omitempty"` // the JPEG written with --heatmap
	// AnomalyMap is the TIFF written with --anomaly-maps; Region the worst
	// region in the image's coordinates (bundles with a patch feature space).
	AnomalyMap string         `json:"anomaly_map,omitempty"`
	Region     *daemon.Region `json:"region,omitempty"`
	// Frame and Seconds place a video frame in its file (videos only).
	Frame   uint64   `json:"frame,omitempty"`
	Seconds *float64 `json:"seconds,omitempty"`
	Error   string   `json:"error,omitempty"`
}

func scoreCommand(fs *pflag.FlagSet) func([]string) error {
	var model modelFlags
	var rt runtimeFlags
	model.register(fs)
	asJSON := fs.Bool("json", false, "print one JSON object a line: path, score, ll_pretrained, ll_student, patch_score, block_errors, anomalous, threshold (and frame, seconds for videos)")
	withEmbedding := fs.Bool("embedding", false, "include the teacher's embedding")
	heatmaps := fs.String("heatmap", "", "write each image (and each anomalous video frame) with its per-patch anomaly heatmap as DIR/<name>[-<frame>].heatmap.jpg (--json gives each line's file)")
	heatmapSide := fs.Int("heatmap-size", 1280, "longest side of the heatmap images in pixels (smaller images keep their size)")
	anomalyMaps := fs.String("anomaly-maps", "", "write each image's (and each anomalous video frame's) anomaly map as DIR/<name>[-<frame>].tiff: single-channel float32 at the image's resolution, each pixel's patch distance (higher is more anomalous; bundles with a patch feature space)")
	batch := fs.Int("batch-size", 8, "images per ONNX Runtime call")
	rt.register(fs)
	return func(args []string) error {
		if len(args) == 0 {
			return usageError("no images or videos given")
		}
		if *batch < 1 || *heatmapSide < 1 {
			return usageError("--batch-size and --heatmap-size must be at least 1")
		}
		det, err := model.load(rt)
		if err != nil {
			return err
		}
		defer det.Close()
		threshold := model.thresholdFor(det)
		for _, dir := range []struct{ flag, path string }{{"--heatmap", *heatmaps}, {"--anomaly-maps", *anomalyMaps}} {
			if dir.path == "" {
				continue
			}
			if err := os.MkdirAll(dir.path, 0o755); err != nil {
				return fmt.Errorf("%s: %w", dir.flag, err)
			}
		}
		if *anomalyMaps != "" && det.Info.Patch == nil {
			return usageError("--anomaly-maps: the bundle %s has no patch feature space (fitted with --patch-blocks none, or before it existed)", model.path)
		}
		keepViews := *heatmaps != "" || det.Info.Patch != nil // regions are in the image's coordinates
		enc := json.NewEncoder(os.Stdout)
		outputNames := map[string]int{}
		// outputName names an image's heatmap and map files: its base name,
		// the frame for videos, and a count for images of the same name in
		// different folders.
		outputName := func(line scoreLine) string {
			name := strings.TrimSuffix(filepath.Base(line.Path), filepath.Ext(line.Path))
			if line.Frame > 0 {
				name += fmt.Sprintf("-%06d", line.Frame)
			}
			if n := outputNames[name]; n > 0 {
				outputNames[name] = n + 1
				return name + fmt.Sprintf("-%d", n+1)
			}
			outputNames[name] = 1
			return name
		}
		normalDistance := math.NaN()
		if det.Info.Patch != nil {
			normalDistance = det.Info.Patch.NormalDistance
		}
		emit := func(line scoreLine, view *capture.View, r detector.Result) error {
			anomaly, err := heatmap.ForResult(r.PatchDistances, normalDistance, r.TokenErrors, len(det.Info.Blocks))
			if err != nil {
				return err
			}
			if r.PatchDistances != nil && view != nil {
				box := anomaly.Region(view.Width, view.Height)
				line.Region = &daemon.Region{X: box.Min.X, Y: box.Min.Y, Width: box.Dx(), Height: box.Dy()}
			}
			writeHeatmap := *heatmaps != "" && (line.Frame == 0 || r.Anomalous)
			writeMap := *anomalyMaps != "" && r.PatchDistances != nil && (line.Frame == 0 || r.Anomalous)
			var name string
			if writeHeatmap || writeMap {
				name = outputName(line)
			}
			if writeHeatmap {
				caption := fmt.Sprintf("score %.4g  threshold %.4g", r.Score, threshold)
				if rarity := models.RarityText(det.Info.Calibration.NormalQuantile(r.Score)); rarity != "" {
					caption += "  " + rarity
				}
				jpg, err := heatmap.JPEG(view.BGR, view.Width, view.Height, anomaly, *heatmapSide, caption)
				if err != nil {
					return err
				}
				line.Heatmap = filepath.Join(*heatmaps, name+".heatmap.jpg")
				if err := os.WriteFile(line.Heatmap, jpg, 0o644); err != nil {
					return fmt.Errorf("--heatmap: %w", err)
				}
			}
			if writeMap {
				full, err := anomaly.Full(view.Width, view.Height)
				if err != nil {
					return err
				}
				line.AnomalyMap = filepath.Join(*anomalyMaps, name+".tiff")
				if err := heatmap.WriteTIFF(line.AnomalyMap, full, view.Width, view.Height); err != nil {
					return fmt.Errorf("--anomaly-maps: %w", err)
				}
			}
			line.Score, line.LLPretrained, line.LLStudent = detector.NumberOrNull(r.Score), detector.NumberOrNull(r.LLPretrained), detector.NumberOrNull(r.LLStudent)
			line.NormalQuantile = detector.NumberOrNull(det.Info.Calibration.NormalQuantile(r.Score))
			line.PatchScore = detector.NumberOrNull(r.PatchScore)
			line.BlockErrors, line.Anomalous, line.Threshold = r.BlockErrors, r.Anomalous, threshold
			if !r.Finite() || slices.ContainsFunc(r.BlockErrors, func(e float32) bool { return math.IsNaN(float64(e)) || math.IsInf(float64(e), 0) }) {
				// JSON cannot carry NaN or infinities: the line would fail to encode.
				line.Error, line.BlockErrors = "the detector gave a non-finite score; judged anomalous", nil
			}
			if *withEmbedding {
				line.Embedding = r.Embedding
			}
			if *asJSON {
				line.Path = outputPath(line.Path, true)
				return enc.Encode(line)
			}
			verdict := "normal"
			if r.Anomalous {
				verdict = "ANOMALOUS"
			}
			where := outputPath(line.Path, false)
			if line.Frame > 0 {
				where += fmt.Sprintf("#%d", line.Frame)
			}
			patch := ""
			if r.PatchDistances != nil {
				patch = fmt.Sprintf("\tpatch_score=%.3f", r.PatchScore)
				if line.Region != nil {
					patch += fmt.Sprintf("\tregion=%dx%d+%d+%d", line.Region.Width, line.Region.Height, line.Region.X, line.Region.Y)
				}
			}
			_, err = fmt.Printf("%s\tscore=%.3f\t%s\tll_pretrained=%.3f\tll_student=%.3f%s\tblock_errors=%v\n", where, r.Score, verdict, r.LLPretrained, r.LLStudent, patch, r.BlockErrors)
			return err
		}
		images, videos, err := imageArgs(args)
		if err != nil {
			return err
		}
		failed, err := scoreFilesWithViews(det, images, *batch, keepViews, threshold, func(p string, view *capture.View, r detector.Result) error {
			return emit(scoreLine{Path: p}, view, r)
		})
		for _, v := range videos {
			if err != nil {
				break
			}
			err = scoreVideo(det, v, *batch, keepViews, threshold, emit)
		}
		return unreadable(failed, len(images), err)
	}
}

// imageArgs sorts command-line arguments into image files, with each
// folder standing for every image in it (each under its own name, not one
// video of them), and the rest (videos).
func imageArgs(args []string) (images, others []string, err error) {
	for _, p := range args {
		switch st, statErr := os.Stat(p); {
		case statErr == nil && st.IsDir():
			found, err := fit.ListImages(p)
			if err != nil {
				return nil, nil, err
			}
			if len(found) == 0 {
				return nil, nil, fmt.Errorf("%s holds no images (png, jpg, jpeg, bmp)", p)
			}
			images = append(images, found...)
		case capture.ImageExtensions[strings.ToLower(filepath.Ext(p))]:
			images = append(images, p)
		default:
			others = append(others, p)
		}
	}
	return images, others, nil
}

// evalReport is what eval prints.
type evalReport struct {
	AUROC           float64 `json:"auroc"`
	AUROCPretrained float64 `json:"auroc_pretrained"`
	AUROCStudent    float64 `json:"auroc_student"`
	// AUROCPatch is the patch score's alone (bundles with a patch feature
	// space only).
	AUROCPatch     *float64 `json:"auroc_patch,omitempty"`
	Threshold      float64  `json:"threshold"`
	FalseAlarmRate float64  `json:"false_alarm_rate"`
	// What the bundle's calibration promised for its own threshold (absent
	// for bundles fitted before calibration was recorded).
	ExpectedFalseAlarmRate *float64    `json:"expected_false_alarm_rate,omitempty"`
	ExpectedFalseAlarms95  *[2]float64 `json:"expected_false_alarm_rate_95,omitempty"`
	DetectionRate          float64     `json:"detection_rate"`
	NormalImages           int         `json:"normal_images"`
	AnomalousImages        int         `json:"anomalous_images"`
	SkippedImages          int         `json:"skipped_images"`
	// Precision compares FP16 against FP32 (with --compare-precision).
	Precision *precisionReport `json:"precision_compare,omitempty"`
}

// precisionReport says what FP16 costs on the evaluated images.
type precisionReport struct {
	AUROCFP32          float64 `json:"auroc_fp32"`
	AUROCFP16          float64 `json:"auroc_fp16"`
	AUROCDifference    float64 `json:"auroc_difference"`
	MaxScoreDifference float64 `json:"max_score_difference"`
	MeanScoreDiff      float64 `json:"mean_score_difference"`
	VerdictsChanged    int     `json:"verdicts_changed"`
}

func comparePrecision(full evalReport, fullScores []float64, half evalReport, halfScores []float64) *precisionReport {
	p := &precisionReport{AUROCFP32: full.AUROC, AUROCFP16: half.AUROC, AUROCDifference: half.AUROC - full.AUROC}
	for i := range fullScores {
		d := math.Abs(fullScores[i] - halfScores[i])
		p.MaxScoreDifference = math.Max(p.MaxScoreDifference, d)
		p.MeanScoreDiff += d / float64(len(fullScores))
		if (fullScores[i] > full.Threshold) != (halfScores[i] > full.Threshold) {
			p.VerdictsChanged++
		}
	}
	return p
}

func evalCommand(fs *pflag.FlagSet) func([]string) error {
	var model modelFlags
	var rt runtimeFlags
	model.register(fs)
	normalDir := fs.String("normal", "", "folder of normal test images (or --dataset)")
	anomalousDir := fs.String("anomalous", "", "folder of anomalous test images (or --dataset)")
	dataset := fs.String("dataset", "", "an MVTec AD layout instead of --normal and --anomalous: test/good, test/<defect>/, ground_truth/<defect>/<name>_mask.png; image AUROC per defect kind and feature space, pixel AUROC and AUPRO (to a false positive rate of 0.3) from the anomaly maps")
	asJSON := fs.Bool("json", false, "print one JSON object: auroc, auroc_pretrained, auroc_student, auroc_patch, false_alarm_rate, detection_rate, threshold and image counts")
	compare := fs.Bool("compare-precision", false, "also score with the FP16 detector and report its AUROC and score differences against FP32")
	batch := fs.Int("batch-size", 8, "images per ONNX Runtime call")
	chart := fs.String("chart", "", "also write a PNG `file` with the ROC curve and the score distributions around the threshold")
	rt.register(fs)
	return func(args []string) error {
		if len(args) > 0 {
			return usageError("unexpected arguments %q", args)
		}
		if (*dataset == "") == (*normalDir == "" || *anomalousDir == "") {
			return usageError("give --normal and --anomalous, or --dataset")
		}
		if *dataset != "" && (*compare || *chart != "") {
			return usageError("--compare-precision and --chart go with --normal and --anomalous, not --dataset")
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
		if *compare {
			half, err := model.loadAs(rt, models.FP16)
			if err != nil {
				return err
			}
			defer half.Close()
			halfRep, halfScores, err := evaluate(half, *normalDir, *anomalousDir, model.thresholdFor(half), *batch)
			if err != nil {
				return err
			}
			rep.Precision = comparePrecision(rep, scores, halfRep, halfScores)
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
	fmt.Printf("AUROC: %.4f combined, %.4f pretrained feature, %.4f teacher-student feature", rep.AUROC, rep.AUROCPretrained, rep.AUROCStudent)
	if rep.AUROCPatch != nil {
		fmt.Printf(", %.4f patch feature", *rep.AUROCPatch)
	}
	fmt.Println()
	fmt.Printf("at threshold %.4g: false alarm rate %.4f, detection rate %.4f\n", rep.Threshold, rep.FalseAlarmRate, rep.DetectionRate)
	if e := rep.ExpectedFalseAlarmRate; e != nil {
		fmt.Printf("the bundle's calibration promised a false alarm rate of %.4f (95%% interval %.4f-%.4f) at its threshold\n", *e, rep.ExpectedFalseAlarms95[0], rep.ExpectedFalseAlarms95[1])
	}
	if p := rep.Precision; p != nil {
		fmt.Printf("fp16 vs fp32: AUROC %.4f vs %.4f (%+.4f), score difference max %.4g mean %.4g, %d verdicts changed\n",
			p.AUROCFP16, p.AUROCFP32, p.AUROCDifference, p.MaxScoreDifference, p.MeanScoreDiff, p.VerdictsChanged)
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
	if det.Info.Patch != nil {
		a := fit.AUROC(sets[0].patch, sets[1].patch)
		rep.AUROCPatch = &a
	}
	rep.FalseAlarmRate = fit.FractionAbove(sets[0].all, rep.Threshold)
	if c := det.Info.Calibration; c.Images > 0 && threshold == det.Info.Threshold {
		rep.ExpectedFalseAlarmRate, rep.ExpectedFalseAlarms95 = &c.ExpectedFalseAlarms, &c.FalseAlarms95
	}
	rep.DetectionRate = fit.FractionAbove(sets[1].all, rep.Threshold)
	return rep, append(sets[0].all, sets[1].all...), nil
}

func inspectCommand(fs *pflag.FlagSet) func([]string) error {
	scores := fs.Bool("calibration-scores", false, "also print the calibration scores (up to 1,001 numbers) that normal_quantile is read from")
	return func(args []string) error {
		if len(args) != 1 {
			return usageError("give exactly one bundle file")
		}
		info, _, err := models.ReadBundle(args[0])
		if err != nil {
			return err
		}
		if !*scores {
			info.Calibration.Scores = nil
		}
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(info)
	}
}
