package models

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
)

// Normalization is how a teacher wants its input pixels: x' = (x *
// Rescale - Mean[c]) / Std[c] per RGB channel, x in 0..255. Checkpoints are
// trained on one (DeiT, DINO, MAE: ImageNet's mean and std; Google's ViT:
// 0.5 and 0.5), and a teacher fed another sees washed-out, shifted images.
type Normalization struct {
	Rescale float64    `json:"rescale"` // 1/255 but for odd preprocessors
	Mean    [3]float64 `json:"mean"`
	Std     [3]float64 `json:"std"`
	// Source says where it came from: a file, flags, or "assumed".
	Source string `json:"source"`
	// Interpolation, CropPct and InputSize are what timm's pretrained_cfg
	// says the checkpoint was evaluated with, reported (not applied: frames
	// are resized whole, after the camera's own crop, with OpenCV's
	// bilinear or area interpolation). Zero when the file does not say.
	Interpolation string  `json:"interpolation,omitempty"`
	CropPct       float64 `json:"crop_pct,omitempty"`
	InputSize     int     `json:"input_size,omitempty"`
}

// AssumedNormalization is what a checkpoint without any preprocessing
// file gets: Google's ViT (and timm's augreg) normalisation.
func AssumedNormalization() Normalization {
	return Normalization{Rescale: 1.0 / 255, Mean: [3]float64{0.5, 0.5, 0.5}, Std: [3]float64{0.5, 0.5, 0.5},
		Source: "assumed: (x/255 - 0.5)/0.5, no config.json with pretrained_cfg or preprocessor_config.json beside the weights"}
}

// InputNormalization is v.Input, or AssumedNormalization for a ViT made
// without one (its zero value normalises nothing).
func (v *ViT) InputNormalization() Normalization {
	if v.Input.Rescale == 0 {
		return AssumedNormalization()
	}
	return v.Input
}

// Check refuses a normalisation no image can go through.
func (n Normalization) Check() error {
	if !(n.Rescale > 0) || math.IsInf(n.Rescale, 0) {
		return fmt.Errorf("normalisation rescale %g: must be positive", n.Rescale)
	}
	for c := range 3 {
		if !(n.Std[c] > 0) || math.IsInf(n.Std[c], 0) || math.IsNaN(n.Mean[c]) || math.IsInf(n.Mean[c], 0) {
			return fmt.Errorf("normalisation mean %v, std %v: each std must be positive and each value finite", n.Mean, n.Std)
		}
	}
	return nil
}

// readNormalization finds a checkpoint's normalisation beside its weights:
// timm's config.json (pretrained_cfg.mean and std), or Hugging Face's
// preprocessor_config.json (image_mean, image_std, do_normalize,
// rescale_factor). ok is false when neither file says.
func readNormalization(dir string) (n Normalization, ok bool, err error) {
	n = Normalization{Rescale: 1.0 / 255}
	pre := filepath.Join(dir, "preprocessor_config.json")
	if data, err := os.ReadFile(pre); err == nil {
		var p struct {
			ImageMean     []float64 `json:"image_mean"`
			ImageStd      []float64 `json:"image_std"`
			DoNormalize   *bool     `json:"do_normalize"`
			DoRescale     *bool     `json:"do_rescale"`
			RescaleFactor *float64  `json:"rescale_factor"`
		}
		if err := json.Unmarshal(data, &p); err != nil {
			return n, false, fmt.Errorf("%s: %w", pre, err)
		}
		if p.RescaleFactor != nil {
			n.Rescale = *p.RescaleFactor
		}
		if p.DoRescale != nil && !*p.DoRescale {
			n.Rescale = 1
		}
		n.Std = [3]float64{1, 1, 1}
		if p.DoNormalize == nil || *p.DoNormalize {
			if err := three(&n.Mean, p.ImageMean, pre, "image_mean"); err != nil {
				return n, false, err
			}
			if err := three(&n.Std, p.ImageStd, pre, "image_std"); err != nil {
				return n, false, err
			}
		}
		n.Source = pre
		return n, true, n.Check()
	} else if !errors.Is(err, fs.ErrNotExist) {
		return n, false, err
	}
	cfg := filepath.Join(dir, "config.json")
	data, err := os.ReadFile(cfg)
	if errors.Is(err, fs.ErrNotExist) {
		return n, false, nil
	}
	if err != nil {
		return n, false, err
	}
	var c struct {
		PretrainedCfg *struct {
			Mean          []float64 `json:"mean"`
			Std           []float64 `json:"std"`
			Interpolation string    `json:"interpolation"`
			CropPct       float64   `json:"crop_pct"`
			InputSize     []int     `json:"input_size"` // [3, H, W]
		} `json:"pretrained_cfg"`
	}
	if err := json.Unmarshal(data, &c); err != nil {
		return n, false, fmt.Errorf("%s: %w", cfg, err)
	}
	if c.PretrainedCfg == nil || (c.PretrainedCfg.Mean == nil && c.PretrainedCfg.Std == nil) {
		return n, false, nil // a Hugging Face model config, or timm's without them
	}
	if err := three(&n.Mean, c.PretrainedCfg.Mean, cfg, "pretrained_cfg.mean"); err != nil {
		return n, false, err
	}
	if err := three(&n.Std, c.PretrainedCfg.Std, cfg, "pretrained_cfg.std"); err != nil {
		return n, false, err
	}
	n.Source = cfg
	n.Interpolation, n.CropPct = c.PretrainedCfg.Interpolation, c.PretrainedCfg.CropPct
	if in := c.PretrainedCfg.InputSize; len(in) == 3 {
		n.InputSize = in[2]
	}
	return n, true, n.Check()
}

// three takes one value a channel (or one for all three).
func three(dst *[3]float64, v []float64, file, key string) error {
	switch len(v) {
	case 1:
		*dst = [3]float64{v[0], v[0], v[0]}
	case 3:
		copy(dst[:], v)
	default:
		return fmt.Errorf("%s: %s has %d values, want 3 (or 1)", file, key, len(v))
	}
	return nil
}
