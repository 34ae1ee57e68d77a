package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/transformaly/transformaly/capture"
	"github.com/transformaly/transformaly/daemon"
	"github.com/transformaly/transformaly/fit"
	"github.com/transformaly/transformaly/internal/atomicfile"
	"github.com/transformaly/transformaly/models"
	"github.com/transformaly/transformaly/tiles"
)

// collectCommand saves frames of a configured camera for fitting: through
// the daemon's own capture settings (crop, rotation, flips), so the normal
// images a bundle is fitted on look like the frames it will score.
func collectCommand(fs *pflag.FlagSet) func([]string) error {
	configPath := fs.String("config", daemon.DefaultConfigPath, "the daemon's YAML configuration: its camera settings (source, ROI, rotation, flips) are used; bundles need not exist yet")
	camera := fs.String("camera", "", "name of the camera in the configuration (default: the only one)")
	out := fs.String("out", "", "folder to save the frames in (created if missing) (required)")
	count := fs.Int("count", 500, "frames to save")
	every := fs.Duration("every", time.Second, "least time between saved frames, to spread them over the line's variation (0: every frame that arrives while none is being saved); video files play at their own frame rate")
	format := fs.String("format", "png", "image format: png (lossless) or jpg")
	fromNG := fs.Bool("ng-images", false, "instead of capturing, copy the camera's kept NG parts' frames (ng_images: <directory>/<camera>/images, saved as collect saves frames) into --out, up to --count: review that folder first and delete the true rejects (parts marked true defect on the console are left out), so only false rejects become normal images")
	return func(args []string) error {
		if len(args) > 0 {
			return usageError("unexpected arguments %q", args)
		}
		if *out == "" {
			return usageError("--out is required")
		}
		if *count < 1 {
			return usageError("--count must be at least 1")
		}
		if *format != "png" && *format != "jpg" {
			return usageError("--format %q is not png or jpg", *format)
		}
		cfg, err := daemon.LoadConfig(*configPath)
		if err != nil {
			return err
		}
		cam, err := pickCamera(cfg, *camera)
		if err != nil {
			return err
		}
		if *fromNG {
			marks, err := daemon.ReadReviews(cfg)
			if err != nil {
				return err
			}
			return copyNGImages(filepath.Join(cfg.NGImagesDirectory(), cam.Name, "images"), *out, cam.Name, *count, marks[cam.Name])
		}
		capCfg, err := cam.CaptureConfig(0, true)
		if err != nil {
			return fmt.Errorf("camera %s: %w", cam.Name, err)
		}
		// Frames for a tiled bundle (when the camera has one already) must
		// hold a tile: a refit on smaller frames could never score them.
		var tiling *tiles.Tiling
		if info, _, err := models.ReadBundle(cam.Model); err == nil && info.Tiling != nil {
			tiling = &info.Tiling.Tiling
		}
		// Files and folders play at their own pace, so --every spaces the
		// frames over the recording as it would over a live line.
		if kind, _, _ := capture.ParseKind(capCfg.Source); kind == capture.KindFile || kind == capture.KindFolder {
			capCfg.Pace = true
		}
		if err := os.MkdirAll(*out, 0o755); err != nil {
			return fmt.Errorf("--out: %w", err)
		}
		c, err := capture.NewCamera(capCfg, func(s capture.Status) {
			slog.Info("camera state", "camera", cam.Name, "state", s.State, "err", s.Error)
		})
		if err != nil {
			return err
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		runErr := make(chan error, 1)
		go func() { runErr <- c.Run(ctx) }()

		saved := 0
		var last, lastLog time.Time
		for f := range c.Frames() {
			if saved == *count || time.Since(last) < *every {
				f.View.Release()
				continue
			}
			if tiling != nil {
				if err := tiling.Fits(f.Width, f.Height); err != nil {
					f.View.Release()
					cancel()
					return fmt.Errorf("camera %s: its bundle %s is tiled: %w", cam.Name, cam.Model, err)
				}
			}
			last = time.Now()
			name := capture.FrameFileName(cam.Name, f.Time, f.Seq, *format)
			err := saveView(filepath.Join(*out, name), f.View, "."+*format)
			f.View.Release()
			if err != nil {
				cancel()
				return err
			}
			saved++
			if saved == *count {
				cancel() // Run returns and closes the frames channel
			} else if time.Since(lastLog) >= 10*time.Second {
				lastLog = time.Now()
				slog.Info("collecting", "camera", cam.Name, "saved", saved, "of", *count)
			}
		}
		err = <-runErr
		slog.Info("frames saved", "camera", cam.Name, "saved", saved, "dir", *out)
		switch {
		case err != nil:
			return fmt.Errorf("camera %s: %w (saved %d frames)", cam.Name, err, saved)
		case saved < *count && ctx.Err() == nil:
			return fmt.Errorf("camera %s: the source ended after %d of %d frames", cam.Name, saved, *count)
		}
		return nil
	}
}

// copyNGImages copies up to count of a camera's kept NG frames into out,
// each checked as fit will read it, under names that say where they came
// from; frames reviewed as true defects on the console (marks: NG image
// name -> mark) are left out.
func copyNGImages(dir, out, camera string, count int, marks map[string]string) error {
	paths, err := fit.ListImages(dir)
	if err != nil {
		return fmt.Errorf("--ng-images: %w (is ng_images on, and has camera %s rejected parts?)", err, camera)
	}
	paths = slices.DeleteFunc(paths, func(p string) bool {
		return marks[strings.TrimSuffix(filepath.Base(p), filepath.Ext(p))] == daemon.TrueDefect
	})
	if len(paths) == 0 {
		return fmt.Errorf("--ng-images: %s holds no images", dir)
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return fmt.Errorf("--out: %w", err)
	}
	copied := 0
	for _, p := range paths[:min(count, len(paths))] {
		data, err := os.ReadFile(p)
		if err == nil {
			err = capture.ValidateImageFile(p, data)
		}
		if err != nil {
			return fmt.Errorf("--ng-images: %w (after copying %d)", err, copied)
		}
		if err := atomicfile.Write(filepath.Join(out, camera+"-ng-"+filepath.Base(p)), data); err != nil {
			return err
		}
		copied++
	}
	slog.Info("NG parts' frames copied as normal images", "camera", camera, "copied", copied, "of", len(paths), "from", dir, "to", out)
	return nil
}

// pickCamera finds the named camera, or the only one when name is empty.
func pickCamera(cfg daemon.Config, name string) (daemon.CameraConfig, error) {
	var names []string
	for i := range cfg.Cameras {
		cam := cfg.Camera(i)
		if cam.Name == name || name == "" && len(cfg.Cameras) == 1 {
			return cam, nil
		}
		names = append(names, cam.Name)
	}
	switch {
	case len(names) == 0:
		return daemon.CameraConfig{}, errors.New("the configuration has no cameras")
	case name == "":
		return daemon.CameraConfig{}, usageError("the configuration has %d cameras %v: choose one with --camera", len(names), names)
	case !slices.Contains(names, name):
		return daemon.CameraConfig{}, usageError("no camera %q in the configuration (it has %v)", name, names)
	}
	return daemon.CameraConfig{}, nil
}

// saveView writes a frame's view as an image file, atomically.
func saveView(path string, v *capture.View, ext string) error {
	data, err := capture.EncodeImage(v.BGR, v.Width, v.Height, ext)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return atomicfile.Write(path, data)
}
