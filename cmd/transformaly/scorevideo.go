package main

import (
	"context"
	"fmt"
	"image"
	"os"
	"os/signal"
	"path/filepath"
	"time"

	"github.com/transformaly/transformaly/capture"
	"github.com/transformaly/transformaly/detector"
)

// scoreVideo scores every frame of a recording, in order and in batches,
// handing each to emit with its frame number and position in seconds.
func scoreVideo(det *detector.Detector, path string, batch int, keepViews bool, threshold float64,
	emit func(scoreLine, *capture.View, detector.Result) error) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	var frames []capture.Frame
	var pixels []byte
	var sizes []image.Point
	cfg := capture.Config{Name: filepath.Base(path), Source: path, Size: det.Size(), KeepView: keepViews}
	if t := det.Info.Tiling; t != nil {
		// A frame's tiles are a batch of their own.
		cfg.Tiling, batch = &t.Tiling, 1
	}
	flush := func() error {
		if len(frames) == 0 {
			return nil
		}
		res, err := det.ScoreFrames(pixels, sizes, threshold)
		if err != nil {
			return fmt.Errorf("score %s: %w", path, err)
		}
		for i, f := range frames {
			at := f.Time.Sub(time.Time{}).Seconds() // EachFrame's times count from the zero time
			if err := emit(scoreLine{Path: path, Frame: f.Seq, Seconds: &at}, f.View, res[i]); err != nil {
				return err
			}
		}
		frames, pixels, sizes = frames[:0], pixels[:0], sizes[:0]
		return nil
	}
	err := capture.EachFrame(ctx, cfg, func(f capture.Frame) error {
		frames = append(frames, f)
		pixels = append(pixels, f.RGB...)
		sizes = append(sizes, image.Pt(f.Width, f.Height))
		if len(frames) == batch {
			return flush()
		}
		return nil
	})
	if err == nil {
		err = flush()
	}
	if err != nil {
		return fmt.Errorf("video %s: %w", path, err)
	}
	return nil
}
