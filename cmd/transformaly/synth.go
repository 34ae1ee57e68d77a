package main

import (
	"fmt"
	"log/slog"
	"slices"
	"strings"

	"github.com/spf13/pflag"

	"github.com/transformaly/transformaly/internal/synth"
)

// synthCommand writes the demo's synthetic parts on their own, so fits and
// daemon runs can be measured at any size and count on any box (the GPU
// check does so) without a camera or a dataset.
func synthCommand(fs *pflag.FlagSet) func([]string) error {
	kinds := append(append([]string{synth.Normal}, synth.Defects...), synth.SmallDefects...)
	out := fs.String("out", "", "folder for the images (PNG, one file a part)")
	video := fs.String("video", "", "write an MJPG AVI of parts passing the camera instead (every tenth part defective, kinds in turn)")
	dataset := fs.String("dataset", "", "write an MVTec AD layout instead: train/good (--count normal parts), test/good and test/<kind> for every defect kind (--test-count each), ground_truth/<kind>/<name>_mask.png")
	testCount := fs.Int("test-count", 50, "with --dataset: test images of each kind")
	kind := fs.String("kind", synth.Normal, "what the images show: "+strings.Join(kinds, ", "))
	count := fs.Int("count", 100, "number of images, or of parts in the video")
	size := fs.Int("image-size", 224, "side of the square images or video frames, in pixels")
	framesPerPart := fs.Int("frames-per-part", 6, "video frames showing each part")
	seed := fs.Uint64("seed", 1, "random seed: the same seed gives the same images")
	tray := fs.String("tray", "", "with --out or --dataset: high-resolution scenes of `WIDTHxHEIGHT` pixels instead (e.g. 1600x1200), a tray of washers three rows high with small defects 8-20 px wide on one of them, for tiled inspection (fit --tile)")
	return func(args []string) error {
		if len(args) > 0 {
			return usageError("unexpected arguments %q", args)
		}
		given := 0
		for _, f := range []string{*out, *video, *dataset} {
			if f != "" {
				given++
			}
		}
		if given != 1 {
			return usageError("give one of --out (images), --video and --dataset")
		}
		if !slices.Contains(kinds, *kind) {
			return usageError("--kind %q: one of %s", *kind, strings.Join(kinds, ", "))
		}
		if *count < 1 || *size < 16 || *framesPerPart < 1 {
			return usageError("--count and --frames-per-part must be at least 1 and --image-size at least 16")
		}
		var trayW, trayH int
		if *tray != "" {
			if _, err := fmt.Sscanf(*tray, "%dx%d", &trayW, &trayH); err != nil || trayW < 16 || trayH < 16 || trayW*trayH > 50_000_000 {
				return usageError("--tray %q: WIDTHxHEIGHT, each at least 16 pixels and at most 50 megapixels in all", *tray)
			}
			if *video != "" {
				return usageError("--tray goes with --out or --dataset, not --video")
			}
			if *kind != synth.Normal && !slices.Contains(synth.SmallDefects, *kind) {
				return usageError("--tray --kind %q: one of %s, %s", *kind, synth.Normal, strings.Join(synth.SmallDefects, ", "))
			}
		}
		if *dataset != "" {
			if *testCount < 1 {
				return usageError("--test-count must be at least 1")
			}
			if *tray != "" {
				if err := synth.WriteTrayDataset(*dataset, trayW, trayH, *count, *testCount, synth.SmallDefects, *seed); err != nil {
					return err
				}
				slog.Info("synthetic tray dataset written", "folder", *dataset, "train", *count, "test_per_kind", *testCount, "defects", synth.SmallDefects, "width", trayW, "height", trayH)
				return nil
			}
			defects := append(append([]string{}, synth.Defects...), synth.SmallDefects...)
			if err := synth.WriteDataset(*dataset, *size, *count, *testCount, defects, *seed); err != nil {
				return err
			}
			slog.Info("synthetic dataset written", "folder", *dataset, "train", *count, "test_per_kind", *testCount, "defects", defects, "size", *size)
			return nil
		}
		if *video != "" {
			parts := make([]string, *count)
			for i := range parts {
				parts[i] = synth.Normal
				if i%10 == 9 {
					parts[i] = synth.Defects[(i/10)%len(synth.Defects)]
				}
			}
			if err := synth.WriteVideo(*video, *size, 25, parts, *framesPerPart, *seed); err != nil {
				return err
			}
			slog.Info("synthetic video written", "path", *video, "parts", *count, "frames", *count**framesPerPart, "size", *size)
			return nil
		}
		if *tray != "" {
			if _, err := synth.WriteTrays(*out, trayW, trayH, *kind, *count, *seed); err != nil {
				return fmt.Errorf("write synthetic trays: %w", err)
			}
			slog.Info("synthetic trays written", "folder", *out, "kind", *kind, "count", *count, "width", trayW, "height", trayH)
			return nil
		}
		if _, err := synth.WriteParts(*out, *size, *kind, *count, *seed); err != nil {
			return fmt.Errorf("write synthetic parts: %w", err)
		}
		slog.Info("synthetic parts written", "folder", *out, "kind", *kind, "count", *count, "size", *size)
		return nil
	}
}
