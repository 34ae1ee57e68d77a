package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/pflag"

	"github.com/transformaly/transformaly/capture"
	"github.com/transformaly/transformaly/daemon"
	"github.com/transformaly/transformaly/detector"
	"github.com/transformaly/transformaly/internal/heatmap"
	"github.com/transformaly/transformaly/models"
)

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
	// Tiles is how many tiles a tiled bundle cut the image into, WorstTile
	// the index (row by row) of the one whose score is the image's.
	Tiles     int  `json:"tiles,omitempty"`
	WorstTile *int `json:"worst_tile,omitempty"`
	// Frame and Seconds place a video frame in its file (videos only).
	Frame   uint64   `json:"frame,omitempty"`
	Seconds *float64 `json:"seconds,omitempty"`
	Error   string   `json:"error,omitempty"`
}

func scoreCommand(fs *pflag.FlagSet) func([]string) error {
	var model modelFlags
	var rt runtimeFlags
	model.register(fs)
	asJSON := fs.Bool("json", false, "print one JSON object a line: path, score, ll_pretrained, ll_student, patch_score, block_errors, anomalous, threshold (and frame, seconds for videos; tiles and worst_tile for tiled bundles)")
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
			anomaly, err := heatmap.ForResult(r.PatchDistances, r.MapCols, r.MapRows, det.Info.Teacher.Config.Grid(), normalDistance, r.TokenErrors, len(det.Info.Blocks))
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
			if r.Tiles > 0 {
				line.Tiles, line.WorstTile = r.Tiles, &r.WorstTile
			}
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
				if r.Tiles > 0 {
					patch += fmt.Sprintf("\ttiles=%d\tworst_tile=%d", r.Tiles, r.WorstTile)
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
